"""The one test rig: real product code against real servers, at the level a test needs.

A `Rig` is one stack (tables, key, secrets and queues from template.yaml, on moto's server; tables on
dynalite when asked) and one or more emulated Bitrix24 portals (the first is `rig.emulator`). Build it
with the `rig_factory` fixture (tests/conftest.py). It drives the product at three levels:

- **handlers, in process** — `rig.get`, `rig.post_form`, `rig.authorize`/`consent`/`callback`,
  `rig.install_event`, `rig.leads`, `rig.invoke`, `rig.sweep`, `rig.drain_lifecycle`,
  `rig.publish_changes`: AWS-shaped events through a JSON round trip, answers as Lambda returns them.
  Fast, and what the attack tests use.
- **the API on a loopback socket** — `rig.http`: the HTTP routes behind local_stack's HttpApi front
  (API Gateway's event and answer mapping), reached with `requests` as a browser or the portal
  does. The emulator delivers bound events (ONAPPUNINSTALL after event.bind) to `{rig.api_url}/events`.
- **the vault, per worker** — `rig.workers()` builds a store and refresh coordinator per worker (its
  own caches, like its own container), in threads or child processes (tests/support/workers.py);
  `rig.scene()` installs the portal's grant at that level first.

Every secret is canary-marked (tests/leak_canary.py), so a leak anywhere fails the session.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, parse_qsl, urlencode, urlsplit

import requests
from werkzeug.serving import make_server

from b24connector.handlers import (
    authorize,
    callback,
    install,
    leads,
    lifecycle,
    publisher,
    refresh_sweep,
    refresh_worker,
    token_rescue,
)
from bitrix24_emulator import Emulator
from bitrix24_emulator.installer import install_event_request, install_page_request, uninstall_request
from bitrix24_emulator.wsgi import QuietRequestHandler
from local_stack.http_api import HttpApiFront
from local_stack.runtime import InvocationResult
from local_stack.streams import lambda_record
from local_stack.template import Route
from tests.leak_canary import canary_value
from tests.support.aws import AwsStack
from tests.support.aws_events import FakeContext, http_event, scheduler_event, sqs_event
from tests.support.lifecycle import drain_queue
from tests.support.servers import ServedInThread

if TYPE_CHECKING:
    from b24connector.tokens import TokenSet
    from b24connector.vault.portal import Portal
    from tests.support.workers import Workers

CLIENT_ID = "local.test.app"  # what tests.support.aws.AwsStack.env() configures
CLIENT_SECRET = canary_value("clientsecret", 50)
COOKIE = "__Host-b24-oauth"
API_HOST = "a1b2c3d4e5.execute-api.eu-central-1.amazonaws.com"
BACKENDS = ("moto", "dynalite")  # the DynamoDB implementations a race or fault test runs on
HTTP_TIMEOUT = 10  # seconds, for requests to the loopback API and the emulator

HANDLERS: dict[str, Callable[[Any, Any], Any]] = {
    "AuthorizeFunction": authorize.handler,
    "CallbackFunction": callback.handler,
    "InstallFunction": install.handler,
    "LeadsFunction": leads.handler,
    "RefreshFunction": refresh_sweep.handler,
    "RefreshWorkerFunction": refresh_worker.handler,
    "TokenRescueFunction": token_rescue.handler,
    "LifecycleFunction": lifecycle.handler,
    "PublisherFunction": publisher.handler,
}
ROUTE_FUNCTION = {
    ("GET", "/authorize"): "AuthorizeFunction",
    ("GET", "/callback"): "CallbackFunction",
    ("POST", "/install"): "InstallFunction",
    ("POST", "/events"): "InstallFunction",
}


def invoke(function: str, event: Any, *, remaining_ms: int = 60_000) -> Any:
    """Call a handler the way Lambda does: the event and the answer cross a JSON boundary."""
    payload = json.loads(json.dumps(event))
    answer = HANDLERS[function](payload, FakeContext(function_name=function, remaining_ms=remaining_ms))
    return json.loads(json.dumps(answer))


def route(event: dict[str, Any]) -> dict[str, Any]:
    """Send an HttpApi v2 event to the function its route belongs to."""
    http = event["requestContext"]["http"]
    function = ROUTE_FUNCTION[(http["method"], event["rawPath"])]
    answer: dict[str, Any] = invoke(function, event)
    return answer


def header(answer: dict[str, Any], name: str) -> str | None:
    """A response header, case-insensitively."""
    for key, value in (answer.get("headers") or {}).items():
        if key.lower() == name.lower():
            return str(value)
    return None


def location_allowed(location: str, local_host: str | None = None) -> bool:
    """True when a redirect goes to an allow-listed portal's consent page (https, one label + suffix)."""
    from b24connector.settings import DEFAULT_PORTAL_SUFFIXES

    parts = urlsplit(location)
    host = parts.netloc
    if local_host is not None and host == local_host:
        return parts.scheme == "http" and parts.path == "/oauth/authorize/"
    if parts.scheme != "https" or parts.path != "/oauth/authorize/" or host != (parts.hostname or ""):
        return False
    for suffix in DEFAULT_PORTAL_SUFFIXES:
        label = host[: -len(suffix)]
        if host.endswith(suffix) and label and "." not in label:
            return label.replace("-", "").isalnum() and label.isascii() and label.islower()
    return False


