"""Fast bulk reads of CRM lists: ID windows, `start=-1`, 50 chained pages per batch.

Every page is `order ID ASC`, `filter[>ID] = <last id>`, `start = -1` (no COUNT, docs/bitrix24-facts.md
F-LIST-1). Inside one batch, page k+1 takes its lower bound from page k's 50th row through
`$result[ck][49][ID]` (F-BATCH-1, F-BATCH-2). When page k is short the reference points at a missing
row and the server substitutes the parent (F-BATCH-3; the emulator: an empty string, which restarts the
list from the top), so the chain is cut client-side at the first short page and every row is checked
to be inside the window and in ascending order. What to read is a ListQuery (bitrix24.list_query).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from b24connector.bitrix24.envelope import BatchResult
from b24connector.bitrix24.errors import (
    DeadlineExceeded,
    OperationTimeLimit,
    QueryLimitExceeded,
    RestError,
    TransientError,
)
from b24connector.bitrix24.list_query import (
    MAX_CHAIN,
    PAGE_SIZE,
    ListQuery,
    ListSpec,
    Row,
    Window,
    max_id_params,
    page_params,
    plan_windows,
    select_with_id,
    window_span,
)

if TYPE_CHECKING:
    from concurrent.futures import Future

    from b24connector.bitrix24.portal_context import PortalContext

    # Annotations only: the REST client module loads requests, which the caller brings anyway.
    from b24connector.bitrix24.rest import RestClient

Commands = Mapping[str, tuple[str, Mapping[str, Any]]]


@dataclass(frozen=True, slots=True)
class ListHead:
    """The first batch of a list read: its rows, the highest matching ID and the ID density it showed."""

    rows: list[Row]
    top: int | None  # highest matching ID when the batch ran; None when exhausted or unknown
    exhausted: bool  # nothing matches after these rows
    density: float  # rows per ID over the IDs the batch walked (1.0 when it walked none)
    last: int  # the next read starts after this ID


@dataclass(frozen=True, slots=True)
class ListPage:
    """A planned read of whole ID windows: its rows, where the next read starts and the density seen."""

    rows: list[Row]
    last: int  # the next read starts after this ID
    exhausted: bool  # nothing matches after `last` (below the read's upper bound)
    density: float  # rows per ID over the IDs this read walked: the plan for the next read


@dataclass(slots=True)
class _Progress:
    last: int
    exhausted: bool = False
    rows: int = 0
    limit_waits: int = 0


@dataclass(frozen=True, slots=True)
class _Read:
    """One prepared read: the method's spec, the fields to ask for and the ID window."""

    spec: ListSpec
    select: list[str]
    window: Window

    @classmethod
    def of(cls, query: ListQuery) -> _Read:
        spec = query.spec()
        return cls(spec, select_with_id(spec, query.select), query.window(spec))

    def within(self, window: Window) -> _Read:
        return _Read(self.spec, self.select, window)


