"""The composition root: every adapter and use case is built here, once per container, on first use.

Handlers (Lambda entry points) ask this module for what they need and never build anything themselves
or import one another. Every builder is cached per Settings value, so a warm invocation reuses the same
sessions, stores and caches (decrypted tokens, secrets), and a test that swaps the environment gets
fresh ones; `reset()` forgets them all (the next call behaves like a cold start).

The OAuth and REST clients (and with them `requests`) are imported by the builder that needs them, not by
this module: a handler's import stays close to `import boto3`, and a container that never talks to
Bitrix24 (token rescues, warm reads with a live token) never loads them. Use-case modules a handler does
not import itself are loaded by their builder too, on the first invocation.
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING, Any

from b24connector.observability import logger
from b24connector.portals import PortalPolicy
from b24connector.problems import safe_traceback
from b24connector.settings import Settings
from b24connector.token_refresh.coordinator import RefreshCoordinator
from b24connector.token_refresh.policy import RefreshPolicy
from b24connector.token_refresh.rescue import SqsRescueQueue
from b24connector.vault import Vault, open_vault
from b24connector.vault.endpoints import EndpointGuard

if TYPE_CHECKING:
    from collections.abc import Callable

    from b24connector.authorization import AuthorizationFlow
    from b24connector.bitrix24.oauth import OAuthClient
    from b24connector.bitrix24.rest import RestClient
    from b24connector.changes import ChangesReader
    from b24connector.events.bus import EventBus
    from b24connector.events.lead_changes import LeadDeliveryDesk
    from b24connector.events.publisher import StreamPublisher
    from b24connector.install import Installer
    from b24connector.leads import LeadsReader
    from b24connector.lifecycle import LifecycleWorker
    from b24connector.subscriptions import Subscriber
    from b24connector.token_refresh.rescue import RescueWorker
    from b24connector.token_refresh.scheduled import RefreshSweep, RefreshWorker
    from b24connector.tokens import TokenSet
    from b24connector.vault.journal import JournalCodec

# Tokens the shared pacer reserves per DynamoDB write on speculation (see leads_rest_client()).
PACING_LEASE_SIZE = 1


# --- adapters ---------------------------------------------------------------------------------------


@cache
def portal_policy(conf: Settings) -> PortalPolicy:
    """The portal allow-list."""
    return PortalPolicy.from_settings(conf)


def vault(conf: Settings) -> Vault:
    """The token vault (stores, cipher with its decrypted-token cache, lifecycle journal)."""
    return open_vault(conf)


@cache
def oauth_client(conf: Settings) -> OAuthClient:
    """The Bitrix24 OAuth-server client."""
    # Imported here: loads requests (see the module docstring).
    from b24connector import credentials  # noqa: PLC0415
    from b24connector.bitrix24.oauth import OAuthClient  # noqa: PLC0415
    from b24connector.bitrix24.transport import shared_session  # noqa: PLC0415

    # The secret is fetched per token request through the Powertools cache (SECRET_MAX_AGE_SECONDS).
    return OAuthClient.from_settings(conf, lambda: credentials.client_secret(conf), session=shared_session())


class OnDemandRefresher:
    """The coordinator's TokenRefresher that builds the OAuth client on the first refresh it is asked for."""

    def __init__(self, conf: Settings) -> None:
        self._conf = conf

    def refresh(
        self, refresh_token: str, *, server_hint: str | None = None, deadline: float | None = None
    ) -> TokenSet:
        """Exchange a refresh token for a new pair (OAuthClient.refresh); `deadline`: end of the lease."""
        return oauth_client(self._conf).refresh(refresh_token, server_hint=server_hint, deadline=deadline)


@cache
def coordinator(conf: Settings) -> RefreshCoordinator:
    """The refresh coordinator over the vault, the rescue queue and the OAuth client (built on first refresh)."""
    return RefreshCoordinator(
        open_vault(conf).portals,
        OnDemandRefresher(conf),
        SqsRescueQueue(conf.rescue_queue_url),
        endpoints=EndpointGuard.from_settings(conf),
        policy=RefreshPolicy.from_settings(conf),
    )


@cache
def rest_client(conf: Settings) -> RestClient:
    """A REST client for the lifecycle's few portal calls (user.admin, event.get/bind), paced locally."""
    from b24connector.bitrix24.rest import RestClient  # noqa: PLC0415  (loads requests)
    from b24connector.bitrix24.transport import shared_session  # noqa: PLC0415

    return RestClient.from_settings(conf, session=shared_session())


@cache
def journal_codec(conf: Settings) -> JournalCodec:
    """Opens LifecycleQueue messages (KMS Decrypt under the portal's token context)."""
    from b24connector.vault.journal import JournalCodec  # noqa: PLC0415

    return JournalCodec(vault(conf).cipher)


# --- use cases --------------------------------------------------------------------------------------


