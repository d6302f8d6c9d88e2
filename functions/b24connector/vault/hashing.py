"""What the vault stores instead of a secret: SHA-256 verifiers of random values and grant digests."""

from __future__ import annotations

import hashlib

from b24connector.tokens import TokenSet


def hash_secret(value: str) -> str:
    """SHA-256 hex of a random secret (OAuth state, browser nonce, application_token): what is stored instead.

    Unsalted is enough because every such value is random with 128+ bits: there is no dictionary to try.
    """
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def grant_digest(tokens: TokenSet) -> str:
    """A short digest of a token pair that recognises a replayed install/callback payload without decrypting.

    A truncated hash of two random tokens reveals nothing usable and is not a token.
    """
    material = f"b24connector-grant\0{tokens.access_token}\0{tokens.refresh_token}"
    return hashlib.sha256(material.encode("utf-8")).hexdigest()[:32]
