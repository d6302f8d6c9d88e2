"""Shared test fixtures' machinery: child-process servers (moto, dynalite), AWS resources, fakes."""
