"""Fast bulk reads of CRM lists (fact sheet 5.2, 5.3): ID windows, `start=-1`, 50 chained pages per batch.

Every page is `order ID ASC`, `filter[>ID] = <last id>`, `start = -1` (no COUNT). Inside one batch, page
k+1 takes its lower bound from page k's 50th row through `$result[ck][49][ID]`. When page k is short the
reference points at a missing row and the server substitutes something (the emulator: an empty string,
which restarts the list from the top), so the chain is cut client-side at the first short page and
every row is checked to be inside the window and in ascending order.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from b24connector.bitrix24.envelope import BatchResult
from b24connector.bitrix24.errors import (
    DeadlineExceeded,
    OperationTimeLimit,
    QueryLimitExceeded,
    RestError,
    TransientError,
)
from b24connector.numbers import MAX_SAFE_INTEGER, ascii_int

if TYPE_CHECKING:
    from concurrent.futures import Future

    from b24connector.bitrix24.portal_context import PortalContext

    # Annotations only: the REST client module loads requests, which the caller brings anyway.
    from b24connector.bitrix24.rest import RestClient

PAGE_SIZE = 50
MAX_CHAIN = 50
Row = dict[str, Any]


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


def _select_with_id(spec: ListSpec, select: Sequence[str]) -> list[str]:
    fields = list(select)
    if not fields:
        return ["*"]  # the method's default field set includes the ID
    if "*" not in fields and spec.id_field not in fields:
        fields.insert(0, spec.id_field)
    return fields


def _page_params(spec: ListSpec, select: list[str], window: Window, lower: int | str) -> dict[str, Any]:
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


@dataclass(frozen=True, slots=True)
class ListHead:
    """The first batch of a list read: its rows, the highest matching ID and the ID density it showed."""

    rows: list[Row]
    top: int | None  # highest matching ID when the batch ran; None when exhausted or unknown
    exhausted: bool  # nothing matches after these rows
    density: float  # rows per ID over the IDs the batch walked (1.0 when it walked none)
    last: int  # the next read starts after this ID


@dataclass(slots=True)
class _Progress:
    last: int
    exhausted: bool = False
    rows: int = 0
    limit_waits: int = 0


class FastLister:
    """Reads whole CRM lists with the fewest HTTP requests and no COUNT queries."""

    def __init__(
        self,
        client: RestClient,
        *,
        transient_retries: int = 2,
        max_limit_waits: int = 2,
        sleep: Callable[[float], None] = time.sleep,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.client = client
        self._transient_retries = transient_retries
        self._max_limit_waits = max_limit_waits
        self._sleep = sleep
        self._rand = rand

    def __repr__(self) -> str:
        return f"FastLister(client={self.client!r})"

    # --- one batch ---------------------------------------------------------------------------------

    def _batch(
        self, portal: PortalContext, commands: Mapping[str, tuple[str, Mapping[str, Any]]]
    ) -> BatchResult:
        attempt = 0
        while True:
            try:
                return self.client.batch(portal, commands, halt=True)
            except (QueryLimitExceeded, DeadlineExceeded):
                raise  # already retried with backoff, or out of time
            except TransientError:
                # List reads are idempotent, so a lost answer (5xx, timeout, HTML page) is worth a retry.
                if attempt >= self._transient_retries:
                    raise
                self._sleep(self._rand() * min(4.0, 0.5 * 2**attempt))
                attempt += 1

    def read_batch(
        self,
        portal: PortalContext,
        spec: ListSpec,
        select: list[str],
        window: Window,
        progress: _Progress,
        *,
        max_rows: int | None = None,
        chain: int = MAX_CHAIN,
        extra: Mapping[str, tuple[str, Mapping[str, Any]]] | None = None,
    ) -> tuple[list[Row], BatchResult | None]:
        """One HTTP request: up to `chain` chained pages after `progress.last` (plus `extra` commands).

        Updates `progress`; returns the rows in ID order and the raw batch answer (for `extra`).
        """
        extra = extra or {}
        pages = min(chain, MAX_CHAIN - len(extra))
        if window.before is not None:
            # IDs are integers, so (last, before) holds at most before-last-1 rows: never ask for more pages.
            span = window.before - progress.last - 1
            pages = min(pages, math.ceil(span / PAGE_SIZE))
        if max_rows is not None:
            pages = min(pages, math.ceil(max_rows / PAGE_SIZE))
        if pages <= 0:
            progress.exhausted = True
            if not extra:
                return [], None
        commands: dict[str, tuple[str, Mapping[str, Any]]] = {}
        for k in range(max(pages, 0)):
            lower = progress.last if k == 0 else spec.reference(f"c{k - 1}")
            commands[f"c{k}"] = (spec.method, _page_params(spec, select, window, lower))
        # Extra commands go last: with halt=1 a failing page must not hide behind them.
        commands.update(extra)
        result = self._batch(portal, commands)
        rows: list[Row] = []
        for k in range(max(pages, 0)):
            key = f"c{k}"
            if key in result.errors:
                self._on_page_error(portal, spec, result.errors[key], progress)
                return rows, result  # rows so far are good; the next batch resumes after them
            if key not in result.results:
                raise TransientError("MALFORMED_BATCH", f"batch answered without page {key}")
            page = spec.rows_of(result.results[key])
            for row in page:
                row_id = spec.id_of(row)
                if row_id <= progress.last or (window.before is not None and row_id >= window.before):
                    raise TransientError(
                        "OUT_OF_WINDOW", f"{spec.method} answered a row outside the ID window"
                    )
                progress.last = row_id
                rows.append(row)
            progress.rows += len(page)
            if len(page) < PAGE_SIZE:
                progress.exhausted = True  # short page: nothing left; later pages hold substituted junk
                return rows, result
        if window.before is not None and progress.last >= window.before - 1:
            progress.exhausted = True
        return rows, result

    def _on_page_error(
        self, portal: PortalContext, spec: ListSpec, error: RestError, progress: _Progress
    ) -> None:
        if not isinstance(error, OperationTimeLimit):
            raise error
        if progress.limit_waits >= self._max_limit_waits:
            raise OperationTimeLimit(
                error.code,
                error.description,
                http_status=error.http_status,
                reset_at=error.reset_at or self.client.known_reset_at(portal.host, [spec.method]),
            )
        progress.limit_waits += 1
        self.client.wait_for_operating_reset(portal, error, [spec.method])

    # --- whole lists -------------------------------------------------------------------------------

    def iter_window(
        self,
        portal: PortalContext,
        spec: ListSpec,
        select: list[str],
        window: Window,
        *,
        limit: int | None = None,
    ) -> Iterator[list[Row]]:
        """Pages of rows of one ID window in ascending ID order, one batch request at a time."""
        progress = _Progress(last=window.after)
        while not progress.exhausted:
            max_rows = None if limit is None else limit - progress.rows
            if max_rows is not None and max_rows <= 0:
                return
            rows, _ = self.read_batch(portal, spec, select, window, progress, max_rows=max_rows)
            if rows:
                yield rows

    def iter_list(
        self,
        portal: PortalContext,
        method: str,
        *,
        select: Sequence[str] = (),
        filter: Mapping[str, Any] | None = None,
        after_id: int = 0,
        before_id: int | None = None,
        limit: int | None = None,
        entity_type_id: int = 1,
    ) -> Iterator[Row]:
        """Rows with after_id < ID < before_id matching `filter`, in ascending ID order (sequential)."""
        spec = list_spec(method, entity_type_id=entity_type_id)
        window = make_window(spec, filter, after_id, before_id)
        produced = 0
        for rows in self.iter_window(portal, spec, _select_with_id(spec, select), window, limit=limit):
            for row in rows:
                if limit is not None and produced >= limit:
                    return
                produced += 1
                yield row

    def max_id(
        self,
        portal: PortalContext,
        method: str,
        filter: Mapping[str, Any] | None = None,
        *,
        after_id: int = 0,
        before_id: int | None = None,
        entity_type_id: int = 1,
    ) -> int | None:
        """The highest matching ID (one `order ID DESC, start=-1` call), or None when nothing matches."""
        spec = list_spec(method, entity_type_id=entity_type_id)
        window = make_window(spec, filter, after_id, before_id)
        response = self.client.call(portal, spec.method, _max_id_params(spec, window))
        rows = spec.rows_of(response.result)
        return spec.id_of(rows[0]) if rows else None

    def read_head(
        self,
        portal: PortalContext,
        method: str,
        *,
        select: Sequence[str] = (),
        filter: Mapping[str, Any] | None = None,
        after_id: int = 0,
        before_id: int | None = None,
        limit: int | None = None,
        entity_type_id: int = 1,
    ) -> ListHead:
        """One request: up to 49 pages (at most `limit` rows) plus the highest matching ID."""
        spec = list_spec(method, entity_type_id=entity_type_id)
        window = make_window(spec, filter, after_id, before_id)
        return self._head(portal, spec, _select_with_id(spec, select), window, limit)

    def _head(
        self, portal: PortalContext, spec: ListSpec, select: list[str], window: Window, limit: int | None
    ) -> ListHead:
        progress = _Progress(last=window.after)
        top_command = {"top": (spec.method, _max_id_params(spec, window))}
        rows, result = self.read_batch(
            portal, spec, select, window, progress, max_rows=limit, extra=top_command
        )
        span_read = progress.last - window.after
        density = min(1.0, progress.rows / span_read) if span_read > 0 else 1.0
        top = None if progress.exhausted else self._top_of(spec, result)
        if limit is not None and len(rows) > limit:
            # Whole pages came back; rows past the limit are read again by whoever continues.
            rows = rows[:limit]
            return ListHead(rows, top, False, density, spec.id_of(rows[-1]) if rows else window.after)
        return ListHead(rows, top, progress.exhausted, density, progress.last)

    def iter_list_parallel(
        self,
        portal: PortalContext,
        method: str,
        *,
        select: Sequence[str] = (),
        filter: Mapping[str, Any] | None = None,
        after_id: int = 0,
        before_id: int | None = None,
        limit: int | None = None,
        entity_type_id: int = 1,
        workers: int = 4,
    ) -> Iterator[Row]:
        """Like iter_list, but reads ID windows on a small thread pool; rows still come in ID order.

        The first request carries the highest matching ID and the first 49 pages at once; the ID
        density they show sizes the remaining windows to about one batch (2,500 rows) each, so a
        dense range costs one request per ~2,500 rows and no probing of empty pages. With a `limit`,
        only the windows expected to hold the rows still wanted are read.
        """
        spec = list_spec(method, entity_type_id=entity_type_id)
        select_ = _select_with_id(spec, select)
        window = make_window(spec, filter, after_id, before_id)
        head = self._head(portal, spec, select_, window, limit)
        produced = 0

        def emit(page: list[Row]) -> Iterator[Row]:
            nonlocal produced
            for row in page:
                if limit is not None and produced >= limit:
                    return
                produced += 1
                yield row

        yield from emit(head.rows)
        if head.exhausted or (limit is not None and produced >= limit):
            return
        if head.top is None or head.top <= head.last:
            # Rows appeared during the read or the answer lacked `top`: finish sequentially.
            rest = Window(head.last, window.before, window.base_filter)
            for page in self.iter_window(portal, spec, select_, rest):
                yield from emit(page)
            return
        wanted = None if limit is None else limit - produced
        windows, covered = _split(head.last, head.top, head.density, window.base_filter, wanted)
        yield from self._run_windows(
            portal,
            spec,
            select_,
            windows,
            workers=workers,
            emit=emit,
            done=lambda: limit is not None and produced >= limit,
        )
        if covered < head.top and limit is not None and produced < limit:
            # The range was sparser than the first batch showed: finish sequentially after the windows.
            rest = Window(covered, window.before, window.base_filter)
            for page in self.iter_window(portal, spec, select_, rest, limit=limit - produced):
                yield from emit(page)

    @staticmethod
    def _top_of(spec: ListSpec, result: BatchResult | None) -> int | None:
        if result is None or "top" in result.errors:
            return None  # the sequential fallback meets (and handles) any real problem itself
        rows = spec.rows_of(result.results.get("top"))
        return spec.id_of(rows[0]) if rows else None

    def _run_windows(
        self,
        portal: PortalContext,
        spec: ListSpec,
        select: list[str],
        windows: list[Window],
        *,
        workers: int,
        emit: Callable[[list[Row]], Iterator[Row]],
        done: Callable[[], bool],
    ) -> Iterator[Row]:
        # Imported here: only the parallel path pays for concurrent.futures at cold start.
        from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415

        def read(window: Window) -> list[Row]:
            rows: list[Row] = []
            for page in self.iter_window(portal, spec, select, window):
                rows.extend(page)
            return rows

        pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="b24-list")
        pending: list[Future[list[Row]]] = []
        upcoming = iter(windows)
        try:
            # Keep at most 2x workers windows in flight so memory stays bounded while merging in order.
            for window in upcoming:
                pending.append(pool.submit(read, window))
                if len(pending) >= 2 * workers:
                    break
            while pending:
                rows = pending.pop(0).result()
                next_window = next(upcoming, None)
                if next_window is not None:
                    pending.append(pool.submit(read, next_window))
                yield from emit(rows)
                if done():
                    return
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def _max_id_params(spec: ListSpec, window: Window) -> dict[str, Any]:
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


def _split(
    after: int, top: int, density: float, base_filter: Mapping[str, Any], wanted: int | None
) -> tuple[list[Window], int]:
    """ID windows covering (after, top], each expected to hold at most one batch of rows.

    With `wanted`, only the leading windows expected to hold that many rows (the last one trimmed):
    a limited read must not fetch windows past its limit. Returns the windows and the last ID they cover.
    """
    density = max(density, 1e-6)
    batch_rows = PAGE_SIZE * MAX_CHAIN
    # At density 1 a window of 2,500 IDs holds exactly 2,500 rows; sparser ranges get wider windows.
    size = max(batch_rows, math.floor(batch_rows * _WINDOW_FILL / density))
    end = top if wanted is None else min(top, after + math.ceil(wanted / density))
    windows = [Window(low, min(low + size, end) + 1, base_filter) for low in range(after, end, size)]
    return windows, end
