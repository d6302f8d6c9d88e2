"""Operator helpers: template reading (cfn_yaml), putting the client secret, deploy parameters."""
