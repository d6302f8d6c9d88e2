"""The portal's leads: deterministic synthetic rows, sorted by ID, queried with bisect-bounded ID windows."""

from __future__ import annotations

import bisect
import random
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timezone
from typing import Any

from bitrix24_emulator.clock import iso_local

PAGE_SIZE = 50

_FIRST_NAMES = (
    "Anna", "Boris", "Clara", "Dmitry", "Elena", "Fedor", "Galina", "Igor", "Julia", "Kirill",
    "Lena", "Maxim", "Nina", "Oleg", "Polina", "Roman", "Sofia", "Timur", "Vera", "Yuri",
)  # fmt: skip
_LAST_NAMES = (
    "Ivanova", "Petrov", "Smirnova", "Kuznetsov", "Popova", "Volkov", "Sokolova", "Lebedev",
    "Kozlova", "Novikov", "Morozova", "Pavlov", "Orlova", "Egorov", "Fedorova", "Nikitin",
)  # fmt: skip
_COMPANIES = (
    "Acme",
    "Globex",
    "Initech",
    "Umbrella",
    "Stark",
    "Wayne",
    "Hooli",
    "Vandelay",
    "Tyrell",
    "Soylent",
)
_STATUSES = ("NEW", "NEW", "NEW", "IN_PROCESS", "IN_PROCESS", "PROCESSED", "CONVERTED", "JUNK")
_SOURCES = ("CALL", "EMAIL", "WEB", "ADVERTISING", "PARTNER", "RECOMMENDATION", "TRADE_SHOW", "OTHER")
_CURRENCIES = ("USD", "USD", "EUR", "RUB")
_SEMANTICS = {"CONVERTED": "S", "JUNK": "F"}

# Seeded dates spread over three years before a fixed anchor so that runs are reproducible.
_ANCHOR = int(datetime(2026, 1, 1, tzinfo=UTC).timestamp())
_SPAN = 3 * 365 * 86400


class Lead:
    """One lead row; numbers are kept typed and printed as strings the way crm.lead.* does."""

    __slots__ = (
        "assigned_by_id",
        "comments",
        "company_title",
        "created_by_id",
        "currency_id",
        "date_create",
        "date_modify",
        "email",
        "id",
        "last_name",
        "name",
        "opportunity",
        "phone",
        "source_id",
        "status_id",
        "title",
    )

    def __init__(
        self,
        *,
        id: int,
        title: str,
        name: str | None,
        last_name: str | None,
        status_id: str,
        source_id: str,
        opportunity: float,
        currency_id: str,
        assigned_by_id: int,
        created_by_id: int,
        date_create: int,
        date_modify: int,
        phone: str | None,
        email: str | None,
        company_title: str | None = None,
        comments: str | None = None,
    ) -> None:
        self.id = id
        self.title = title
        self.name = name
        self.last_name = last_name
        self.status_id = status_id
        self.source_id = source_id
        self.opportunity = opportunity
        self.currency_id = currency_id
        self.assigned_by_id = assigned_by_id
        self.created_by_id = created_by_id
        self.date_create = date_create
        self.date_modify = date_modify
        self.phone = phone
        self.email = email
        self.company_title = company_title
        self.comments = comments