def query_of(url: str) -> list[tuple[str, str]]:
    """The decoded query pairs of a URL."""
    return parse_qsl(urlsplit(url).query, keep_blank_values=True)


def all_text(*values: Any) -> Iterator[str]:
    """JSON text of values (for secret scans in assertions)."""
    for value in values:
        yield json.dumps(value, default=str, sort_keys=True)


class ApiFront(ServedInThread):
    """The HTTP routes on a loopback port (API Gateway's event and answer mapping), handlers in process."""

    def __init__(self) -> None:
        front = HttpApiFront([Route(m, p, f) for (m, p), f in ROUTE_FUNCTION.items()], _invoke_in_process)
        # Quiet: access lines would carry callback codes and states.
        server = make_server("127.0.0.1", 0, front, threaded=True, request_handler=QuietRequestHandler)
        super().__init__(server, "api-front")
        self.url = f"http://127.0.0.1:{self.port}"


def _invoke_in_process(function: str, event: dict[str, Any]) -> InvocationResult:
    return InvocationResult(request_id="local", payload=json.dumps(invoke(function, event)).encode())


@dataclass
class AwsCalls:
    """Every botocore API call made while recording, as (service, operation); the `aws_calls` fixture."""

    calls: list[tuple[str, str]] = field(default_factory=list)
    tables: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, service: str, operation: str, params: Any) -> None:
        """Note one call (its TableName, if any)."""
        with self.lock:
            self.calls.append((service, operation))
            self.tables.append(str(params.get("TableName", "")) if isinstance(params, dict) else "")

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


@dataclass
class LifecycleDrain:
    """What one drain of LifecycleQueue did: messages done or redelivered, and each job's outcome."""

    done: int = 0
    retried: int = 0
    outcomes: list[tuple[str, str, str]] = field(default_factory=list)  # (job kind, member_id, outcome)

    def of(self, kind: str) -> list[str]:
        """The outcomes of the jobs of one kind ("grant", "uninstall", "subscribe"), in order."""
        return [outcome for job, _member, outcome in self.outcomes if job == kind]


@contextlib.contextmanager
def _recording_outcomes(drain: LifecycleDrain) -> Iterator[None]:
    """Record what LifecycleWorker.run returned (or raised) for each job, without changing it."""
    from b24connector.lifecycle import LifecycleWorker

    real = LifecycleWorker.run

    def run(self: LifecycleWorker, job: Any) -> str:
        try:
            outcome = real(self, job)
        except Exception as exc:
            drain.outcomes.append((job.kind, job.member_id, f"retry:{type(exc).__name__}"))
            raise
        drain.outcomes.append((job.kind, job.member_id, outcome))
        return outcome

    LifecycleWorker.run = run  # type: ignore[method-assign]
    try:
        yield
    finally:
        LifecycleWorker.run = real  # type: ignore[method-assign]


_NO_PAYLOAD: Any = object()


