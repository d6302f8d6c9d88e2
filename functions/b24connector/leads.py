"""Read one page of a portal's leads for another Lambda: validation, signed cursors, the fast list.

Contract (ARCHITECTURE.md section 2). Choices made here:
- Only `order {"ID": "ASC"}` (or no order) is accepted: the fast list pages by ascending ID.
- ID range conditions in `filter` (`>ID`, `>=ID`, `<ID`, `<=ID`) are folded into the ID window by the
  lister; the cursor only ever moves the lower bound up, and it is bound to a hash of the query, so a
  caller cannot edit it to read outside its filter or another tenant's rows.
- `select` always yields the ID (added when missing) because the cursor needs it.
- A `null` filter value is refused (INVALID_REQUEST), not sent: PHP's http_build_query, which builds
  Bitrix24's own batch sub-commands, drops a null key, so the condition would silently vanish and the
  answer widen; a caller means either "" (an empty value) or no condition, and must say which.
- A page ends at `limit` rows or when the answer would pass MAX_ANSWER_BYTES, whichever comes first.
- When a transient failure or the time budget stops a read after some rows, those rows are answered
  with a cursor instead of an error; the next call continues from there.
- `split: K` (optional, additive) answers one batch of leads and, besides `next_cursor`, up to K signed
  `split_cursors` that cut the rest of the ID range into consecutive parts (each but the last carrying
  its upper bound inside the signature), so a caller can read them on K concurrent invocations.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import math
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

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
    PortalMoved,
    QueryLimitExceeded,
    RequestTooLarge,
    TransientError,
    UnknownAuthError,
)
from b24connector.bitrix24.portal_context import PortalContext
from b24connector.numbers import MAX_SAFE_INTEGER, ascii_int
from b24connector.observability import count, logger
from b24connector.token_refresh.coordinator import RefreshCoordinator
from b24connector.vault.errors import (
    PortalNotFound,
    ReauthRequired,
    RefreshThrottled,
    RefreshUnsettled,
    TokenDecryptError,
    VaultError,
)
from b24connector.vault.store import PortalStore

if TYPE_CHECKING:
    from b24connector.bitrix24.listing import ListHead

LEAD_METHOD = "crm.lead.list"
DEFAULT_LIMIT = 1000
MAX_LIMIT = 20_000
# Above this many rows the ID range is read on a few threads; below it two sequential batches win.
PARALLEL_FROM = 5_000
# Lambda answers at most 6 MB; keep a wide margin for the envelope and estimation error.
MAX_ANSWER_BYTES = 5_000_000
MAX_SELECT_FIELDS = 200
MAX_FILTER_KEYS = 50
MAX_FILTER_LIST = 500
MAX_FILTER_TEXT = 1_000
MAX_CURSOR_CHARS = 1_024
# `select` plus `filter` as UTF-8 JSON. Each of a batch's 50 chained commands repeats the filter,
# URL-encoded (up to ~5x bigger), so this bounds a batch body near 4.2 MB (rest.MAX_REQUEST_BYTES is 8 MiB).
MAX_QUERY_BYTES = 16 * 1024
MAX_SPLIT = 16
# A split part is never planned below one batch of rows: smaller parts cost requests, not time.
MIN_SPLIT_ROWS = 2_450

_ALLOWED_KEYS = frozenset({"member_id", "domain", "select", "filter", "order", "limit", "cursor", "split"})
_MEMBER_ID = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")
_FIELD = re.compile(r"(?:[A-Za-z][A-Za-z0-9_]{0,63}|\*|UF_\*)\Z")
# Bitrix24 filter keys: an optional operator prefix, then a field name (crm.lead.list documents
# >=, >, <=, <, @, !@, %, =%, %=, !%, !%=, =, !=, !). Longer operators first: `!%=` before `!%`.
_FILTER_KEY = re.compile(
    r"(?P<op>!%=|>=|<=|!=|!%|!@|=%|%=|>|<|@|=|%|!)?(?P<field>[A-Za-z][A-Za-z0-9_]{0,63})\Z"
)
_CURSOR_VERSION = 1
# Version 2 carries an upper bound ("b"): a reader that ignored it would read past its part.
_BOUNDED_CURSOR_VERSION = 2
_CURSOR_LABEL = b"b24connector/leads-cursor/v1\n"

INVALID_REQUEST = "INVALID_REQUEST"
PORTAL_NOT_FOUND = "PORTAL_NOT_FOUND"
REAUTH_REQUIRED = "REAUTH_REQUIRED"
RATE_LIMITED = "RATE_LIMITED"
UPSTREAM_ERROR = "UPSTREAM_ERROR"


class LeadsError(Exception):
    """An expected failure answered as `{"error": {"code", "message"}}`; the message is caller-safe."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(f"{code}: {message}")

    def answer(self) -> dict[str, Any]:
        """The error answer of the contract."""
        return {"error": {"code": self.code, "message": self.message}}


