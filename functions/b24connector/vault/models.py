"""PynamoDB models of the portals and OAuth-state tables; names and endpoints are bound at runtime.

Attribute and index names are the contract with template.yaml (see tests that compare both).
"""

from __future__ import annotations

import hashlib
import os
from functools import cache
from typing import Any

from pynamodb.attributes import (
    BinaryAttribute,
    ListAttribute,
    NumberAttribute,
    UnicodeAttribute,
)
from pynamodb.indexes import AllProjection, GlobalSecondaryIndex, IncludeProjection
from pynamodb.models import Model

HEALTH_ACTIVE = "active"
HEALTH_NEEDS_REAUTH = "needs_reauth"
HEALTH_UNINSTALLED = "uninstalled"

# Whose pair a portal's grant is (docs/bitrix24-facts.md#f-app-9, #f-user-1): the system user of a Market
# app (ONAPPUSERREADY), a portal administrator (REST user.admin said so) or any other employee. A grant
# is never replaced by one of a lower rank while it is active.
ROLE_SYSTEM = "system"
ROLE_ADMIN = "admin"
ROLE_USER = "user"
ROLE_RANK = {ROLE_USER: 0, ROLE_ADMIN: 1, ROLE_SYSTEM: 2}

# Where the portal's event.bind subscriptions stand (the subscription job moves it).
SUBSCRIPTION_PENDING = "pending"
SUBSCRIPTION_BOUND = "bound"
SUBSCRIPTION_FAILED = "failed"

# One Lambda container serves one request at a time, but tests and workers share a model across threads.
_MAX_POOL_CONNECTIONS = 50


class DomainIndex(GlobalSecondaryIndex["PortalModel"]):  # type: ignore[no-untyped-call]
    """Portal lookup by its host name (projection ALL)."""

    class Meta:
        index_name = "DomainIndex"
        projection = AllProjection()

    domain = UnicodeAttribute(hash_key=True)


class RefreshDueIndex(GlobalSecondaryIndex["PortalModel"]):  # type: ignore[no-untyped-call]
    """Sparse, sharded index of active portals by the time their refresh token should be renewed."""

    class Meta:
        index_name = "RefreshDueIndex"
        projection = IncludeProjection(["version"])

    due_shard = UnicodeAttribute(hash_key=True)
    refresh_due_at = NumberAttribute(range_key=True)


class PortalModel(Model):
    """One Bitrix24 portal installation, keyed by member_id; tokens only as ciphertext (vault.cipher)."""

    class Meta:
        table_name: str | None = None

    member_id = UnicodeAttribute(hash_key=True)
    version = NumberAttribute(default=0)  # grows on every change of the token chain, never shrinks
    health = UnicodeAttribute(default=HEALTH_ACTIVE)
    domain = UnicodeAttribute(null=True)
    client_endpoint = UnicodeAttribute(null=True)
    server_endpoint = UnicodeAttribute(null=True)
    scope = UnicodeAttribute(null=True)
    status = UnicodeAttribute(null=True)  # Bitrix24 app status letter (L/F/D/T/P)
    user_id = NumberAttribute(null=True)
    # SHA-256 hex of the app's application_token: enough to check ONAPPUNINSTALL, useless to forge it.
    application_token_hash = UnicodeAttribute(null=True)
    token_ciphertext = BinaryAttribute(null=True, legacy_encoding=False)
    access_expires_at = NumberAttribute(null=True)
    refresh_obtained_at = NumberAttribute(null=True)
    last_refresh_attempt_at = NumberAttribute(null=True)
    due_shard = UnicodeAttribute(null=True)
    refresh_due_at = NumberAttribute(null=True)
    lease_owner = UnicodeAttribute(null=True)
    lease_expires_at = NumberAttribute(null=True)
    # What a scheduled lease replaced (0: no attempt before), so an attempt that never reached the token
    # endpoint can be undone from the record itself (vault.leases.take_due_lease).
    lease_prior_attempt_at = NumberAttribute(null=True)
    lease_prior_due_at = NumberAttribute(null=True)
    grant_digests = ListAttribute[str](null=True)
    grant_role = UnicodeAttribute(null=True)  # ROLE_SYSTEM / ROLE_ADMIN / ROLE_USER
    subscription_state = UnicodeAttribute(null=True)  # SUBSCRIPTION_*
    subscribed_events = ListAttribute[str](null=True)  # events bound to our handler, as event.get said
    subscription_error = UnicodeAttribute(null=True)  # a short code, never a server text
    subscription_checked_at = NumberAttribute(null=True)
    # When an ONAPPUNINSTALL that the stored application token could not prove was last checked with
    # Bitrix24: one such check per portal per minute, so forged events cannot drive OAuth calls.
    uninstall_check_at = NumberAttribute(null=True)
    # Why the portal needs re-authorization (a Bitrix24 error code): PortalNeedsReauth's `reason`.
    reauth_reason = UnicodeAttribute(null=True)
    created_at = NumberAttribute(null=True)
    updated_at = NumberAttribute(null=True)
    uninstalled_at = NumberAttribute(null=True)

    domain_index = DomainIndex()
    refresh_due_index = RefreshDueIndex()


class OAuthStateModel(Model):
    """A pending authorization: hashed state and browser nonce, never the raw values; single use.

    Consuming marks it (`used_at`) instead of deleting it, so a replay can be told from an unknown state;
    the TTL on `expires_at` still removes it.
    """

    class Meta:
        table_name: str | None = None

    state_hash = UnicodeAttribute(hash_key=True)
    nonce_hash = UnicodeAttribute()
    portal_domain = UnicodeAttribute()
    created_at = NumberAttribute()
    expires_at = NumberAttribute()  # TTL attribute; DynamoDB deletes lazily, so code checks it too
    used_at = NumberAttribute(null=True)


def aws_region() -> str:
    """The region Lambda (AWS_REGION) or the developer (AWS_DEFAULT_REGION) configured."""
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if not region:
        raise RuntimeError("AWS_REGION or AWS_DEFAULT_REGION must be set")
    return region


def bound_model(base: type[Model], table_name: str, region: str, host: str | None) -> type[Any]:
    """A subclass of `base` bound to one table name, region and (optional) endpoint, with its own connection."""
    meta = type(
        "Meta",
        (),
        {
            "table_name": table_name,
            "region": region,
            # None lets botocore resolve AWS_ENDPOINT_URL (moto, the local stack) or the real endpoint.
            "host": host,
            "max_pool_connections": _MAX_POOL_CONNECTIONS,
        },
    )
    # A subclass per table keeps its own connection; PynamoDB copies the indexes onto it.
    return type(f"{base.__name__}_{table_name}", (base,), {"Meta": meta, "__module__": __name__})


@cache
def bind_portal_model(table_name: str, region: str, host: str | None = None) -> type[PortalModel]:
    """The portals model bound to one table name, region and (optional) endpoint."""
    model: type[PortalModel] = bound_model(PortalModel, table_name, region, host)
    return model


@cache
def bind_state_model(table_name: str, region: str, host: str | None = None) -> type[OAuthStateModel]:
    """The OAuth-state model bound to one table name, region and (optional) endpoint."""
    model: type[OAuthStateModel] = bound_model(OAuthStateModel, table_name, region, host)
    return model


def due_shard_of(member_id: str, shards: int) -> str:
    """Stable shard of a portal in RefreshDueIndex (same on every machine, unlike hash())."""
    digest = hashlib.sha256(member_id.encode("utf-8")).digest()
    return str(int.from_bytes(digest[:8], "big") % shards)
