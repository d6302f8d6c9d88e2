"""The shared HTTP plumbing: one requests.Session per container, quiet library loggers, safe JSON decoding."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import MaxRetryError, NewConnectionError

USER_AGENT = "b24connector/0.1 (+bitrix24 oauth connector)"
DEFAULT_TIMEOUT: tuple[float, float] = (3.05, 30.0)  # (connect, read) seconds

# urllib3 logs full URLs at DEBUG; botocore logs request bodies at DEBUG. Neither belongs in our logs.
for _name in ("urllib3", "botocore", "requests"):
    logging.getLogger(_name).setLevel(logging.WARNING)

_session: requests.Session | None = None
_session_lock = threading.Lock()


# --- the call deadline while the status line and headers arrive ---------------------------------------
# read_body bounds the body by the wall clock. Before that, http.client reads the status line and up to
# 100 header lines, each socket wait bounded only by the read timeout: a server dripping header bytes
# could hold the call. A timer shuts the socket down at the call's deadline while headers are awaited.
_deadline = threading.local()


@contextlib.contextmanager
def call_deadline(deadline: float | None) -> Iterator[None]:
    """While inside, requests on new_session() sessions stop waiting for headers at `deadline` (monotonic)."""
    previous = getattr(_deadline, "value", None)
    _deadline.value = deadline
    try:
        yield
    finally:
        _deadline.value = previous


def _shut(sock: Any) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(2)  # SHUT_RDWR: a blocked recv returns at once


class _DeadlineMixin:
    sock: Any

    def getresponse(self) -> Any:
        """Await the status line and headers, but not past the thread's call deadline."""
        deadline = getattr(_deadline, "value", None)
        timer = None
        if deadline is not None and self.sock is not None:
            timer = threading.Timer(max(deadline - time.monotonic(), 0.0), _shut, (self.sock,))
            timer.daemon = True
            timer.start()
        try:
            return super().getresponse()  # type: ignore[misc]
        finally:
            if timer is not None:
                timer.cancel()


class _DeadlineHTTPConnection(_DeadlineMixin, HTTPConnection):
    pass


class _DeadlineHTTPSConnection(_DeadlineMixin, HTTPSConnection):
    pass


class _DeadlineHTTPPool(HTTPConnectionPool):
    ConnectionCls = _DeadlineHTTPConnection


class _DeadlineHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _DeadlineHTTPSConnection


class _DeadlineAdapter(HTTPAdapter):
    def init_poolmanager(
        self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any
    ) -> None:
        """The usual pool manager, with connections that honour call_deadline while awaiting headers."""
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _DeadlineHTTPPool, "https": _DeadlineHTTPSPool}


def new_session(pool_size: int = 16) -> requests.Session:
    """A Session without environment-derived settings (no .netrc credentials, no proxies) or retries."""
    session = requests.Session()
    # trust_env would let a stray .netrc add an Authorization header or a proxy variable reroute traffic.
    session.trust_env = False
    # We own every retry decision (codes are single-use; 503 needs jitter), so urllib3 retries nothing.
    adapter = _DeadlineAdapter(pool_connections=4, pool_maxsize=pool_size, max_retries=0)
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


def decode_body(body: bytes) -> Any:
    """The decoded JSON of a body read with read_body, or None when it is not JSON."""
    if not body:
        return None
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None


class BodyTooLarge(Exception):
    """The answer passed the caller's byte cap; reading stopped there (nothing more is held)."""


class BodyDeadline(Exception):
    """The answer was still arriving when the call's total deadline passed."""


_CHUNK = 64 * 1024


def read_body(
    response: requests.Response,
    *,
    max_bytes: int,
    deadline: float,
    monotonic: Callable[[], float] = time.monotonic,
) -> bytes:
    """The body of a `stream=True` response, read within `max_bytes` and before `deadline` (monotonic).

    Read and connect timeouts bound each socket wait, not the call: a server that drips a byte every
    few seconds never trips them. Here every read waits at most until the deadline (the socket's
    timeout is narrowed before each one), and a body over `max_bytes` stops at the cap. The response
    is always closed, so an abandoned body never goes back to the pool half-read.
    """
    try:
        declared = response.headers.get("Content-Length", "")
        if declared.isascii() and declared.isdigit() and int(declared) > max_bytes:
            raise BodyTooLarge
        raw = response.raw
        if raw is None:  # a response built in memory (requests' own tests, adapters without a socket)
            body = response.content or b""
            if len(body) > max_bytes:
                raise BodyTooLarge
            return body
        return _read_stream(raw, max_bytes=max_bytes, deadline=deadline, monotonic=monotonic)
    finally:
        close_response(response)


def _read_stream(raw: Any, *, max_bytes: int, deadline: float, monotonic: Callable[[], float]) -> bytes:
    """Read `raw` to its end, each read waiting at most until `deadline`, the whole within `max_bytes`."""
    chunks: list[bytes] = []
    size = 0
    while True:
        remaining = deadline - monotonic()
        if remaining <= 0:
            raise BodyDeadline
        _narrow_socket_timeout(raw, remaining)
        try:
            chunk = _read_some(raw)
        except (OSError, Urllib3Error, requests.RequestException, ValueError) as exc:
            if deadline - monotonic() <= 0:
                raise BodyDeadline from None
            raise requests.ConnectionError("the answer broke off") from exc
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > max_bytes:
            raise BodyTooLarge
        chunks.append(chunk)


def close_response(response: requests.Response) -> None:
    """Release a streamed response's connection (a no-op for a response built in memory)."""
    if response.raw is not None:
        response.close()


def _read_some(raw: Any) -> bytes:
    """Up to one chunk, returning as soon as some bytes arrived (read1), decompressed within the chunk size."""
    read1 = getattr(raw, "read1", None)
    if read1 is not None:
        try:
            return bytes(read1(_CHUNK, decode_content=True))
        except TypeError:  # a plain file-like object (tests): no decode_content
            return bytes(read1(_CHUNK))
    return bytes(raw.read(_CHUNK))


def _narrow_socket_timeout(raw: Any, remaining: float) -> None:
    """Let the next socket read wait no longer than the call has left (urllib3 keeps the socket here)."""
    connection = getattr(raw, "connection", None) or getattr(raw, "_connection", None)
    settimeout = getattr(getattr(connection, "sock", None), "settimeout", None)
    if callable(settimeout):
        with contextlib.suppress(OSError):
            settimeout(max(remaining, 0.001))


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
