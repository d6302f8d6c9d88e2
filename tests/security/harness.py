"""The security suite's rig: the real handlers in process, real AWS-shaped events, moto or dynalite,
the Bitrix24 emulator, plus hostile helpers (a catch-all listener, a crafted OAuth server).

Every secret here is canary-marked (tests/leak_canary.py), so a leak anywhere fails the session.
"""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import socketserver
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from werkzeug.serving import BaseWSGIServer, make_server
from werkzeug.wrappers import Request, Response

from b24connector.handlers import (
    authorize,
    callback,
    install,
    leads,
    lifecycle,
    publisher,
    refresh_worker,
    token_rescue,
)
from bitrix24_emulator import Emulator
from bitrix24_emulator.installer import install_event_request, install_page_request, uninstall_request
from bitrix24_emulator.wsgi import QuietRequestHandler
from local_stack.http_api import HttpApiFront
from local_stack.runtime import InvocationResult
from local_stack.template import Route
from tests.leak_canary import canary_value
from tests.support.aws import AwsStack
from tests.support.aws_events import FakeContext, http_event, sqs_event
from tests.support.lifecycle import drain_queue

CLIENT_ID = "local.test.app"  # what tests.support.aws.AwsStack.env() configures
CLIENT_SECRET = canary_value("clientsecret", 50)
COOKIE = "__Host-b24-oauth"
API_HOST = "a1b2c3d4e5.execute-api.eu-central-1.amazonaws.com"

HANDLERS: dict[str, Callable[[Any, Any], Any]] = {
    "AuthorizeFunction": authorize.handler,
    "CallbackFunction": callback.handler,
    "InstallFunction": install.handler,
    "LeadsFunction": leads.handler,
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


def _invoke_in_process(function: str, event: dict[str, Any]) -> InvocationResult:
    return InvocationResult(request_id="local", payload=json.dumps(invoke(function, event)).encode())


class ApiFront:
    """The HTTP routes on a loopback port (API Gateway's event and answer mapping), for Bitrix24 to call:
    the emulator delivers bound events (ONAPPUNINSTALL after event.bind) to `{url}/events`."""

    def __init__(self) -> None:
        front = HttpApiFront([Route(m, p, f) for (m, p), f in ROUTE_FUNCTION.items()], _invoke_in_process)
        # Quiet: access lines would carry callback codes and states.
        self._server = make_server("127.0.0.1", 0, front, threaded=True, request_handler=QuietRequestHandler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="api-front", daemon=True)
        self.url = f"http://127.0.0.1:{self._server.server_port}"

    def start(self) -> ApiFront:
        """Serve in a background thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


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


# --- hostile helpers -------------------------------------------------------------------------------


class CatchAll:
    """A loopback listener that records every connection and request line; nothing should reach it."""

    def __init__(self) -> None:
        self.connections = 0
        self.requests: list[str] = []
        self._lock = threading.Lock()
        outer = self

        class _Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                with outer._lock:
                    outer.connections += 1
                self.request.settimeout(1.0)
                try:
                    data = self.request.recv(4096)
                except OSError:
                    data = b""
                with outer._lock:
                    outer.requests.append(data.split(b"\r\n", 1)[0].decode("latin-1"))
                with contextlib.suppress(OSError):
                    self.request.sendall(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
                    )

        class _Server(socketserver.ThreadingTCPServer):
            allow_reuse_address = True
            daemon_threads = True

        self._server = _Server(("127.0.0.1", 0), _Handler)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, name="catch-all", daemon=True)

    @property
    def host(self) -> str:
        """host:port of the listener."""
        return f"127.0.0.1:{self.port}"

    def start(self) -> CatchAll:
        """Start listening."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    @property
    def hits(self) -> int:
        """Connections accepted so far."""
        with self._lock:
            return self.connections


@dataclass
class CraftedOAuthServer:
    """An allow-listed OAuth server that answers whatever the test scripts (a compromised or buggy one)."""

    token_answer: dict[str, Any] = field(default_factory=dict)
    app_info_answer: dict[str, Any] = field(default_factory=dict)
    token_requests: int = 0
    app_info_requests: int = 0
    _server: BaseWSGIServer | None = None
    _thread: threading.Thread | None = None

    def _app(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        if request.path == "/oauth/token/":
            self.token_requests += 1
            body = self.token_answer
        elif request.path == "/rest/app.info":
            self.app_info_requests += 1
            body = self.app_info_answer
        else:
            return Response("{}", status=404, content_type="application/json")(environ, start_response)
        return Response(json.dumps(body), content_type="application/json")(environ, start_response)

    def start(self) -> CraftedOAuthServer:
        """Listen on an ephemeral loopback port."""
        self._server = make_server(
            "127.0.0.1", 0, self._app, threaded=True, request_handler=QuietRequestHandler
        )
        self._thread = threading.Thread(target=self._server.serve_forever, name="crafted-oauth", daemon=True)
        self._thread.start()
        return self

    @property
    def url(self) -> str:
        """Base URL (http://127.0.0.1:port)."""
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_port}"

    @property
    def host(self) -> str:
        """host:port."""
        return self.url.removeprefix("http://")

    def stop(self) -> None:
        """Stop listening."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)


def free_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- the rig -------------------------------------------------------------------------------------


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


@dataclass
class Rig:
    """One stack (tables from template.yaml), the emulated portal(s), and the handlers in process."""

    stack: AwsStack
    emulator: Emulator
    env: dict[str, str]
    backend: str = "moto"
    others: list[Emulator] = field(default_factory=list)
    api_url: str = ""  # where Bitrix24 reaches the HTTP routes (EVENTS_URL is `{api_url}/events`)
    _stream_positions: dict[str, str] = field(default_factory=dict)

    # -- HTTP routes --

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

    # -- other functions --

    def leads(self, payload: Any, *, remaining_ms: int = 60_000) -> Any:
        """Invoke LeadsFunction."""
        return invoke("LeadsFunction", payload, remaining_ms=remaining_ms)

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
            records = [
                {**r, "eventSourceARN": arn, "dynamodb": _lambda_json({k: v for k, v in r["dynamodb"].items()
                                                                       if k != "ApproximateCreationDateTime"})}
                for r in answer.get("Records") or []
            ]  # fmt: skip
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


def _lambda_json(value: Any) -> Any:
    """Binary attribute values as Lambda's JSON event carries them (base64 text)."""
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, dict):
        return {k: _lambda_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_lambda_json(v) for v in value]
    return value


