"""PKCE (RFC 7636, S256) for the authorization flow, under its own key.

Bitrix24 documents only `client_id` and `state` on its authorize URL (docs/bitrix24-facts.md
F-OAUTH-1), so PKCE is a setting (PKCE_ENABLED), off until a portal is seen to honour it.

Nothing secret sits in the states table: the code_verifier is an HMAC of the raw state and the browser
nonce (neither stored) under a server-side key, so only this service, holding the browser's cookie,
can recompute it at the callback. The key is the stack's own PkceKeySecret, used for nothing else:
rotating the cursor-signing key no longer breaks authorizations in flight, and rotating this one breaks
at most those of the last STATE_TTL_SECONDS (docs/decisions/0005-pkce-key.md).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable

from b24connector import b64url

# Domain separation: the same bytes under another key use can never yield a verifier.
_VERIFIER_LABEL = "b24connector-pkce-verifier"


def derive_verifier(key: bytes, raw_state: str, browser_nonce: str) -> str:
    """The code_verifier of one authorization, derived instead of stored (43 chars, RFC 7636)."""
    if not key:
        raise ValueError("a PKCE derivation key is required")
    message = f"{_VERIFIER_LABEL}\0{raw_state}\0{browser_nonce}".encode()
    return b64url.encode(hmac.new(key, message, hashlib.sha256).digest())


def challenge(verifier: str) -> str:
    """The S256 code_challenge of a verifier (RFC 7636 section 4.2)."""
    return b64url.encode(hashlib.sha256(verifier.encode("ascii")).digest())


def verifier_source(key: Callable[[], bytes]) -> Callable[[str, str], str]:
    """The verifier of (raw state, browser nonce) under the key `key()` returns (read on each use)."""

    def verifier(raw_state: str, browser_nonce: str) -> str:
        return derive_verifier(key(), raw_state, browser_nonce)

    return verifier
