"""What a fast list read asks for: the query, the method's shape, ID windows and the pages' parameters.

A read is one ListQuery: a list method, its fields and filter, an ID window (after_id, before_id) and
a row cap. ID range conditions in the filter are folded into the window (make_window), so every page
can be `filter[>ID] = <last id>` in ascending ID order (docs/bitrix24-facts.md F-LIST-1).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from b24connector.bitrix24.errors import TransientError
from b24connector.numbers import MAX_SAFE_INTEGER, ascii_int

PAGE_SIZE = 50
MAX_CHAIN = 50
Row = dict[str, Any]


@dataclass(frozen=True, slots=True)
class ListQuery:
    """One list read: rows of `method` with after_id < ID < before_id matching `filter`, at most `limit`."""

    method: str
    select: Sequence[str] = ()
    filter: Mapping[str, Any] | None = None  # Bitrix24's own parameter name
    after_id: int = 0
    before_id: int | None = None
    limit: int | None = None
    entity_type_id: int = 1  # crm.item.list only

    def spec(self) -> ListSpec:
        """The method's ListSpec (ValueError for a method fast listing does not support)."""
        return list_spec(self.method, entity_type_id=self.entity_type_id)

    def window(self, spec: ListSpec) -> Window:
        """The ID window of this query, with the filter's ID conditions folded in."""
        return make_window(spec, self.filter, self.after_id, self.before_id)


@dataclass(frozen=True, slots=True)
class ListSpec:
    """How one list method names its ID field, where its rows live, and what extra params it needs."""

    method: str
    id_field: str
    rows_key: str | None = None  # crm.item.list nests rows under result.items
    extra: Mapping[str, Any] = field(default_factory=dict)

    def reference(self, command_id: str) -> str:
        """The batch reference to the last (50th) row's ID of a full page of `command_id`."""
        if self.rows_key:
            return f"$result[{command_id}][{self.rows_key}][{PAGE_SIZE - 1}][{self.id_field}]"
        return f"$result[{command_id}][{PAGE_SIZE - 1}][{self.id_field}]"

    def rows_of(self, page: object) -> list[Row]:
        """The rows of one page result, or raise when the page is not shaped as expected."""
        if self.rows_key and isinstance(page, Mapping):
            page = page.get(self.rows_key)
        if page is None or page == {}:
            return []
        if not isinstance(page, list) or not all(isinstance(row, dict) for row in page):
            raise TransientError("MALFORMED_PAGE", f"{self.method} answered an unexpected page shape")
        return page

    def id_of(self, row: Mapping[str, Any]) -> int:
        """The integer ID of a row (crm.lead.list sends it as a string)."""
        number = ascii_int(row.get(self.id_field))
        if number is not None:
            return number
        raise TransientError("MALFORMED_ROW", f"{self.method} answered a row without a numeric ID")


_UPPER_ID_METHODS = ("crm.lead.list", "crm.deal.list", "crm.contact.list", "crm.company.list")


def list_spec(method: str, *, entity_type_id: int = 1) -> ListSpec:
    """The ListSpec of a supported list method (classic crm.*.list or crm.item.list)."""
    if method in _UPPER_ID_METHODS:
        return ListSpec(method, "ID")
    if method == "crm.item.list":
        return ListSpec(method, "id", "items", {"entityTypeId": entity_type_id})
    raise ValueError(f"fast listing supports {', '.join(_UPPER_ID_METHODS)} and crm.item.list")


@dataclass(frozen=True, slots=True)
class Window:
    """IDs strictly between `after` and `before` (None: unbounded), plus the caller's other filters."""

    after: int
    before: int | None
    base_filter: Mapping[str, Any]


def _as_int(value: object) -> int:
    number = ascii_int(value, minimum=-MAX_SAFE_INTEGER)
    if number is not None:
        return number
    raise ValueError("ID bounds in a fast-list filter must be integers")


def make_window(
    spec: ListSpec, filter_: Mapping[str, Any] | None, after_id: int, before_id: int | None
) -> Window:
    """Fold ID range conditions of the caller's filter into the window, keep the rest as is."""
    after, before = after_id, before_id
    rest: dict[str, Any] = {}
    for key, value in (filter_ or {}).items():
        upper = str(key).upper()
        if upper == f">{spec.id_field.upper()}":
            after = max(after, _as_int(value))
        elif upper == f">={spec.id_field.upper()}":
            after = max(after, _as_int(value) - 1)
        elif upper == f"<{spec.id_field.upper()}":
            bound = _as_int(value)
            before = bound if before is None else min(before, bound)
        elif upper == f"<={spec.id_field.upper()}":
            bound = _as_int(value) + 1
            before = bound if before is None else min(before, bound)
        else:
            rest[str(key)] = value
    return Window(after, before, rest)


def select_with_id(spec: ListSpec, select: Sequence[str]) -> list[str]:
    """The fields to ask for: always the ID (the cursor and the window need it)."""
    fields = list(select)
    if not fields:
        return ["*"]  # the method's default field set includes the ID
    if "*" not in fields and spec.id_field not in fields:
        fields.insert(0, spec.id_field)
    return fields


def page_params(spec: ListSpec, select: list[str], window: Window, lower: int | str) -> dict[str, Any]:
    """Params of one page: the window above `lower` (an ID or a batch reference), ascending, no COUNT."""
    filter_: dict[str, Any] = dict(window.base_filter)
    filter_[f">{spec.id_field}"] = lower
    if window.before is not None:
        filter_[f"<{spec.id_field}"] = window.before
    return {
        **spec.extra,
        "order": {spec.id_field: "ASC"},
        "filter": filter_,
        "select": select,
        "start": -1,
    }


def max_id_params(spec: ListSpec, window: Window) -> dict[str, Any]:
    """Params of the one `order ID DESC` call that answers the highest matching ID."""
    filter_: dict[str, Any] = dict(window.base_filter)
    filter_[f">{spec.id_field}"] = window.after
    if window.before is not None:
        filter_[f"<{spec.id_field}"] = window.before
    return {
        **spec.extra,
        "order": {spec.id_field: "DESC"},
        "filter": filter_,
        "select": [spec.id_field],
        "start": -1,
    }


# Windows aim a little under one batch of rows: an overfull window costs a whole extra request.
_WINDOW_FILL = 0.98


def window_span(density: float) -> int:
    """IDs in a window expected to hold a little under one batch (2,500 rows) at `density` rows per ID."""
    batch_rows = PAGE_SIZE * MAX_CHAIN
    # At density 1 a window of 2,500 IDs holds exactly 2,500 rows; sparser ranges get wider windows.
    return max(batch_rows, math.floor(batch_rows * _WINDOW_FILL / max(density, 1e-6)))


def plan_windows(
    after: int, top: int, density: float, base_filter: Mapping[str, Any], wanted: int | None
) -> tuple[list[Window], int]:
    """ID windows covering (after, top], each expected to hold at most one batch of rows.

    With `wanted`, only the leading windows expected to hold that many rows (the last one trimmed):
    a limited read must not fetch windows past its limit. Returns the windows and the last ID they cover.
    """
    density = max(density, 1e-6)
    size = window_span(density)
    end = top if wanted is None else min(top, after + math.ceil(wanted / density))
    windows = [Window(low, min(low + size, end) + 1, base_filter) for low in range(after, end, size)]
    return windows, end
