"""The full OAuth protocol (docs/bitrix24-facts.md F-OAUTH-1 to F-OAUTH-5): send the browser to the
portal, take the code back once.

CSRF and mix-up defences: a random `state` (stored hashed, single use, short-lived) bound to a random
browser nonce in a host-only cookie and to the portal the user named; the code is exchanged exactly
once, on the allow-listed OAuth server that `server_domain` names; the token answer must name the
same portal (`member_id`, `client_endpoint` host) as the callback before anything is stored.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

from b24connector import pkce
from b24connector.bitrix24.errors import (
    InvalidClient,
    MalformedTokenPayload,
    OAuthError,
    TransientError,
    UnsafeEndpoint,
)
from b24connector.credentials import ClientSecretNotSet, SecretUnavailable
from b24connector.identifiers import is_member_id
from b24connector.portals import InvalidPortal, PortalPolicy
from b24connector.problems import forbidden, invalid, unavailable, upstream_rejected
from b24connector.tokens import TokenSet
from b24connector.vault.errors import StateRefusal, StateRefused, VaultUnavailable

_MAX_PARAM = 512
# What the callback page says for each refused state (the reason code goes along as X-Reason-Code).
_REFUSAL_MESSAGES = {
    StateRefusal.MISSING: "This sign-in link is unknown. Please start again.",
    StateRefusal.EXPIRED: "The sign-in took too long. Please start again.",
    StateRefusal.USED: "This sign-in link was already used.",
    StateRefusal.COOKIE_MISMATCH: "This browser did not start this sign-in.",
}


class StateBook(Protocol):
    """Pending authorizations (vault.StateStore)."""

    def save(self, raw_state: str, browser_nonce: str, portal_domain: str) -> int:
        """Store hashes of a new state and nonce for `portal_domain`; return the expiry (Unix s)."""
        ...

    def consume(self, raw_state: str, browser_nonce: str) -> _Consumed:
        """Atomically mark a matching, unused, unexpired state used; else raise vault.StateRefused."""
        ...


class _Consumed(Protocol):
    @property
    def portal_domain(self) -> str: ...


class AuthorizationServer(Protocol):
    """The OAuth client as this flow needs it (bitrix24.oauth.OAuthClient)."""

    def authorize_url(self, portal_host: str, state: str, *, code_challenge: str | None = None) -> str:
        """The portal's consent URL."""
        ...

    def resolve_server(self, hint: str | None) -> str:
        """The allow-listed OAuth server base URL a hint names; raise UnsafeEndpoint otherwise."""
        ...

    def exchange_code(
        self, code: str, *, server_hint: str | None = None, code_verifier: str | None = None
    ) -> TokenSet:
        """One code exchange, never retried."""
        ...


class _GrantOutcome(Protocol):
    @property
    def stored(self) -> bool: ...


class GrantKeeper(Protocol):
    """Decides whose grant a portal keeps and stores it (install.Installer.store_authorized)."""

    def store_authorized(self, tokens: TokenSet, domain: str) -> _GrantOutcome:
        """Store the pair unless an active grant of a higher rank holds the portal."""
        ...


@dataclass(frozen=True, slots=True)
class AuthorizationStart:
    """Where to send the browser, and the nonce its cookie must carry back."""

    redirect_url: str
    browser_nonce: str = ""
    max_age: int = 0

    def __repr__(self) -> str:
        return f"AuthorizationStart(max_age={self.max_age})"


@dataclass(frozen=True, slots=True)
class CallbackParams:
    """What Bitrix24 appends to the redirect URI (docs/bitrix24-facts.md F-OAUTH-3)."""

    code: str
    state: str
    domain: str
    member_id: str
    server_domain: str | None = None
    scope: str | None = None

    def __repr__(self) -> str:
        return f"CallbackParams(domain={self.domain!r}, member_id={self.member_id!r})"


@dataclass(frozen=True, slots=True)
class Connected:
    """A portal whose grant was stored."""

    domain: str
    member_id: str


