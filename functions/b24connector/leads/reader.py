"""The use case: one validated request in, one page of leads (with its cursors) out."""

from __future__ import annotations

import hmac
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from b24connector.bitrix24.errors import Bitrix24Error
from b24connector.leads.answer import MAX_ANSWER_BYTES, AnswerRows, PageAnswer, row_id
from b24connector.leads.cursor import CursorCodec, CursorPosition, ReadPlan, density_ppm
from b24connector.leads.errors import LeadsRefusal, error_for, invalid, resumable
from b24connector.leads.portals import OpenPortal, PortalOpener
from b24connector.leads.request import LeadsRequest
from b24connector.leads.split import split_points
from b24connector.vault.errors import VaultError

if TYPE_CHECKING:
    from b24connector.bitrix24.list_query import ListQuery
    from b24connector.bitrix24.listing import ListHead, ListPage

# Above this many rows the ID range is read on a few threads; below it two sequential batches win.
PARALLEL_FROM = 5_000
# One batch request: 50 chained pages of 50 rows. A larger page reads limit // BATCH_ROWS of them.
BATCH_ROWS = 2_500


class LeadLister(Protocol):
    """The fast list reader (bitrix24.listing.FastLister) as this use case needs it."""

    def iter_list(self, portal: Any, query: ListQuery) -> Iterator[dict[str, Any]]:
        """Rows in ascending ID order, sequentially."""
        ...

    def iter_list_parallel(self, portal: Any, query: ListQuery) -> Iterator[dict[str, Any]]:
        """Rows in ascending ID order, ID windows read on a few threads."""
        ...

    def read_head(self, portal: Any, query: ListQuery) -> ListHead:
        """One request: the first batch of rows, the highest matching ID and the ID density."""
        ...

    def read_windows(
        self, portal: Any, query: ListQuery, *, top: int | None, density: float, batches: int
    ) -> ListPage:
        """Up to `batches` whole ID windows planned from `top` and `density`, read in one round."""
        ...


@dataclass
class _Gathered:
    """The rows of a page read so far, where the next read starts (None: the list ended), and its plan."""

    rows: list[dict[str, Any]]
    last: int | None
    plan: ReadPlan | None


