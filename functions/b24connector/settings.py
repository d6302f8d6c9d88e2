"""Typed settings read once from the environment; a bad or missing variable fails fast, by name."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import TypeVar

T = TypeVar("T")

# Bitrix24 cloud account zones, each checked in docs/bitrix24-facts.md#f-host-7 (self-hosted portals are
# allowed by explicit host instead). Not `.bitrix24.site`: it hosts published landing pages (F-HOST-5).
DEFAULT_PORTAL_SUFFIXES = (
    ".bitrix24.com", ".bitrix24.de", ".bitrix24.eu", ".bitrix24.es", ".bitrix24.fr", ".bitrix24.it",
    ".bitrix24.pl", ".bitrix24.uk", ".bitrix24.in", ".bitrix24.jp", ".bitrix24.cn", ".bitrix24.com.br",
    ".bitrix24.com.tr", ".bitrix24.id", ".bitrix24.vn", ".bitrix24.kz", ".bitrix24.by", ".bitrix24.ru",
    ".bitrix24.ua", ".bitrix24.co", ".bitrix24.mx",
)  # fmt: skip
DEFAULT_OAUTH_SERVERS = ("https://oauth.bitrix.info", "https://oauth.bitrix24.tech")


class ConfigError(RuntimeError):
    """A required environment variable is missing or malformed."""


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the functions read from their environment (names and ARNs only, never secrets)."""

    app_env: str  # "prod" refuses LOCAL_MODE (plain http to loopback must never be on in production)
    client_id: str
    client_secret_id: str  # Secrets Manager name or ARN of the Bitrix24 client secret
    cursor_secret_id: str  # Secrets Manager name or ARN of the lead-cursor signing key
    secret_max_age_seconds: int
    portals_table: str
    states_table: str
    rate_limit_table: str
    token_key_id: str  # KMS key (ARN, id or alias) for token ciphertext
    refresh_queue_url: str
    rescue_queue_url: str
    lifecycle_queue_url: str  # LifecycleQueue: install events and follow-up work, applied asynchronously
    events_url: str  # the stack's public POST /events URL, bound with event.bind (LifecycleFunction)
    bound_events: tuple[str, ...]  # events every portal must have bound to events_url
    lead_events: tuple[str, ...]  # CRM lead events bound next to bound_events and published as Lead*
    event_bus_name: str  # the stack's EventBridge bus the Portal*/Lead* events go to
    lead_events_table: (
        str  # LeadEventsTable: one item per accepted delivery (dedup key, TTL; its stream publishes)
    )
    lead_event_dedup_seconds: int  # how long a delivery's key suppresses its duplicates
    lead_event_fields: tuple[
        str, ...
    ]  # lead fields added to LeadCreated/LeadUpdated ("" = none: no REST calls)
    leads_function_name: str  # LeadsFunction, which reads those fields through the shared pacer
    allowed_portal_suffixes: tuple[str, ...]
    allowed_portal_hosts: tuple[str, ...]
    oauth_servers: tuple[str, ...]  # base URLs, e.g. https://oauth.bitrix.info; the first is the default
    refresh_after_days: int
    min_refresh_interval_hours: int
    lazy_refresh_min_interval_seconds: float  # one on-demand (expired_token) refresh per portal per this
    rescue_window_seconds: float  # how long a lapsed, never-released refresh lease blocks refreshes
    due_index_shards: int
    state_ttl_seconds: int
    pkce_enabled: bool
    pkce_secret_id: str  # Secrets Manager name or ARN of the PKCE verifier key; required with PKCE on
    success_redirect_url: str
    install_finish_script_url: str
    rate_limit_per_second: float
    rate_limit_burst: int
    rate_limit_shared: bool  # pace a portal's requests through the RateLimitTable (all instances share)
    http_timeout_seconds: float
    local_mode: bool  # allows plain http to loopback hosts (the local stack); never on in AWS
    state_cookie_name: str