@dataclass
class Rig:
    """One stack, the emulated portal(s), and the product's handlers and vault over them."""

    stack: AwsStack
    emulator: Emulator
    env: dict[str, str]
    backend: str = "moto"
    others: list[Emulator] = field(default_factory=list)
    api_url: str = ""  # the HTTP routes on loopback (EVENTS_URL is `{api_url}/events`)
    _stream_positions: dict[str, str] = field(default_factory=dict)

    @property
    def http(self) -> Http:
        """The API on its loopback socket, as a browser or the portal reaches it."""
        return Http(self)

    # -- HTTP routes, in process --

    def get(
        self, path: str, query: Sequence[tuple[str, str]] | str = (), *, cookies: Sequence[str] = ()
    ) -> Any:
        """GET an HTTP route through its handler (HttpApi v2 event)."""
        return route(http_event("GET", path, query=query, cookies=cookies))

    def post_form(
        self, path: str, fields: Sequence[tuple[str, str]], query: Sequence[tuple[str, str]] = ()
    ) -> Any:
        """POST a form (base64 body, as HttpApi delivers it) through its handler."""
        body = urlencode(list(fields)).encode("ascii")
        event = http_event(
            "POST",
            path,
            query=query,
            headers={"content-type": "application/x-www-form-urlencoded", "content-length": str(len(body))},
            body=body,
        )
        return route(event)

    def authorize(self, domain: str | None = None) -> tuple[str, str]:
        """GET /authorize; returns (consent URL, browser nonce from the cookie)."""
        answer = self.get("/authorize", [("domain", domain or self.emulator.portal_domain)])
        assert answer["statusCode"] == 302, answer
        (cookie,) = answer["cookies"]
        assert cookie.startswith(f"{COOKIE}=")
        return str(header(answer, "Location")), cookie.split(";", 1)[0].split("=", 1)[1]

    def consent(self, consent_url: str, emulator: Emulator | None = None) -> list[tuple[str, str]]:
        """The user approves on the portal; returns the callback's query pairs."""
        state = dict(query_of(consent_url))["state"]
        location = (emulator or self.emulator).approve(state=state)
        return query_of(location)

    def callback(self, query: Sequence[tuple[str, str]], nonce: str | None) -> Any:
        """GET /callback with the browser's cookie (None: no cookie)."""
        return self.get("/callback", query, cookies=[f"{COOKIE}={nonce}"] if nonce is not None else [])

    def connect(self) -> Any:
        """authorize -> consent -> callback; the callback's answer."""
        consent_url, nonce = self.authorize()
        return self.callback(self.consent(consent_url), nonce)

    def install_event(
        self, emulator: Emulator | None = None, *, drain: bool = True, **options: Any
    ) -> tuple[Any, list[tuple[str, str]]]:
        """A genuine ONAPPINSTALL from `emulator` (default: the main portal); (answer, fields sent).

        The answer is the journal's 200 "accepted"; with `drain` LifecycleFunction then applies it.
        """
        request = install_event_request(
            (emulator or self.emulator).state, "https://api.test/events", **options
        )
        answer = self.post_form("/events", request.fields)
        if drain:
            self.drain_lifecycle()
        return answer, request.fields

    def install_page(
        self, emulator: Emulator | None = None, **options: Any
    ) -> tuple[Any, list[tuple[str, str]], dict[str, str]]:
        """A genuine install page POST (options: the emulator's, e.g. `legacy`); (answer, form fields, query)."""
        request = install_page_request(
            (emulator or self.emulator).state, "https://api.test/install", **options
        )
        return (
            self.post_form("/install", request.fields, list(request.query.items())),
            request.fields,
            request.query,
        )

    def uninstall_fields(self, *, clean: bool, application_token: str | None = None) -> list[tuple[str, str]]:
        """ONAPPUNINSTALL fields (a given application_token forges it; None uninstalls in the emulator)."""
        return uninstall_request(
            self.emulator.state, "https://api.test/events", clean=clean, application_token=application_token
        ).fields

    # -- the other functions --

    def invoke(self, function: str, event: Any, *, remaining_ms: int = 60_000) -> Any:
        """Invoke any function of the template by logical id."""
        return invoke(function, event, remaining_ms=remaining_ms)

    def leads(self, payload: Any = _NO_PAYLOAD, /, *, remaining_ms: int = 60_000, **fields: Any) -> Any:
        """Invoke LeadsFunction with `payload` (any JSON value, hostile ones too) or with keyword fields."""
        if payload is _NO_PAYLOAD:
            payload = fields
        elif fields:
            raise TypeError("give a payload or keyword fields, not both")
        return invoke("LeadsFunction", payload, remaining_ms=remaining_ms)

    def sweep(self) -> Any:
        """Run RefreshFunction on a scheduler event."""
        return invoke("RefreshFunction", scheduler_event())

    def sqs(self, function: str, bodies: Sequence[str]) -> Any:
        """Invoke an SQS-fed function with one batch."""
        return invoke(function, sqs_event(list(bodies)))

    def drain_lifecycle(self, *, rounds: int = 6) -> LifecycleDrain:
        """Run LifecycleFunction over LifecycleQueue as the SQS event source would, until it is empty.

        A message the function reports failed is made visible again at once (instead of after the
        visibility timeout), so its retry happens in the next round; after `rounds` it stays queued.
        """
        drain = LifecycleDrain()
        with _recording_outcomes(drain):
            drain_queue(
                self.stack.client("sqs"),
                self.stack.lifecycle_queue_url,
                lambda event: invoke("LifecycleFunction", event),
                drain,
                rounds=rounds,
            )
        return drain

    def publish_changes(self) -> int:
        """Run PublisherFunction over every new record of the PortalsTable and LeadEventsTable streams
        (as the stream event sources would); the records handed over."""
        streams = self.stack.client("dynamodbstreams")
        dynamodb = self.stack.client("dynamodb")
        handed = 0
        for table in (self.stack.portals_table, self.stack.lead_events_table):
            arn = dynamodb.describe_table(TableName=table)["Table"]["LatestStreamArn"]
            position = self._stream_positions.get(arn)
            if position is None:
                (shard,) = streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"]
                position = streams.get_shard_iterator(
                    StreamArn=arn, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
                )["ShardIterator"]
            answer = streams.get_records(ShardIterator=position)
            self._stream_positions[arn] = answer["NextShardIterator"]
            records = [lambda_record(r, arn, self.stack.region) for r in answer.get("Records") or []]
            if records:
                result = invoke("PublisherFunction", {"Records": records})
                assert result == {"batchItemFailures": []}, result
                handed += len(records)
        return handed

    def subscribe(self) -> str:
        """A subscriber's own rule on the stack's bus (source b24connector) with an SQS target; its URL."""
        sqs, events = self.stack.client("sqs"), self.stack.client("events")
        url = sqs.create_queue(QueueName=f"subscriber-{self.stack.event_bus_name}")["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        rule = f"all-{self.stack.event_bus_name}"
        events.put_rule(
            Name=rule,
            EventBusName=self.stack.event_bus_name,
            EventPattern=json.dumps({"source": ["b24connector"]}),
        )
        events.put_targets(
            Rule=rule, EventBusName=self.stack.event_bus_name, Targets=[{"Id": "q", "Arn": arn}]
        )
        return str(url)

    # -- the vault, per worker --

    def workers(self, **policy: Any) -> Workers:
        """Vault + refresh coordinator per worker on this stack and portal (RefreshPolicy overrides)."""
        from tests.support.workers import Workers

        return Workers.from_env(self.env, CLIENT_SECRET, **policy)

    def scene(self, **policy: Any) -> Scene:
        """The portal's grant issued by the emulator and saved through the vault (no handler involved)."""
        from b24connector.bitrix24.tokens import parse_token_payload

        workers = self.workers(**policy)
        grant = parse_token_payload(self.emulator.issue_tokens())
        portal = workers.worker().store.save_grant(grant, domain=self.emulator.portal_domain, role="admin")
        return Scene(self, workers, grant, portal)

    # -- inspection --

    def items(self, table: str = "portals") -> list[dict[str, Any]]:
        """Every raw DynamoDB item of a table, sorted by key."""
        name = {"portals": self.stack.portals_table, "states": self.stack.states_table}[table]
        key = "member_id" if table == "portals" else "state_hash"
        return sorted(self.stack.raw_items(name), key=lambda item: item[key]["S"])

    def portal(self, member_id: str | None = None) -> dict[str, Any] | None:
        """The raw item of a portal (default: the main emulated one)."""
        wanted = member_id or self.emulator.member_id
        found = [item for item in self.items() if item["member_id"]["S"] == wanted]
        return found[0] if found else None

    def queue_bodies(self, queue_url: str, *, delete: bool = True) -> list[str]:
        """Every message body waiting in a queue (received, then deleted unless told otherwise)."""
        sqs = self.stack.client("sqs")
        bodies: list[str] = []
        while True:
            answer = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
            messages = answer.get("Messages", [])
            if not messages:
                return bodies
            for message in messages:
                bodies.append(message["Body"])
                if delete:
                    sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])


