"""Tiny handlers the local stack's tests point a small template at (stand-ins for b24connector)."""
