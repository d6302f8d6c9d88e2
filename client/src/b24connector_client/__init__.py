"""b24connector-client: a small typed client for the connector's LeadsFunction (needs only boto3).

    from b24connector_client import fetch_leads, ReauthRequired

    for lead in fetch_leads(domain="acme.bitrix24.com", select=["ID", "TITLE"], filter={"STATUS_ID": "NEW"}):
        print(lead["ID"], lead["TITLE"])

`fetch_leads` pages through cursors lazily (one Lambda invoke per page) and raises a typed LeadsError
subclass for every error code of the contract (docs/leads-request.schema.json and
docs/leads-answer.schema.json in the connector's repository). By default the first invocation asks
LeadsFunction to cut the rest of the ID range into signed parts (as many as the rows it saw justify, at
most MAX_PARALLEL) and reads them on that many concurrent invocations, still yielding leads in ascending
ID order; `parallel=K` caps the parts at K, `parallel=1` reads one page after another. See
docs/leads-client.md.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mypy_boto3_lambda import LambdaClient

__version__ = "0.1.0"
__all__ = [
    "DEFAULT_FUNCTION_NAME",
    "MAX_PARALLEL",
    "InvalidRequest",
    "InvocationError",
    "LeadsError",
    "LeadsPage",
    "PortalNotFound",
    "RateLimited",
    "ReauthRequired",
    "UpstreamError",
    "fetch_leads",
    "fetch_leads_page",
    "parse_answer",
]

DEFAULT_FUNCTION_NAME = "LeadsFunction"
# LeadsFunction cuts a range into at most this many parts (leads.MAX_SPLIT).
MAX_PARALLEL = 16


class LeadsError(Exception):
    """LeadsFunction answered an error; `code` is the contract's code, `message` its explanation."""

    code = "UNKNOWN"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        if code is not None:
            self.code = code
        self.message = message
        super().__init__(f"{self.code}: {message}")


class InvalidRequest(LeadsError):
    """The request was malformed (bad keys, types, bounds, or a cursor of another query)."""

    code = "INVALID_REQUEST"


class PortalNotFound(LeadsError):
    """No connected portal has that member_id or domain."""

    code = "PORTAL_NOT_FOUND"


class ReauthRequired(LeadsError):
    """The portal was uninstalled or its grant is dead: it must install or authorize the app again."""

    code = "REAUTH_REQUIRED"


class RateLimited(LeadsError):
    """Bitrix24's limits, or the connector's refresh throttle, were reached; retry later (cursor stays valid)."""

    code = "RATE_LIMITED"


class UpstreamError(LeadsError):
    """Bitrix24 or a dependency failed; usually worth retrying later."""

    code = "UPSTREAM_ERROR"


class InvocationError(LeadsError):
    """The Lambda invocation itself failed (function error, malformed answer)."""

    code = "INVOCATION_FAILED"


_ERRORS: dict[str, type[LeadsError]] = {
    cls.code: cls for cls in (InvalidRequest, PortalNotFound, ReauthRequired, RateLimited, UpstreamError)
}


@dataclass(frozen=True, slots=True)
class LeadsPage:
    """One answer of LeadsFunction: the leads and the cursor of the next page (None at the end).

    `split_cursors` (only when `split` was asked for) cut what `next_cursor` covers into consecutive
    parts: follow either `next_cursor` or every one of them, never both.
    """

    leads: list[dict[str, Any]]
    next_cursor: str | None
    split_cursors: tuple[str, ...] = ()


def _request(
    *,
    member_id: str | None,
    domain: str | None,
    select: Sequence[str] | None,
    filter: Mapping[str, Any] | None,  # Bitrix24's own parameter name
    limit: int | None,
    cursor: str | None,
    split: int | None = None,
) -> dict[str, Any]:
    if (member_id is None) == (domain is None):
        raise ValueError("give exactly one of member_id or domain")
    payload: dict[str, Any] = {"member_id": member_id} if member_id is not None else {"domain": domain}
    if select is not None:
        payload["select"] = list(select)
    if filter is not None:
        payload["filter"] = dict(filter)
    if limit is not None:
        payload["limit"] = limit
    if cursor is not None:
        payload["cursor"] = cursor
    if split is not None:
        payload["split"] = split
    return payload


