"""The contract's error answers, and the one map from Bitrix24 and vault failures to them."""

from __future__ import annotations

from typing import Any

from b24connector.bitrix24.errors import (
    AuthServerUnavailable,
    Bitrix24Error,
    DeadlineExceeded,
    InvalidClient,
    InvalidGrant,
    InvalidToken,
    NotInstalled,
    OperationTimeLimit,
    OverloadLimit,
    PaymentRequired,
    PortalDeleted,
    QueryLimitExceeded,
    RequestTooLarge,
    TransientError,
    UnknownAuthError,
)
from b24connector.vault.errors import (
    GrantNeedsReauth,
    PortalNotStored,
    RefreshThrottled,
    RefreshUnsettled,
    TokenDecryptError,
    VaultError,
)

INVALID_REQUEST = "INVALID_REQUEST"
PORTAL_NOT_FOUND = "PORTAL_NOT_FOUND"
REAUTH_REQUIRED = "REAUTH_REQUIRED"
RATE_LIMITED = "RATE_LIMITED"
UPSTREAM_ERROR = "UPSTREAM_ERROR"


class LeadsRefusal(Exception):
    """An expected failure answered as `{"error": {"code", "message"}}`; the message is caller-safe."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(f"{code}: {message}")

    def answer(self) -> dict[str, Any]:
        """The error answer of the contract."""
        return {"error": {"code": self.code, "message": self.message}}


def invalid(message: str) -> LeadsRefusal:
    """An INVALID_REQUEST error with a caller-safe message."""
    return LeadsRefusal(INVALID_REQUEST, message)


# Which Bitrix24 errors tell the caller to have the portal connected again: docs/bitrix24-errors.md.
_REAUTH_ERRORS = (InvalidGrant, InvalidToken, NotInstalled, PaymentRequired, InvalidClient, PortalDeleted)
_RATE_ERRORS = (QueryLimitExceeded, OperationTimeLimit, OverloadLimit)


def resumable(exc: Bitrix24Error | VaultError) -> bool:
    """True when the rows read before `exc` are still worth answering with a cursor."""
    if isinstance(exc, VaultError):
        return exc.retryable
    return isinstance(exc, TransientError | OperationTimeLimit | DeadlineExceeded)


def error_for(exc: Bitrix24Error | VaultError) -> LeadsRefusal:
    """The contract's error for a Bitrix24 or vault failure."""
    if isinstance(exc, VaultError):
        return _vault_error(exc)
    if isinstance(exc, RequestTooLarge):
        return invalid("the query is too large to send to Bitrix24")
    if isinstance(exc, _REAUTH_ERRORS):
        return LeadsRefusal(REAUTH_REQUIRED, f"Bitrix24 no longer accepts this portal's grant ({exc.code})")
    if isinstance(exc, _RATE_ERRORS) or exc.code == "CLIENT_RATE_LIMIT":
        return LeadsRefusal(RATE_LIMITED, f"Bitrix24 rate limits were reached ({exc.code}); retry later")
    return LeadsRefusal(UPSTREAM_ERROR, _upstream_message(exc))


def _upstream_message(exc: Bitrix24Error) -> str:
    if isinstance(exc, DeadlineExceeded):
        return "Bitrix24 did not answer within the time budget"
    if isinstance(exc, AuthServerUnavailable):
        return f"Bitrix24 could not check the grant with its OAuth server ({exc.code}); retry later"
    if isinstance(exc, UnknownAuthError):
        return f"Bitrix24 refused the request with an unknown code ({exc.code})"
    return f"Bitrix24 failed ({exc.code})"


def _vault_error(exc: VaultError) -> LeadsRefusal:
    if isinstance(exc, PortalNotStored):
        return LeadsRefusal(PORTAL_NOT_FOUND, "no connected portal with that member_id or domain")
    if isinstance(exc, GrantNeedsReauth | TokenDecryptError):
        return LeadsRefusal(REAUTH_REQUIRED, "the portal must be installed or authorized again")
    if isinstance(exc, RefreshThrottled):
        # Our own limit, kept so Bitrix24 does not block the app: a rate limit to the caller.
        return LeadsRefusal(
            RATE_LIMITED,
            "Bitrix24 rejected the portal's freshly refreshed token; the connector refreshes a portal "
            f"at most once per interval, retry in {exc.retry_after} s",
        )
    if isinstance(exc, RefreshUnsettled):
        # Not REAUTH_REQUIRED: the grant is most likely alive, its new pair on the way from the rescue queue.
        return LeadsRefusal(
            UPSTREAM_ERROR,
            "the portal's last token refresh has not settled yet (its new pair is being recovered); "
            f"retry in {exc.retry_after} s",
        )
    return LeadsRefusal(UPSTREAM_ERROR, "the token vault is unavailable right now; retry later")