def generate_leads(count: int, seed: int, deleted_ratio: float) -> list[Lead]:
    """`count` deterministic leads with ~`deleted_ratio` of IDs missing and spread modification dates."""
    rng = random.Random(seed)
    rand = rng.random
    leads: list[Lead] = []
    next_id = 1
    step = _SPAN / max(count, 1)
    start = _ANCHOR - _SPAN
    n_first, n_last, n_comp = len(_FIRST_NAMES), len(_LAST_NAMES), len(_COMPANIES)
    n_status, n_source, n_cur = len(_STATUSES), len(_SOURCES), len(_CURRENCIES)
    for index in range(count):
        while deleted_ratio and rand() < deleted_ratio:
            next_id += 1
        lead_id = next_id
        next_id += 1
        first = _FIRST_NAMES[int(rand() * n_first)]
        last = _LAST_NAMES[int(rand() * n_last)]
        company = _COMPANIES[int(rand() * n_comp)]
        created = int(start + index * step + rand() * step)
        # Most leads change soon after creation, some much later: a long tail like real CRMs.
        modified = created + int((rand() ** 3) * (_ANCHOR - created))
        roll = rand()
        leads.append(
            Lead(
                id=lead_id,
                title=f"Lead #{lead_id}" if roll < 0.3 else f"{company}: request from {first} {last}",
                name=first,
                last_name=last,
                status_id=_STATUSES[int(rand() * n_status)],
                source_id=_SOURCES[int(rand() * n_source)],
                opportunity=round(int(rand() * 20000) * 5.0, 2),
                currency_id=_CURRENCIES[int(rand() * n_cur)],
                assigned_by_id=1 + int(rand() * 12),
                created_by_id=1,
                date_create=created,
                date_modify=modified,
                phone=f"+7 9{lead_id % 100:02d} {lead_id % 1000:03d} {lead_id % 97:02d} {roll * 100:02.0f}"
                if roll < 0.8
                else None,
                email=f"{first.lower()}.{last.lower()}.{lead_id}@example.com" if roll > 0.25 else None,
                company_title=company if roll > 0.5 else None,
            )
        )
    return leads


# --- field catalogues -------------------------------------------------------------------------------

Getter = Callable[[Lead, timezone], Any]


def _s(value: object) -> str | None:
    return None if value is None else str(value)


def _money(value: float) -> str:
    return f"{value:.2f}"


# crm.lead.list: upper-case names, every scalar as a string or null (the classic API's PHP arrays).
LEAD_FIELDS: dict[str, Getter] = {
    "ID": lambda r, tz: str(r.id),
    "TITLE": lambda r, tz: r.title,
    "HONORIFIC": lambda r, tz: None,
    "NAME": lambda r, tz: r.name,
    "SECOND_NAME": lambda r, tz: None,
    "LAST_NAME": lambda r, tz: r.last_name,
    "COMPANY_TITLE": lambda r, tz: r.company_title,
    "COMPANY_ID": lambda r, tz: None,
    "CONTACT_ID": lambda r, tz: None,
    "IS_RETURN_CUSTOMER": lambda r, tz: "N",
    "BIRTHDATE": lambda r, tz: "",
    "SOURCE_ID": lambda r, tz: r.source_id,
    "SOURCE_DESCRIPTION": lambda r, tz: None,
    "STATUS_ID": lambda r, tz: r.status_id,
    "STATUS_DESCRIPTION": lambda r, tz: None,
    "POST": lambda r, tz: None,
    "COMMENTS": lambda r, tz: r.comments,
    "CURRENCY_ID": lambda r, tz: r.currency_id,
    "OPPORTUNITY": lambda r, tz: _money(r.opportunity),
    "IS_MANUAL_OPPORTUNITY": lambda r, tz: "N",
    "HAS_PHONE": lambda r, tz: "Y" if r.phone else "N",
    "HAS_EMAIL": lambda r, tz: "Y" if r.email else "N",
    "HAS_IMOL": lambda r, tz: "N",
    "ASSIGNED_BY_ID": lambda r, tz: str(r.assigned_by_id),
    "CREATED_BY_ID": lambda r, tz: str(r.created_by_id),
    "MODIFY_BY_ID": lambda r, tz: str(r.assigned_by_id),
    "DATE_CREATE": lambda r, tz: iso_local(r.date_create, tz),
    "DATE_MODIFY": lambda r, tz: iso_local(r.date_modify, tz),
    "DATE_CLOSED": lambda r, tz: "",
    "STATUS_SEMANTIC_ID": lambda r, tz: _SEMANTICS.get(r.status_id, "P"),
    "OPENED": lambda r, tz: "Y",
    "ORIGINATOR_ID": lambda r, tz: None,
    "ORIGIN_ID": lambda r, tz: None,
    "MOVED_BY_ID": lambda r, tz: str(r.assigned_by_id),
    "MOVED_TIME": lambda r, tz: iso_local(r.date_create, tz),
    "ADDRESS": lambda r, tz: None,
    "ADDRESS_CITY": lambda r, tz: None,
    "ADDRESS_COUNTRY": lambda r, tz: None,
    "UTM_SOURCE": lambda r, tz: None,
    "UTM_MEDIUM": lambda r, tz: None,
    "UTM_CAMPAIGN": lambda r, tz: None,
    "UTM_CONTENT": lambda r, tz: None,
    "UTM_TERM": lambda r, tz: None,
    "LAST_ACTIVITY_BY": lambda r, tz: str(r.assigned_by_id),
    "LAST_ACTIVITY_TIME": lambda r, tz: iso_local(r.date_modify, tz),
}


