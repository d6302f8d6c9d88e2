"""Typed vault errors. Texts name the tenant and the reason only, never a token or ciphertext."""

from __future__ import annotations

from enum import StrEnum


class VaultError(Exception):
    """Base of every error raised by the token vault."""

    retryable = False


class PortalNotStored(VaultError):
    """No portal record for that member_id or domain."""


class GrantNeedsReauth(VaultError):
    """The portal is not active (needs_reauth or uninstalled): only a new install/authorization helps."""

    def __init__(self, member_id: str, health: str, *, reason: str | None = None) -> None:
        self.member_id = member_id
        self.health = health
        self.reason = reason  # the OAuth server's code when a refresh found the grant dead
        super().__init__(f"portal {member_id} is {health}; a new authorization is needed")


class GrantRefused(VaultError):
    """A grant of a lower rank tried to replace an active grant of a higher one; nothing was written."""

    def __init__(self, member_id: str, held_by: str, offered_by: str) -> None:
        self.member_id = member_id
        self.held_by = held_by
        self.offered_by = offered_by
        super().__init__(
            f"portal {member_id} keeps its {held_by} grant; a {offered_by} grant cannot replace it"
        )


class TokenDecryptError(VaultError):
    """The stored ciphertext does not decrypt with this key and tenant (moved row, wrong key, damage)."""

    def __init__(self, member_id: str, reason: str) -> None:
        self.member_id = member_id
        self.reason = reason
        super().__init__(f"token ciphertext of portal {member_id} could not be decrypted ({reason})")


class VaultUnavailable(VaultError):
    """DynamoDB, KMS or SQS failed in a way worth retrying later."""

    retryable = True


class RefreshUnavailable(VaultError):
    """The refresh could not be done now (OAuth server trouble, another worker failed); nothing changed."""

    retryable = True


class RefreshThrottled(VaultError):
    """A lazy refresh of this portal ran (or was tried) within LAZY_REFRESH_MIN_INTERVAL_SECONDS.

    The stored pair is the one just rejected, so the portal refuses fresh tokens: refreshing again on
    every read would only get the app blocked by Bitrix24 (docs/bitrix24-facts.md#f-oauth-11). `retry_after` is in seconds.
    """

    retryable = True

    def __init__(self, member_id: str, retry_after: int) -> None:
        self.member_id = member_id
        self.retry_after = retry_after
        super().__init__(f"portal {member_id} was refreshed moments ago; next refresh in {retry_after} s")


class RefreshUnsettled(RefreshUnavailable):
    """A refresh lease lapsed without being released: its outcome is unknown until the rescue window ends.

    The holder may have spent the refresh token and queued the new pair for rescue (DynamoDB refused its
    commit), or died. Spending the stored refresh token again could lose the chain, so nobody refreshes
    the portal until the rescue lands or RESCUE_WINDOW_SECONDS have passed. `retry_after` is in seconds.
    """

    def __init__(self, member_id: str, retry_after: int) -> None:
        self.member_id = member_id
        self.retry_after = retry_after
        super().__init__(
            f"the last token refresh of portal {member_id} has not settled; retry in {retry_after} s"
        )


class RefreshDeferred(VaultError):
    """A scheduled refresh failed after its request may have reached the token endpoint.

    The refresh token may be spent, so the portal is not tried again before MIN_REFRESH_INTERVAL_HOURS
    (its due time was moved out when the attempt started); retrying the message sooner cannot help.
    """


class RefreshRejected(VaultError):
    """The OAuth server rejected the app itself (invalid_client, bad request): an operator problem."""


class RefreshTimeout(VaultError):
    """Another worker held the refresh lease for longer than this caller could wait."""

    retryable = True


class NotEnoughTime(VaultError):
    """Too little invocation time is left to call the token endpoint and commit the answer safely."""

    retryable = True


class TokenRescueFailed(VaultError):
    """A refreshed pair could neither be committed nor queued for rescue; the portal was flagged."""


class StateRefusal(StrEnum):
    """Why an OAuth state was not accepted; the value is the callback's reason code."""

    MISSING = "state_missing"  # never issued, damaged, or already swept by the TTL
    EXPIRED = "state_expired"
    USED = "state_used"
    COOKIE_MISMATCH = "cookie_mismatch"  # another browser's nonce (or none)


class StateRefused(VaultError):
    """An OAuth state was refused; nothing was changed. `reason` says why."""

    def __init__(self, reason: StateRefusal) -> None:
        self.reason = reason
        super().__init__(f"OAuth state refused ({reason.value})")