def _invalid(message: str) -> LeadsError:
    return LeadsError(INVALID_REQUEST, message)


# --- request ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LeadsRequest:
    """A validated request: exactly one portal key, a normalized query, and paging."""

    member_id: str | None
    domain: str | None
    select: tuple[str, ...]
    filter: Mapping[str, Any]
    limit: int
    cursor: str | None
    split: int | None = None

    def query_digest(self) -> bytes:
        """A digest of everything that decides which rows match (not of the paging)."""
        canonical = json.dumps(
            {"select": list(self.select), "filter": self.filter, "order": {"ID": "ASC"}},
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=True,
        )
        return hashlib.sha256(canonical.encode("ascii")).digest()[:16]


def parse_request(payload: object, normalize_domain: Callable[[str], str]) -> LeadsRequest:
    """Validate a direct-invoke payload; every problem is a LeadsError(INVALID_REQUEST)."""
    if not isinstance(payload, dict):
        raise _invalid("the request must be a JSON object")
    unknown = sorted(str(key) for key in payload if key not in _ALLOWED_KEYS)
    if unknown:
        raise _invalid(f"unknown keys: {', '.join(unknown)[:200]}")
    member_id, domain = _portal_key(payload, normalize_domain)
    _check_order(payload.get("order"))
    select = _select(payload.get("select"))
    filter_ = _filter(payload.get("filter"))
    _check_query_size(select, filter_)
    return LeadsRequest(
        member_id=member_id,
        domain=domain,
        select=select,
        filter=filter_,
        limit=_limit(payload.get("limit", DEFAULT_LIMIT)),
        cursor=_cursor_text(payload.get("cursor")),
        split=_split_count(payload.get("split")),
    )


