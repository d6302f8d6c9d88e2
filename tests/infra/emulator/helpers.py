"""Request helpers for the Bitrix24 emulator tests."""

from __future__ import annotations

from typing import Any

import requests

from bitrix24_emulator import Emulator


def call(emu: Emulator, method: str, token: str | None, **params: Any) -> requests.Response:
    """POST a REST method as JSON with `auth` in the body."""
    body = dict(params)
    if token is not None:
        body["auth"] = token
    return requests.post(f"{emu.client_endpoint}{method}", json=body, timeout=10)


def token_request(emu: Emulator, **params: Any) -> requests.Response:
    """POST a form to the OAuth token endpoint with the app's credentials unless overridden."""
    form = {"client_id": emu.client_id, "client_secret": emu.client_secret, **params}
    return requests.post(emu.token_url, data=form, timeout=10)


def admin(emu: Emulator, method: str, path: str, body: Any = None) -> requests.Response:
    """Call the admin API."""
    return requests.request(method, f"{emu.admin_url}{path}", json=body, timeout=10)