def _multifield(lead: Lead, kind: str) -> list[dict[str, str]] | None:
    value = lead.phone if kind == "PHONE" else lead.email
    if not value:
        return None
    offset = 0 if kind == "PHONE" else 1
    return [{"ID": str(lead.id * 2 + offset), "VALUE_TYPE": "WORK", "VALUE": value, "TYPE_ID": kind}]


# Multiple fields are returned only when named explicitly (not by "*").
LEAD_MULTI_FIELDS = ("PHONE", "EMAIL")

# crm.item.list (entityTypeId=1): camelCase names and typed values ([EN] crm-item-list.md, crm-item-add.md).
ITEM_FIELDS: dict[str, Getter] = {
    "id": lambda r, tz: r.id,
    "title": lambda r, tz: r.title,
    "honorific": lambda r, tz: None,
    "name": lambda r, tz: r.name,
    "secondName": lambda r, tz: None,
    "lastName": lambda r, tz: r.last_name,
    "companyTitle": lambda r, tz: r.company_title,
    "companyId": lambda r, tz: None,
    "contactId": lambda r, tz: None,
    "isReturnCustomer": lambda r, tz: "N",
    "birthdate": lambda r, tz: None,
    "sourceId": lambda r, tz: r.source_id,
    "sourceDescription": lambda r, tz: None,
    "stageId": lambda r, tz: r.status_id,
    "statusDescription": lambda r, tz: None,
    "stageSemanticId": lambda r, tz: _SEMANTICS.get(r.status_id, "P"),
    "post": lambda r, tz: None,
    "comments": lambda r, tz: r.comments,
    "currencyId": lambda r, tz: r.currency_id,
    "opportunity": lambda r, tz: r.opportunity,
    "isManualOpportunity": lambda r, tz: "N",
    "hasPhone": lambda r, tz: "Y" if r.phone else "N",
    "hasEmail": lambda r, tz: "Y" if r.email else "N",
    "hasImol": lambda r, tz: "N",
    "assignedById": lambda r, tz: r.assigned_by_id,
    "createdBy": lambda r, tz: r.created_by_id,
    "updatedBy": lambda r, tz: r.assigned_by_id,
    "movedBy": lambda r, tz: r.assigned_by_id,
    "createdTime": lambda r, tz: iso_local(r.date_create, tz),
    "updatedTime": lambda r, tz: iso_local(r.date_modify, tz),
    "movedTime": lambda r, tz: iso_local(r.date_create, tz),
    "opened": lambda r, tz: "Y",
    "originatorId": lambda r, tz: None,
    "originId": lambda r, tz: None,
    "observers": lambda r, tz: [],
    "contactIds": lambda r, tz: [],
    "utmSource": lambda r, tz: None,
    "utmMedium": lambda r, tz: None,
    "utmCampaign": lambda r, tz: None,
    "utmContent": lambda r, tz: None,
    "utmTerm": lambda r, tz: None,
}


