"""What every vault table adapter shares: the clock type and how PynamoDB failures are read."""

from __future__ import annotations

from collections.abc import Callable

from pynamodb.exceptions import PynamoDBException

from b24connector.vault.errors import VaultUnavailable

Clock = Callable[[], float]
_CONDITION_FAILED = "ConditionalCheckFailedException"


def conditional_failure(exc: PynamoDBException) -> bool:
    """True when a conditional write was refused (the condition, not DynamoDB, said no)."""
    return exc.cause_response_code == _CONDITION_FAILED


def unavailable(action: str, exc: PynamoDBException) -> VaultUnavailable:
    """The caller-safe error for a failed DynamoDB call: the action and AWS error code, nothing else."""
    return VaultUnavailable(f"DynamoDB {action} failed ({exc.cause_response_code or type(exc).__name__})")