@cache
def installer(conf: Settings) -> Installer:
    """The lifecycle use case: install page, install events, grants from the OAuth flow, uninstall."""
    from b24connector.install import Installer, RestRoleProbe, StoredGrantRemovalProbe  # noqa: PLC0415

    the_vault = vault(conf)
    oauth = oauth_client(conf)
    return Installer(
        portal_policy(conf),
        oauth,
        the_vault.portals,
        client_id=conf.client_id,
        journal=the_vault.journal,
        roles=RestRoleProbe(rest_client(conf)),
        removal=StoredGrantRemovalProbe(the_vault.portals, oauth, coordinator(conf)),
    )


@cache
def authorization_flow(conf: Settings) -> AuthorizationFlow:
    """The authorization use case (GET /authorize, GET /callback)."""
    from b24connector import credentials, pkce  # noqa: PLC0415
    from b24connector.authorization import AuthorizationFlow  # noqa: PLC0415

    verifier = pkce.verifier_source(lambda: credentials.pkce_key(conf)) if conf.pkce_enabled else None
    return AuthorizationFlow(
        portal_policy(conf),
        vault(conf).states,
        oauth_client(conf),
        installer(conf),
        ttl_seconds=conf.state_ttl_seconds,
        pkce_verifier=verifier,
    )


@cache
def subscriber(conf: Settings) -> Subscriber:
    """The event.bind checker (LifecycleFunction)."""
    from b24connector.leads import VaultPortalOpener  # noqa: PLC0415
    from b24connector.subscriptions import Subscriber  # noqa: PLC0415

    the_vault = vault(conf)
    return Subscriber(
        VaultPortalOpener(the_vault.portals, coordinator(conf)),
        rest_client(conf),
        the_vault.portals,
        events_url=conf.events_url,
        # ONAPPUNINSTALL first: a portal that refuses the CRM events (no crm scope) still has it bound.
        events=conf.bound_events + conf.lead_events,
    )


@cache
def lifecycle_worker(conf: Settings) -> LifecycleWorker:
    """The LifecycleQueue use case: journaled install events, uninstall checks, event bindings."""
    from b24connector.lifecycle import LifecycleWorker  # noqa: PLC0415

    return LifecycleWorker(installer(conf), subscriber(conf))


@cache
def leads_rest_client(conf: Settings) -> RestClient:
    """LeadsFunction's REST client, paced through the shared bucket unless RATE_LIMIT_SHARED is off.

    One per container: the lead reader and the change query share it, so they share one pacer.
    """
    # Imported on the first invocation: the REST client loads requests, which invalid requests and
    # other handlers never need.
    from b24connector.bitrix24.pacing import LocalTokenBucket, Pacer  # noqa: PLC0415
    from b24connector.bitrix24.rest import RestClient  # noqa: PLC0415
    from b24connector.bitrix24.transport import shared_session  # noqa: PLC0415
    from b24connector.shared_pacing import DynamoTokenBucket  # noqa: PLC0415

    pacer: Pacer
    if conf.rate_limit_shared:
        # Concurrent instances share the portal's request budget through the RateLimitTable. No
        # speculative leases: their unused tokens die with the invocation, and a parallel export runs
        # many short invocations (5 parts x 8 requests wasted ~6 of the 47 usable tokens with leases of
        # 5). A planned read announces its windows (FastLister.read_windows -> expect()), so a round
        # of N windows still costs one write, not N, and no token is reserved that is not used.
        pacer = DynamoTokenBucket.from_settings(
            conf,
            lease_size=PACING_LEASE_SIZE,
            on_fallback=lambda reason: logger.warning("shared pacing off", extra={"reason": reason}),
        )
    else:
        pacer = LocalTokenBucket(conf.rate_limit_per_second, conf.rate_limit_burst)
    return RestClient.from_settings(conf, session=shared_session(), pacer=pacer)


@cache
def leads_reader(conf: Settings) -> LeadsReader:
    """The leads use case (LeadsFunction)."""
    # Imported on the first invocation: the secret reader loads the Powertools parameters utility.
    from b24connector import credentials  # noqa: PLC0415
    from b24connector.bitrix24.listing import FastLister  # noqa: PLC0415
    from b24connector.leads import CursorCodec, LeadsReader, VaultPortalOpener  # noqa: PLC0415

    return LeadsReader(
        VaultPortalOpener(vault(conf).portals, coordinator(conf)),
        FastLister(leads_rest_client(conf)),
        CursorCodec(lambda: credentials.cursor_signing_key(conf)),
    )


@cache
def changes_reader(conf: Settings) -> ChangesReader:
    """LeadsFunction's change query (changed_since / checkpoint), on the same paced REST client."""
    from b24connector.changes import ChangesReader  # noqa: PLC0415
    from b24connector.leads import VaultPortalOpener  # noqa: PLC0415

    return ChangesReader(VaultPortalOpener(vault(conf).portals, coordinator(conf)), leads_rest_client(conf))


