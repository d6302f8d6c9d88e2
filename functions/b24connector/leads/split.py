"""Split planning: cut the rest of an ID range into parts of similar row counts (the `split` option)."""

from __future__ import annotations

import math


def split_points(last: int, top: int, density: float, parts: int) -> list[int]:
    """Increasing IDs from `last` that cut (last, top] into at most `parts` ranges of similar row counts.

    Part i holds the IDs in (points[i], points[i + 1]]; the last part is everything above points[-1].
    Every cut falls on a whole window of the lister's plan (about one batch of rows), so each part is
    read with whole batches and none ends in a part-filled request; a part holds at least one window.
    """
    # Imported here: the split path is the only one that plans parts (the lister loads at first read).
    from b24connector.bitrix24.list_query import window_span  # noqa: PLC0415

    span = top - last
    size = window_span(density)
    windows = max(1, math.ceil(span / size))
    count = max(1, min(parts, windows, span))
    return [last + size * ((windows * i) // count) for i in range(count)]