class AuthorizationFlow:
    """Start and finish an authorization; every refusal is a Problem and changes nothing stored."""

    def __init__(
        self,
        policy: PortalPolicy,
        states: StateBook,
        server: AuthorizationServer,
        grants: GrantKeeper,
        *,
        ttl_seconds: int,
        pkce_verifier: Callable[[str, str], str] | None = None,
        token_urlsafe: Callable[[int], str] = secrets.token_urlsafe,
    ) -> None:
        self._policy = policy
        self._states = states
        self._server = server
        self._grants = grants
        self._ttl = ttl_seconds
        # PKCE is a setting (docs/bitrix24-facts.md F-OAUTH-1 documents no PKCE); the verifier is
        # derived from the state and nonce under its own key (b24connector.pkce), never stored.
        self._pkce_verifier = pkce_verifier
        self._token_urlsafe = token_urlsafe

    def start(self, raw_domain: str | None) -> AuthorizationStart:
        """Validate the portal, store a fresh state, and build the consent URL."""
        if raw_domain is None or raw_domain == "":
            raise invalid("domain_missing", "Enter the address of your Bitrix24 portal.")
        portal = self._normalize(raw_domain, "domain_invalid")
        state = self._token_urlsafe(32)
        nonce = self._token_urlsafe(32)
        challenge = pkce.challenge(self._pkce_verifier(state, nonce)) if self._pkce_verifier else None
        try:
            self._states.save(state, nonce, portal)
        except VaultUnavailable:
            raise unavailable("storage_unavailable", "Please try again in a moment.") from None
        url = self._server.authorize_url(portal, state, code_challenge=challenge)
        return AuthorizationStart(redirect_url=url, browser_nonce=nonce, max_age=self._ttl)

    def complete(self, params: CallbackParams, browser_nonce: str | None) -> Connected:
        """Check the callback against its state, exchange the code once, and store the grant."""
        domain, server, nonce = self._checked_callback(params, browser_nonce)
        consumed = self._consume(params.state, nonce)
        if consumed.portal_domain != domain:
            raise invalid("domain_mismatch", "The portal differs from the one the sign-in started with.")
        verifier = self._pkce_verifier(params.state, nonce) if self._pkce_verifier else None
        grant = self._verified_grant(self._exchange(params.code, server, verifier), params, domain, server)
        outcome = self._grants.store_authorized(grant, domain)
        if not outcome.stored:
            # An administrator or the app's system user holds the portal: an employee cannot take it over.
            raise forbidden(
                "administrator_required",
                "This portal is connected by its administrator. Only an administrator can connect it again.",
            )
        return Connected(domain=domain, member_id=grant.member_id)

    def _checked_callback(self, params: CallbackParams, browser_nonce: str | None) -> tuple[str, str, str]:
        """The callback's portal domain, OAuth server and browser nonce, once every parameter passes."""
        for value, name in (
            (params.state, "state"),
            (params.code, "code"),
            (params.domain, "domain"),
            (params.member_id, "member_id"),
        ):
            _check_param(value, name)
        domain = self._normalize(params.domain, "domain_invalid")
        if not is_member_id(params.member_id):
            raise invalid("member_id_invalid", "The portal identifier is malformed.")
        try:
            server = self._server.resolve_server(params.server_domain)
        except UnsafeEndpoint:
            raise invalid("server_not_allowed", "The authorization server is not one we trust.") from None
        if not browser_nonce:
            raise invalid("cookie_missing", "This browser did not start the sign-in (or it took too long).")
        if len(browser_nonce) > _MAX_PARAM or not browser_nonce.isascii() or not browser_nonce.isprintable():
            # Not a nonce we minted (and not hashable as UTF-8 if it holds a lone surrogate).
            raise invalid("cookie_mismatch", "This browser did not start this sign-in.")
        return domain, server, browser_nonce

    def _verified_grant(self, tokens: TokenSet, params: CallbackParams, domain: str, server: str) -> TokenSet:
        """The exchanged pair with the endpoints we verified, not the ones the answer claimed."""
        if tokens.member_id != params.member_id:
            raise invalid("member_mismatch", "The token answer names another portal.")
        try:
            client_endpoint = self._policy.check_client_endpoint(tokens.client_endpoint, domain)
        except InvalidPortal:
            raise invalid("endpoint_mismatch", "The token answer points at another portal.") from None
        return replace(tokens, client_endpoint=client_endpoint, server_endpoint=f"{server}/rest/")

    def _normalize(self, raw: str, reason: str) -> str:
        try:
            return self._policy.normalize(raw)
        except InvalidPortal as exc:
            raise invalid(reason, f"This is not an allowed Bitrix24 portal address ({exc.reason}).") from None

    def _consume(self, state: str, nonce: str) -> _Consumed:
        try:
            return self._states.consume(state, nonce)
        except StateRefused as refused:
            reason = refused.reason
        except VaultUnavailable:
            raise unavailable("storage_unavailable", "Please start the sign-in again.") from None
        raise invalid(reason.value, _REFUSAL_MESSAGES[reason])

    def _exchange(self, code: str, server: str, verifier: str | None) -> TokenSet:
        try:
            return self._server.exchange_code(code, server_hint=server, code_verifier=verifier)
        except TransientError:
            raise unavailable("oauth_unavailable", "Bitrix24 did not answer. Please start again.") from None
        except ClientSecretNotSet:
            # The operator has not run `make put-secret` yet: the code is never sent with a wrong secret.
            raise unavailable(
                "client_secret_not_set",
                "This connector is not set up yet: its client secret has not been stored. "
                "Please ask its administrator, then start again.",
            ) from None
        except SecretUnavailable:
            # Secrets Manager is down: an outage, not a bug; the code was not sent, but the state is spent.
            raise unavailable("secret_unavailable", "Please try again in a moment and start again.") from None
        except MalformedTokenPayload:
            raise upstream_rejected("token_answer_malformed", "Bitrix24 answered without tokens.") from None
        except InvalidClient:
            raise upstream_rejected(
                "client_rejected", "Bitrix24 does not accept this app's credentials."
            ) from None
        except OAuthError:
            raise invalid("code_rejected", "Bitrix24 refused the sign-in code. Please start again.") from None


def _check_param(value: str, name: str) -> None:
    if not value:
        raise invalid(f"{name}_missing", f"The callback has no {name}.")
    if len(value) > _MAX_PARAM or not value.isascii() or not value.isprintable():
        raise invalid(f"{name}_invalid", f"The callback's {name} is malformed.")