def _page_count(window: Window, progress: _Progress, chain: int, max_rows: int | None) -> int:
    """How many chained pages one batch asks for: never past the window's upper bound or `max_rows`."""
    pages = chain
    if window.before is not None:
        # IDs are integers, so (last, before) holds at most before-last-1 rows: never ask for more pages.
        pages = min(pages, math.ceil((window.before - progress.last - 1) / PAGE_SIZE))
    if max_rows is not None:
        pages = min(pages, math.ceil(max_rows / PAGE_SIZE))
    return max(pages, 0)


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

    def _batch(self, portal: PortalContext, commands: Commands) -> BatchResult:
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
        read: _Read,
        progress: _Progress,
        *,
        max_rows: int | None = None,
        chain: int = MAX_CHAIN,
        extra: Commands | None = None,
    ) -> tuple[list[Row], BatchResult | None]:
        """One HTTP request: up to `chain` chained pages after `progress.last` (plus `extra` commands).

        Updates `progress`; returns the rows in ID order and the raw batch answer (for `extra`).
        """
        extra = extra or {}
        pages = _page_count(read.window, progress, min(chain, MAX_CHAIN - len(extra)), max_rows)
        if pages == 0:
            progress.exhausted = True
            if not extra:
                return [], None
        spec = read.spec
        commands: dict[str, tuple[str, Mapping[str, Any]]] = {}
        for k in range(pages):
            lower = progress.last if k == 0 else spec.reference(f"c{k - 1}")
            commands[f"c{k}"] = (spec.method, page_params(spec, read.select, read.window, lower))
        # Extra commands go last: with halt=1 a failing page must not hide behind them.
        commands.update(extra)
        result = self._batch(portal, commands)
        return self._take_pages(portal, read, result, pages, progress), result

    def _take_pages(
        self, portal: PortalContext, read: _Read, result: BatchResult, pages: int, progress: _Progress
    ) -> list[Row]:
        """The rows of a batch's pages in order, up to the first failed or short page."""
        rows: list[Row] = []
        for k in range(pages):
            key = f"c{k}"
            if key in result.errors:
                self._on_page_error(portal, read.spec, result.errors[key], progress)
                return rows  # rows so far are good; the next batch resumes after them
            if key not in result.results:
                raise TransientError("MALFORMED_BATCH", f"batch answered without page {key}")
            page = read.spec.rows_of(result.results[key])
            rows.extend(_checked(read, page, progress))
            progress.rows += len(page)
            if len(page) < PAGE_SIZE:
                progress.exhausted = True  # short page: nothing left; later pages hold substituted junk
                return rows
        if read.window.before is not None and progress.last >= read.window.before - 1:
            progress.exhausted = True
        return rows

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
        self, portal: PortalContext, read: _Read, *, limit: int | None = None
    ) -> Iterator[list[Row]]:
        """Pages of rows of one ID window in ascending ID order, one batch request at a time."""
        progress = _Progress(last=read.window.after)
        while not progress.exhausted:
            max_rows = None if limit is None else limit - progress.rows
            if max_rows is not None and max_rows <= 0:
                return
            rows, _ = self.read_batch(portal, read, progress, max_rows=max_rows)
            if rows:
                yield rows

    def iter_list(self, portal: PortalContext, query: ListQuery) -> Iterator[Row]:
        """Rows of `query` in ascending ID order, one batch after another."""
        limit = query.limit
        produced = 0
        for rows in self.iter_window(portal, _Read.of(query), limit=limit):
            for row in rows:
                if limit is not None and produced >= limit:
                    return
                produced += 1
                yield row

    def read_head(self, portal: PortalContext, query: ListQuery) -> ListHead:
        """One request: up to 49 pages (at most `query.limit` rows) plus the highest matching ID."""
        return self._head(portal, _Read.of(query), query.limit)

    def _head(self, portal: PortalContext, read: _Read, limit: int | None) -> ListHead:
        spec, window = read.spec, read.window
        progress = _Progress(last=window.after)
        top_command = {"top": (spec.method, max_id_params(spec, window))}
        rows, result = self.read_batch(portal, read, progress, max_rows=limit, extra=top_command)
        span_read = progress.last - window.after
        density = min(1.0, progress.rows / span_read) if span_read > 0 else 1.0
        top = None if progress.exhausted else self._top_of(spec, result)
        if limit is not None and len(rows) > limit:
            # Whole pages came back; rows past the limit are read again by whoever continues.
            rows = rows[:limit]
            return ListHead(rows, top, False, density, spec.id_of(rows[-1]) if rows else window.after)
        return ListHead(rows, top, progress.exhausted, density, progress.last)

    def iter_list_parallel(
        self, portal: PortalContext, query: ListQuery, *, workers: int = 4
    ) -> Iterator[Row]:
        """Like iter_list, but reads ID windows on a small thread pool; rows still come in ID order.

        The first request carries the highest matching ID and the first 49 pages at once; the ID
        density they show sizes the remaining windows to about one batch (2,500 rows) each, so a
        dense range costs one request per ~2,500 rows and no probing of empty pages. With a `limit`,
        only the windows expected to hold the rows still wanted are read.
        """
        read = _Read.of(query)
        window = read.window
        head = self._head(portal, read, query.limit)
        out = _Emitter(query.limit)
        yield from out.emit(head.rows)
        if head.exhausted or out.done():
            return
        if head.top is None or head.top <= head.last:
            # Rows appeared during the read or the answer lacked `top`: finish sequentially.
            rest = read.within(Window(head.last, window.before, window.base_filter))
            for page in self.iter_window(portal, rest):
                yield from out.emit(page)
            return
        windows, covered = plan_windows(head.last, head.top, head.density, window.base_filter, out.wanted())
        yield from self._run_windows(portal, read, windows, workers=workers, out=out)
        wanted = out.wanted()
        if covered < head.top and wanted is not None and wanted > 0:
            # The range was sparser than the first batch showed: finish sequentially after the windows.
            rest = read.within(Window(covered, window.before, window.base_filter))
            for page in self.iter_window(portal, rest, limit=wanted):
                yield from out.emit(page)

    def read_windows(
        self, portal: PortalContext, query: ListQuery, *, top: int | None, density: float, batches: int
    ) -> ListPage:
        """At most `batches` ID windows of about one batch each, planned from an earlier read, read at once.

        No head request: `top` (the highest matching ID an earlier read saw) and `density` come from
        that read, so every request is a whole window and all of them run in one round. A bounded read
        (`before_id`) plans up to its bound; an open one up to `top` and then reads one open window above
        it, so rows created since `top` was seen are not lost. Rows come in ID order, at most `query.limit`.
        """
        read = _Read.of(query)
        spec, window = read.spec, read.window
        windows, stop, tail = _plan_windows(window, top=top, density=density, batches=batches)
        out = _Emitter(query.limit)
        # Every window starts at once, one request each: the shared pacer can reserve them in one write.
        self.client.expect_requests(portal, len(windows))
        rows = list(
            self._run_windows(portal, read, windows, workers=len(windows), out=out, window_limit=query.limit)
        )
        span = stop - window.after
        seen = _rows_up_to(rows, spec, stop)
        walked = max(seen, 1) / span if span > 0 else density
        if out.done():
            return ListPage(rows, spec.id_of(rows[-1]), False, walked)
        exhausted = tail or (window.before is not None and stop >= window.before - 1)
        last = max(stop, spec.id_of(rows[-1])) if rows else stop
        return ListPage(rows, last, exhausted, walked)

    @staticmethod
    def _top_of(spec: ListSpec, result: BatchResult | None) -> int | None:
        if result is None or "top" in result.errors:
            return None  # the sequential fallback meets (and handles) any real problem itself
        rows = spec.rows_of(result.results.get("top"))
        return spec.id_of(rows[0]) if rows else None

    def _run_windows(
        self,
        portal: PortalContext,
        read: _Read,
        windows: list[Window],
        *,
        workers: int,
        out: _Emitter,
        window_limit: int | None = None,
    ) -> Iterator[Row]:
        # Imported here: only the parallel path pays for concurrent.futures at cold start.
        from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415

        def read_window(window: Window) -> list[Row]:
            rows: list[Row] = []
            for page in self.iter_window(portal, read.within(window), limit=window_limit):
                rows.extend(page)
            return rows

        pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="b24-list")
        pending: list[Future[list[Row]]] = []
        upcoming = iter(windows)
        try:
            # Keep at most 2x workers windows in flight so memory stays bounded while merging in order.
            for window in upcoming:
                pending.append(pool.submit(read_window, window))
                if len(pending) >= 2 * workers:
                    break
            while pending:
                rows = pending.pop(0).result()
                next_window = next(upcoming, None)
                if next_window is not None:
                    pending.append(pool.submit(read_window, next_window))
                yield from out.emit(rows)
                if out.done():
                    return
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def _checked(read: _Read, page: list[Row], progress: _Progress) -> Iterator[Row]:
    """The rows of one page, each checked to be inside the window and above the last one."""
    before = read.window.before
    for row in page:
        row_id = read.spec.id_of(row)
        if row_id <= progress.last or (before is not None and row_id >= before):
            raise TransientError("OUT_OF_WINDOW", f"{read.spec.method} answered a row outside the ID window")
        progress.last = row_id
        yield row


