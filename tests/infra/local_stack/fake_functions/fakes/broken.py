"""A module whose import fails, like a handler with a missing dependency."""

import not_a_module_that_exists  # type: ignore[import-not-found]  # noqa: F401


def handler(event: object, context: object) -> None:
    """Never reached."""
