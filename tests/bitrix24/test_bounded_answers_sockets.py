"""Bounded answers over real loopback sockets (issue 12 point 1): a dripping server and the call deadline.

Connect and read timeouts bound each socket wait, not the call: a server sending one byte every 50 ms
never trips them, and kept a call alive 8 s past a 2 s deadline. The server here drips for 8 s.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest

from b24connector.bitrix24.errors import OAuthTransientError, TransientError
from b24connector.bitrix24.oauth import OAuthClient
from b24connector.bitrix24.portal_context import PortalContext
from b24connector.bitrix24.rest import RestClient
from b24connector.bitrix24.transport import new_session
from b24connector.portals import PortalPolicy
from b24connector.settings import DEFAULT_PORTAL_SUFFIXES
from tests.support.pacing import NoPacing

pytestmark = pytest.mark.integration

ACCESS_TOKEN = "ydtj8pho532wydb5ixk78ol7uqlb7sch"

DRIP_SECONDS = 8.0  # how long the dripping server keeps sending (the review saw 8 s past the deadline)
DEADLINE_SECONDS = 2.0


class _Dripper:
    """A loopback HTTP server that drips one byte every 50 ms for 8 s: of its body, or of its headers."""

    def __init__(self, *, headers_too: bool = False) -> None:
        self._headers_too = headers_too
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> _Dripper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._listener.close()
        self._thread.join(DRIP_SECONDS + 2)

    def _serve(self) -> None:
        try:
            conn, _ = self._listener.accept()
        except OSError:
            return
        with conn:
            conn.recv(65536)
            if self._headers_too:
                conn.sendall(b"HTTP/1.1 200 OK\r\nX-Drip: ")  # the header line never ends
            else:
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 10000\r\n\r\n{"
                )
            ends = time.monotonic() + DRIP_SECONDS
            while time.monotonic() < ends and not self._stop.wait(0.05):
                try:
                    conn.sendall(b" ")
                except OSError:
                    return


@pytest.mark.parametrize("headers_too", [False, True], ids=["body", "headers"])
def test_a_dripping_portal_cannot_keep_a_call_past_its_deadline(headers_too: bool) -> None:
    with _Dripper(headers_too=headers_too) as server:
        host = f"127.0.0.1:{server.port}"
        client = RestClient(
            PortalPolicy(DEFAULT_PORTAL_SUFFIXES, (host,), local_mode=True),
            session=new_session(),
            pacer=NoPacing(),
            timeout=(1.0, 1.0),  # each socket wait is short: the drip never trips it
        )
        started = time.monotonic()
        portal = PortalContext(f"http://{host}/rest/", ACCESS_TOKEN, deadline=started + DEADLINE_SECONDS)
        with pytest.raises(TransientError) as caught:
            client.call(portal, "crm.lead.list")
        elapsed = time.monotonic() - started
    assert caught.value.code == "TIMEOUT"
    # Before: the call lasted as long as the drip (8 s, 6 s past the deadline).
    assert elapsed < DEADLINE_SECONDS + 1.0, elapsed


@pytest.mark.parametrize("headers_too", [False, True], ids=["body", "headers"])
def test_a_dripping_oauth_server_cannot_keep_a_refresh_past_its_deadline(headers_too: bool) -> None:
    with _Dripper(headers_too=headers_too) as server:
        client = OAuthClient(
            "local.app", lambda: "secret-value", [f"http://127.0.0.1:{server.port}"],
            session=new_session(), timeout=(1.0, 1.0), local_mode=True, total_timeout=30.0,
        )  # fmt: skip
        started = time.monotonic()
        with pytest.raises(OAuthTransientError) as caught:
            client.refresh("refresh-token-value", deadline=started + DEADLINE_SECONDS)
        elapsed = time.monotonic() - started
    assert caught.value.code == "TIMEOUT"
    assert caught.value.request_sent is True  # the refresh token may be spent: outcome unknown
    assert elapsed < DEADLINE_SECONDS + 1.0, elapsed
