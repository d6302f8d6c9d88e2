"""The answer: a page of leads kept under Lambda's answer size, and its success shape."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from b24connector.leads.errors import UPSTREAM_ERROR, LeadsRefusal
from b24connector.numbers import ascii_int

# Lambda answers at most 6 MB; keep a wide margin for the envelope and estimation error.
MAX_ANSWER_BYTES = 5_000_000
_ANSWER_SEPARATORS = (", ", ": ")
# Rows are sized a chunk at a time: one json.dumps of 256 rows costs a fifth of 256 single ones.
_SIZE_CHUNK = 256


def row_id(row: Mapping[str, Any]) -> int:
    """A lead's numeric ID; UPSTREAM_ERROR when Bitrix24 answered one without."""
    number = ascii_int(row.get("ID"))
    if number is not None:
        return number
    raise LeadsRefusal(UPSTREAM_ERROR, "Bitrix24 answered a lead without a numeric ID")


def row_bytes(row: Mapping[str, Any]) -> int:
    """Bytes `row` adds to the answer, serialized the way the Lambda runtime does (ASCII escapes)."""
    return len(json.dumps(row, separators=_ANSWER_SEPARATORS)) + 2


class AnswerRows:
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
        row_id(row)
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
                    raise LeadsRefusal(UPSTREAM_ERROR, "a single lead is larger than the answer limit")
                break
            self.rows.append(row)
        self._pending.clear()
        self.full = True
        return False


@dataclass(frozen=True, slots=True)
class PageAnswer:
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
