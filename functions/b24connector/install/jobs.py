"""The journal's view of lifecycle events: jobs for LifecycleQueue and the events they carry back."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from b24connector.install.model import JOURNALED_EVENTS, InstallEvent, InstallGrant, UninstallNotice
from b24connector.tokens import TokenSet
from b24connector.vault.journal import JOB_GRANT, JOB_SUBSCRIBE, JOB_UNINSTALL, LifecycleJob


def _grant_facts(grant: InstallGrant) -> dict[str, Any]:
    tokens = grant.tokens
    return {
        "domain": grant.domain,
        "server_hint": grant.server_hint,
        "claimed_client_endpoint": grant.claimed_client_endpoint,
        "expires_at": tokens.expires_at,
        "obtained_at": tokens.obtained_at,
        "scope": tokens.scope,
        "status": tokens.status,
        "user_id": tokens.user_id,
        "client_endpoint": tokens.client_endpoint,
        "server_endpoint": tokens.server_endpoint,
    }


def _grant_secrets(grant: InstallGrant, prefix: str) -> dict[str, str]:
    secrets = {f"{prefix}.access": grant.tokens.access_token, f"{prefix}.refresh": grant.tokens.refresh_token}
    if grant.application_token:
        secrets[f"{prefix}.app"] = grant.application_token
    return secrets


def event_job(event: InstallEvent) -> LifecycleJob:
    """The journal entry of an install event."""
    facts: dict[str, Any] = {"event": event.name, "grant": _grant_facts(event.grant)}
    secrets = _grant_secrets(event.grant, "grant")
    if event.installer is not None:
        facts["installer"] = _grant_facts(event.installer)
        secrets |= _grant_secrets(event.installer, "installer")
    return LifecycleJob(JOB_GRANT, event.member_id, facts=facts, secrets=secrets)


def _grant_of(
    facts: Mapping[str, Any], secrets: Mapping[str, str], prefix: str, member_id: str
) -> InstallGrant:
    tokens = TokenSet(
        access_token=secrets[f"{prefix}.access"],
        refresh_token=secrets[f"{prefix}.refresh"],
        expires_at=int(facts["expires_at"]),
        member_id=member_id,
        client_endpoint=str(facts.get("client_endpoint") or ""),
        server_endpoint=str(facts.get("server_endpoint") or ""),
        scope=str(facts.get("scope") or ""),
        status=str(facts.get("status") or ""),
        user_id=facts.get("user_id") if isinstance(facts.get("user_id"), int) else None,
        obtained_at=int(facts.get("obtained_at") or 0),
    )
    return InstallGrant(
        domain=str(facts["domain"]),
        tokens=tokens,
        server_hint=facts.get("server_hint"),
        application_token=secrets.get(f"{prefix}.app"),
        claimed_client_endpoint=facts.get("claimed_client_endpoint"),
    )


def event_of(job: LifecycleJob) -> InstallEvent:
    """The install event a journal entry holds; ValueError when it is malformed."""
    try:
        facts = job.facts
        grant = _grant_of(facts["grant"], job.secrets, "grant", job.member_id)
        installer = (
            _grant_of(facts["installer"], job.secrets, "installer", job.member_id)
            if "installer" in facts
            else None
        )
        name = str(facts["event"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"malformed install journal entry ({type(exc).__name__})") from None
    if name not in JOURNALED_EVENTS:
        raise ValueError("install journal entry names an unknown event")
    return InstallEvent(name, grant, installer)


def uninstall_job(notice: UninstallNotice) -> LifecycleJob:
    """The journal entry of an uninstall Bitrix24 must confirm."""
    return LifecycleJob(
        JOB_UNINSTALL,
        notice.member_id,
        facts={"clean": notice.clean},
        secrets={"application_token": notice.application_token},
    )


def notice_of(job: LifecycleJob) -> UninstallNotice:
    """The uninstall notice a journal entry holds."""
    return UninstallNotice(
        member_id=job.member_id,
        application_token=job.secrets.get("application_token", ""),
        clean=bool(job.facts.get("clean")),
    )


def subscribe_job(member_id: str) -> LifecycleJob:
    """The journal entry asking for the portal's event.bind subscriptions."""
    return LifecycleJob(JOB_SUBSCRIBE, member_id)