def _csv(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError("expected true or false")


def _positive(kind: Callable[[str], T]) -> Callable[[str], T]:
    def parse(value: str) -> T:
        parsed = kind(value)
        if not parsed > 0:  # type: ignore[operator]
            raise ValueError("must be positive")
        return parsed

    return parse


class _Reader:
    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    def get(self, name: str, parse: Callable[[str], T], default: str | None = None) -> T:
        raw = self.env.get(name)
        if raw is None or (raw == "" and default is not None):
            if default is None:
                raise ConfigError(f"environment variable {name} is required but not set")
            raw = default
        try:
            return parse(raw)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"environment variable {name} is invalid: {exc}") from None

    def required(self, name: str) -> str:
        return self.get(name, _nonempty)


def _nonempty(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value.strip()


def _oauth_servers(value: str) -> tuple[str, ...]:
    servers = tuple(s.rstrip("/") for s in _csv(value))
    if not servers:
        raise ValueError("at least one OAuth server base URL is needed")
    for server in servers:
        if not server.startswith(("https://", "http://")):
            raise ValueError(f"{server!r} is not an http(s) base URL")
    return servers


def _event_names(value: str) -> tuple[str, ...]:
    names = tuple(name.upper() for name in _csv(value))
    for name in names:
        if not name.isascii() or not name.replace("_", "").isalnum() or len(name) > 64:
            raise ValueError(f"{name!r} is not a Bitrix24 event name")
    if "ONAPPUNINSTALL" not in names:
        raise ValueError("ONAPPUNINSTALL must be bound: it is the only way uninstalls reach the connector")
    return names


# The CRM lead events the connector can publish (docs/bitrix24-facts.md#f-events-8).
LEAD_EVENT_NAMES = ("ONCRMLEADADD", "ONCRMLEADUPDATE", "ONCRMLEADDELETE")


def _lead_event_names(value: str) -> tuple[str, ...]:
    if value.strip().upper() == "NONE":
        return ()  # an empty variable means the default, so "none" is how lead events are switched off
    names = tuple(dict.fromkeys(name.upper() for name in _csv(value)))
    unknown = [name for name in names if name not in LEAD_EVENT_NAMES]
    if unknown:
        raise ValueError(f"{unknown[0]!r} is not one of {', '.join(LEAD_EVENT_NAMES)}")
    return names


def _field_names(value: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(_csv(value)))
    for name in names:
        if not name.isascii() or not name.replace("_", "").isalnum() or len(name) > 64 or name[0].isdigit():
            raise ValueError(f"{name!r} is not a lead field name")
    return names


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Parse and validate the environment into Settings; raise ConfigError naming the bad variable."""
    read = _Reader(os.environ if env is None else env)
    settings = Settings(
        app_env=read.get("APP_ENV", _nonempty, "dev"),
        client_id=read.required("BITRIX24_CLIENT_ID"),
        client_secret_id=read.required("CLIENT_SECRET_ID"),
        cursor_secret_id=read.required("CURSOR_SECRET_ID"),
        secret_max_age_seconds=read.get("SECRET_MAX_AGE_SECONDS", _positive(int), "300"),
        portals_table=read.required("PORTALS_TABLE"),
        states_table=read.required("STATES_TABLE"),
        rate_limit_table=read.required("RATE_LIMIT_TABLE"),
        token_key_id=read.required("TOKEN_KEY_ID"),
        refresh_queue_url=read.required("REFRESH_QUEUE_URL"),
        rescue_queue_url=read.required("RESCUE_QUEUE_URL"),
        lifecycle_queue_url=read.required("LIFECYCLE_QUEUE_URL"),
        events_url=read.get("EVENTS_URL", str, ""),
        # ONAPPUNINSTALL reaches an app only through event.bind (docs/bitrix24-facts.md#f-app-3).
        bound_events=read.get("BOUND_EVENTS", _event_names, "ONAPPUNINSTALL"),
        # Bound with event.bind next to BOUND_EVENTS after every grant; "none" binds and publishes none.
        lead_events=read.get("LEAD_EVENTS", _lead_event_names, ",".join(LEAD_EVENT_NAMES)),
        event_bus_name=read.get("EVENT_BUS_NAME", str, ""),
        lead_events_table=read.get("LEAD_EVENTS_TABLE", str, ""),
        # Bitrix24 sends one event to every bound row (docs/bitrix24-facts.md#f-events-9); copies arrive
        # within seconds. A day also absorbs a replayed capture.
        lead_event_dedup_seconds=read.get("LEAD_EVENT_DEDUP_SECONDS", _positive(int), "86400"),
        lead_event_fields=read.get("LEAD_EVENT_FIELDS", _field_names, ""),
        leads_function_name=read.get("LEADS_FUNCTION_NAME", str, ""),
        allowed_portal_suffixes=read.get("ALLOWED_PORTAL_SUFFIXES", _csv, ",".join(DEFAULT_PORTAL_SUFFIXES)),
        allowed_portal_hosts=read.get("ALLOWED_PORTAL_HOSTS", _csv, ""),
        oauth_servers=read.get("OAUTH_SERVERS", _oauth_servers, ",".join(DEFAULT_OAUTH_SERVERS)),
        # 21 days: safe even under the historical 28-day refresh-token lifetime (docs/bitrix24-facts.md#f-oauth-11), and
        # far from the hourly/daily refreshing that Bitrix24 says gets apps blocked (2.7).
        refresh_after_days=read.get("REFRESH_AFTER_DAYS", _positive(int), "21"),
        min_refresh_interval_hours=read.get("MIN_REFRESH_INTERVAL_HOURS", _positive(int), "24"),
        # A portal that answers expired_token to every fresh pair must not make us refresh on every read:
        # Bitrix24 blocks apps that refresh too often (docs/bitrix24-facts.md#f-oauth-11).
        lazy_refresh_min_interval_seconds=read.get(
            "LAZY_REFRESH_MIN_INTERVAL_SECONDS", _positive(float), "300"
        ),
        # A refresh lease that lapsed without being released may mean a spent refresh token whose new
        # pair waits in TokenRescueQueue: no refresh of that portal until the rescue's worst case is over
        # (the template keeps this >= the queue's maxReceiveCount x VisibilityTimeout).
        rescue_window_seconds=read.get("RESCUE_WINDOW_SECONDS", _positive(float), "900"),
        due_index_shards=read.get("DUE_INDEX_SHARDS", _positive(int), "16"),
        state_ttl_seconds=read.get("STATE_TTL_SECONDS", _positive(int), "600"),
        pkce_enabled=read.get("PKCE_ENABLED", _bool, "false"),
        pkce_secret_id=read.get("PKCE_SECRET_ID", str, "").strip(),
        success_redirect_url=read.get("SUCCESS_REDIRECT_URL", str, ""),
        install_finish_script_url=read.get(
            "INSTALL_FINISH_SCRIPT_URL", _nonempty, "//api.bitrix24.com/api/v1/"
        ),
        rate_limit_per_second=read.get("RATE_LIMIT_PER_SECOND", _positive(float), "2"),
        rate_limit_burst=read.get("RATE_LIMIT_BURST", _positive(int), "50"),
        rate_limit_shared=read.get("RATE_LIMIT_SHARED", _bool, "true"),
        http_timeout_seconds=read.get("HTTP_TIMEOUT_SECONDS", _positive(float), "10"),
        local_mode=read.get("LOCAL_MODE", _bool, "false"),
        state_cookie_name=read.get("STATE_COOKIE_NAME", _nonempty, "__Host-b24-oauth"),
    )
    if settings.state_ttl_seconds > 600:
        raise ConfigError("environment variable STATE_TTL_SECONDS is invalid: at most 600 seconds")
    if settings.pkce_enabled and not settings.pkce_secret_id:
        # PKCE derives its verifier under its own key (b24connector/pkce.py), never the cursor key.
        raise ConfigError(
            "environment variable PKCE_SECRET_ID is invalid: required when PKCE_ENABLED is true"
        )
    if settings.app_env == "prod" and settings.local_mode:
        # LOCAL_MODE allows plain http to loopback hosts: a production stack must never run with it.
        raise ConfigError("environment variable LOCAL_MODE is invalid: never true when APP_ENV is prod")
    return settings


@cache
def get_settings() -> Settings:
    """The process-wide settings, parsed on first use."""
    return load_settings()