def _item_fm(lead: Lead) -> list[dict[str, Any]]:
    values = []
    for kind in LEAD_MULTI_FIELDS:
        for entry in _multifield(lead, kind) or []:
            values.append(
                {
                    "id": int(entry["ID"]),
                    "typeId": kind,
                    "valueType": entry["VALUE_TYPE"],
                    "value": entry["VALUE"],
                }
            )
    return values


# Filterable/sortable attributes: public name -> (Lead attribute, kind).
_NUMBER, _TEXT, _DATE = "number", "text", "date"
LEAD_FILTER_FIELDS: dict[str, tuple[str, str]] = {
    "ID": ("id", _NUMBER),
    "TITLE": ("title", _TEXT),
    "NAME": ("name", _TEXT),
    "LAST_NAME": ("last_name", _TEXT),
    "COMPANY_TITLE": ("company_title", _TEXT),
    "STATUS_ID": ("status_id", _TEXT),
    "SOURCE_ID": ("source_id", _TEXT),
    "OPPORTUNITY": ("opportunity", _NUMBER),
    "CURRENCY_ID": ("currency_id", _TEXT),
    "ASSIGNED_BY_ID": ("assigned_by_id", _NUMBER),
    "CREATED_BY_ID": ("created_by_id", _NUMBER),
    "DATE_CREATE": ("date_create", _DATE),
    "DATE_MODIFY": ("date_modify", _DATE),
}
ITEM_FILTER_FIELDS: dict[str, tuple[str, str]] = {
    "id": ("id", _NUMBER),
    "title": ("title", _TEXT),
    "name": ("name", _TEXT),
    "lastName": ("last_name", _TEXT),
    "companyTitle": ("company_title", _TEXT),
    "stageId": ("status_id", _TEXT),
    "sourceId": ("source_id", _TEXT),
    "opportunity": ("opportunity", _NUMBER),
    "currencyId": ("currency_id", _TEXT),
    "assignedById": ("assigned_by_id", _NUMBER),
    "createdBy": ("created_by_id", _NUMBER),
    "createdTime": ("date_create", _DATE),
    "updatedTime": ("date_modify", _DATE),
}

# Longest first so that ">=" wins over ">".
_OPERATORS = ("!@", "!=", ">=", "<=", "=%", "%=", "!%", ">", "<", "@", "!", "%", "=")


class QueryError(ValueError):
    """A filter or order the method refuses (crm.item.list answers 400 INVALID_ARG_VALUE)."""


@dataclass(frozen=True, slots=True)
class Condition:
    """One filter term: attribute, operator and normalized value(s)."""

    attribute: str
    kind: str
    operator: str
    values: tuple[Any, ...]


def split_operator(key: str) -> tuple[str, str]:
    """Split '>=DATE_MODIFY' into ('>=', 'DATE_MODIFY'); no prefix means '='."""
    for operator in _OPERATORS:
        if key.startswith(operator):
            return operator, key[len(operator) :]
    return "=", key


def parse_date(text: str) -> float:
    """Accept the date forms clients send: ISO 8601 (with or without zone/time) and dd.mm.yyyy."""
    value = text.strip()
    if not value:
        raise ValueError("empty date")
    if len(value) >= 10 and value[2] == "." and value[5] == ".":
        day, month, rest = value[:2], value[3:5], value[6:]
        value = f"{rest[:4]}-{month}-{day}{rest[4:].replace(' ', 'T', 1)}"
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace(" ", "T", 1))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def _normalize(kind: str, raw: Any, portal_tz: timezone) -> Any:
    if kind == _NUMBER:
        return float(raw)
    if kind == _DATE:
        stamp = parse_date(str(raw))
        text = str(raw).strip()
        # A zone-less date means portal-local time, as on the real portal.
        if not text.endswith("Z") and "+" not in text[10:] and "-" not in text[10:]:
            offset = portal_tz.utcoffset(None)
            stamp -= offset.total_seconds() if offset else 0
        return stamp
    return "" if raw is None else str(raw)


