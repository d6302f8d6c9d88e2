"""Settings of the emulated portal, its OAuth server and the modeled server cost."""

from __future__ import annotations

import dataclasses
import secrets
import string
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from bitrix24_emulator.tokens import new_secret

RatePlan = Literal["standard", "enterprise", "off"]
MissingReference = Literal["parent", "empty", "keep", "error"]
EmptyFilterValue = Literal["ignore", "match_none"]
BatchBlockedMethod = Literal["http_429", "sub_error"]
TokenResponseDomain = Literal["oauth_server", "portal"]
AppInfoInvalidToken = Literal["invalid_token", "invalid_client"]
StartPastEnd = Literal["last_page", "empty"]
AppMode = Literal["ui", "api_only"]
InstallPageFields = Literal["legacy", "2026"]

# Bitrix24's published plan figures: drain per second and bucket size ([EN] limits.md).
RATE_PLANS: dict[str, tuple[float, int]] = {"standard": (2.0, 50), "enterprise": (5.0, 250)}

# 49.9 s with COUNT vs 0.097 s with start=-1 on 2,387,743 rows ([EN] huge-data.md) ~ 20.9 us per row.
DEFAULT_COUNT_COST_PER_ROW = 20.9e-6

_LITERAL_CHOICES: dict[str, tuple[str, ...]] = {
    "rate_plan": get_args(RatePlan),
    "batch_missing_reference": get_args(MissingReference),
    "empty_filter_value": get_args(EmptyFilterValue),
    "batch_blocked_method": get_args(BatchBlockedMethod),
    "token_response_domain": get_args(TokenResponseDomain),
    "app_info_invalid_token": get_args(AppInfoInvalidToken),
    "start_past_end": get_args(StartPastEnd),
    "app_mode": get_args(AppMode),
    "install_page_fields": get_args(InstallPageFields),
}

# Settings that may change while the emulator runs (identity, ports and seeding may not).
RUNTIME_SETTINGS = frozenset(
    {
        "redirect_uri",
        "scope",
        "app_status",
        "latency_seconds",
        "time_scale",
        "rate_plan",
        "rate_drain_per_second",
        "rate_burst",
        "operating_limit_seconds",
        "base_cost_seconds",
        "count_cost_per_row",
        "code_lifetime_seconds",
        "access_lifetime_seconds",
        "refresh_lifetime_seconds",
        "invalidate_access_on_refresh",
        "token_response_domain",
        "app_info_invalid_token",
        "batch_missing_reference",
        "empty_filter_value",
        "batch_blocked_method",
        "start_past_end",
        "portal_deleted_status",
        "install_timeout_seconds",
        "operating_min_seconds",
        "app_mode",
        "market_app",
        "install_url",
        "install_page_fields",
        "consent_form",
        "token_check_cache_seconds",
        "event_bind_requires_admin",
        "system_user_admin",
        "event_timeout_seconds",
        "error_time_block",
    }
)


def _random_client_id() -> str:
    # Local apps look like local.<14 hex>.<8 digits> (docs/bitrix24-facts.md#f-oauth-1).
    return f"local.{secrets.token_hex(7)}.{secrets.randbelow(10**8):08d}"


def _random_client_secret() -> str:
    return new_secret(50, string.ascii_letters + string.digits)


def _random_member_id() -> str:
    return secrets.token_hex(16)


