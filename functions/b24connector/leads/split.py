"""Split planning: cut the rest of an ID range into parts of similar row counts (the `split` option)."""

from __future__ import annotations

import math

# A split part is never planned below one batch of rows: smaller parts cost requests, not time.
MIN_SPLIT_ROWS = 2_450


def split_points(last: int, top: int, density: float, parts: int) -> list[int]:
    """Increasing IDs from `last` that cut (last, top] into at most `parts` ranges of similar row counts.

    Part i holds the IDs in (points[i], points[i + 1]]; the last part is everything above points[-1].
    Ranges are never planned below MIN_SPLIT_ROWS expected rows (each part costs a first batch).
    """
    span = top - last
    expected = span * max(min(density, 1.0), 0.0)
    count = max(1, min(parts, math.ceil(expected / MIN_SPLIT_ROWS), span))
    return [last + (span * i) // count for i in range(count)]
