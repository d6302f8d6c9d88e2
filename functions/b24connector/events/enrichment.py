"""Lead fields for Created/Updated events, read through LeadsFunction (its vault, refresh and pacing).

LeadsFunction already reads a portal's leads in batches through the per-portal token bucket every
instance shares (RateLimitTable), refreshing an expired access token on the way; invoking it keeps
the publisher's role to lambda:InvokeFunction and every portal within its one request budget.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from b24connector.events.publisher import FieldsUnavailable
from b24connector.numbers import ascii_int

_MAX_PAGES = 20  # 500 ids are at most a few pages; a runaway cursor stops here


class LeadsFunctionFields:
    """FieldsReader over a direct invocation of LeadsFunction (`{"member_id", "select", "filter"}`)."""

    def __init__(self, lambda_client: Any, function_name: str) -> None:
        self._lambda = lambda_client
        self._function = function_name

    def read(
        self, member_id: str, lead_ids: Sequence[int], fields: Sequence[str]
    ) -> dict[int, dict[str, Any]]:
        """The rows of `lead_ids` found on the portal, by id; FieldsUnavailable with the answer's code."""
        request: dict[str, Any] = {
            "member_id": member_id,
            "select": ["ID", *(f for f in fields if f != "ID")],
            "filter": {"@ID": [int(i) for i in lead_ids]},
            "limit": len(lead_ids),
        }
        rows: dict[int, dict[str, Any]] = {}
        for _ in range(_MAX_PAGES):
            answer = self._invoke(request)
            error = answer.get("error")
            if isinstance(error, dict):
                raise FieldsUnavailable(str(error.get("code") or "UPSTREAM_ERROR").lower())
            for row in answer.get("leads") or []:
                lead_id = ascii_int(row.get("ID"), minimum=1) if isinstance(row, dict) else None
                if lead_id is not None:
                    rows[lead_id] = row
            cursor = answer.get("next_cursor")
            if not cursor:
                return rows
            request = {**request, "cursor": cursor}  # the cursor is bound to the same query
        return rows

    def _invoke(self, request: dict[str, Any]) -> dict[str, Any]:
        try:
            response = self._lambda.invoke(FunctionName=self._function, Payload=json.dumps(request).encode())
            answer = json.loads(response["Payload"].read())
        except Exception:  # any failure to reach LeadsFunction: publish without fields
            raise FieldsUnavailable("unavailable") from None
        if response.get("FunctionError") or not isinstance(answer, dict):
            raise FieldsUnavailable("unavailable")
        return answer