def _default_lambda_client(parallel: int = 1) -> LambdaClient:
    import boto3  # noqa: PLC0415 - only callers that pass no client pay for boto3
    from botocore.config import Config  # noqa: PLC0415

    # One pooled connection per concurrent invocation (botocore keeps 10 by default).
    config = Config(max_pool_connections=max(10, parallel + 1))
    client: LambdaClient = boto3.client("lambda", config=config)
    return client


def fetch_leads_page(
    *,
    member_id: str | None = None,
    domain: str | None = None,
    select: Sequence[str] | None = None,
    filter: Mapping[str, Any] | None = None,  # Bitrix24's own parameter name
    limit: int | None = None,
    cursor: str | None = None,
    function_name: str = DEFAULT_FUNCTION_NAME,
    lambda_client: LambdaClient | None = None,
    split: int | None = None,
) -> LeadsPage:
    """Invoke LeadsFunction once and return one page; raise a LeadsError subclass on an error answer."""
    payload = _request(
        member_id=member_id,
        domain=domain,
        select=select,
        filter=filter,
        limit=limit,
        cursor=cursor,
        split=split,
    )
    client = lambda_client or _default_lambda_client()
    response = client.invoke(
        FunctionName=function_name,
        InvocationType="RequestResponse",
        Payload=json.dumps(payload).encode("utf-8"),
    )
    raw = response["Payload"].read()
    try:
        answer = json.loads(raw)
    except ValueError:
        answer = None
    if response.get("FunctionError"):
        error_type = answer.get("errorType") if isinstance(answer, dict) else None
        raise InvocationError(f"{function_name} failed ({error_type or response['FunctionError']})")
    if answer is None:
        raise InvocationError(f"{function_name} answered something that is not JSON")
    return parse_answer(answer)


def parse_answer(answer: object) -> LeadsPage:
    """Turn a LeadsFunction answer into a LeadsPage or raise its typed error."""
    if not isinstance(answer, dict):
        raise InvocationError("the answer is not a JSON object")
    error = answer.get("error")
    if isinstance(error, dict):
        code = str(error.get("code") or "")
        message = str(error.get("message") or "")
        raise _ERRORS.get(code, LeadsError)(message, code=code or None)
    leads = answer.get("leads")
    next_cursor = answer.get("next_cursor")
    split_cursors = answer.get("split_cursors", [])
    if (
        not isinstance(leads, list)
        or not (next_cursor is None or isinstance(next_cursor, str))
        or not isinstance(split_cursors, list)
        or not all(isinstance(part, str) for part in split_cursors)
    ):
        raise InvocationError("the answer does not follow the LeadsFunction contract")
    return LeadsPage(leads, next_cursor, tuple(split_cursors))


