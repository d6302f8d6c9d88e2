"""Request validation: a direct-invoke payload in, a LeadsRequest (or INVALID_REQUEST) out.

- Only `order {"ID": "ASC"}` (or no order) is accepted: the fast list pages by ascending ID.
- `select` always yields the ID (added when missing) because the cursor needs it.
- A `null` filter value is refused, not sent: PHP's http_build_query, which builds Bitrix24's own
  batch sub-commands, drops a null key (docs/bitrix24-facts.md F-LIST-3), so the condition would
  silently vanish and the answer widen; a caller means either "" (an empty value) or no condition.
- Filter keys take the operators crm.lead.list documents (F-LIST-2).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from b24connector.bitrix24.list_query import ListQuery
from b24connector.identifiers import MEMBER_ID_RULE, is_member_id
from b24connector.leads.errors import invalid
from b24connector.numbers import MAX_SAFE_INTEGER, ascii_int

LEAD_METHOD = "crm.lead.list"
DEFAULT_LIMIT = 1000
MAX_LIMIT = 20_000
MAX_SELECT_FIELDS = 200
MAX_FILTER_KEYS = 50
MAX_FILTER_LIST = 500
MAX_FILTER_TEXT = 1_000
MAX_CURSOR_CHARS = 1_024
# `select` plus `filter` as UTF-8 JSON. Each of a batch's 50 chained commands repeats the filter,
# URL-encoded (up to ~5x bigger), so this bounds a batch body near 4.2 MB (rest.MAX_REQUEST_BYTES is 8 MiB).
MAX_QUERY_BYTES = 16 * 1024
MAX_SPLIT = 16

_ALLOWED_KEYS = frozenset({"member_id", "domain", "select", "filter", "order", "limit", "cursor", "split"})
FIELD_NAME = re.compile(r"(?:[A-Za-z][A-Za-z0-9_]{0,63}|\*|UF_\*)\Z")
# Bitrix24 filter keys: an optional operator prefix, then a field name (crm.lead.list documents
# >=, >, <=, <, @, !@, %, =%, %=, !%, !%=, =, !=, !). Longer operators first: `!%=` before `!%`.
_FILTER_KEY = re.compile(
    r"(?P<op>!%=|>=|<=|!=|!%|!@|=%|%=|>|<|@|=|%|!)?(?P<field>[A-Za-z][A-Za-z0-9_]{0,63})\Z"
)


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

    def list_query(self, after_id: int, before_id: int | None, limit: int) -> ListQuery:
        """The fast-list query of this request's leads in the ID window (after_id, before_id)."""
        return ListQuery(
            LEAD_METHOD,
            select=self.select,
            filter=self.filter,
            after_id=after_id,
            before_id=before_id,
            limit=limit,
        )


def parse_request(payload: object, normalize_domain: Callable[[str], str]) -> LeadsRequest:
    """Validate a direct-invoke payload; every problem is a LeadsRefusal(INVALID_REQUEST)."""
    if not isinstance(payload, dict):
        raise invalid("the request must be a JSON object")
    unknown = sorted(str(key) for key in payload if key not in _ALLOWED_KEYS)
    if unknown:
        raise invalid(f"unknown keys: {', '.join(unknown)[:200]}")
    member_id, domain = portal_key(payload, normalize_domain)
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
        raise invalid(f"select and filter together may hold at most {MAX_QUERY_BYTES} bytes of JSON")


def portal_key(
    payload: Mapping[str, Any], normalize_domain: Callable[[str], str]
) -> tuple[str | None, str | None]:
    """(member_id, None) or (None, normalized domain): exactly one must be given (page and change queries)."""
    has_member, has_domain = "member_id" in payload, "domain" in payload
    if has_member == has_domain:
        raise invalid("give exactly one of member_id or domain")
    if has_member:
        member_id = payload["member_id"]
        if not is_member_id(member_id):
            raise invalid(f"member_id must be a string of {MEMBER_ID_RULE}")
        return member_id, None
    domain = payload["domain"]
    if not isinstance(domain, str):
        raise invalid("domain must be a string")
    try:
        return None, normalize_domain(domain)
    except ValueError as exc:  # InvalidPortal is a ValueError with a short reason code
        reason = getattr(exc, "reason", "invalid")
        raise invalid(f"domain is not an allowed Bitrix24 portal ({reason})") from None


def _select(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise invalid("select must be a list of field names")
    if len(value) > MAX_SELECT_FIELDS:
        raise invalid(f"select may name at most {MAX_SELECT_FIELDS} fields")
    fields: list[str] = []
    for name in value:
        if not isinstance(name, str) or not FIELD_NAME.match(name):
            raise invalid("select entries must be field names such as 'TITLE', '*' or 'UF_*'")
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
        raise invalid("filter must be an object of Bitrix24 filter keys")
    if len(value) > MAX_FILTER_KEYS:
        raise invalid(f"filter may hold at most {MAX_FILTER_KEYS} keys")
    for key, item in value.items():
        _check_filter_entry(key, item)
    return dict(value)


def _check_filter_entry(key: object, item: object) -> None:
    """One `filter` key and its value, or INVALID_REQUEST saying what is wrong with them."""
    match = _FILTER_KEY.match(key) if isinstance(key, str) else None
    if match is None:
        raise invalid("filter keys look like 'STATUS_ID', '>DATE_CREATE' or '@SOURCE_ID'")
    if item is None:
        # PHP drops a null key (F-LIST-3), so sending it would silently widen the answer.
        raise invalid('filter values may not be null: use "" for an empty value or leave the key out')
    if isinstance(item, list):
        if len(item) > MAX_FILTER_LIST or not all(_scalar_ok(v) for v in item):
            raise invalid(f"filter lists hold at most {MAX_FILTER_LIST} strings or numbers")
    elif not _scalar_ok(item):
        raise invalid("filter values are strings, numbers, booleans or lists of those")
    if match["field"].upper() == "ID" and not _is_id_value(item):
        # Every ID condition, not only the bounds the lister folds: "²".isdigit() is True and
        # int("²") raises, which made `{">ID": "²"}` an internal failure.
        raise invalid("ID conditions in filter take non-negative integers (ASCII digits)")


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
    raise invalid('only order {"ID": "ASC"} is supported (pages follow ascending IDs)')


def _limit(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid("limit must be an integer")
    if not 1 <= value <= MAX_LIMIT:
        raise invalid(f"limit must be between 1 and {MAX_LIMIT}")
    return value


def _split_count(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_SPLIT:
        raise invalid(f"split must be an integer between 1 and {MAX_SPLIT}")
    return value


def _cursor_text(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > MAX_CURSOR_CHARS:
        raise invalid("cursor must be the string from a previous answer")
    return value
