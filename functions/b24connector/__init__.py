"""Bitrix24 CRM connector: OAuth 2.0 side of a Bitrix24 app and a fast lead reader, on AWS Lambda."""
