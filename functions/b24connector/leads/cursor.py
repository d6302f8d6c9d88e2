"""The cursor codec: opaque, tamper-evident positions in one tenant's query.

A cursor is base64url(JSON) + "." + base64url(HMAC-SHA256 over MAC_LABEL + body). The JSON holds:
- "v": the payload format. 1 = open above ("a" only); 2 = bounded, "b" is the upper bound of a split
  part, so a reader that ignored it would read past its part.
- "m": the member_id, "q": base64url of the query digest (LeadsRequest.query_digest),
- "a": the last ID answered (the next page starts after it), "b": the upper bound (format 2 only).
- "t" and "d" (optional, either format, both or neither): the read plan, i.e. the highest matching ID
  and the rows per million IDs the previous read saw. Advisory: they shape the next page's ID windows
  (no head request), never which rows match; readers that predate them ignore them.

The MAC label names the signing scheme, unchanged since the first cursor; it is not the payload
format. Changing its bytes would invalidate every cursor in flight, so it stays `.../v1`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from b24connector import b64url
from b24connector.leads.errors import invalid

OPEN_FORMAT = 1
BOUNDED_FORMAT = 2
MAC_LABEL = b"b24connector/leads-cursor/v1\n"


@dataclass(frozen=True, slots=True)
class ReadPlan:
    """What an earlier read saw: the highest matching ID and rows per ID (plans the next page's windows)."""

    top: int
    density: float


@dataclass(frozen=True, slots=True)
class CursorPosition:
    """Where the next page starts: after `last_id` (and below `before_id`), for this tenant and query only."""

    member_id: str
    query_digest: bytes
    last_id: int
    before_id: int | None = None
    plan: ReadPlan | None = None  # advisory: lets the next page skip its head request


class CursorCodec:
    """Signs positions into cursors and reads them back; `key` returns the signing key (cursor secret)."""

    def __init__(self, key: Callable[[], bytes]) -> None:
        self._key = key

    def _mac(self, body: str) -> bytes:
        return hmac.new(self._key(), MAC_LABEL + body.encode("ascii"), hashlib.sha256).digest()

    def encode(self, position: CursorPosition) -> str:
        """Sign a position."""
        payload: dict[str, Any] = {
            "v": OPEN_FORMAT,
            "m": position.member_id,
            "q": b64url.encode(position.query_digest),
            "a": position.last_id,
        }
        if position.before_id is not None:
            payload.update(v=BOUNDED_FORMAT, b=position.before_id)
        if position.plan is not None:
            payload.update(t=position.plan.top, d=density_ppm(position.plan.density))
        body = b64url.encode(json.dumps(payload, separators=(",", ":"), sort_keys=True).encode("ascii"))
        return f"{body}.{b64url.encode(self._mac(body))}"

    def decode(self, cursor: str) -> CursorPosition:
        """Verify and read a cursor; any flaw is INVALID_REQUEST without saying which."""
        rejected = invalid("cursor is not valid for this request")
        body, sep, mac = cursor.partition(".")
        if not sep:
            raise rejected
        try:
            if not hmac.compare_digest(b64url.decode(mac), self._mac(body)):
                raise rejected
            payload = json.loads(b64url.decode(body))
            position = _position(payload)
        except (ValueError, KeyError, TypeError, UnicodeDecodeError, AttributeError):
            raise rejected from None
        if position is None:
            raise rejected
        return position


def _position(payload: Any) -> CursorPosition | None:
    """The position a verified payload holds, or None when its fields do not fit its format."""
    member_id, digest, last_id = payload["m"], b64url.decode(payload["q"]), payload["a"]
    version, before_id = payload.get("v"), payload.get("b")
    if version not in (OPEN_FORMAT, BOUNDED_FORMAT) or not isinstance(member_id, str):
        return None
    if not _is_position(last_id):
        return None
    top, ppm = payload.get("t"), payload.get("d")
    plan = None
    if top is not None or ppm is not None:
        if not (_is_position(top) and _is_position(ppm) and 1 <= ppm <= 1_000_000):
            return None
        plan = ReadPlan(top, ppm / 1_000_000)
    if version == BOUNDED_FORMAT:
        return (
            CursorPosition(member_id, digest, last_id, before_id, plan) if _is_position(before_id) else None
        )
    return CursorPosition(member_id, digest, last_id, None, plan) if before_id is None else None


def density_ppm(density: float) -> int:
    """Rows per million IDs, 1..1,000,000: an integer keeps the cursor free of floats."""
    return min(1_000_000, max(1, round(density * 1_000_000)))


def _is_position(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
