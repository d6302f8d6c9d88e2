"""The shared HTTP plumbing: one requests.Session per container, quiet library loggers, safe JSON decoding."""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

import requests
from requests.adapters import HTTPAdapter

USER_AGENT = "b24connector/0.1 (+bitrix24 oauth connector)"
DEFAULT_TIMEOUT: tuple[float, float] = (3.05, 30.0)  # (connect, read) seconds

# urllib3 logs full URLs at DEBUG; botocore logs request bodies at DEBUG. Neither belongs in our logs.
for _name in ("urllib3", "botocore", "requests"):
    logging.getLogger(_name).setLevel(logging.WARNING)

_session: requests.Session | None = None
_session_lock = threading.Lock()


def new_session(pool_size: int = 16) -> requests.Session:
    """A Session without environment-derived settings (no .netrc credentials, no proxies) or retries."""
    session = requests.Session()
    # trust_env would let a stray .netrc add an Authorization header or a proxy variable reroute traffic.
    session.trust_env = False
    # We own every retry decision (codes are single-use; 503 needs jitter), so urllib3 retries nothing.
    adapter = HTTPAdapter(pool_connections=4, pool_maxsize=pool_size, max_retries=0)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    session.headers["User-Agent"] = USER_AGENT
    session.headers["Accept"] = "application/json"
    return session


def shared_session() -> requests.Session:
    """The process-wide Session, created on first use (one per Lambda container)."""
    global _session  # noqa: PLW0603 - a lazily built per-container singleton is the point
    with _session_lock:
        if _session is None:
            _session = new_session()
        return _session


def decode_json(response: requests.Response) -> Any:
    """The decoded JSON body, or None when the body is not JSON (HTML error pages, empty bodies)."""
    body = response.content
    if not body:
        return None
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