@dataclass
class EmulatorConfig:
    """Everything that shapes the emulator; UNVERIFIED protocol points are settings with strict defaults."""

    host: str = "127.0.0.1"
    portal_port: int = 0
    oauth_port: int = 0
    # The app registered on the portal.
    client_id: str = field(default_factory=_random_client_id)
    client_secret: str = field(default_factory=_random_client_secret, repr=False)
    redirect_uri: str = ""
    scope: str = "crm,user"
    app_status: str = "L"
    member_id: str = field(default_factory=_random_member_id)
    # The default acting user (consent, direct token issue, installs): user 1, the portal administrator.
    # Users 2 and 3 are employees without administrator rights (see users.py).
    user_id: int = 1
    # The app's system user (Market apps, ONAPPUSERREADY); the docs' sample uses 512.
    system_user_id: int = 512
    # UNVERIFIED (F-USER-3) whether an app's system user passes `user.admin`; strictest reading: it does not.
    system_user_admin: bool = False
    # App kind (docs/bitrix24-facts.md F-APP-1, F-APP-2): "ui" apps get NO ONAPPINSTALL, only the
    # install page in the portal's frame; "api_only" apps get ONAPPINSTALL posted to `install_url`.
    app_mode: AppMode = "ui"
    # Market apps also get ONAPPUSERREADY on `install_url` after the install finishes; local apps do not.
    market_app: bool = False
    # The URL registered in the app card ("Your handler path"); bound only for ONAPPINSTALL (api_only)
    # and ONAPPUSERREADY (market_app). Every other event needs event.bind.
    install_url: str = ""
    # The frame POST of the install page (F-APP-5, F-APP-6a UNVERIFIED): "legacy" (no SERVER_ENDPOINT,
    # APPLICATION_TOKEN, APPLICATION_SCOPE) or "2026" (newer cloud portals add those three).
    install_page_fields: InstallPageFields = "legacy"
    # rest.authorize redirects a logged-in user at once (F-OAUTH-2); true restores a one-<form> consent page.
    consent_form: bool = False
    # The portal caches a token check (F-AUTH-3: up to 3600 s); within that time a refreshed-away
    # or uninstalled-app access token keeps working on the portal (not on the OAuth server). 0 = strict.
    token_check_cache_seconds: float = 0.0
    # F-BIND-2: any user may event.bind for themselves; true refuses non-admins (stricter than the server).
    event_bind_requires_admin: bool = False
    # How long the portal waits for an event handler's answer (delivered once, never retried).
    event_timeout_seconds: float = 10.0
    language: str = "en"
    # Portal time zone as Bitrix24 prints it in dates.
    utc_offset: str = "+03:00"
    # Synthetic CRM data.
    leads: int = 10_000
    seed: int = 1
    deleted_ratio: float = 0.1
    # Token lifetimes ([EN] settings/oauth/index.md, auto-renewal.md).
    code_lifetime_seconds: float = 30.0
    access_lifetime_seconds: int = 3600
    refresh_lifetime_seconds: int = 180 * 86400
    # UNVERIFIED: old docs say the access token issued with a used refresh token dies with it.
    invalidate_access_on_refresh: bool = True
    # CONFLICT: docs say the token response `domain` is the OAuth server; a 2021 log shows the portal.
    token_response_domain: TokenResponseDomain = "oauth_server"
    # b24pysdk says the OAuth server's app.info may answer 400 invalid_client for a bad token.
    app_info_invalid_token: AppInfoInvalidToken = "invalid_token"
    # Leaky bucket; the explicit numbers override the plan when set.
    rate_plan: RatePlan = "standard"
    rate_drain_per_second: float | None = None
    rate_burst: int | None = None
    # Error answers carry no `time` block on the real server (F-REST-2, 429 included). true restores the older
    # reading: errors with `time`, a 429's `operating_reset_at` = when the method unblocks.
    error_time_block: bool = False
    # Operating (resource) limit per method per app over 10 one-minute buckets; 0 disables it.
    # LoadLimiter (F-LIMIT-2): 420 s by default (cloud: a feature variable); calls under 0.1 s are not counted.
    operating_limit_seconds: float = 420.0
    operating_min_seconds: float = 0.1
    operating_window_minutes: int = 10
    # Modeled server cost.
    base_cost_seconds: float = 0.005
    count_cost_per_row: float = DEFAULT_COUNT_COST_PER_ROW
    # Real delays: fixed latency per request, and modeled seconds x time_scale (0 = no modeled delay).
    latency_seconds: float = 0.0
    time_scale: float = 0.0
    # batch: a reference to a missing row substitutes its parent array (F-BATCH-3);
    # "empty" / "keep" / "error" are the older readings, kept as switches.
    batch_max_commands: int = 50
    batch_missing_reference: MissingReference = "parent"
    # UNVERIFIED: how a list filter treats an empty value such as `>ID=""` (ignore = condition dropped).
    empty_filter_value: EmptyFilterValue = "ignore"
    # batch is exempt from the operating limiter (F-LIMIT-3): a blocked sub-call fails inside result_error (sub_error);
    # http_429 (the whole batch refused) is the older reading, kept as a switch.
    batch_blocked_method: BatchBlockedMethod = "sub_error"
    # UNVERIFIED (CDBResult navigation as we read it): crm.lead.list with a start past the end
    # answers the last page again instead of an empty one.
    start_past_end: StartPastEnd = "last_page"
    # CONFLICT: PORTAL_DELETED is 500 in the docs, 410 in b24pysdk.
    portal_deleted_status: int = 500
    # The app counts as installed at start (an already installed app); install page sends reset it.
    installed: bool = True
    install_timeout_seconds: float = 10.0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError when a setting is out of range or not one of its allowed words."""
        for name, choices in _LITERAL_CHOICES.items():
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {', '.join(choices)}")
        non_negative = (
            "latency_seconds",
            "time_scale",
            "operating_limit_seconds",
            "base_cost_seconds",
            "count_cost_per_row",
            "code_lifetime_seconds",
            "deleted_ratio",
            "install_timeout_seconds",
            "operating_min_seconds",
            "token_check_cache_seconds",
            "event_timeout_seconds",
        )
        for name in non_negative:
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        self._validate_ranges()

    def _validate_ranges(self) -> None:
        """Raise ValueError when a bounded setting is outside its range."""
        if not 0 <= self.deleted_ratio < 1:
            raise ValueError("deleted_ratio must be in [0, 1)")
        if self.leads < 0:
            raise ValueError("leads must not be negative")
        if self.rate_drain_per_second is not None and self.rate_drain_per_second <= 0:
            raise ValueError("rate_drain_per_second must be positive")
        if self.rate_burst is not None and self.rate_burst < 1:
            raise ValueError("rate_burst must be at least 1")
        if self.batch_max_commands < 1 or self.operating_window_minutes < 1:
            raise ValueError("batch_max_commands and operating_window_minutes must be at least 1")
        if self.install_url and not self.install_url.startswith(("http://", "https://")):
            raise ValueError("install_url must be an absolute http(s) URL or empty")
        if self.user_id < 1 or self.system_user_id < 1:
            raise ValueError("user_id and system_user_id must be positive")
        if self.portal_deleted_status not in (410, 500):
            raise ValueError("portal_deleted_status must be 410 or 500")

    def rate_limits(self) -> tuple[float, int] | None:
        """The leaky bucket's (drain per second, burst), or None when rate limiting is off."""
        if self.rate_plan == "off":
            return None
        drain, burst = RATE_PLANS[self.rate_plan]
        return (self.rate_drain_per_second or drain, self.rate_burst or burst)

    def public_view(self) -> dict[str, Any]:
        """All settings except the client secret, as JSON-ready values."""
        view = dataclasses.asdict(self)
        view.pop("client_secret")
        return view

    def apply(self, changes: dict[str, Any]) -> dict[str, Any]:
        """Apply runtime changes (validated as a whole); return the public view. Raises ValueError."""
        unknown = sorted(set(changes) - RUNTIME_SETTINGS)
        if unknown:
            raise ValueError(f"not changeable at runtime: {', '.join(unknown)}")
        candidate = dataclasses.replace(self)
        for name, value in changes.items():
            setattr(candidate, name, _coerce(name, getattr(self, name), value))
        candidate.validate()
        for name in changes:
            setattr(self, name, getattr(candidate, name))
        return self.public_view()


def _coerce(name: str, current: Any, value: Any) -> Any:
    optional_numbers = {"rate_drain_per_second": float, "rate_burst": int}
    if name in optional_numbers:
        if value is None:
            return None
        return _number(name, value, optional_numbers[name])
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false")
        return value
    if isinstance(current, int):
        return _number(name, value, int)
    if isinstance(current, float):
        return _number(name, value, float)
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string")
    return value


def _number(name: str, value: Any, kind: type[int] | type[float]) -> int | float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number")
    if kind is int:
        if float(value) != int(value):
            raise ValueError(f"{name} must be a whole number")
        return int(value)
    return float(value)
