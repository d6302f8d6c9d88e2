"""LeadEventsTable: one item per accepted lead delivery, written once (the dedup key) and read from its stream.

The item holds what the published event says and nothing more: member_id, the stored domain, the
Bitrix24 event name, the lead id and the portal's `ts`. Never a token: the delivery's `auth[...]`
block is not copied. `expires_at` is the table's TTL attribute (DynamoDB deletes lazily; the stream's
REMOVE records are ignored).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

from pynamodb.attributes import NumberAttribute, UnicodeAttribute
from pynamodb.exceptions import PutError, PynamoDBException
from pynamodb.models import Model

from b24connector.vault.errors import VaultUnavailable
from b24connector.vault.models import bound_model


class LeadEventModel(Model):
    """One lead delivery accepted for publishing."""

    class Meta:
        table_name: str | None = None

    event_key = UnicodeAttribute(hash_key=True)  # member_id#event#lead_id#ts
    member_id = UnicodeAttribute()
    domain = UnicodeAttribute(null=True)
    event = UnicodeAttribute()
    lead_id = NumberAttribute()
    portal_ts = NumberAttribute()
    received_at = NumberAttribute()
    expires_at = NumberAttribute()  # TTL


@cache
def bind_lead_event_model(table_name: str, region: str, host: str | None = None) -> type[LeadEventModel]:
    """The model bound to one table, region and (optional) endpoint (None: botocore resolves it)."""
    model: type[LeadEventModel] = bound_model(LeadEventModel, table_name, region, host)
    return model


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """What one accepted delivery records."""

    member_id: str
    domain: str | None
    event: str
    lead_id: int
    portal_ts: int

    @property
    def key(self) -> str:
        """The dedup key: every copy of one portal event (one per bound row) has the same one."""
        return f"{self.member_id}#{self.event}#{self.lead_id}#{self.portal_ts}"


class LeadEventOutbox:
    """Conditional writes into LeadEventsTable."""

    def __init__(self, model: type[LeadEventModel]) -> None:
        self.model = model

    def record(self, item: OutboxItem, *, now: float, ttl_seconds: int) -> bool:
        """Write the item unless its key is there; False for a duplicate. VaultUnavailable on failure."""
        row = self.model(
            item.key,
            member_id=item.member_id,
            domain=item.domain,
            event=item.event,
            lead_id=item.lead_id,
            portal_ts=item.portal_ts,
            received_at=int(now),
            expires_at=int(now) + ttl_seconds,
        )
        try:
            row.save(condition=self.model.event_key.does_not_exist())
        except PutError as exc:
            if _conditional(exc):
                return False
            raise VaultUnavailable("lead event not recorded (PutItem)") from None
        except PynamoDBException:
            raise VaultUnavailable("lead event not recorded (PutItem)") from None
        return True


def _conditional(exc: PynamoDBException) -> bool:
    cause: Any = getattr(exc, "cause_response_code", None)
    return bool(cause == "ConditionalCheckFailedException")
