"""The app lifecycle as portals run it (docs/bitrix24-facts.md#f-app-1 to #f-app-10, #f-events-3).

What arrives, and how far each is trusted:
- The install page POST (UI apps, in the portal's frame) carries the opening user's pair; older portals
  send no SERVER_ENDPOINT, APPLICATION_TOKEN or APPLICATION_SCOPE. Verified inline (a person waits).
- ONAPPINSTALL (API-only apps) and ONAPPUSERREADY (Market apps: a system-user pair in `data`, the
  installer's pair and the application token in `auth`) come once, never again, possibly late. They
  are journaled (KMS-sealed, SQS) before any network call, answered at once, and verified and applied
  by LifecycleFunction with retries; a late event's expired access token is renewed with its own
  refresh token first.
- ONAPPUNINSTALL carries no token, only `auth[application_token]`, and reaches us only through the
  event.bind subscription the connector makes after every grant (subscriptions.py).

Every claimed pair is only a claim until the OAuth server's app.info, asked on an allow-listed server,
confirms the same app, portal and REST endpoint. Whose pair it is then decides whether it may be stored:
a portal administrator (REST user.admin) or the app's system user outranks an ordinary employee, and an
active grant is never replaced by one of a lower rank (the vault enforces it in its compare-and-set).
The application token is no proof: the newer install page posts it into the frame of every user who
opens the app, so employees can read it. It is stored (as a SHA-256 verifier, only with an administrator
or system grant) for reference, and every uninstall is confirmed with Bitrix24 through the stored grant
before anything changes.
"""

from __future__ import annotations

from b24connector.install.installer import Installer
from b24connector.install.jobs import event_job, event_of, notice_of, subscribe_job, uninstall_job
from b24connector.install.model import (
    EVENT_INSTALL,
    EVENT_UNINSTALL,
    EVENT_USER_READY,
    JOURNALED_EVENTS,
    Installed,
    InstallEvent,
    InstallGrant,
    InstallStore,
    InstallVerifier,
    Outcome,
    RemovalProbe,
    RoleProbe,
    StoredPortal,
    UninstallNotice,
    problem_is_final,
)
from b24connector.install.parsing import parse_install_event, parse_install_page, parse_uninstall_event
from b24connector.install.probes import RestRoleProbe, StoredGrantRemovalProbe

__all__ = [
    "EVENT_INSTALL",
    "EVENT_UNINSTALL",
    "EVENT_USER_READY",
    "JOURNALED_EVENTS",
    "InstallEvent",
    "InstallGrant",
    "InstallStore",
    "InstallVerifier",
    "Installed",
    "Installer",
    "Outcome",
    "RemovalProbe",
    "RestRoleProbe",
    "RoleProbe",
    "StoredGrantRemovalProbe",
    "StoredPortal",
    "UninstallNotice",
    "event_job",
    "event_of",
    "notice_of",
    "parse_install_event",
    "parse_install_page",
    "parse_uninstall_event",
    "problem_is_final",
    "subscribe_job",
    "uninstall_job",
]
