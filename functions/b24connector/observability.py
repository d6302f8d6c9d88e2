"""One Powertools Logger and one Metrics per service; configured by the POWERTOOLS_* environment."""

from __future__ import annotations

import logging

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit

# No Tracer here on purpose: aws-xray-sdk is heavy for cold starts and X-Ray is enabled on the functions.
logger = Logger()
metrics = Metrics()

# Client libraries log request details (URLs, retries) at INFO/DEBUG; keep them quiet. PynamoDB logs
# every call's arguments at DEBUG (application_token, token ciphertext).
for _noisy in ("urllib3", "requests", "botocore", "boto3", "pynamodb"):
    logging.getLogger(_noisy).setLevel(logging.WARNING)


def count(name: str, value: int = 1) -> None:
    """Add one dimension-light Count metric (the service dimension comes from Powertools)."""
    metrics.add_metric(name=name, unit=MetricUnit.Count, value=value)