def _cast_arrays(kind: str, items: list[Any]) -> list[Any]:
    """A batch reference to a missing row substitutes a whole array; CRM casts it to an integer
    (1 for a non-empty array), so `>ID` starts from the top (docs/bitrix24-facts.md F-BATCH-3, F-BATCH-3a UNVERIFIED)."""
    if kind == _NUMBER and any(isinstance(item, dict | list) for item in items):
        return [1 if items else 0]
    return items


def build_conditions(
    raw_filter: Any,
    fields: dict[str, tuple[str, str]],
    *,
    portal_tz: timezone,
    strict_fields: bool,
    empty_value: str,
    case_insensitive: bool,
) -> tuple[list[Condition], bool]:
    """Turn a Bitrix24 filter object into conditions; the flag says the filter can match nothing."""
    if raw_filter in (None, "", []):
        return [], False
    if not isinstance(raw_filter, dict):
        if strict_fields:
            raise QueryError("Invalid filter: filter must be an object")
        return [], False
    lookup = {k.upper(): v for k, v in fields.items()} if case_insensitive else fields
    conditions: list[Condition] = []
    impossible = False
    for key, raw in raw_filter.items():
        operator, name = split_operator(str(key))
        spec = lookup.get(name.upper() if case_insensitive else name)
        if spec is None:
            if strict_fields:
                raise QueryError(f"Invalid filter: field '{name}' is not allowed in filter")
            continue  # the classic crm.*.list ignores filter keys it does not know
        attribute, kind = spec
        items, operator = _filter_items(kind, operator, raw)
        present = [item for item in items if item not in (None, "")]
        if not present and kind != _TEXT:
            # UNVERIFIED: an empty value for a number/date condition (e.g. `>ID=` after a batch
            # reference to a missing row).
            if empty_value == "match_none":
                impossible = True
            continue
        try:
            values = tuple(
                _normalize(kind, item, portal_tz) for item in (present if kind != _TEXT else items)
            )
        except ValueError as exc:
            if strict_fields:
                raise QueryError(f"Invalid filter: field '{name}' has invalid value") from exc
            impossible = True
            continue
        conditions.append(Condition(attribute, kind, operator, values))
    return conditions, impossible


def _filter_items(kind: str, operator: str, raw: Any) -> tuple[list[Any], str]:
    """A filter value as a list of items, and the operator (`=`/`!` over several values mean IN/NOT IN)."""
    if isinstance(raw, dict):
        items = list(raw.values())
    else:
        items = list(raw) if isinstance(raw, list | tuple) else [raw]
    items = _cast_arrays(kind, items)
    if operator in ("=", "!", "!=") and len(items) > 1:
        operator = "@" if operator == "=" else "!@"
    return items, operator


def build_order(
    raw_order: Any, fields: dict[str, tuple[str, str]], *, strict_fields: bool, case_insensitive: bool
) -> list[tuple[str, bool]]:
    """Turn {"FIELD": "ASC|DESC"} into [(attribute, descending)]; ID ascending when nothing is given."""
    if not isinstance(raw_order, dict) or not raw_order:
        if raw_order not in (None, "", []) and strict_fields and not isinstance(raw_order, dict):
            raise QueryError("Invalid order: order must be an object")
        return [("id", False)]
    lookup = {k.upper(): v for k, v in fields.items()} if case_insensitive else fields
    order: list[tuple[str, bool]] = []
    for name, direction in raw_order.items():
        spec = lookup.get(str(name).upper() if case_insensitive else str(name))
        word = str(direction).upper()
        if spec is None:
            if strict_fields:
                raise QueryError(f"Invalid order: field '{name}' is not allowed in order")
            continue
        if word not in ("ASC", "DESC"):
            if strict_fields:
                raise QueryError(
                    f"Invalid order: allowed sort directions are ASC, DESC. But got '{direction}' for field '{name}'"
                )
            word = "ASC"
        order.append((spec[0], word == "DESC"))
    return order or [("id", False)]


