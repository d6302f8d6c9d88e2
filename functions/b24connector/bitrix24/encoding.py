"""PHP-style query encoding (`http_build_query`) for batch sub-commands: `filter[>ID]=5&select[0]=ID`.

Like PHP's http_build_query, a `None` value is left out entirely (key and all; list indexes keep their
numbers), so a sub-command means what the same parameters mean to a PHP client. Emitting `X=` instead
would reach Bitrix24 as the empty string after `parse_str`, a different condition.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import quote_plus


def _scalar(value: object) -> str:
    if isinstance(value, bool):  # PHP renders true/false as 1/0
        return "1" if value else "0"
    return str(value)


def _walk(value: object, key: str, out: list[str]) -> None:
    if value is None:
        return  # http_build_query skips nulls
    if isinstance(value, Mapping):
        for inner, item in value.items():
            _walk(item, f"{key}[{quote_plus(str(inner))}]", out)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _walk(item, f"{key}[{index}]", out)
    else:
        out.append(f"{key}={quote_plus(_scalar(value))}")


def php_query(params: Mapping[str, object]) -> str:
    """Encode nested params as PHP's http_build_query does; brackets stay literal, keys and values escaped."""
    out: list[str] = []
    for key, value in params.items():
        _walk(value, quote_plus(str(key)), out)
    return "&".join(out)


def batch_command(method: str, params: Mapping[str, object]) -> str:
    """One batch `cmd` entry: `method?query`."""
    query = php_query(params)
    return f"{method}?{query}" if query else method
