"""The lifecycle journal: app events and follow-up work, accepted durably before any network call.

Bitrix24 delivers an event once and never again (docs/bitrix24-facts.md#f-events-3), so an ONAPPINSTALL
or ONAPPUSERREADY is written here first and applied later by LifecycleFunction, with the queue's
retries, dead-letter queue and alarm behind it. Token values travel only sealed under the portal's token
context (vault.cipher's envelope, as the stored pairs; older messages hold a direct KMS ciphertext and
still open); everything else is plain JSON.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from b24connector.identifiers import is_member_id
from b24connector.vault.cipher import TokenCipher
from b24connector.vault.clients import LazyClient, boto3_client, send_to_queue
from b24connector.vault.errors import TokenDecryptError, VaultUnavailable

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient

JOURNAL_KIND = "b24connector.lifecycle"
JOURNAL_FORMAT_VERSION = 1

JOB_GRANT = "grant"  # an install event's token pair(s) to verify and store
JOB_SUBSCRIBE = "subscribe"  # make sure the portal's event.bind subscriptions exist
JOB_UNINSTALL = "uninstall"  # an ONAPPUNINSTALL whose check with Bitrix24 failed transiently
JOB_KINDS = frozenset({JOB_GRANT, JOB_SUBSCRIBE, JOB_UNINSTALL})
_MAX_SECRETS = 8


@dataclass(frozen=True, slots=True)
class LifecycleJob:
    """One unit of lifecycle work: plain facts plus secrets that exist in plaintext only in memory."""

    kind: str
    member_id: str
    facts: Mapping[str, Any] = field(default_factory=dict)
    secrets: Mapping[str, str] = field(default_factory=dict, repr=False)
    created_at: int = field(default_factory=lambda: int(time.time()))

    def __post_init__(self) -> None:
        if self.kind not in JOB_KINDS:
            raise ValueError(f"unknown lifecycle job kind {self.kind!r}")
        if not self.member_id:
            raise ValueError("a lifecycle job needs its member_id")
        if len(self.secrets) > _MAX_SECRETS:
            raise ValueError("too many secrets in one lifecycle job")


class JobSink(Protocol):
    """Where lifecycle jobs go (SQS in AWS; a list in unit tests)."""

    def send(self, job: LifecycleJob) -> None:
        """Queue the job durably or raise VaultUnavailable."""


class JournalCodec:
    """Turns jobs into SQS bodies and back, sealing the secrets with the token key."""

    def __init__(self, cipher: TokenCipher) -> None:
        self._cipher = cipher

    def encode(self, job: LifecycleJob) -> str:
        """The SQS body: facts in the clear, secrets as one envelope bound to the portal."""
        body: dict[str, Any] = {
            "kind": JOURNAL_KIND,
            "format": JOURNAL_FORMAT_VERSION,
            "job": job.kind,
            "member_id": job.member_id,
            "facts": dict(job.facts),
            "created_at": job.created_at,
        }
        if job.secrets:
            plaintext = json.dumps(dict(job.secrets), separators=(",", ":")).encode("utf-8")
            sealed = self._cipher.seal_bytes(plaintext, job.member_id)
            body["sealed_b64"] = base64.b64encode(sealed).decode("ascii")
        return json.dumps(body, separators=(",", ":"))

    def decode(self, body: str | bytes) -> LifecycleJob:
        """The job of an SQS body; ValueError when malformed, TokenDecryptError when it cannot open."""
        data: Any = json.loads(body)
        if not isinstance(data, Mapping) or data.get("kind") != JOURNAL_KIND:
            raise ValueError("not a lifecycle journal message")
        if data.get("format") != JOURNAL_FORMAT_VERSION:
            raise ValueError("unsupported lifecycle journal format")
        member_id, kind, facts = data.get("member_id"), data.get("job"), data.get("facts", {})
        if not is_member_id(member_id) or not isinstance(kind, str) or not isinstance(facts, Mapping):
            raise ValueError("lifecycle journal message is malformed")
        secrets = self._open_secrets(data["sealed_b64"], member_id) if "sealed_b64" in data else {}
        created_at = data.get("created_at", 0)
        return LifecycleJob(
            kind=kind,
            member_id=member_id,
            facts=dict(facts),
            secrets=secrets,
            created_at=created_at if isinstance(created_at, int) else 0,
        )

    def _open_secrets(self, sealed_b64: object, member_id: str) -> dict[str, str]:
        """The job's sealed secrets, opened under the portal's encryption context."""
        try:
            sealed = base64.b64decode(str(sealed_b64), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("lifecycle journal message has a malformed ciphertext") from None
        plaintext = self._cipher.open_bytes(sealed, member_id, owner=member_id)
        try:
            opened = json.loads(plaintext)
        except ValueError:
            raise TokenDecryptError(member_id, "journal secrets are not JSON") from None
        if not isinstance(opened, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in opened.items()
        ):
            raise TokenDecryptError(member_id, "journal secrets are malformed")
        return opened


class SqsLifecycleQueue:
    """JobSink on LifecycleQueue (LIFECYCLE_QUEUE_URL)."""

    def __init__(self, queue_url: str, codec: JournalCodec, *, sqs_client: SQSClient | None = None) -> None:
        self.queue_url = queue_url
        self.codec = codec
        self._sqs: LazyClient[SQSClient] = LazyClient(lambda: boto3_client("sqs", max_attempts=5), sqs_client)

    def send(self, job: LifecycleJob) -> None:
        """Seal and send one job; VaultUnavailable when KMS or SQS would not take it."""
        if not self.queue_url:
            raise VaultUnavailable("LIFECYCLE_QUEUE_URL is not configured")
        send_to_queue(self._sqs(), self.queue_url, self.codec.encode(job), queue="lifecycle")