def _matches(lead: Lead, condition: Condition) -> bool:
    value = getattr(lead, condition.attribute)
    if condition.kind == _TEXT:
        return _matches_text("" if value is None else str(value), condition)
    if value is None:
        return condition.operator in ("!", "!=", "!@")
    return _matches_number(float(value), condition)


def _matches_text(text: str, condition: Condition) -> bool:
    operator = condition.operator
    targets = [str(v) for v in condition.values]
    if operator in ("=", "@"):
        matched = text in targets
    elif operator in ("!", "!=", "!@"):
        matched = text not in targets
    elif operator in ("%", "=%", "%="):
        matched = any(_like(text, t, operator) for t in targets)
    elif operator == "!%":
        matched = not any(_like(text, t, "%") for t in targets)
    else:
        matched = _compare(text, operator, targets[0])
    return matched


def _matches_number(number: float, condition: Condition) -> bool:
    operator = condition.operator
    if operator in ("=", "@"):
        matched = number in condition.values
    elif operator in ("!", "!=", "!@"):
        matched = number not in condition.values
    elif operator in ("%", "=%", "%=", "!%"):
        matched = False
    else:
        matched = _compare(number, operator, condition.values[0])
    return matched


def _like(text: str, pattern: str, operator: str) -> bool:
    if operator == "%":
        return pattern.lower() in text.lower()
    core = pattern.strip("%").lower()
    low = text.lower()
    if pattern.startswith("%") and pattern.endswith("%"):
        return core in low
    if pattern.endswith("%"):
        return low.startswith(core)
    if pattern.startswith("%"):
        return low.endswith(core)
    return low == core


def _compare(left: Any, operator: str, right: Any) -> bool:
    if operator == ">":
        return bool(left > right)
    if operator == ">=":
        return bool(left >= right)
    if operator == "<":
        return bool(left < right)
    return bool(left <= right)


@dataclass(slots=True)
class QueryResult:
    """One page plus the size of the whole matching set (what a COUNT would return)."""

    rows: list[Lead]
    matched: int


