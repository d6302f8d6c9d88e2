"""Rescue of refreshed pairs whose commit could not land: ciphertext to SQS, applied later by version.

Bitrix24 has already spent the old refresh token when a commit fails (a refresh answer replaces the
stored pair, docs/bitrix24-facts.md#f-oauth-12), so the new pair is the only live one: it must be kept.
It travels only sealed (vault.cipher's envelope, bound to the tenant), never as plaintext.

lease_holder.LeaseHolder queues a RescueMessage when its commit fails; TokenRescueFunction's
RescueWorker hands each one to apply_rescue, which commits it on its base version or drops it as stale.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

from b24connector.identifiers import is_member_id
from b24connector.token_refresh.outcomes import RESCUE, BatchReport, RescueOutcome, record
from b24connector.token_refresh.renames import as_stored, judge_endpoints, judged_metadata, report_endpoints
from b24connector.vault.cipher import SealedTokens, TokenMetadata
from b24connector.vault.clients import LazyClient, boto3_client, send_to_queue
from b24connector.vault.endpoints import EndpointChange, EndpointGuard
from b24connector.vault.portal import Portal
from b24connector.vault.store import PortalStore

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


def apply_rescue(
    store: PortalStore, guard: EndpointGuard, body: str | bytes | Mapping[str, Any]
) -> RescueOutcome:
    """Commit a rescued pair on its base version (TokenRescueFunction); stale ones are dropped.

    Raises ValueError for a malformed message, TokenDecryptError when the ciphertext is not this
    tenant's, VaultUnavailable when DynamoDB failed (the SQS retry will bring it back).
    """
    message = RescueMessage.parse(body)
    # Decrypting proves the pair belongs to this tenant before it can replace anything.
    tokens = store.cipher.open(message.sealed)
    current = store.get(message.member_id, consistent=True)
    committed: Portal | None = None
    change = EndpointChange()
    if current is not None and current.version == message.base_version:
        # The queued endpoints are judged again: the message may predate this guard.
        meta = message.sealed.metadata
        change = judge_endpoints(store, guard, current, meta.client_endpoint, meta.server_endpoint)
        sealed = replace(message.sealed, metadata=judged_metadata(meta, change))
        committed = store.commit_refresh(
            message.member_id, message.base_version, sealed, domain=change.domain
        )
    if committed is None:
        if current is not None and current.version == message.base_version:
            current = store.get(message.member_id, consistent=True)
        record(
            RescueOutcome.STALE,
            message.member_id,
            message.base_version,
            current_version=current.version if current else None,
        )
        return RescueOutcome.STALE
    store.cipher.remember(message.member_id, committed.version, as_stored(tokens, committed))
    report_endpoints(message.member_id, change, path=RESCUE)
    record(RescueOutcome.APPLIED, message.member_id, committed.version)
    return RescueOutcome.APPLIED


class RescueApplier(Protocol):
    """What the rescue worker needs (token_refresh.coordinator.RefreshCoordinator fits)."""

    def apply_rescue(self, body: str | bytes | Mapping[str, Any]) -> object:
        """Commit one rescued pair on its base version (or drop it as stale)."""
        ...


class RescueWorker:
    """Applies TokenRescueQueue messages; any failure keeps the message (it holds the only live pair)."""

    def __init__(self, coordinator: RescueApplier, *, on_error: Callable[[str, BaseException], None]) -> None:
        self._coordinator = coordinator
        self._on_error = on_error

    def handle(self, records: Sequence[Mapping[str, Any]]) -> BatchReport:
        """Apply each message; failures are retried and finally land in the DLQ for an operator."""
        report = BatchReport()
        for message in records:
            message_id = str(message.get("messageId", ""))
            try:
                outcome = self._coordinator.apply_rescue(str(message.get("body", "")))
            except Exception as exc:
                self._on_error(message_id, exc)
                report.count(type(exc).__name__)
                report.retry.append(message_id)
                continue
            report.count(str(getattr(outcome, "value", outcome)))
        return report