@cache
def refresh_sweep(conf: Settings) -> RefreshSweep:
    """The scheduled sweep (RefreshFunction): queues every portal whose refresh token is due."""
    from b24connector.token_refresh.scheduled import RefreshSweep, SqsBatchSender  # noqa: PLC0415
    from b24connector.vault.clients import boto3_client  # noqa: PLC0415

    sqs = boto3_client("sqs", max_attempts=4)
    # The sweep never talks to Bitrix24, so it does not load the OAuth client (or requests).
    return RefreshSweep(open_vault(conf).portals, SqsBatchSender(sqs, conf.refresh_queue_url))


def log_refresh_failure(subject: str, exc: BaseException) -> None:
    """Log a refresh message's failure by type and location only (exception texts stay out of logs)."""
    logger.error("refresh message failed", extra={"subject": subject, **safe_traceback(exc)})


def log_rescue_failure(message_id: str, exc: BaseException) -> None:
    """Log a token rescue's failure by type and location only (exception texts stay out of logs)."""
    logger.error("token rescue failed", extra={"message_id": message_id, **safe_traceback(exc)})


@cache
def refresh_worker(conf: Settings) -> RefreshWorker:
    """The RefreshQueue use case (RefreshWorkerFunction): refresh each due portal once."""
    from b24connector.token_refresh.scheduled import RefreshWorker  # noqa: PLC0415

    return RefreshWorker(coordinator(conf), on_error=log_refresh_failure)


@cache
def rescue_worker(conf: Settings) -> RescueWorker:
    """The TokenRescueQueue use case (TokenRescueFunction): commit pairs whose first commit failed."""
    from b24connector.token_refresh.rescue import RescueWorker  # noqa: PLC0415

    return RescueWorker(coordinator(conf), on_error=log_rescue_failure)


_BUILDERS: tuple[Callable[..., object], ...] = (
    portal_policy,
    oauth_client,
    coordinator,
    rest_client,
    journal_codec,
    installer,
    authorization_flow,
    subscriber,
    lifecycle_worker,
    leads_reader,
    refresh_sweep,
    refresh_worker,
    rescue_worker,
)


def reset() -> None:
    """Forget every built adapter and use case, and the vault's: the next call is a cold start."""
    from b24connector import vault as vault_package  # noqa: PLC0415

    for builder in _BUILDERS:
        builder.cache_clear()  # type: ignore[attr-defined]
    vault_package._vault_for.cache_clear()


# --- events (README "Events") -----------------------------------------------------------------------


def _events_client(service: str, *, read_timeout: float) -> Any:
    import boto3  # noqa: PLC0415
    from botocore.config import Config  # noqa: PLC0415

    from b24connector.vault.models import aws_region  # noqa: PLC0415

    return boto3.client(
        service,  # type: ignore[call-overload]
        region_name=aws_region(),
        config=Config(
            connect_timeout=3, read_timeout=read_timeout, retries={"mode": "standard", "max_attempts": 3}
        ),
    )


@cache
def lead_desk(conf: Settings) -> LeadDeliveryDesk:
    """Authenticates lead deliveries (POST /events) and records each portal event once in LeadEventsTable."""
    from b24connector.events.lead_changes import LeadDeliveryDesk  # noqa: PLC0415
    from b24connector.events.outbox import LeadEventOutbox, bind_lead_event_model  # noqa: PLC0415
    from b24connector.vault.models import aws_region  # noqa: PLC0415

    return LeadDeliveryDesk(
        vault(conf).portals,
        LeadEventOutbox(bind_lead_event_model(conf.lead_events_table, aws_region())),
        published=conf.lead_events,
        dedup_seconds=conf.lead_event_dedup_seconds,
    )


@cache
def event_bus(conf: Settings) -> EventBus:
    """PutEvents on the stack's bus."""
    from b24connector.events.bus import EventBus  # noqa: PLC0415

    return EventBus(_events_client("events", read_timeout=5), conf.event_bus_name)


@cache
def stream_publisher(conf: Settings) -> StreamPublisher:
    """PublisherFunction's use case; reads lead fields through LeadsFunction only when configured."""
    from b24connector.events.publisher import FieldsReader, StreamPublisher  # noqa: PLC0415

    reader: FieldsReader | None = None
    if conf.lead_event_fields and conf.leads_function_name:
        from b24connector.events.enrichment import LeadsFunctionFields  # noqa: PLC0415

        # LeadsFunction answers within its own timeout (120 s); the read waits for it.
        reader = LeadsFunctionFields(_events_client("lambda", read_timeout=125), conf.leads_function_name)
    return StreamPublisher(event_bus(conf), fields=conf.lead_event_fields, reader=reader)
