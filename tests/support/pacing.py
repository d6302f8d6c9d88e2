"""Pacing for tests that are not about pacing."""

from __future__ import annotations


class NoPacing:
    """A Pacer (b24connector.bitrix24.pacing) that never waits."""

    def acquire(self, key: str, deadline: float | None) -> None:
        """Return at once."""
