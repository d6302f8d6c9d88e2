"""The real handlers, in process, over moto (tables from template.yaml) and the Bitrix24 emulator.

`connector` serves the HTTP functions behind local_stack's HttpApi v2 front (the same event and answer
mapping as API Gateway) on an ephemeral loopback port, and calls the other handlers directly with
AWS-shaped events. `aws_calls` records every botocore call (service, operation) the handlers make.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import botocore.client
import pytest
import requests
from werkzeug.serving import BaseWSGIServer, make_server

from b24connector.handlers import (
    authorize,
    callback,
    install,
    leads,
    lifecycle,
    refresh_sweep,
    refresh_worker,
    token_rescue,
)
from bitrix24_emulator import Emulator, EmulatorConfig
from bitrix24_emulator.wsgi import QuietRequestHandler
from local_stack.http_api import HttpApiFront
from local_stack.runtime import InvocationResult
from local_stack.template import Route
from tests.support.aws import AwsStack
from tests.support.aws_events import FakeContext, scheduler_event
from tests.support.lifecycle import drain_queue

CLIENT_ID = "local.test.app"
CLIENT_SECRET = "test-client-secret"  # what tests.support.aws.provision puts in Secrets Manager
COOKIE = "__Host-b24-oauth"

ROUTES = [
    Route("GET", "/authorize", "AuthorizeFunction"),
    Route("GET", "/callback", "CallbackFunction"),
    Route("POST", "/install", "InstallFunction"),
    Route("POST", "/events", "InstallFunction"),
]
HANDLERS: dict[str, Callable[[Any, Any], Any]] = {
    "AuthorizeFunction": authorize.handler,
    "CallbackFunction": callback.handler,
    "InstallFunction": install.handler,
    "LeadsFunction": leads.handler,
    "RefreshFunction": refresh_sweep.handler,
    "RefreshWorkerFunction": refresh_worker.handler,
    "TokenRescueFunction": token_rescue.handler,
    "LifecycleFunction": lifecycle.handler,
}


@dataclass
class AwsCalls:
    """Every botocore API call made while recording, as (service, operation)."""

    calls: list[tuple[str, str]] = field(default_factory=list)
    tables: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def clear(self) -> None:
        """Forget what was recorded."""
        with self.lock:
            self.calls.clear()
            self.tables.clear()

    def dynamodb_on(self, table: str) -> list[str]:
        """The DynamoDB operations called on `table`."""
        with self.lock:
            return [
                op
                for (svc, op), name in zip(self.calls, self.tables, strict=True)
                if svc == "dynamodb" and name == table
            ]

    def of(self, service: str) -> list[str]:
        """The operations called on `service`."""
        with self.lock:
            return [op for svc, op in self.calls if svc == service]


@pytest.fixture
def aws_calls(monkeypatch: pytest.MonkeyPatch) -> AwsCalls:
    """Record botocore calls (boto3, PynamoDB and Powertools all go through BaseClient._make_api_call)."""
    recorded = AwsCalls()
    real = botocore.client.BaseClient._make_api_call

    def recording(self: Any, operation_name: str, api_params: Any) -> Any:
        with recorded.lock:
            recorded.calls.append((self.meta.service_model.service_name, operation_name))
            recorded.tables.append(
                str(api_params.get("TableName", "")) if isinstance(api_params, dict) else ""
            )
        return real(self, operation_name, api_params)

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", recording)
    return recorded


def _invoke_in_process(function: str, event: dict[str, Any]) -> InvocationResult:
    result = HANDLERS[function](event, FakeContext(function_name=function))
    return InvocationResult(request_id="local", payload=json.dumps(result).encode())


@dataclass
class LifecycleDrain:
    """What one drain of LifecycleQueue did."""

    done: int = 0
    retried: int = 0


@dataclass
class Connector:
    """The deployed shape: API URL for the HTTP routes, direct calls for the rest."""

    api_url: str
    stack: AwsStack
    emulator: Emulator

    def invoke(self, function: str, event: Any, *, remaining_ms: int = 60_000) -> Any:
        """Invoke a handler as Lambda would (through a JSON round trip, like the Invoke API)."""
        payload = json.loads(json.dumps(event))
        result = HANDLERS[function](payload, FakeContext(function_name=function, remaining_ms=remaining_ms))
        return json.loads(json.dumps(result))

    def drain_lifecycle(self, *, rounds: int = 6) -> LifecycleDrain:
        """Run LifecycleFunction over LifecycleQueue as the SQS event source would, until it is empty.

        A message the function reports failed is made visible again at once (instead of after the
        visibility timeout), so a retry happens in the next round.
        """
        drain = LifecycleDrain()
        drain_queue(
            self.stack.client("sqs"),
            self.stack.lifecycle_queue_url,
            lambda event: self.invoke("LifecycleFunction", event),
            drain,
            rounds=rounds,
        )
        return drain

    def leads(self, **payload: Any) -> Any:
        """Invoke LeadsFunction."""
        return self.invoke("LeadsFunction", payload)

    def sweep(self) -> Any:
        """Run RefreshFunction on a scheduler event."""
        return self.invoke("RefreshFunction", scheduler_event())

    def install_url(self) -> str:
        """Where the portal posts the install page."""
        return f"{self.api_url}/install"

    def events_url(self) -> str:
        """Where the portal posts app events."""
        return f"{self.api_url}/events"

    def authorize(self) -> tuple[str, str]:
        """GET /authorize for the emulated portal; returns (consent URL, browser nonce)."""
        answer = requests.get(
            f"{self.api_url}/authorize",
            params={"domain": self.emulator.portal_domain},
            allow_redirects=False,
            timeout=10,
        )
        assert answer.status_code == 302, answer.text
        cookie = answer.headers["Set-Cookie"]
        assert cookie.startswith(f"{COOKIE}=")
        return answer.headers["Location"], cookie.split(";", 1)[0].split("=", 1)[1]

    def consent(self, consent_url: str, *, user_id: int | None = None) -> str:
        """The portal's answer to the consent URL for a logged-in user: the redirect to /callback.

        A logged-in user is redirected at once (docs/bitrix24-facts.md#f-oauth-1); with the emulator's
        `consent_form` on, its one form is submitted. `user_id` approves as another portal user.
        """
        from urllib.parse import parse_qs, urlsplit

        if user_id is not None:
            state = parse_qs(urlsplit(consent_url).query)["state"][0]
            approved = requests.post(
                f"{self.emulator.admin_url}/authorize", json={"state": state, "user_id": user_id}, timeout=10
            )
            assert approved.status_code == 200, approved.text
            return str(approved.json()["location"])
        page = requests.get(consent_url, allow_redirects=False, timeout=10)
        if page.status_code == 302:
            return page.headers["Location"]
        assert page.status_code == 200
        assert page.text.count("<form") == 1
        state = parse_qs(urlsplit(consent_url).query)["state"][0]
        approved = requests.post(
            f"{self.emulator.portal_url}/oauth/authorize/",
            data={"client_id": CLIENT_ID, "state": state},
            allow_redirects=False,
            timeout=10,
        )
        assert approved.status_code == 302, approved.text
        return approved.headers["Location"]

    def install_event(self) -> None:
        """An API-only app's ONAPPINSTALL posted to /events by the portal, then applied from the journal."""
        answer = self.emulator.send_install(self.events_url(), "event")
        assert answer["status"] == 200, answer
        self.drain_lifecycle()
        item = self.portal_item()
        assert item is not None
        assert item["health"]["S"] == "active", item
        # The install's own REST calls (user.admin, event.get, event.bind) are not what tests count.
        self.emulator.reset()

    def connect(self, *, user_id: int | None = None) -> requests.Response:
        """The whole browser journey: authorize, consent, callback with the cookie."""
        consent_url, nonce = self.authorize()
        redirect = self.consent(consent_url, user_id=user_id)
        return requests.get(
            redirect, headers={"Cookie": f"{COOKIE}={nonce}"}, allow_redirects=False, timeout=10
        )

    def post_form(self, path: str, fields: list[tuple[str, str]], **kwargs: Any) -> requests.Response:
        """POST a form to the API."""
        return requests.post(
            f"{self.api_url}{path}",
            data=urlencode(fields),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
            timeout=10,
            **kwargs,
        )

    def portal_item(self) -> dict[str, Any] | None:
        """The emulated portal's raw DynamoDB item (test inspection)."""
        items = [
            i
            for i in self.stack.raw_items(self.stack.portals_table)
            if i["member_id"]["S"] == self.emulator.member_id
        ]
        return items[0] if items else None


@pytest.fixture
def emulator_config() -> dict[str, Any]:
    """EmulatorConfig overrides for this test (override the fixture to change them)."""
    return {"leads": 300, "seed": 7}


@pytest.fixture
def emulator(emulator_config: dict[str, Any]) -> Iterator[Emulator]:
    """A Bitrix24 portal + OAuth server registered with the test app's credentials."""
    config = EmulatorConfig(client_id=CLIENT_ID, client_secret=CLIENT_SECRET, **emulator_config)
    with Emulator(config) as emulator:
        yield emulator


@pytest.fixture
def connector(aws_stack_factory: Callable[..., AwsStack], emulator: Emulator) -> Iterator[Connector]:
    """A stack on moto whose settings trust the emulator, with the HTTP routes served on loopback."""
    front = HttpApiFront(ROUTES, _invoke_in_process)
    # Quiet: access lines would carry callback codes and states.
    server: BaseWSGIServer = make_server(
        "127.0.0.1", 0, front, threaded=True, request_handler=QuietRequestHandler
    )
    thread = threading.Thread(target=server.serve_forever, name="api-front", daemon=True)
    thread.start()
    api_url = f"http://127.0.0.1:{server.server_port}"
    stack = aws_stack_factory(
        LOCAL_MODE="true",
        ALLOWED_PORTAL_HOSTS=emulator.portal_domain,
        OAUTH_SERVERS=emulator.oauth_url,
        HTTP_TIMEOUT_SECONDS="5",
        INSTALL_FINISH_SCRIPT_URL=f"{emulator.portal_url}/bx24.js",
        EVENTS_URL=f"{api_url}/events",
    )
    emulator.configure(redirect_uri=f"{api_url}/callback")
    try:
        yield Connector(api_url, stack, emulator)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll until `predicate` holds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()
