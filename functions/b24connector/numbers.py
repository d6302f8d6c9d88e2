"""Integers from untrusted text: ASCII digits only, within sane bounds.

`str.isdigit()` is also true for "²" (then int() raises) and for Arabic-Indic or fullwidth digits (int()
reads them, the rest of the world does not), and int() of a 5,000-digit string raises; these crashed
handlers before (issue 12). Every number read from a request, an install payload or a Bitrix24 answer
goes through here.
"""

from __future__ import annotations

import math
import re

# 2**53 - 1: the largest integer every JSON reader (JavaScript included) keeps exactly.
MAX_SAFE_INTEGER = 2**53 - 1
_MAX_DIGITS = 16
_ASCII_INTEGER = re.compile(r"-?[0-9]{1,16}\Z")


def ascii_int(value: object, *, minimum: int = 0, maximum: int = MAX_SAFE_INTEGER) -> int | None:
    """`value` as an int when it is one (or an ASCII-digit string, or an integral float) in range; else None."""
    # Fast path for the common case, a Bitrix24 ID string ("12345"): every listed row's ID is read here,
    # twice per row in LeadsFunction, and the regex costs ~4x this. For an ASCII string isdigit() is
    # exactly [0-9]+, so the answer is the regex's; anything else falls through to the checks below.
    if type(value) is str and value.isascii() and value.isdigit() and len(value) <= _MAX_DIGITS:
        number = int(value)
        return number if minimum <= number <= maximum else None
    number_or_none = _integer_of(value)
    if number_or_none is None:
        return None
    return number_or_none if minimum <= number_or_none <= maximum else None


def _integer_of(value: object) -> int | None:
    """The integer `value` stands for (int, integral float, ASCII-digit string), whatever its size."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer() or abs(value) > MAX_SAFE_INTEGER:
            return None
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        return int(text) if _ASCII_INTEGER.match(text) else None
    return None