class LeadsReader:
    """Serves LeadsFunction: one validated request in, one page out.

    A page ends at `limit` rows or when the answer would pass MAX_ANSWER_BYTES, whichever comes
    first. When a transient failure or the time budget stops a read after some rows, those rows are
    answered with a cursor instead of an error; the next call continues from there.

    A page larger than PARALLEL_FROM is whole ID windows of about one batch each (`limit // 2,500`
    requests, ~2,450 rows each: ~19,600 rows at `limit=20_000`). Its cursor carries the read plan
    (highest ID, density), so the next page plans its windows without a head request and reads them
    all in one round.
    """

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

    def read(self, request: LeadsRequest, *, deadline: float | None = None) -> PageAnswer:
        """Read up to `request.limit` leads after the cursor; raise LeadsRefusal for expected failures."""
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
            raise invalid("cursor is not valid for this request")
        bounds = (0, None) if position is None else (position.last_id, position.before_id)
        if request.split is not None:
            return self._read_split(portal, request, digest, bounds, request.split)
        return self._read_page(
            portal, request, digest, bounds, position.plan if position is not None else None
        )

    def _read_page(
        self,
        portal: OpenPortal,
        request: LeadsRequest,
        digest: bytes,
        bounds: tuple[int, int | None],
        plan: ReadPlan | None,
    ) -> PageAnswer:
        """One page after `bounds[0]`: whole windows for a large page, rows one batch after another else."""
        after_id, before_id = bounds
        last: int | None
        if request.limit > self._parallel_from:
            leads, last, plan = self._collect_windows(portal, request, after_id, before_id, plan)
        else:
            plan = None
            leads, more = self._collect(portal, request, after_id, before_id)
            last = row_id(leads[-1]) if more and leads else None
        next_cursor = None
        if last is not None and leads:
            next_cursor = self._cursors.encode(
                CursorPosition(portal.member_id, digest, last, before_id, plan)
            )
        return PageAnswer(leads, next_cursor)

    def _read_split(
        self,
        portal: OpenPortal,
        request: LeadsRequest,
        digest: bytes,
        bounds: tuple[int, int | None],
        split: int,
    ) -> PageAnswer:
        """One batch of leads, `next_cursor` for the rest, and the rest cut into `split` signed parts.

        Each part but the last carries its upper bound inside the signature, so a caller can read the
        parts on concurrent invocations without any reading past its part.
        """
        after_id, before_id = bounds
        try:
            head = self._lister.read_head(
                portal.context, request.list_query(after_id, before_id, request.limit)
            )
        except (Bitrix24Error, VaultError) as exc:
            raise error_for(exc) from None
        answer = AnswerRows(self._max_answer_bytes)
        for row in head.rows:
            if not answer.add(row):
                break
        answer.close()
        rows = answer.rows
        cut = len(rows) < len(head.rows)
        if head.exhausted and not cut:
            return PageAnswer(rows, None, [])
        last = row_id(rows[-1]) if cut else head.last

        def cursor(low: int, high: int | None, plan: ReadPlan | None) -> str:
            return self._cursors.encode(CursorPosition(portal.member_id, digest, low, high, plan))

        # The density as the cursors will carry it (to the ppm): the parts' windows are planned from the
        # cursor, and must fall on the same grid as the cuts, or each part ends in a sliver of a window.
        density = density_ppm(head.density) / 1_000_000
        plan = None if head.top is None else ReadPlan(head.top, density)
        next_cursor = cursor(last, before_id, plan)
        if head.top is None or head.top <= last:
            return PageAnswer(rows, next_cursor, [])  # nothing known to split: follow next_cursor
        points = split_points(last, head.top, density, split)
        parts = [cursor(low, high + 1, plan) for low, high in itertools.pairwise(points)]
        # The last part stays open above the highest ID seen: leads created meanwhile are not lost.
        parts.append(cursor(points[-1], before_id, plan))
        return PageAnswer(rows, next_cursor, parts)

    def _collect_windows(
        self,
        portal: OpenPortal,
        request: LeadsRequest,
        after_id: int,
        before_id: int | None,
        plan: ReadPlan | None,
    ) -> tuple[list[dict[str, Any]], int | None, ReadPlan | None]:
        """(rows, where the next page starts or None at the end, its plan): limit // BATCH_ROWS windows.

        Without a plan the first request is a head (one batch plus the highest ID), the rest of the page
        windows sized from it; with one, every request is a window and all run in one round. The page
        ends on a window boundary, not at `limit`: a part-filled window would cost a request for a few
        rows and the next page's first request would overlap it.
        """
        gathered = _Gathered(rows=[], last=after_id, plan=plan)
        try:
            self._gather_windows(portal, request, before_id, gathered)
        except (Bitrix24Error, VaultError) as exc:
            if not (gathered.rows and resumable(exc)):
                raise error_for(exc) from None
            gathered.last = row_id(gathered.rows[-1])
        answer = AnswerRows(self._max_answer_bytes)
        for row in gathered.rows:
            if not answer.add(row):
                break
        answer.close()
        last = row_id(answer.rows[-1]) if answer.full else gathered.last
        return answer.rows, last, gathered.plan

    def _gather_windows(
        self, portal: OpenPortal, request: LeadsRequest, before_id: int | None, gathered: _Gathered
    ) -> None:
        """Read a page's windows into `gathered` (kept as far as it got when a read fails midway)."""
        batches = max(1, request.limit // BATCH_ROWS)
        rows = gathered.rows
        if gathered.plan is None:
            head = self._lister.read_head(
                portal.context, request.list_query(gathered.last or 0, before_id, request.limit)
            )
            rows.extend(head.rows)
            gathered.last = None if head.exhausted else head.last
            if head.top is not None:
                gathered.plan = ReadPlan(head.top, head.density)
            batches -= 1
        while (
            gathered.last is not None
            and gathered.plan is not None
            and batches > 0
            and len(rows) < request.limit
        ):
            plan = gathered.plan
            page = self._lister.read_windows(
                portal.context,
                request.list_query(gathered.last, before_id, request.limit - len(rows)),
                top=plan.top,
                density=plan.density,
                batches=batches,
            )
            rows.extend(page.rows)
            gathered.last = None if page.exhausted else page.last
            gathered.plan = ReadPlan(plan.top, page.density)
            if rows:
                break  # windows without a single row: plan wider ones from what they showed

    def _collect(
        self, portal: OpenPortal, request: LeadsRequest, after_id: int, before_id: int | None
    ) -> tuple[list[dict[str, Any]], bool]:
        """(rows, whether more may follow). One extra row is asked for to know if the list ended."""
        iterate = (
            self._lister.iter_list_parallel if request.limit > self._parallel_from else self._lister.iter_list
        )
        answer = AnswerRows(self._max_answer_bytes)
        try:
            for row in iterate(portal.context, request.list_query(after_id, before_id, request.limit + 1)):
                if len(answer) == request.limit:
                    answer.close()
                    return answer.rows, True
                if not answer.add(row):
                    return answer.rows, True
        except LeadsRefusal:
            raise
        except (Bitrix24Error, VaultError) as exc:
            answer.close()
            if answer.rows and resumable(exc):
                return answer.rows, True
            raise error_for(exc) from None
        answer.close()
        return answer.rows, answer.full