class LeadStore:
    """Leads sorted by ID; ID windows are found with bisect, other conditions scan only the window."""

    def __init__(self) -> None:
        self._ids: list[int] = []
        self._rows: list[Lead] = []
        self._version = 0
        self._cache: OrderedDict[tuple[Any, ...], Sequence[int]] = OrderedDict()

    def seed(self, count: int, seed: int, deleted_ratio: float) -> None:
        """Replace all leads with `count` deterministic synthetic ones."""
        self._rows = generate_leads(count, seed, deleted_ratio)
        self._ids = [lead.id for lead in self._rows]
        self._touch()

    def _touch(self) -> None:
        self._version += 1
        self._cache.clear()

    def __len__(self) -> int:
        return len(self._rows)

    def ids(self) -> list[int]:
        """Every lead ID in ascending order (a copy)."""
        return list(self._ids)

    def summary(self) -> dict[str, Any]:
        """Count and ID range, for the admin API."""
        return {
            "count": len(self._rows),
            "min_id": self._ids[0] if self._ids else None,
            "max_id": self._ids[-1] if self._ids else None,
        }

    def get(self, lead_id: int) -> Lead | None:
        """The lead with this ID, if any."""
        index = bisect.bisect_left(self._ids, lead_id)
        if index < len(self._ids) and self._ids[index] == lead_id:
            return self._rows[index]
        return None

    def add(self, fields: dict[str, Any], now: float, user_id: int) -> Lead:
        """Append a lead with the next ID (IDs only grow, as in MySQL auto-increment)."""
        lead_id = (self._ids[-1] if self._ids else 0) + 1
        phone = _first_value(fields.get("PHONE"))
        email = _first_value(fields.get("EMAIL"))
        stamp = int(now)
        lead = Lead(
            id=lead_id,
            title=str(fields.get("TITLE") or f"Lead #{lead_id}"),
            name=_opt(fields.get("NAME")),
            last_name=_opt(fields.get("LAST_NAME")),
            status_id=str(fields.get("STATUS_ID") or "NEW"),
            source_id=str(fields.get("SOURCE_ID") or "CALL"),
            opportunity=float(fields.get("OPPORTUNITY") or 0),
            currency_id=str(fields.get("CURRENCY_ID") or "USD"),
            assigned_by_id=int(fields.get("ASSIGNED_BY_ID") or user_id),
            created_by_id=user_id,
            date_create=stamp,
            date_modify=stamp,
            phone=phone,
            email=email,
            company_title=_opt(fields.get("COMPANY_TITLE")),
            comments=_opt(fields.get("COMMENTS")),
        )
        self._ids.append(lead_id)
        self._rows.append(lead)
        self._touch()
        return lead

    def update(self, lead_id: int, fields: dict[str, Any], now: float) -> Lead | None:
        """Change the named scalar fields of a lead (DATE_MODIFY moves); None when it does not exist."""
        lead = self.get(lead_id)
        if lead is None:
            return None
        text = {
            "TITLE": "title",
            "STATUS_ID": "status_id",
            "SOURCE_ID": "source_id",
            "CURRENCY_ID": "currency_id",
        }
        optional = {
            "NAME": "name",
            "LAST_NAME": "last_name",
            "COMPANY_TITLE": "company_title",
            "COMMENTS": "comments",
        }
        changes: dict[str, Any] = {}
        for key, value in fields.items():
            if key in text:
                changes[text[key]] = str(value)
            elif key in optional:
                changes[optional[key]] = _opt(value)
            elif key == "OPPORTUNITY":
                changes["opportunity"] = float(value or 0)
            elif key == "ASSIGNED_BY_ID":
                changes["assigned_by_id"] = int(value)
            elif key == "PHONE":
                changes["phone"] = _first_value(value)
            elif key == "EMAIL":
                changes["email"] = _first_value(value)
        for attribute, value in changes.items():
            setattr(lead, attribute, value)
        lead.date_modify = int(now)
        self._touch()
        return lead

    def delete(self, lead_id: int) -> bool:
        """Remove a lead; False when it does not exist."""
        index = bisect.bisect_left(self._ids, lead_id)
        if index < len(self._ids) and self._ids[index] == lead_id:
            del self._ids[index]
            del self._rows[index]
            self._touch()
            return True
        return False

    def query(
        self,
        conditions: list[Condition],
        order: list[tuple[str, bool]],
        start: int,
        page_size: int = PAGE_SIZE,
    ) -> QueryResult:
        """Rows [start, start + page_size) of the ordered matching set (start < 0 means 0) and the set size."""
        low, high, rest = self._id_window(conditions)
        if low >= high:
            return QueryResult([], 0)
        if rest:
            matching: Sequence[int] = self._cached(
                ("match", low, high, tuple(rest)), lambda: self._scan(low, high, rest)
            )
        else:
            matching = range(low, high)
        first = max(start, 0)
        if order and order[0][0] == "id":
            if order[0][1]:
                size = len(matching)
                picked = [
                    matching[i] for i in range(size - 1 - first, max(size - 1 - first - page_size, -1), -1)
                ]
            else:
                picked = list(matching[first : first + page_size])
        else:
            key = ("sort", low, high, tuple(rest), tuple(order))
            ordered = self._cached(key, lambda: self._sorted(matching, order))
            picked = list(ordered[first : first + page_size])
        rows = self._rows
        return QueryResult([rows[i] for i in picked], len(matching))

    def _id_window(self, conditions: list[Condition]) -> tuple[int, int, list[Condition]]:
        low, high = 0, len(self._ids)
        rest: list[Condition] = []
        ids = self._ids
        for condition in conditions:
            if condition.attribute != "id" or condition.operator not in (">", ">=", "<", "<=", "=", "@"):
                rest.append(condition)
                continue
            if condition.operator in ("=", "@"):
                if len(condition.values) != 1:
                    rest.append(condition)
                    continue
                value = condition.values[0]
                low = max(low, bisect.bisect_left(ids, value))
                high = min(high, bisect.bisect_right(ids, value))
            elif condition.operator == ">":
                low = max(low, bisect.bisect_right(ids, condition.values[0]))
            elif condition.operator == ">=":
                low = max(low, bisect.bisect_left(ids, condition.values[0]))
            elif condition.operator == "<":
                high = min(high, bisect.bisect_left(ids, condition.values[0]))
            else:
                high = min(high, bisect.bisect_right(ids, condition.values[0]))
        return low, high, rest

    def _scan(self, low: int, high: int, conditions: list[Condition]) -> list[int]:
        rows = self._rows
        return [i for i in range(low, high) if all(_matches(rows[i], c) for c in conditions)]

    def _sorted(self, matching: Sequence[int], order: list[tuple[str, bool]]) -> list[int]:
        ordered = list(matching)
        rows = self._rows
        # Stable sorts from the last key to the first; ID breaks ties so pages never overlap.
        ordered.sort(key=lambda i: rows[i].id)
        for attribute, descending in reversed(order):
            ordered.sort(key=_attribute_key(rows, attribute), reverse=descending)
        return ordered

    def _cached(self, key: tuple[Any, ...], build: Callable[[], Sequence[int]]) -> Sequence[int]:
        full_key = (self._version, *key)
        found = self._cache.get(full_key)
        if found is None:
            found = build()
            self._cache[full_key] = found
            if len(self._cache) > 16:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(full_key)
        return found