def _check_query_size(select: tuple[str, ...], filter_: Mapping[str, Any]) -> None:
    query = {"select": select, "filter": filter_}
    size = len(json.dumps(query, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass"))
    if size > MAX_QUERY_BYTES:
        raise _invalid(f"select and filter together may hold at most {MAX_QUERY_BYTES} bytes of JSON")


def _portal_key(
    payload: Mapping[str, Any], normalize_domain: Callable[[str], str]
) -> tuple[str | None, str | None]:
    has_member, has_domain = "member_id" in payload, "domain" in payload
    if has_member == has_domain:
        raise _invalid("give exactly one of member_id or domain")
    if has_member:
        member_id = payload["member_id"]
        if not isinstance(member_id, str) or not _MEMBER_ID.match(member_id):
            raise _invalid("member_id must be a string of 1-64 letters, digits, '_' or '-'")
        return member_id, None
    domain = payload["domain"]
    if not isinstance(domain, str):
        raise _invalid("domain must be a string")
    try:
        return None, normalize_domain(domain)
    except ValueError as exc:  # InvalidPortal is a ValueError with a short reason code
        reason = getattr(exc, "reason", "invalid")
        raise _invalid(f"domain is not an allowed Bitrix24 portal ({reason})") from None


def _select(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise _invalid("select must be a list of field names")
    if len(value) > MAX_SELECT_FIELDS:
        raise _invalid(f"select may name at most {MAX_SELECT_FIELDS} fields")
    fields: list[str] = []
    for name in value:
        if not isinstance(name, str) or not _FIELD.match(name):
            raise _invalid("select entries must be field names such as 'TITLE', '*' or 'UF_*'")
        if name not in fields:
            fields.append(name)
    if fields and "*" not in fields and "ID" not in fields:
        fields.insert(0, "ID")  # the cursor pages by ID
    return tuple(fields)


def _scalar_ok(value: object) -> bool:
    if isinstance(value, bool):
        return True
    if isinstance(value, int):
        # str() of a 5,000-digit int raises (and Bitrix24 would not know it either).
        return -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, str) and len(value) <= MAX_FILTER_TEXT


def _filter(value: object) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _invalid("filter must be an object of Bitrix24 filter keys")
    if len(value) > MAX_FILTER_KEYS:
        raise _invalid(f"filter may hold at most {MAX_FILTER_KEYS} keys")
    result: dict[str, Any] = {}
    for key, item in value.items():
        match = _FILTER_KEY.match(key) if isinstance(key, str) else None
        if match is None:
            raise _invalid("filter keys look like 'STATUS_ID', '>DATE_CREATE' or '@SOURCE_ID'")
        if item is None:
            # PHP drops a null key (http_build_query), so sending it would silently widen the answer.
            raise _invalid('filter values may not be null: use "" for an empty value or leave the key out')
        if isinstance(item, list):
            if len(item) > MAX_FILTER_LIST or not all(_scalar_ok(v) for v in item):
                raise _invalid(f"filter lists hold at most {MAX_FILTER_LIST} strings or numbers")
        elif not _scalar_ok(item):
            raise _invalid("filter values are strings, numbers, booleans or lists of those")
        if match["field"].upper() == "ID" and not _is_id_value(item):
            # Every ID condition, not only the bounds the lister folds: "²".isdigit() is True and
            # int("²") raises, which made `{">ID": "²"}` an internal failure.
            raise _invalid("ID conditions in filter take non-negative integers (ASCII digits)")
        result[key] = item
    return result


def _is_id_value(value: object) -> bool:
    if isinstance(value, list):
        return bool(value) and all(_is_id(v) for v in value)
    return _is_id(value)


def _is_id(value: object) -> bool:
    return not isinstance(value, float) and ascii_int(value) is not None


def _check_order(value: object) -> None:
    if value is None:
        return
    if isinstance(value, dict) and len(value) == 1:
        ((field, direction),) = value.items()
        if (
            isinstance(field, str)
            and isinstance(direction, str)
            and (field.upper(), direction.upper())
            == (
                "ID",
                "ASC",
            )
        ):
            return
    raise _invalid('only order {"ID": "ASC"} is supported (pages follow ascending IDs)')


def _limit(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _invalid("limit must be an integer")
    if not 1 <= value <= MAX_LIMIT:
        raise _invalid(f"limit must be between 1 and {MAX_LIMIT}")
    return value


def _split_count(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_SPLIT:
        raise _invalid(f"split must be an integer between 1 and {MAX_SPLIT}")
    return value


def _cursor_text(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > MAX_CURSOR_CHARS:
        raise _invalid("cursor must be the string from a previous answer")
    return value


# --- cursor -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CursorPosition:
    """Where the next page starts: after `last_id` (and below `before_id`), for this tenant and query only."""

    member_id: str
    query_digest: bytes
    last_id: int
    before_id: int | None = None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    if not re.fullmatch(r"[A-Za-z0-9_-]*", text):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class CursorCodec:
    """Opaque, tamper-evident cursors: base64url(JSON) + '.' + base64url(HMAC-SHA256)."""

    def __init__(self, key: Callable[[], bytes]) -> None:
        self._key = key

    def _mac(self, body: str) -> bytes:
        return hmac.new(self._key(), _CURSOR_LABEL + body.encode("ascii"), hashlib.sha256).digest()

    def encode(self, position: CursorPosition) -> str:
        """Sign a position."""
        payload: dict[str, Any] = {
            "v": _CURSOR_VERSION,
            "m": position.member_id,
            "q": _b64(position.query_digest),
            "a": position.last_id,
        }
        if position.before_id is not None:
            payload.update(v=_BOUNDED_CURSOR_VERSION, b=position.before_id)
        body = _b64(json.dumps(payload, separators=(",", ":"), sort_keys=True).encode("ascii"))
        return f"{body}.{_b64(self._mac(body))}"

    def decode(self, cursor: str) -> CursorPosition:
        """Verify and read a cursor; any flaw is INVALID_REQUEST without saying which."""
        rejected = _invalid("cursor is not valid for this request")
        body, sep, mac = cursor.partition(".")
        if not sep:
            raise rejected
        try:
            given = _unb64(mac)
            if not hmac.compare_digest(given, self._mac(body)):
                raise rejected
            payload = json.loads(_unb64(body))
            member_id, digest, last_id = payload["m"], _unb64(payload["q"]), payload["a"]
            version, before_id = payload.get("v"), payload.get("b")
        except (ValueError, KeyError, TypeError, UnicodeDecodeError, AttributeError):
            raise rejected from None
        bounded = version == _BOUNDED_CURSOR_VERSION
        if (
            version not in (_CURSOR_VERSION, _BOUNDED_CURSOR_VERSION)
            or not isinstance(member_id, str)
            or not _is_position(last_id)
            or (bounded and not _is_position(before_id))
            or (not bounded and before_id is not None)
        ):
            raise rejected
        return CursorPosition(member_id, digest, last_id, before_id if bounded else None)


def _is_position(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


# --- reading ------------------------------------------------------------------------------------


class LeadLister(Protocol):
    """The fast list reader (bitrix24.listing.FastLister) as this use case needs it."""

    def iter_list(
        self,
        portal: Any,
        method: str,
        *,
        select: Sequence[str] = (),
        filter: Mapping[str, Any] | None = None,  # Bitrix24's own parameter name
        after_id: int = 0,
        before_id: int | None = None,
        limit: int | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Rows in ascending ID order, sequentially."""
        ...

    def iter_list_parallel(
        self,
        portal: Any,
        method: str,
        *,
        select: Sequence[str] = (),
        filter: Mapping[str, Any] | None = None,  # Bitrix24's own parameter name
        after_id: int = 0,
        before_id: int | None = None,
        limit: int | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Rows in ascending ID order, ID windows read on a few threads."""
        ...

    def read_head(
        self,
        portal: Any,
        method: str,
        *,
        select: Sequence[str] = (),
        filter: Mapping[str, Any] | None = None,  # Bitrix24's own parameter name
        after_id: int = 0,
        before_id: int | None = None,
        limit: int | None = None,
    ) -> ListHead:
        """One request: the first batch of rows, the highest matching ID and the ID density."""
        ...


@dataclass(frozen=True, slots=True)
class OpenPortal:
    """A portal ready for REST calls: its tenant key and the REST client's portal context."""

    member_id: str
    context: Any


class PortalOpener(Protocol):
    """Finds an active portal by member_id or domain and prepares it for REST calls."""

    def open(self, *, member_id: str | None, domain: str | None, deadline: float | None) -> OpenPortal:
        """Raise the vault's PortalNotFound / ReauthRequired / TokenDecryptError when it cannot be used."""
        ...


class VaultPortalOpener:
    """PortalOpener over the vault: one DynamoDB read, tokens from the per-version cache when warm.

    A portal rename (fact sheet 4.1: 302 from the old address) that the REST client followed, which it
    does only to a host PortalPolicy allows, is stored once per read through `record_move`: the next
    read goes straight to the new address, and the new domain finds the portal. A new address that
    another active portal already holds is refused (the read fails, nothing is stored): a portal must
    not be able to take over another tenant's domain lookups.
    """

    def __init__(
        self,
        store: PortalStore,
        coordinator: RefreshCoordinator,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._coordinator = coordinator
        self._monotonic = monotonic

    def open(self, *, member_id: str | None, domain: str | None, deadline: float | None) -> OpenPortal:
        """The portal's REST context, whose renew hook refreshes through the coordinator."""
        if member_id is not None:
            portal = self._store.get(member_id)
        elif domain is not None:
            portal = self._store.get_by_domain(domain)
        else:
            raise ValueError("a member_id or a domain is required")
        if portal is None:
            raise PortalNotFound("no portal with that key")
        if not portal.is_active or not portal.client_endpoint:
            raise ReauthRequired(portal.member_id, portal.health)
        tokens = self._store.tokens(portal)
        portal_id = portal.member_id

        def remaining_ms() -> int:
            return 60_000 if deadline is None else int((deadline - self._monotonic()) * 1000)

        def renew(rejected_access_token: str) -> str:
            fresh = self._coordinator.fresh_access_token(
                portal_id, rejected_access_token, remaining_ms=remaining_ms
            )
            return fresh.access_token

        def reload(rejected_access_token: str) -> str | None:
            newer = self._coordinator.stored_if_newer(
                portal_id, rejected_access_token, remaining_ms=remaining_ms
            )
            return None if newer is None else newer.access_token

        def moved(domain: str, client_endpoint: str) -> None:
            self._record_move(portal_id, domain, client_endpoint)

        access_token = tokens.access_token
        if tokens.access_expired():
            # Known to be dead: renew now instead of spending a portal request on expired_token.
            access_token = renew(access_token)
        context = PortalContext(
            portal.client_endpoint,
            access_token,
            renew=renew,
            reload=reload,
            deadline=deadline,
            on_moved=moved,
            domain=portal.domain,
            pacing_key=portal_id,
        )
        return OpenPortal(portal_id, context)

    def _record_move(self, member_id: str, domain: str, client_endpoint: str) -> None:
        """Store a followed rename; raise PortalMoved when another active portal holds that address."""
        try:
            holder = self._store.get_by_domain(domain)
            if holder is not None and holder.member_id != member_id and holder.is_active:
                logger.warning("portal rename refused", extra={"member_id": member_id, "domain": domain})
                count("PortalMoveRefused")
                raise PortalMoved(
                    "PORTAL_MOVED", "the new portal address belongs to another portal", http_status=302
                )
            moved = self._store.record_move(member_id, domain=domain, client_endpoint=client_endpoint)
        except VaultError as exc:
            # The read can go on at the new address; the next one meets the 302 and tries again.
            logger.warning(
                "portal rename not stored", extra={"member_id": member_id, "error": type(exc).__name__}
            )
            return
        if moved is None:
            logger.info("portal rename not stored: portal inactive", extra={"member_id": member_id})
            return
        logger.info("portal renamed", extra={"member_id": member_id, "domain": domain})
        count("PortalMoved")


def split_points(last: int, top: int, density: float, parts: int) -> list[int]:
    """Increasing IDs from `last` that cut (last, top] into at most `parts` ranges of similar row counts.

    Part i holds the IDs in (points[i], points[i + 1]]; the last part is everything above points[-1].
    Ranges are never planned below MIN_SPLIT_ROWS expected rows (each part costs a first batch).
    """
    span = top - last
    expected = span * max(min(density, 1.0), 0.0)
    count = max(1, min(parts, math.ceil(expected / MIN_SPLIT_ROWS), span))
    return [last + (span * i) // count for i in range(count)]


# Which Bitrix24 errors tell the caller to have the portal connected again: docs/bitrix24-errors.md.
_REAUTH_ERRORS = (InvalidGrant, InvalidToken, NotInstalled, PaymentRequired, InvalidClient, PortalDeleted)
_RATE_ERRORS = (QueryLimitExceeded, OperationTimeLimit, OverloadLimit)


def _resumable(exc: Bitrix24Error | VaultError) -> bool:
    """True when the rows read before `exc` are still worth answering with a cursor."""
    if isinstance(exc, VaultError):
        return exc.retryable
    return isinstance(exc, TransientError | OperationTimeLimit | DeadlineExceeded)


def _row_id(row: Mapping[str, Any]) -> int:
    number = ascii_int(row.get("ID"))
    if number is not None:
        return number
    raise LeadsError(UPSTREAM_ERROR, "Bitrix24 answered a lead without a numeric ID")


_ANSWER_SEPARATORS = (", ", ": ")
# Rows are sized a chunk at a time: one json.dumps of 256 rows costs a fifth of 256 single ones.
_SIZE_CHUNK = 256


def row_bytes(row: Mapping[str, Any]) -> int:
    """Bytes `row` adds to the answer, serialized the way the Lambda runtime does (ASCII escapes)."""
    return len(json.dumps(row, separators=_ANSWER_SEPARATORS)) + 2


class _AnswerRows:
    """The rows of one answer, kept under the size cap (the sum of row_bytes, measured in chunks)."""

    def __init__(self, max_bytes: int) -> None:
        self.rows: list[dict[str, Any]] = []
        self.full = False  # a row was refused because it would pass the cap
        self._pending: list[dict[str, Any]] = []
        self._size = 2
        self._max_bytes = max_bytes

    def __len__(self) -> int:
        return len(self.rows) + len(self._pending)

    def add(self, row: dict[str, Any]) -> bool:
        """Take a row; False when the answer is full (this row or one before it did not fit)."""
        _row_id(row)
        self._pending.append(row)
        return len(self._pending) < _SIZE_CHUNK or self.close()

    def close(self) -> bool:
        """Size the pending rows; keep the ones that fit. False when the answer is full."""
        if not self._pending:
            return not self.full
        # A list of rows serializes to exactly the sum of their row_bytes.
        size = len(json.dumps(self._pending, separators=_ANSWER_SEPARATORS))
        if self._size + size <= self._max_bytes:
            self.rows.extend(self._pending)
            self._size += size
            self._pending.clear()
            return True
        for row in self._pending:
            self._size += row_bytes(row)
            if self._size > self._max_bytes:
                if not self.rows:
                    raise LeadsError(UPSTREAM_ERROR, "a single lead is larger than the answer limit")
                break
            self.rows.append(row)
        self._pending.clear()
        self.full = True
        return False


def error_for(exc: Bitrix24Error | VaultError) -> LeadsError:
    """The contract's error for a Bitrix24 or vault failure."""
    if isinstance(exc, VaultError):
        return _vault_error(exc)
    if isinstance(exc, RequestTooLarge):
        return _invalid("the query is too large to send to Bitrix24")
    if isinstance(exc, _REAUTH_ERRORS):
        return LeadsError(REAUTH_REQUIRED, f"Bitrix24 no longer accepts this portal's grant ({exc.code})")
    if isinstance(exc, _RATE_ERRORS) or exc.code == "CLIENT_RATE_LIMIT":
        return LeadsError(RATE_LIMITED, f"Bitrix24 rate limits were reached ({exc.code}); retry later")
    return LeadsError(UPSTREAM_ERROR, _upstream_message(exc))


def _upstream_message(exc: Bitrix24Error) -> str:
    if isinstance(exc, DeadlineExceeded):
        return "Bitrix24 did not answer within the time budget"
    if isinstance(exc, AuthServerUnavailable):
        return f"Bitrix24 could not check the grant with its OAuth server ({exc.code}); retry later"
    if isinstance(exc, UnknownAuthError):
        return f"Bitrix24 refused the request with an unknown code ({exc.code})"
    return f"Bitrix24 failed ({exc.code})"


def _vault_error(exc: VaultError) -> LeadsError:
    if isinstance(exc, PortalNotFound):
        return LeadsError(PORTAL_NOT_FOUND, "no connected portal with that member_id or domain")
    if isinstance(exc, ReauthRequired | TokenDecryptError):
        return LeadsError(REAUTH_REQUIRED, "the portal must be installed or authorized again")
    if isinstance(exc, RefreshThrottled):
        # Our own limit, kept so Bitrix24 does not block the app: a rate limit to the caller.
        return LeadsError(
            RATE_LIMITED,
            "Bitrix24 rejected the portal's freshly refreshed token; the connector refreshes a portal "
            f"at most once per interval, retry in {exc.retry_after} s",
        )
    if isinstance(exc, RefreshUnsettled):
        # Not REAUTH_REQUIRED: the grant is most likely alive, its new pair on the way from the rescue queue.
        return LeadsError(
            UPSTREAM_ERROR,
            "the portal's last token refresh has not settled yet (its new pair is being recovered); "
            f"retry in {exc.retry_after} s",
        )
    return LeadsError(UPSTREAM_ERROR, "the token vault is unavailable right now; retry later")


@dataclass(frozen=True, slots=True)
class LeadsPage:
    """One page of the contract's answer."""

    leads: list[dict[str, Any]]
    next_cursor: str | None
    split_cursors: list[str] | None = None  # only when the request asked for `split`

    def answer(self) -> dict[str, Any]:
        """The success answer of the contract (plus `split_cursors` when they were asked for)."""
        answer: dict[str, Any] = {
            "leads": self.leads,
            "count": len(self.leads),
            "next_cursor": self.next_cursor,
        }
        if self.split_cursors is not None:
            answer["split_cursors"] = self.split_cursors
        return answer


class LeadsReader:
    """Serves LeadsFunction: one validated request in, one page out."""

    def __init__(
        self,
        portals: PortalOpener,
        lister: LeadLister,
        cursors: CursorCodec,
        *,
        max_answer_bytes: int = MAX_ANSWER_BYTES,
        parallel_from: int = PARALLEL_FROM,
    ) -> None:
        self._portals = portals
        self._lister = lister
        self._cursors = cursors
        self._max_answer_bytes = max_answer_bytes
        self._parallel_from = parallel_from

    def read(self, request: LeadsRequest, *, deadline: float | None = None) -> LeadsPage:
        """Read up to `request.limit` leads after the cursor; raise LeadsError for expected failures."""
        # Check the cursor's signature before any I/O, so forged cursors cost nothing.
        position = self._cursors.decode(request.cursor) if request.cursor else None
        try:
            portal = self._portals.open(member_id=request.member_id, domain=request.domain, deadline=deadline)
        except VaultError as exc:
            raise error_for(exc) from None
        digest = request.query_digest()
        if position is not None and (
            position.member_id != portal.member_id or not hmac.compare_digest(position.query_digest, digest)
        ):
            raise _invalid("cursor is not valid for this request")
        after_id = position.last_id if position is not None else 0
        before_id = position.before_id if position is not None else None
        if request.split is not None:
            return self._read_split(portal, request, digest, (after_id, before_id), request.split)
        leads, more = self._collect(portal, request, after_id, before_id)
        next_cursor = None
        if more and leads:
            last = _row_id(leads[-1])
            next_cursor = self._cursors.encode(CursorPosition(portal.member_id, digest, last, before_id))
        return LeadsPage(leads, next_cursor)

    def _read_split(
        self,
        portal: OpenPortal,
        request: LeadsRequest,
        digest: bytes,
        bounds: tuple[int, int | None],
        split: int,
    ) -> LeadsPage:
        """One batch of leads, `next_cursor` for the rest, and the rest cut into `split` signed parts."""
        after_id, before_id = bounds
        try:
            head = self._lister.read_head(
                portal.context,
                LEAD_METHOD,
                select=request.select,
                filter=request.filter,
                after_id=after_id,
                before_id=before_id,
                limit=request.limit,
            )
        except (Bitrix24Error, VaultError) as exc:
            raise error_for(exc) from None
        answer = _AnswerRows(self._max_answer_bytes)
        for row in head.rows:
            if not answer.add(row):
                break
        answer.close()
        rows = answer.rows
        cut = len(rows) < len(head.rows)
        if head.exhausted and not cut:
            return LeadsPage(rows, None, [])
        last = _row_id(rows[-1]) if cut else head.last

        def cursor(low: int, high: int | None) -> str:
            return self._cursors.encode(CursorPosition(portal.member_id, digest, low, high))

        next_cursor = cursor(last, before_id)
        if head.top is None or head.top <= last:
            return LeadsPage(rows, next_cursor, [])  # nothing known to split: follow next_cursor
        points = split_points(last, head.top, head.density, split)
        parts = [cursor(low, high + 1) for low, high in itertools.pairwise(points)]
        # The last part stays open above the highest ID seen: leads created meanwhile are not lost.
        parts.append(cursor(points[-1], before_id))
        return LeadsPage(rows, next_cursor, parts)

    def _collect(
        self, portal: OpenPortal, request: LeadsRequest, after_id: int, before_id: int | None
    ) -> tuple[list[dict[str, Any]], bool]:
        """(rows, whether more may follow). One extra row is asked for to know if the list ended."""
        iterate = (
            self._lister.iter_list_parallel if request.limit > self._parallel_from else self._lister.iter_list
        )
        answer = _AnswerRows(self._max_answer_bytes)
        try:
            for row in iterate(
                portal.context,
                LEAD_METHOD,
                select=request.select,
                filter=request.filter,
                after_id=after_id,
                before_id=before_id,
                limit=request.limit + 1,
            ):
                if len(answer) == request.limit:
                    answer.close()
                    return answer.rows, True
                if not answer.add(row):
                    return answer.rows, True
        except LeadsError:
            raise
        except (Bitrix24Error, VaultError) as exc:
            answer.close()
            if answer.rows and _resumable(exc):
                return answer.rows, True
            raise error_for(exc) from None
        answer.close()
        return answer.rows, answer.full
