"""PHP's view of request parameters: bracket keys (`filter[>ID]=5`, `select[]=ID`) and array serialization."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qsl, quote

_SEGMENT = re.compile(r"\[([^\]]*)\]")


def parse_pairs(pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """Build nested parameters from (key, value) pairs the way PHP's parse_str does."""
    root: dict[str, Any] = {}
    for key, value in pairs:
        _assign(root, key, value)
    listified = _listify(root)
    return listified if isinstance(listified, dict) else {}


def parse_query(query: str) -> dict[str, Any]:
    """Parse an URL-encoded query string into nested parameters."""
    return parse_pairs(parse_qsl(query, keep_blank_values=True))


def _assign(root: dict[str, Any], key: str, value: str) -> None:
    bracket = key.find("[")
    if bracket <= 0:
        if key:
            root[key] = value
        return
    base, rest = key[:bracket], key[bracket:]
    segments = []
    position = 0
    for match in _SEGMENT.finditer(rest):
        if match.start() != position:
            break  # PHP ignores anything after the first malformed segment
        segments.append(match.group(1))
        position = match.end()
    if not segments:
        root[key] = value
        return
    container = root
    path = [base, *segments]
    for index, segment in enumerate(path):
        name = _next_index(container) if segment == "" else segment
        if index == len(path) - 1:
            container[name] = value
            return
        child = container.get(name)
        if not isinstance(child, dict):
            child = {}
            container[name] = child
        container = child


def _next_index(container: dict[str, Any]) -> str:
    numbers = [int(k) for k in container if k.lstrip("-").isdigit()]
    return str(max(numbers) + 1 if numbers else 0)


def _listify(node: Any) -> Any:
    """Dicts keyed 0..n-1 in order are PHP lists; everything else stays a dict."""
    if not isinstance(node, dict):
        return node
    converted = {k: _listify(v) for k, v in node.items()}
    if converted and list(converted) == [str(i) for i in range(len(converted))]:
        return list(converted.values())
    return converted


def php_array(mapping: dict[str, Any]) -> dict[str, Any] | list[Any]:
    """Serialize a PHP array the way json_encode does: empty or 0..n-1 keyed arrays become JSON lists."""
    if not mapping:
        return []
    if list(mapping) == [str(i) for i in range(len(mapping))]:
        return list(mapping.values())
    return mapping


def build_query(params: dict[str, Any]) -> str:
    """Encode nested parameters like PHP's http_build_query (used for batch sub-commands)."""
    pairs: list[tuple[str, str]] = []
    flatten_pairs("", params, pairs)
    return "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in pairs)


def flatten_pairs(prefix: str, value: Any, out: list[tuple[str, str]]) -> None:
    """Append (bracket key, string value) pairs for a nested value under `prefix`."""
    if isinstance(value, dict):
        for key, item in value.items():
            flatten_pairs(f"{prefix}[{key}]" if prefix else str(key), item, out)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            flatten_pairs(f"{prefix}[{index}]", item, out)
    elif value is None:
        out.append((prefix, ""))
    elif isinstance(value, bool):
        out.append((prefix, "1" if value else "0"))
    else:
        out.append((prefix, str(value)))