def _attribute_key(rows: list[Lead], attribute: str) -> Callable[[int], tuple[int, Any]]:
    def key(index: int) -> tuple[int, Any]:
        return _sort_key(getattr(rows[index], attribute))

    return key


def _sort_key(value: Any) -> tuple[int, Any]:
    if value is None:
        return (0, "")
    if isinstance(value, int | float):
        return (1, float(value))
    return (2, str(value))


def _opt(value: Any) -> str | None:
    return None if value in (None, "") else str(value)


def _first_value(raw: Any) -> str | None:
    if isinstance(raw, dict):
        raw = list(raw.values())
    if isinstance(raw, list) and raw:
        first = raw[0]
        if isinstance(first, dict):
            return _opt(first.get("VALUE"))
        return _opt(first)
    return _opt(raw)


def lead_row(lead: Lead, select: list[str] | None, tz: timezone) -> dict[str, Any]:
    """A crm.lead.* row: `*` or no select means every scalar field; PHONE/EMAIL only when named."""
    wanted = [str(s).upper() for s in select] if select else ["*"]
    row: dict[str, Any] = {}
    if "*" in wanted:
        for name, getter in LEAD_FIELDS.items():
            row[name] = getter(lead, tz)
    else:
        # ID always comes back: the classic list needs it to attach multi-fields.
        row["ID"] = str(lead.id)
        for name in wanted:
            lead_getter = LEAD_FIELDS.get(name)
            if lead_getter is not None:
                row[name] = lead_getter(lead, tz)
    for name in LEAD_MULTI_FIELDS:
        if name in wanted:
            values = _multifield(lead, name)
            if values:
                row[name] = values
    return row


def item_row(lead: Lead, select: list[str] | None, tz: timezone) -> dict[str, Any]:
    """A crm.item.* row for a lead: camelCase names, typed values."""
    wanted = [str(s) for s in select] if select else ["*"]
    row: dict[str, Any] = {}
    if "*" in wanted:
        for name, getter in ITEM_FIELDS.items():
            row[name] = getter(lead, tz)
    else:
        row["id"] = lead.id
        for name in wanted:
            item_getter = ITEM_FIELDS.get(name)
            if item_getter is not None:
                row[name] = item_getter(lead, tz)
    if "fm" in wanted:
        row["fm"] = _item_fm(lead)
    return row


def full_lead(lead: Lead, tz: timezone) -> dict[str, Any]:
    """crm.lead.get: every field, multi-fields included."""
    return lead_row(lead, ["*", *LEAD_MULTI_FIELDS], tz)
