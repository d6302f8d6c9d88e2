"""LeadsFunction's change query: a portal's leads changed since a checkpoint the caller keeps.

Why not offline events (docs/bitrix24-facts.md#f-events-14): they need an administrator's token,
`event.offline.get` deletes what it returns, and the portal keeps one queue per app, so two
subscribers would consume each other's changes. `crm.lead.list` filters and orders by `DATE_MODIFY`
for any token that may read leads, and repeats: every caller keeps its own checkpoint.

Order and checkpoint: (`DATE_MODIFY`, `ID`) ascending; the checkpoint is the last pair answered.
`DATE_MODIFY` has one-second resolution and an import gives thousands of leads the same second, and a
lead filter has no OR, so one step reads the rest of the checkpoint's second (`=DATE_MODIFY: T`,
`>ID: I`, by ID) and then what follows it (`>DATE_MODIFY: T`, by DATE_MODIFY then ID): nothing is
skipped or repeated at equal timestamps. `DATE_MODIFY` values go back exactly as the portal wrote them.

Request: `{"member_id"|"domain", "changed_since": ISO 8601 | "checkpoint": str, "select"?, "limit"?}`;
answer: `{"leads", "count", "checkpoint", "more"}`, or the contract's `{"error": ...}`. A lead changed
again after it was answered comes again, later (it moved forward in the order): a change query
answers "changed since", not "each change once".
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from b24connector.bitrix24.errors import Bitrix24Error
from b24connector.leads import FIELD_NAME, LEAD_METHOD, PortalOpener, error_for, portal_key
from b24connector.leads.errors import invalid
from b24connector.numbers import ascii_int
from b24connector.vault.errors import VaultError

MAX_CHANGES_LIMIT = 5_000
DEFAULT_CHANGES_LIMIT = 500
PAGE = 50  # crm.lead.list with start=-1 answers at most 50 rows (docs/bitrix24-facts.md#f-list-1)
_ALLOWED = frozenset({"member_id", "domain", "changed_since", "checkpoint", "select", "limit"})
# A date-time as the portal writes DATE_MODIFY (2021-11-26T18:56:13+02:00), or without a zone.
_ISO = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:[+-]\d{2}:\d{2}|Z)?\Z")
_MAX_SELECT = 200
_CHECKPOINT_VERSION = 1


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """Where a change query stands: the last (DATE_MODIFY, ID) answered; ID 0: nothing of T answered yet."""

    date_modify: str
    lead_id: int

    def encode(self) -> str:
        """The opaque text the caller stores."""
        body = json.dumps(
            {"v": _CHECKPOINT_VERSION, "t": self.date_modify, "id": self.lead_id}, separators=(",", ":")
        )
        return base64.urlsafe_b64encode(body.encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, text: object) -> Checkpoint:
        """A checkpoint from its text; LeadsRefusal(INVALID_REQUEST) when it is not one."""
        if not isinstance(text, str) or not 0 < len(text) <= 256:
            raise invalid("checkpoint must be the text a previous answer gave")
        try:
            raw = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        except (ValueError, binascii.Error):
            raise invalid("checkpoint must be the text a previous answer gave") from None
        lead_id = ascii_int(raw.get("id")) if isinstance(raw, dict) else None
        stamp = raw.get("t") if isinstance(raw, dict) else None
        if (
            raw.get("v") != _CHECKPOINT_VERSION
            or lead_id is None
            or not isinstance(stamp, str)
            or not _ISO.match(stamp)
        ):
            raise invalid("checkpoint must be the text a previous answer gave")
        return cls(stamp, lead_id)


@dataclass(frozen=True, slots=True)
class ChangesRequest:
    """A validated change query."""

    member_id: str | None
    domain: str | None
    select: tuple[str, ...]
    start: Checkpoint
    limit: int


def is_change_query(payload: object) -> bool:
    """True when a LeadsFunction request asks for changes (changed_since or checkpoint)."""
    return isinstance(payload, Mapping) and ("changed_since" in payload or "checkpoint" in payload)


def parse_changes_request(payload: object, normalize_domain: Callable[[str], str]) -> ChangesRequest:
    """Validate a change query; LeadsRefusal(INVALID_REQUEST) naming what is wrong."""
    if not isinstance(payload, Mapping):
        raise invalid("the request must be a JSON object")
    unknown = sorted(str(k) for k in payload if k not in _ALLOWED)
    if unknown:
        raise invalid(f"a change query takes no {', '.join(unknown[:5])}")
    start = _start(payload)
    member_id, domain = portal_key(payload, normalize_domain)
    return ChangesRequest(member_id, domain, _select(payload), start, _limit(payload))


def _start(payload: Mapping[str, Any]) -> Checkpoint:
    if ("changed_since" in payload) == ("checkpoint" in payload):
        raise invalid("give exactly one of changed_since or checkpoint")
    if "checkpoint" in payload:
        return Checkpoint.decode(payload["checkpoint"])
    since = payload["changed_since"]
    if not isinstance(since, str) or not _ISO.match(since):
        raise invalid("changed_since is an ISO 8601 date-time such as 2026-12-01T00:00:00+00:00")
    return Checkpoint(since, 0)


def _select(payload: Mapping[str, Any]) -> tuple[str, ...]:
    select = payload.get("select", ["ID", "TITLE", "STATUS_ID", "DATE_MODIFY"])
    if not isinstance(select, list) or not 0 < len(select) <= _MAX_SELECT:
        raise invalid(f"select is a list of 1-{_MAX_SELECT} field names")
    if not all(isinstance(f, str) and FIELD_NAME.match(f) for f in select):
        raise invalid("select holds field names such as 'TITLE', '*' or 'UF_*'")
    return tuple(dict.fromkeys(["ID", "DATE_MODIFY", *select]))


def _limit(payload: Mapping[str, Any]) -> int:
    limit = payload.get("limit", DEFAULT_CHANGES_LIMIT)
    if isinstance(limit, str) or ascii_int(limit, minimum=1, maximum=MAX_CHANGES_LIMIT) is None:
        raise invalid(f"limit is an integer from 1 to {MAX_CHANGES_LIMIT}")
    return int(limit)


class ChangesRest(Protocol):
    """The REST client (bitrix24.rest.RestClient), paced by the shared per-portal bucket."""

    def call(self, portal: Any, method: str, params: Mapping[str, Any] | None = None) -> Any:
        """One REST method; its response has `.result`."""
        ...


class ChangesReader:
    """Answers change queries with crm.lead.list pages ordered by (DATE_MODIFY, ID)."""

    def __init__(
        self, portals: PortalOpener, rest: ChangesRest, *, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self._portals = portals
        self._rest = rest
        self._monotonic = monotonic

    def read(self, request: ChangesRequest, *, deadline: float | None = None) -> dict[str, Any]:
        """One answer of up to `request.limit` leads; LeadsRefusal for expected failures."""
        try:
            portal = self._portals.open(member_id=request.member_id, domain=request.domain, deadline=deadline)
        except VaultError as exc:
            raise error_for(exc) from None
        rows: list[dict[str, Any]] = []
        point, more = request.start, True
        try:
            while more and len(rows) < request.limit and not self._late(deadline):
                point, more = self._step(portal.context, request, rows, point)
        except (Bitrix24Error, VaultError) as exc:
            if not rows:
                raise error_for(exc) from None
            more = True  # answer what was read; the checkpoint resumes after it
        return {"leads": rows, "count": len(rows), "checkpoint": point.encode(), "more": more}

    def _late(self, deadline: float | None) -> bool:
        return deadline is not None and self._monotonic() >= deadline

    def _step(
        self, portal: Any, request: ChangesRequest, rows: list[dict[str, Any]], point: Checkpoint
    ) -> tuple[Checkpoint, bool]:
        """One or two pages: the rest of the checkpoint's second (by ID), then what follows it."""
        if point.lead_id:
            tied = self._page(
                portal, request, {"=DATE_MODIFY": point.date_modify, ">ID": point.lead_id}, {"ID": "ASC"}
            )
            point = self._take(tied, rows, request.limit, point)
            if len(tied) == PAGE or len(rows) >= request.limit:
                return point, True  # more of the second may follow (or the answer is full)
        key = ">DATE_MODIFY" if point.lead_id else ">=DATE_MODIFY"
        later = self._page(portal, request, {key: point.date_modify}, {"DATE_MODIFY": "ASC", "ID": "ASC"})
        point = self._take(later, rows, request.limit, point)
        return point, len(later) == PAGE or (len(rows) >= request.limit and bool(later))

    def _page(
        self, portal: Any, request: ChangesRequest, filter_: dict[str, Any], order: dict[str, str]
    ) -> list[dict[str, Any]]:
        params = {"select": list(request.select), "filter": filter_, "order": order, "start": -1}
        result = self._rest.call(portal, LEAD_METHOD, params).result
        return [row for row in result if isinstance(row, dict)] if isinstance(result, list) else []

    @staticmethod
    def _take(
        page: list[dict[str, Any]], rows: list[dict[str, Any]], limit: int, point: Checkpoint
    ) -> Checkpoint:
        for row in page:
            if len(rows) >= limit:
                break
            lead_id = ascii_int(row.get("ID"), minimum=1)
            stamp = row.get("DATE_MODIFY")
            if lead_id is None or not isinstance(stamp, str) or not _ISO.match(stamp):
                continue  # a row without the order's keys cannot move the checkpoint
            rows.append(row)
            point = Checkpoint(stamp, lead_id)
        return point
