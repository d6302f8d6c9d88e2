"""Rescue of refreshed pairs whose commit could not land: ciphertext to SQS, applied later by version.

Bitrix24 has already spent the old refresh token when a commit fails, so the new pair is the only live
one: it must be kept. It travels only sealed (vault.cipher's envelope, bound to the tenant), never as plaintext.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from b24connector.identifiers import is_member_id
from b24connector.vault.cipher import SealedTokens, TokenMetadata
from b24connector.vault.clients import LazyClient, boto3_client, send_to_queue

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient

RESCUE_KIND = "b24connector.token-rescue"
RESCUE_FORMAT_VERSION = 1


@dataclass(frozen=True, slots=True)
class RescueMessage:
    """One encrypted pair waiting to be committed on top of `base_version`."""

    base_version: int
    sealed: SealedTokens
    created_at: int

    @property
    def member_id(self) -> str:
        """The portal the pair belongs to."""
        return self.sealed.member_id

    def to_json(self) -> str:
        """The SQS message body."""
        return json.dumps(
            {
                "kind": RESCUE_KIND,
                "format": RESCUE_FORMAT_VERSION,
                "member_id": self.sealed.member_id,
                "base_version": self.base_version,
                "ciphertext_b64": base64.b64encode(self.sealed.ciphertext).decode("ascii"),
                "token": self.sealed.metadata.to_dict(),
                "created_at": self.created_at,
            },
            separators=(",", ":"),
        )

    @classmethod
    def parse(cls, body: str | bytes | Mapping[str, Any]) -> RescueMessage:
        """Parse an SQS body (or its decoded dict); ValueError when it is not a rescue message."""
        data: Any = json.loads(body) if isinstance(body, str | bytes) else body
        if not isinstance(data, Mapping) or data.get("kind") != RESCUE_KIND:
            raise ValueError("not a token rescue message")
        if data.get("format") != RESCUE_FORMAT_VERSION:
            raise ValueError("unsupported token rescue message format")
        member_id, base_version = data.get("member_id"), data.get("base_version")
        if not is_member_id(member_id):
            raise ValueError("rescue message has no member_id")
        if not isinstance(base_version, int) or isinstance(base_version, bool) or base_version < 0:
            raise ValueError("rescue message has no valid base_version")
        try:
            ciphertext = base64.b64decode(str(data["ciphertext_b64"]), validate=True)
            metadata = TokenMetadata.from_dict(data["token"])
        except (KeyError, TypeError, ValueError, binascii.Error):
            raise ValueError("rescue message has a malformed ciphertext or token metadata") from None
        if not ciphertext:
            raise ValueError("rescue message has an empty ciphertext")
        return cls(
            base_version=base_version,
            sealed=SealedTokens(member_id=member_id, ciphertext=ciphertext, metadata=metadata),
            created_at=int(data.get("created_at", 0)),
        )


class RescueSink(Protocol):
    """Where rescue messages go (SQS in AWS; a list in unit tests)."""

    def send(self, message: RescueMessage) -> None:
        """Queue the message durably or raise."""


class SqsRescueQueue:
    """RescueSink on the TokenRescueQueue (RESCUE_QUEUE_URL)."""

    def __init__(self, queue_url: str, *, sqs_client: SQSClient | None = None) -> None:
        self.queue_url = queue_url
        # Created on first use: rescues are rare.
        self._sqs: LazyClient[SQSClient] = LazyClient(lambda: boto3_client("sqs", max_attempts=5), sqs_client)

    @property
    def sqs(self) -> SQSClient:
        """The SQS client."""
        return self._sqs()

    def send(self, message: RescueMessage) -> None:
        """Send one message; VaultUnavailable when SQS would not take it."""
        send_to_queue(self.sqs, self.queue_url, message.to_json(), queue="rescue")


def new_rescue_message(base_version: int, sealed: SealedTokens) -> RescueMessage:
    """A rescue message stamped with the current time."""
    return RescueMessage(base_version=base_version, sealed=sealed, created_at=int(time.time()))