def fetch_leads(
    *,
    member_id: str | None = None,
    domain: str | None = None,
    select: Sequence[str] | None = None,
    filter: Mapping[str, Any] | None = None,  # Bitrix24's own parameter name
    limit: int | None = None,
    cursor: str | None = None,
    function_name: str = DEFAULT_FUNCTION_NAME,
    lambda_client: LambdaClient | None = None,
    parallel: int | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield every matching lead in ascending ID order, `limit` per invocation, following cursors.

    Unless `parallel` is 1 the first invocation also cuts the rest of the ID range into signed parts,
    which are read on that many concurrent invocations (each following its own cursors); leads still
    come in ascending ID order, a part at a time. `parallel=None` (the default) lets the first answer
    choose: LeadsFunction plans as many parts as the rows it saw justify (never below one batch, at most
    MAX_PARALLEL), so a list that fits in the first answer stays one invocation and a large one is not
    read one page after another by surprise. All invocations share the portal's request budget inside
    LeadsFunction, so parts buy latency, not a higher request rate.
    """
    if parallel is not None and not 1 <= parallel <= MAX_PARALLEL:
        raise ValueError(f"parallel must be between 1 and {MAX_PARALLEL}")
    _request(member_id=member_id, domain=domain, select=select, filter=filter, limit=limit, cursor=cursor)
    query: dict[str, Any] = {
        "member_id": member_id,
        "domain": domain,
        "select": select,
        "filter": filter,
        "limit": limit,
        "function_name": function_name,
        "lambda_client": lambda_client,
    }
    return _leads(query, cursor, parallel)


def _leads(query: dict[str, Any], cursor: str | None, parallel: int | None) -> Iterator[dict[str, Any]]:
    """The generator behind fetch_leads: nothing is invoked before the first lead is asked for."""
    cap = MAX_PARALLEL if parallel is None else parallel
    query["lambda_client"] = query["lambda_client"] or _default_lambda_client(cap)
    if cap == 1:
        yield from _follow(query, cursor)
        return
    first = fetch_leads_page(**query, cursor=cursor, split=cap)
    yield from first.leads
    if first.split_cursors:
        # The parts LeadsFunction planned from the first batch's density: read them all at once.
        yield from _read_parts(query, first.split_cursors, len(first.split_cursors))
    elif first.next_cursor is not None:
        yield from _follow(query, first.next_cursor)


def _follow(query: Mapping[str, Any], cursor: str | None) -> Iterator[dict[str, Any]]:
    """Leads from `cursor` on, one invocation per page."""
    while True:
        page = fetch_leads_page(**query, cursor=cursor)
        yield from page.leads
        if page.next_cursor is None:
            return
        cursor = page.next_cursor


def _read_parts(query: Mapping[str, Any], parts: Sequence[str], parallel: int) -> Iterator[dict[str, Any]]:
    """Every part read on its own thread (at most `parallel` at once), yielded in part order."""
    yield from _PartReader(query, parts).run(parallel)


class _PartReader:
    """Pages of consecutive parts read on threads, with the caller's memory bounded whatever the size.

    The part being yielded (the head) keeps at most one page ready besides the one in flight; every part
    ahead of it holds at most one page (it invokes again only once that page was taken). So at most about
    parts + 2 pages are held, not whole parts: a million-lead export streams in flat memory, and since
    all parts share the portal's request budget inside LeadsFunction, the waiting parts cost no speed.
    """

    def __init__(self, query: Mapping[str, Any], parts: Sequence[str]) -> None:
        import threading  # noqa: PLC0415 - sequential callers do not pay for it

        self._query = query
        self._parts = list(parts)
        self._cond = threading.Condition()
        self._pages: list[deque[list[dict[str, Any]]]] = [deque() for _ in self._parts]
        self._done = [False] * len(self._parts)
        self._errors: list[BaseException | None] = [None] * len(self._parts)
        self._head = 0
        self._closed = False

    def _may_invoke(self, index: int) -> bool:
        ready = len(self._pages[index])
        return self._closed or ready < (2 if index == self._head else 1)

    def _read(self, index: int) -> None:
        """One part, page by page (runs on a pool thread)."""
        cursor: str | None = self._parts[index]
        try:
            while cursor is not None:
                with self._cond:
                    self._cond.wait_for(lambda: self._may_invoke(index))
                    if self._closed:
                        return
                page = fetch_leads_page(**self._query, cursor=cursor)
                with self._cond:
                    self._pages[index].append(page.leads)
                    self._cond.notify_all()
                cursor = page.next_cursor
        except BaseException as exc:  # handed to the caller's thread, raised there in ID order
            with self._cond:
                self._errors[index] = exc
        finally:
            with self._cond:
                self._done[index] = True
                self._cond.notify_all()

    def run(self, parallel: int) -> Iterator[dict[str, Any]]:
        """Yield the parts' leads in order; a part's failure is raised once its earlier pages are out."""
        # Imported here: sequential callers do not pay for concurrent.futures.
        from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415

        pool = ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="leads-part")
        try:
            # Submitted in order: the head has always started before any part behind it.
            for index in range(len(self._parts)):
                pool.submit(self._read, index)
            for index in range(len(self._parts)):

                def arrived(i: int = index) -> bool:
                    return bool(self._pages[i]) or self._done[i]

                while True:
                    with self._cond:
                        self._cond.wait_for(arrived)
                        if self._pages[index]:
                            rows = self._pages[index].popleft()
                            self._cond.notify_all()
                        else:
                            error = self._errors[index]
                            if error is not None:
                                raise error
                            self._head = index + 1
                            self._cond.notify_all()
                            break
                    yield from rows
        finally:
            # A failed part or a caller that stops early: start nothing new, let running invocations end.
            with self._cond:
                self._closed = True
                self._cond.notify_all()
            pool.shutdown(wait=False, cancel_futures=True)
