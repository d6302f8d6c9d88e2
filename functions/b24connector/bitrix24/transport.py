"""The shared HTTP plumbing: one requests.Session per container, quiet library loggers, safe JSON decoding."""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterator
from types import TracebackType
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import MaxRetryError, NewConnectionError

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


# urllib3 opens (TCP, then TLS) a connection in HTTPConnection.connect(), before a byte of the request
# is written; http.client buffers the request until the connection exists.
_CONNECT_FRAMES = frozenset({"connect", "_new_conn"})
_URLLIB3_CONNECTION = os.path.join("urllib3", "connection.py")


def request_never_sent(exc: requests.RequestException) -> bool:
    """True only when `exc` proves the request never reached the server.

    That is: the TCP connect timed out, was refused or could not resolve the host (urllib3's
    NewConnectionError), or the failure (a TLS handshake error included) was raised while urllib3 was
    still opening the connection. Everything else (read timeouts, resets and EOFs after the request
    was written, broken answers) may have reached the server, and so does anything not recognised.
    """
    if isinstance(exc, requests.ConnectTimeout):
        return True
    return any(
        isinstance(cause, NewConnectionError) or _raised_while_connecting(cause) for cause in _causes(exc)
    )


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and what requests and urllib3 wrapped into it (args, MaxRetryError.reason, `raise from`)."""
    pending: list[BaseException] = [exc]
    seen: set[int] = set()
    while pending and len(seen) < 16:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        pending.extend(arg for arg in current.args if isinstance(arg, BaseException))
        if isinstance(current, MaxRetryError) and current.reason is not None:
            pending.append(current.reason)
        if current.__cause__ is not None:
            pending.append(current.__cause__)


def _raised_while_connecting(exc: BaseException) -> bool:
    frame: TracebackType | None = exc.__traceback__
    while frame is not None:
        code = frame.tb_frame.f_code
        if code.co_name in _CONNECT_FRAMES and code.co_filename.endswith(_URLLIB3_CONNECTION):
            return True
        frame = frame.tb_next
    return False
