"""Read one page of a portal's leads for another Lambda: validation, signed cursors, the fast list.

The contract is docs/leads-client.md (request and answer schemas in docs/). One module per job:

- `request`: the payload's validation into a LeadsRequest, and its fast-list query (ListQuery);
- `cursor`: the signed cursor codec (where the next page starts, bound to tenant and query);
- `answer`: rows kept under the answer size, and the success answer (PageAnswer);
- `errors`: the error answer (LeadsRefusal) and the one map from Bitrix24 and vault failures to it;
- `portals`: portal access (VaultPortalOpener: vault, token renewal, renames);
- `split`: cutting the rest of an ID range into parts for the `split` option;
- `reader`: the use case (LeadsReader) that ties them together.

ID range conditions in `filter` (`>ID`, `>=ID`, `<ID`, `<=ID`) are folded into the ID window by the
lister; the cursor only ever moves the lower bound up, and it is bound to a hash of the query, so a
caller cannot edit it to read outside its filter or another tenant's rows.
"""

from __future__ import annotations

from b24connector.leads.answer import MAX_ANSWER_BYTES, PageAnswer, row_bytes
from b24connector.leads.cursor import CursorCodec, CursorPosition, ReadPlan
from b24connector.leads.errors import (
    INVALID_REQUEST,
    PORTAL_NOT_FOUND,
    RATE_LIMITED,
    REAUTH_REQUIRED,
    UPSTREAM_ERROR,
    LeadsRefusal,
    error_for,
)
from b24connector.leads.portals import OpenPortal, PortalOpener, VaultPortalOpener
from b24connector.leads.reader import BATCH_ROWS, PARALLEL_FROM, LeadLister, LeadsReader
from b24connector.leads.request import (
    DEFAULT_LIMIT,
    FIELD_NAME,
    LEAD_METHOD,
    MAX_LIMIT,
    MAX_QUERY_BYTES,
    MAX_SPLIT,
    LeadsRequest,
    parse_request,
    portal_key,
)
from b24connector.leads.split import split_points

__all__ = [
    "BATCH_ROWS",
    "DEFAULT_LIMIT",
    "FIELD_NAME",
    "INVALID_REQUEST",
    "LEAD_METHOD",
    "MAX_ANSWER_BYTES",
    "MAX_LIMIT",
    "MAX_QUERY_BYTES",
    "MAX_SPLIT",
    "PARALLEL_FROM",
    "PORTAL_NOT_FOUND",
    "RATE_LIMITED",
    "REAUTH_REQUIRED",
    "UPSTREAM_ERROR",
    "CursorCodec",
    "CursorPosition",
    "LeadLister",
    "LeadsReader",
    "LeadsRefusal",
    "LeadsRequest",
    "OpenPortal",
    "PageAnswer",
    "PortalOpener",
    "ReadPlan",
    "VaultPortalOpener",
    "error_for",
    "parse_request",
    "portal_key",
    "row_bytes",
    "split_points",
]