class _Emitter:
    """Counts the rows a limited read hands out and stops at its limit."""

    def __init__(self, limit: int | None) -> None:
        self._limit = limit
        self._produced = 0

    def emit(self, page: list[Row]) -> Iterator[Row]:
        for row in page:
            if self.done():
                return
            self._produced += 1
            yield row

    def done(self) -> bool:
        return self._limit is not None and self._produced >= self._limit

    def wanted(self) -> int | None:
        """Rows still wanted (None: no limit)."""
        return None if self._limit is None else self._limit - self._produced


def _plan_windows(
    window: Window, *, top: int | None, density: float, batches: int
) -> tuple[list[Window], int, bool]:
    """The whole windows of a planned read, the ID they stop at, and whether an open tail window follows."""
    end = window.before - 1 if window.before is not None else top if top is not None else window.after
    size = window_span(density)
    stop = max(window.after, min(end, window.after + max(1, batches) * size))
    windows = [
        Window(low, min(low + size, stop) + 1, window.base_filter) for low in range(window.after, stop, size)
    ]
    tail = window.before is None and stop >= end
    if tail:
        windows.append(Window(stop, None, window.base_filter))
    return windows, stop, tail


def _rows_up_to(rows: list[dict[str, Any]], spec: ListSpec, stop: int) -> int:
    """How many of `rows` (ascending IDs) lie at or below `stop`, counting only the open tail from the end."""
    above = 0
    while above < len(rows) and spec.id_of(rows[-1 - above]) > stop:
        above += 1
    return len(rows) - above
