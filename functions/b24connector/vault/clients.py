"""boto3 clients of the vault (KMS, SQS), each created once and only when first needed."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Generic, Literal, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from b24connector.vault.errors import VaultUnavailable
from b24connector.vault.models import aws_region

C = TypeVar("C")


def boto3_client(service: Literal["kms", "sqs"], *, max_attempts: int) -> Any:
    """A client in the function's region with short timeouts and standard (throttling-aware) retries."""
    return boto3.client(
        service,
        region_name=aws_region(),
        config=Config(
            connect_timeout=3,
            read_timeout=5,
            retries={"mode": "standard", "max_attempts": max_attempts},
            max_pool_connections=50,
        ),
    )


class LazyClient(Generic[C]):
    """Holds a given client, or builds one on first call; threads racing for it get the same one."""

    def __init__(self, build: Callable[[], C], client: C | None = None) -> None:
        self._build = build
        self._client = client
        self._lock = threading.Lock()

    def __call__(self) -> C:
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = self._build()
        return self._client


def send_to_queue(sqs: Any, queue_url: str, body: str, *, queue: str) -> None:
    """SQS SendMessage; VaultUnavailable naming `queue` and the error code (never the body) on failure."""
    try:
        sqs.send_message(QueueUrl=queue_url, MessageBody=body)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "Unknown")
        raise VaultUnavailable(f"SQS SendMessage to the {queue} queue failed ({code})") from None
    except BotoCoreError as exc:
        raise VaultUnavailable(
            f"SQS SendMessage to the {queue} queue failed ({type(exc).__name__})"
        ) from None
