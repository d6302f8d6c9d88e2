"""Cold start: what importing a handler loads, and what is left for the first use that needs it."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from aws_lambda_powertools.utilities import parameters

from b24connector import authorization, pkce, wiring
from b24connector.settings import ConfigError, get_settings, load_settings
from b24connector.tokens import TokenSet
from tests.handlers.test_handlers import ENV
from tests.support.servers import REPO_ROOT

HANDLERS = ("authorize", "callback", "install", "leads", "refresh_sweep", "refresh_worker", "token_rescue")
# Loaded by the first use that needs them (a Bitrix24 call; sealing or opening a pair), never by the import.
DEFERRED = ("requests", "b24connector.bitrix24.oauth", "b24connector.bitrix24.rest", "cryptography")


@pytest.mark.parametrize("handler", HANDLERS)
def test_importing_a_handler_leaves_http_clients_for_first_use(handler: str) -> None:
    probe = (
        f"import sys, b24connector.handlers.{handler};"
        f"print(sorted(m for m in {DEFERRED!r} if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-P", "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO_ROOT,
        env={"PYTHONPATH": "functions", "PATH": "/usr/bin:/bin", "AWS_DEFAULT_REGION": "eu-central-1"},
    )
    assert out.stdout.strip() == "[]"


def test_the_coordinator_builds_the_oauth_client_only_when_a_refresh_happens(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    conf = get_settings()
    built: list[Any] = []

    class Server:
        def refresh(
            self, refresh_token: str, *, server_hint: str | None = None, deadline: float | None = None
        ) -> TokenSet:
            built.append((refresh_token, server_hint))
            raise RuntimeError("stop here")

    def oauth_client(settings: Any) -> Server:
        assert settings is conf
        return Server()

    monkeypatch.setattr(wiring, "oauth_client", oauth_client)
    refresher = wiring.OnDemandRefresher(conf)
    assert built == []
    with pytest.raises(RuntimeError, match="stop here"):
        refresher.refresh("r1", server_hint="https://oauth.bitrix24.tech")
    assert built == [("r1", "https://oauth.bitrix24.tech")]
    get_settings.cache_clear()


@pytest.mark.parametrize(
    ("value", "pacer_type"),
    [(None, "DynamoTokenBucket"), ("true", "DynamoTokenBucket"), ("false", "LocalTokenBucket")],
)
def test_leads_paces_through_the_shared_bucket_unless_rate_limit_shared_is_off(
    monkeypatch: pytest.MonkeyPatch, value: str | None, pacer_type: str
) -> None:
    env = {**ENV, "AWS_DEFAULT_REGION": "eu-central-1"}
    if value is not None:
        env["RATE_LIMIT_SHARED"] = value
    monkeypatch.delenv("RATE_LIMIT_SHARED", raising=False)
    for name, item in env.items():
        monkeypatch.setenv(name, item)
    get_settings.cache_clear()
    conf = get_settings()
    assert conf.rate_limit_shared is (value != "false")
    # Wiring builds clients but calls nothing: no AWS or Bitrix24 request is made here.
    built = wiring.leads_reader(conf)
    assert type(built._lister.client.pacer).__name__ == pacer_type  # type: ignore[attr-defined]
    wiring.leads_reader.cache_clear()
    get_settings.cache_clear()
    with pytest.raises(ConfigError, match="RATE_LIMIT_SHARED"):
        load_settings({**ENV, "RATE_LIMIT_SHARED": "maybe"})


def test_pkce_derives_its_verifier_from_its_own_key_never_the_cursor_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # PKCE on needs its own secret: the cursor key may rotate while an authorization is in flight.
    with pytest.raises(ConfigError, match="PKCE_SECRET_ID"):
        load_settings({**ENV, "PKCE_ENABLED": "true"})
    conf = load_settings({**ENV, "PKCE_ENABLED": "true", "PKCE_SECRET_ID": "b24/pkce-key"})
    read: list[str] = []

    def get_secret(secret_id: str, **_: Any) -> str:  # Powertools' public Secrets Manager reader
        read.append(secret_id)
        return f"key-of-{secret_id}"

    monkeypatch.setattr(parameters, "get_secret", get_secret)
    built: list[Any] = []
    monkeypatch.setattr(authorization, "AuthorizationFlow", lambda *args, **kwargs: built.append(kwargs))
    wiring.authorization_flow.__wrapped__(conf)
    verifier = built[-1]["pkce_verifier"]
    assert verifier("state", "nonce") == pkce.derive_verifier(b"key-of-b24/pkce-key", "state", "nonce")
    assert read == ["b24/pkce-key"]
    # PKCE off: no verifier, and no key is read.
    wiring.authorization_flow.__wrapped__(load_settings(ENV))
    assert built[-1]["pkce_verifier"] is None
    assert read == ["b24/pkce-key"]