@dataclass
class Http:
    """The rig's API over its loopback socket: the browser journey and the portal's posts, with `requests`."""

    rig: Rig

    def events_url(self) -> str:
        """Where the portal posts app events."""
        return f"{self.rig.api_url}/events"

    def install_url(self) -> str:
        """Where the portal posts the install page."""
        return f"{self.rig.api_url}/install"

    def authorize(self) -> tuple[str, str]:
        """GET /authorize for the emulated portal; returns (consent URL, browser nonce)."""
        answer = requests.get(
            f"{self.rig.api_url}/authorize",
            params={"domain": self.rig.emulator.portal_domain},
            allow_redirects=False,
            timeout=HTTP_TIMEOUT,
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
        emulator = self.rig.emulator
        state = parse_qs(urlsplit(consent_url).query)["state"][0]
        if user_id is not None:
            approved = requests.post(
                f"{emulator.admin_url}/authorize",
                json={"state": state, "user_id": user_id},
                timeout=HTTP_TIMEOUT,
            )
            assert approved.status_code == 200, approved.text
            return str(approved.json()["location"])
        page = requests.get(consent_url, allow_redirects=False, timeout=HTTP_TIMEOUT)
        if page.status_code == 302:
            return page.headers["Location"]
        assert page.status_code == 200
        assert page.text.count("<form") == 1
        approved = requests.post(
            f"{emulator.portal_url}/oauth/authorize/",
            data={"client_id": CLIENT_ID, "state": state},
            allow_redirects=False,
            timeout=HTTP_TIMEOUT,
        )
        assert approved.status_code == 302, approved.text
        return approved.headers["Location"]

    def connect(self, *, user_id: int | None = None) -> requests.Response:
        """The whole browser journey: authorize, consent, callback with the cookie."""
        consent_url, nonce = self.authorize()
        redirect = self.consent(consent_url, user_id=user_id)
        return requests.get(
            redirect, headers={"Cookie": f"{COOKIE}={nonce}"}, allow_redirects=False, timeout=HTTP_TIMEOUT
        )

    def post_form(self, path: str, fields: list[tuple[str, str]], **kwargs: Any) -> requests.Response:
        """POST a form to the API."""
        return requests.post(
            f"{self.rig.api_url}{path}",
            data=urlencode(fields),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
            timeout=HTTP_TIMEOUT,
            **kwargs,
        )

    def install_event(self) -> None:
        """An API-only app's ONAPPINSTALL posted to /events by the portal, then applied from the journal.

        The install's own REST calls (user.admin, event.get, event.bind) are then forgotten by the
        emulator, so a test counts only what it does itself.
        """
        answer = self.rig.emulator.send_install(self.events_url(), "event")
        assert answer["status"] == 200, answer
        self.rig.drain_lifecycle()
        item = self.rig.portal()
        assert item is not None
        assert item["health"]["S"] == "active", item
        self.rig.emulator.reset()


@dataclass
class Scene:
    """A portal installed at the vault level: the rig, its workers, the initial grant and record."""

    rig: Rig
    workers: Workers
    grant: TokenSet
    portal: Portal

    @property
    def stack(self) -> AwsStack:
        """The rig's stack."""
        return self.rig.stack

    @property
    def emulator(self) -> Emulator:
        """The emulated portal."""
        return self.rig.emulator

    @property
    def member_id(self) -> str:
        """The emulated portal's member_id."""
        return self.grant.member_id

    def token_requests(self) -> int:
        """Calls the emulator's token endpoint has served so far."""
        return int(self.emulator.stats()["token_requests"])

    def stored(self) -> Portal:
        """The portal record, strongly consistent."""
        portal = self.workers.worker().store.get(self.member_id, consistent=True)
        assert portal is not None
        return portal