def all_text(*values: Any) -> Iterator[str]:
    """JSON text of values (for secret scans in assertions)."""
    for value in values:
        yield json.dumps(value, default=str, sort_keys=True)


# --- containers, fault injection, metrics ------------------------------------------------------


def cold_start() -> None:
    """Forget every per-container cache (wiring, decrypted tokens, secrets): the next call is a cold start."""
    from aws_lambda_powertools.utilities import parameters

    from b24connector import wiring

    wiring.reset()
    parameters.clear_caches()


class _Body:
    """The `raw` of a botocore AWSResponse built in a test."""

    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._body


@dataclass
class InjectedFault:
    """Answers matching requests of one botocore client with an error until `remaining` runs out."""

    status: int
    error_code: str
    remaining: int = 1_000_000
    body_contains: bytes = b""
    seen: int = 0

    def __call__(self, request: Any, **_: Any) -> Any:
        from botocore.awsrequest import AWSResponse

        body = request.body if isinstance(request.body, bytes) else str(request.body or "").encode()
        if self.remaining <= 0 or self.body_contains not in body:
            return None
        self.remaining -= 1
        self.seen += 1
        payload = json.dumps({"__type": self.error_code, "message": "injected by the test"}).encode()
        headers = {"x-amzn-requestid": "injected", "content-type": "application/x-amz-json-1.0"}
        return AWSResponse(request.url, self.status, headers, _Body(payload))


def inject(client: Any, operation: str, fault: InjectedFault) -> InjectedFault:
    """Register `fault` on a botocore client's before-send event for `operation` (e.g. dynamodb.UpdateItem)."""
    client.meta.events.register_first(f"before-send.{operation}", fault)
    return fault


def emf_metrics(stdout: str) -> dict[str, float]:
    """Metric name -> summed value over every CloudWatch EMF document Powertools printed."""
    totals: dict[str, float] = {}
    for raw_line in stdout.splitlines():
        line = raw_line.strip()
        if not line.startswith("{") or '"_aws"' not in line:
            continue
        document = json.loads(line)
        for directive in document["_aws"]["CloudWatchMetrics"]:
            for metric in directive["Metrics"]:
                value = document.get(metric["Name"], 0)
                values = value if isinstance(value, list) else [value]
                totals[metric["Name"]] = totals.get(metric["Name"], 0) + sum(float(v) for v in values)
    return totals


def leads_process(payload: dict[str, Any], callers: int, ready: Any, go: Any, results: Any) -> None:
    """Child-process entry (a separate Lambda container): `callers` threads invoke LeadsFunction together."""
    outcomes: list[tuple[str, Any]] = []
    lock = threading.Lock()

    def call() -> None:
        answer = invoke("LeadsFunction", payload)
        entry = ("ok", answer["count"]) if "leads" in answer else ("error", answer["error"]["code"])
        with lock:
            outcomes.append(entry)

    ready.put(True)
    go.wait(120)
    pool = [threading.Thread(target=call) for _ in range(callers)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(120)
    results.put(outcomes)
