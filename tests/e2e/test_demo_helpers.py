"""The demo's small helpers, without a stack: form parsing, item search, fingerprints, the cookie policy."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import requests
from werkzeug.serving import BaseWSGIServer, make_server
from werkzeug.wrappers import Request, Response

from local_stack.demo import (
    LoopbackBrowserSession,
    fingerprint,
    html_forms,
    item_holds_any,
    plain_item,
)


def test_fingerprint_shows_four_characters_and_the_length() -> None:
    token = "abcdefghijklmnopqrstuvwxyz012345"
    assert fingerprint(token) == "abcd…(32 chars)"
    assert token[4:] not in fingerprint(token)


def test_html_forms_reads_action_method_fields_and_buttons() -> None:
    page = """<form method="post" action="/oauth/authorize/">
      <input type="hidden" name="client_id" value="local.x.y"><input type="hidden" name="state" value="s&amp;1">
      <button type="submit" id="allow">Allow</button></form><form action="/other"></form>"""
    first, second = html_forms(page)
    assert (first.action, first.method, first.fields, first.buttons) == (
        "/oauth/authorize/",
        "post",
        {"client_id": "local.x.y", "state": "s&1"},
        1,
    )
    assert (second.method, second.fields, second.buttons) == ("get", {}, 0)


def test_plain_item_and_item_holds_any() -> None:
    raw = {
        "member_id": {"S": "m1"},
        "version": {"N": "3"},
        "token_ciphertext": {"B": b"\x00secret-in-blob\x01"},
        "grant_digests": {"L": [{"S": "d1"}]},
    }
    assert plain_item(raw) == {
        "member_id": "m1",
        "version": 3,
        "token_ciphertext": b"\x00secret-in-blob\x01",
        "grant_digests": ["d1"],
    }
    # found in a string, in a binary attribute; absent ones are not reported
    assert item_holds_any(raw, ["d1", "secret-in-blob", "absent"]) == ["d1", "secret-in-blob"]


@pytest.fixture
def cookie_server() -> Iterator[str]:
    def app(environ: dict[str, object], start_response: object) -> object:
        request = Request(environ)
        if request.path == "/set":
            response = Response("", 302, headers={"Location": "/echo"})
            response.headers["Set-Cookie"] = "__Host-x=1; Max-Age=60; Path=/; Secure; HttpOnly; SameSite=Lax"
        else:
            response = Response(request.headers.get("Cookie", ""))
        return response(environ, start_response)  # type: ignore[arg-type]

    server: BaseWSGIServer = make_server("127.0.0.1", 0, app)  # type: ignore[arg-type]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def test_loopback_session_sends_secure_cookies_like_a_browser(cookie_server: str) -> None:
    # a plain requests.Session keeps the Secure cookie but never sends it over http
    with requests.Session() as plain:
        assert plain.get(f"{cookie_server}/set", timeout=5).text == ""
    # the loopback session sends it, on the redirect and on later requests
    with LoopbackBrowserSession() as browser:
        assert browser.get(f"{cookie_server}/set", timeout=5).text == "__Host-x=1"
        assert browser.get(f"{cookie_server}/echo", timeout=5).text == "__Host-x=1"
