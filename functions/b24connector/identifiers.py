"""The one check of a portal's `member_id`, wherever one arrives (requests, callbacks, install, queues).

Bitrix24 documents member_id as a stable portal id (docs/bitrix24-facts.md F-OAUTH-3, F-APP-5), not
its alphabet. The connector accepts 1-64 ASCII letters, digits, `_` or `-`: safe as a DynamoDB key, in
a log line and in a URL. Every stored portal came in through this check, so queue messages that name
one are held to it too.
"""

from __future__ import annotations

import re
from typing import TypeGuard

MEMBER_ID_RULE = "1-64 letters, digits, '_' or '-'"
MEMBER_ID = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")  # for pattern-driven parsers (install.py)


def is_member_id(value: object) -> TypeGuard[str]:
    """True when `value` is a string a member_id may be (MEMBER_ID_RULE)."""
    return isinstance(value, str) and MEMBER_ID.match(value) is not None
