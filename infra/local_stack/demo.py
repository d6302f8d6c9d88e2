"""``make demo``: the whole journey on a fresh local stack, step by step, with evidence for each step.

The journey talks to the stack only the way a portal, a browser, an operator or another AWS service
would: HTTP to the public routes and the emulator's admin API, boto3 to DynamoDB/KMS/Lambda. It never
imports the functions' code (infra reaches the functions only through template.yaml). It never prints a
token: tokens are compared in memory and shown as a fingerprint (first four characters and length).

    from local_stack import LocalStack, StackConfig
    from local_stack.demo import run_demo

    with LocalStack(StackConfig(leads=2000)) as stack:
        result = run_demo(stack)
        assert result.ok, result.summary()
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import math
import os
import secrets
import struct
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from html.parser import HTMLParser
from http.cookiejar import Cookie, CookieJar, DefaultCookiePolicy
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, TypeVar
from urllib.parse import parse_qs, urljoin, urlsplit

import boto3
import requests
from botocore.config import Config
from botocore.exceptions import ClientError
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from requests.cookies import RequestsCookieJar

from local_stack.config import REPO_ROOT, PortInUseError, StackConfig
from local_stack.stack import LocalStack

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_kms import KMSClient
    from mypy_boto3_lambda import LambdaClient

T = TypeVar("T")

TOKEN_PURPOSE = (
    "bitrix24-oauth-tokens"  # the KMS encryption context's purpose (docs/architecture.md#tables-and-keys)
)
DEFAULT_LEADS = 10_000
DEFAULT_PAGE_LIMIT = 2_000
DEFAULT_LOG_FILE = REPO_ROOT / ".local" / "demo-functions.log"
_HTTP_TIMEOUT = 30.0
LEAD_EVENTS = ("ONCRMLEADADD", "ONCRMLEADUPDATE", "ONCRMLEADDELETE")  # the template's LeadEvents default
_DAY = 86_400
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
_STEP_TITLES = (
    "Install (API-only app): the administrator installs; ONAPPINSTALL is journaled, applied, subscribed",
    "Authorize: /authorize -> the portal (logged in: no form) -> /callback, with a cookie jar",
    "Takeover: an employee's /authorize and forged ONAPPINSTALL change nothing",
    "At rest: the DynamoDB item holds ciphertext only, bound to its portal by the KMS context",
    "Read: LeadsFunction through boto3's Lambda client, every lead page by page via the cursor",
    "Events: a lead added through REST arrives as LeadCreated at a subscriber's own rule -> SQS; forgeries publish nothing",
    "Lazy refresh: the access token expires, the next read refreshes it transparently",
    "Scheduled refresh: the refresh token ages past REFRESH_AFTER_DAYS; schedule -> queue -> worker",
    "Uninstall: forged ONAPPUNINSTALLs are refused; the administrator's arrives through the binding",
    "UI app on a legacy portal: install page, installFinish, binding; uninstall confirmed with Bitrix24",
)
TOTAL_STEPS = len(_STEP_TITLES)


class StepFailed(Exception):
    """An expectation of a demo step did not hold; the message is the step's evidence line."""


def check(condition: bool, message: str) -> None:
    """Raise StepFailed(message) unless `condition` holds."""
    if not condition:
        raise StepFailed(message)


def require(value: T | None, message: str) -> T:
    """`value`, or StepFailed(message) when it is None."""
    if value is None:
        raise StepFailed(message)
    return value


@dataclass(slots=True)
class StepResult:
    """One step: held or not, and the one line that shows why."""

    number: int
    title: str
    ok: bool
    evidence: str
    seconds: float
    details: list[str] = field(default_factory=list)


@dataclass(slots=True)
class DemoResult:
    """The journey's outcome: every step, the wall time, and the measured facts (for tests)."""

    steps: list[StepResult] = field(default_factory=list)
    wall_seconds: float = 0.0
    facts: dict[str, Any] = field(default_factory=dict)
    # Every token the emulator issued during the journey: to search logs for, never to print.
    issued_tokens: set[str] = field(default_factory=set, repr=False)

    @property
    def ok(self) -> bool:
        """True only when every step ran and held."""
        return len(self.steps) == TOTAL_STEPS and all(step.ok for step in self.steps)

    def summary(self) -> str:
        """The printed summary: one line per step, then the verdict and the wall time."""
        lines = ["Summary"]
        for step in self.steps:
            mark = "✓" if step.ok else "✗"
            lines.append(f"  {step.number} {mark} {_short_title(step.title):<22} {step.seconds:6.2f} s")
        for number in range(len(self.steps) + 1, TOTAL_STEPS + 1):
            lines.append(f"  {number} ✗ {_short_title(_STEP_TITLES[number - 1]):<22}    not run")
        held = sum(step.ok for step in self.steps)
        verdict = f"all {TOTAL_STEPS} steps held" if self.ok else f"{held} of {TOTAL_STEPS} steps held"
        lines.append(f"  {verdict}; journey {self.wall_seconds:.1f} s")
        return "\n".join(lines)


def _short_title(title: str) -> str:
    return title.split(":", 1)[0]


# --- a browser-like HTTP client ------------------------------------------------------------------


def _is_loopback(host: str | None) -> bool:
    return (host or "").lower() in _LOOPBACK_HOSTS


class LoopbackSecureCookiePolicy(DefaultCookiePolicy):
    """Sends Secure cookies to http://127.0.0.1 and localhost, as browsers do for these trustworthy origins."""

    def return_ok_secure(self, cookie: Cookie, request: Any) -> bool:
        """Loopback http counts as secure (browsers treat it as a potentially trustworthy origin)."""
        if cookie.secure and _is_loopback(urlsplit(request.get_full_url()).hostname):
            return True
        return bool(super().return_ok_secure(cookie, request))


class LoopbackBrowserSession(requests.Session):
    """A requests.Session whose cookie jar behaves like a browser's on loopback origins.

    requests (http.cookiejar) never sends a Secure cookie over http, while Chromium and Firefox send
    it to 127.0.0.1/localhost; the state cookie (`__Host-`, Secure) needs the browser's behaviour.
    requests rebuilds a fresh default-policy jar for every request, so the policy is applied here.
    """

    def prepare_request(self, request: requests.Request) -> requests.PreparedRequest:
        """Prepare as usual, then compute the Cookie header with the loopback-aware policy."""
        prepared = super().prepare_request(request)
        jar = RequestsCookieJar(policy=LoopbackSecureCookiePolicy())
        for cookie in self.cookies:
            jar.set_cookie(cookie)
        extra = request.cookies
        if isinstance(extra, CookieJar):
            for cookie in extra:
                jar.set_cookie(cookie)
        elif extra:
            for name, value in dict(extra).items():
                jar.set(name, value)
        prepared.headers.pop("Cookie", None)
        # Redirects reuse this jar (resolve_redirects), so they get the same policy.
        prepared.prepare_cookies(jar)
        return prepared


@dataclass(slots=True)
class HtmlForm:
    """A <form> as a browser would submit it."""

    action: str
    method: str
    fields: dict[str, str]
    buttons: int


class _FormParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.forms: list[HtmlForm] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        if tag == "form":
            self.forms.append(HtmlForm(values.get("action", ""), values.get("method", "get").lower(), {}, 0))
        elif self.forms and tag == "input" and values.get("name"):
            self.forms[-1].fields[values["name"]] = values.get("value", "")
        elif self.forms and tag == "button" and values.get("type", "submit") == "submit":
            self.forms[-1].buttons += 1


def html_forms(html: str) -> list[HtmlForm]:
    """Every <form> of a page with its named inputs and its submit buttons."""
    parser = _FormParser()
    parser.feed(html)
    parser.close()
    return parser.forms


# --- small helpers ---------------------------------------------------------------------------------


def fingerprint(secret: str) -> str:
    """What the demo shows of a token: its first four characters and its length."""
    return f"{secret[:4]}…({len(secret)} chars)"


def _b64_preview(blob: bytes, chars: int = 24) -> str:
    return base64.b64encode(blob).decode("ascii")[:chars] + "…"


def plain_item(item: Mapping[str, Any]) -> dict[str, Any]:
    """A DynamoDB low-level item as plain values (N -> int/float, B -> bytes, L/M recursively)."""
    return {name: _plain(value) for name, value in item.items()}


def _plain(value: Mapping[str, Any]) -> Any:
    ((kind, raw),) = value.items()
    if kind == "N":
        number = float(raw)
        return int(number) if number.is_integer() else number
    if kind == "L":
        return [_plain(v) for v in raw]
    if kind == "M":
        return plain_item(raw)
    if kind in ("SS", "NS", "BS"):
        return sorted(raw)
    if kind == "NULL":
        return None
    return raw


def item_holds_any(item: Mapping[str, Any], needles: Sequence[str]) -> list[str]:
    """The needles found anywhere in a raw DynamoDB item: its JSON text and its binary attributes."""
    texts: list[bytes] = []

    def walk(value: Any) -> None:
        if isinstance(value, bytes | bytearray):
            texts.append(bytes(value))
        elif isinstance(value, Mapping):
            for key, inner in value.items():
                texts.append(str(key).encode())
                walk(inner)
        elif isinstance(value, list | tuple | set):
            for inner in value:
                walk(inner)
        else:
            texts.append(str(value).encode())

    walk(item)
    blob = b"\0".join(texts)
    return [needle for needle in needles if needle and needle.encode() in blob]


class StackClients:
    """The clients the journey uses: HTTP (browser-like and admin) and boto3 against the stack."""

    def __init__(self, stack: LocalStack) -> None:
        info = stack.running_info()
        if not (info.emulator_admin_url and info.member_id and info.portal_domain):
            raise ValueError("the demo needs the stack's Bitrix24 emulator")
        self.info = info
        self.stack = stack
        self.admin_url: str = info.emulator_admin_url
        self.member_id: str = info.member_id
        self.portal_domain: str = info.portal_domain
        self.portals_table = info.tables["PortalsTable"]
        self.http = requests.Session()
        config = Config(retries={"mode": "standard", "max_attempts": 2}, read_timeout=60)
        kwargs: dict[str, Any] = {
            "region_name": info.aws_region,
            "aws_access_key_id": "test",
            "aws_secret_access_key": "test",
            "config": config,
        }
        self.dynamodb: DynamoDBClient = boto3.client("dynamodb", endpoint_url=info.aws_endpoint_url, **kwargs)
        self.kms: KMSClient = boto3.client("kms", endpoint_url=info.aws_endpoint_url, **kwargs)
        self.lambda_: LambdaClient = boto3.client("lambda", endpoint_url=info.lambda_endpoint_url, **kwargs)
        self.sqs = boto3.client("sqs", endpoint_url=info.aws_endpoint_url, **kwargs)
        self.events = boto3.client("events", endpoint_url=info.aws_endpoint_url, **kwargs)
        self.known_tokens: set[str] = set()
        self.subscriber_queue: str | None = None

    def close(self) -> None:
        """Close the HTTP session (the boto3 clients need no closing)."""
        self.http.close()

    def redact(self, text: str) -> str:
        """`text` with every known token replaced by its fingerprint (belt and braces for printed lines)."""
        for token in self.known_tokens:
            if token in text:
                text = text.replace(token, fingerprint(token))
        return text

    # emulator admin API
    def admin(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        """Call the emulator's admin API; the decoded JSON answer."""
        response = self.http.request(method, f"{self.admin_url}{path}", json=body, timeout=_HTTP_TIMEOUT)
        response.raise_for_status()
        return response.json()

    def stats(self) -> dict[str, Any]:
        """The emulator's counters since the last reset."""
        stats: dict[str, Any] = self.admin("GET", "/stats")
        return stats

    def reset_stats(self) -> None:
        """Zero the emulator's counters (and its rate-limit bucket)."""
        self.admin("POST", "/reset")

    def remember_tokens(self) -> None:
        """Note every token the emulator has issued so far, to prove none of them is stored or logged."""
        for chain in self.admin("GET", "/tokens")["chains"]:
            for key in ("access_token", "refresh_token"):
                if chain.get(key):
                    self.known_tokens.add(str(chain[key]))

    def live_pair(self, user_id: int = 1) -> tuple[str, str] | None:
        """The newest live (not revoked) token pair the emulator issued for the portal to `user_id`."""
        chains = [
            c
            for c in self.admin("GET", "/tokens")["chains"]
            if not c.get("revoked") and int(c.get("user_id") or 0) == user_id
        ]
        if not chains:
            return None
        newest = max(chains, key=lambda c: float(c.get("created_at") or 0))
        return str(newest["access_token"]), str(newest["refresh_token"])

    # DynamoDB and Lambda
    def raw_item(self) -> dict[str, Any] | None:
        """The portal's item exactly as DynamoDB returns it (strongly consistent)."""
        answer = self.dynamodb.get_item(
            TableName=self.portals_table, Key={"member_id": {"S": self.member_id}}, ConsistentRead=True
        )
        item = answer.get("Item")
        return dict(item) if item is not None else None

    def item(self) -> dict[str, Any]:
        """The portal's item as plain values; StepFailed when there is none."""
        raw = require(self.raw_item(), f"no record for member_id {self.member_id} in {self.portals_table}")
        return plain_item(raw)

    def invoke_leads(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """One LeadsFunction invocation through the Lambda Invoke API; its JSON answer."""
        response = self.lambda_.invoke(
            FunctionName="LeadsFunction",
            InvocationType="RequestResponse",
            Payload=json.dumps(payload).encode(),
        )
        body = response["Payload"].read()
        check(not response.get("FunctionError"), f"LeadsFunction failed: {body[:200]!r}")
        answer: dict[str, Any] = json.loads(body)
        return answer

    def read_leads(self, limit: int) -> tuple[list[dict[str, Any]], int]:
        """Every lead, following next_cursor; (leads, invocations)."""
        leads: list[dict[str, Any]] = []
        cursor: str | None = None
        pages = 0
        while True:
            payload: dict[str, Any] = {"member_id": self.member_id, "select": ["ID", "TITLE"], "limit": limit}
            if cursor is not None:
                payload["cursor"] = cursor
            answer = self.invoke_leads(payload)
            pages += 1
            check("error" not in answer, f"LeadsFunction answered {answer.get('error')}")
            check(answer["count"] == len(answer["leads"]), "count differs from the leads returned")
            leads.extend(answer["leads"])
            cursor = answer["next_cursor"]
            if cursor is None:
                return leads, pages
            check(pages < 10_000, "the cursor never ended")

    def lifecycle(self) -> int:
        """Run LifecycleFunction over its queue as the SQS event source would; messages handled."""
        drain = self.stack.drain_queues()
        check(drain.failed == 0, f"LifecycleFunction left {drain.failed} messages for a retry")
        return drain.deleted

    def post_form(self, path: str, fields: Sequence[tuple[str, str]]) -> requests.Response:
        """POST a form to one of the stack's routes, as a portal does."""
        return self.http.post(f"{self.info.api_url}{path}", data=list(fields), timeout=_HTTP_TIMEOUT)

    def subscribe(self) -> str:
        """What a user's own function does: a rule on the stack's bus (source b24connector) -> an SQS queue."""
        if self.subscriber_queue is None:
            bus = require(self.info.event_bus_name, "the stack has no event bus")
            url = self.sqs.create_queue(QueueName="demo-subscriber")["QueueUrl"]
            arn = self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
                "QueueArn"
            ]
            self.events.put_rule(
                Name="demo-subscriber",
                EventBusName=bus,
                EventPattern=json.dumps({"source": ["b24connector"]}),
            )
            self.events.put_targets(
                Rule="demo-subscriber", EventBusName=bus, Targets=[{"Id": "queue", "Arn": arn}]
            )
            self.subscriber_queue = url
        return self.subscriber_queue

    def received_events(self) -> list[dict[str, Any]]:
        """Every event the subscriber's queue holds now (received and deleted)."""
        url = self.subscribe()
        events: list[dict[str, Any]] = []
        while True:
            messages = self.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages") or []
            if not messages:
                return events
            for message in messages:
                events.append(json.loads(message["Body"]))
                self.sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])

    def refresh_after_days(self) -> int:
        """REFRESH_AFTER_DAYS as the refresh functions see it (settings default: 21)."""
        env = self.stack.runtimes["RefreshWorkerFunction"].spec.environment
        return int(env.get("REFRESH_AFTER_DAYS") or 21)


# --- the steps -----------------------------------------------------------------------------------

Detail = Callable[[str], None]


def _delivery(answer: Mapping[str, Any], event: str) -> dict[str, Any]:
    """The emulator's report of the one delivery of `event` in an install/uninstall answer."""
    found = [d for d in answer.get("deliveries", []) if d.get("event") == event]
    check(len(found) == 1, f"the portal delivered {len(found)} {event}")
    return dict(found[0])


def _bindings(c: StackClients) -> list[tuple[str, str]]:
    return [(b["event"], b["handler"]) for b in c.admin("GET", "/events")["bindings"]]


def step_install(c: StackClients, detail: Detail) -> str:
    """1. An API-only app: ONAPPINSTALL to the app card's handler URL, journaled, applied, subscribed."""
    events_url = f"{c.info.api_url}/events"
    c.admin("POST", "/config", {"app_mode": "api_only", "install_url": events_url})
    c.reset_stats()
    before = c.raw_item()
    answer = c.admin("POST", "/install", {"user_id": 1})
    delivery = _delivery(answer, "ONAPPINSTALL")
    check(delivery["status"] == 200, f"ONAPPINSTALL answered {delivery['status']}")
    check(c.raw_item() == before, "the record changed before LifecycleFunction ran")
    detail(
        f"ONAPPINSTALL (user 1, an administrator) → {events_url}: {delivery['status']} accepted (journaled)"
    )
    handled = c.lifecycle()
    item = c.item()
    c.remember_tokens()
    stats = c.stats()
    check(item["health"] == "active", f"health is {item['health']}")
    check(item.get("grant_role") == "admin", f"the grant's role is {item.get('grant_role')}")
    check(item.get("subscription_state") == "bound", f"subscription is {item.get('subscription_state')}")
    bound = ["ONAPPUNINSTALL", *LEAD_EVENTS]
    check(item.get("subscribed_events") == sorted(bound), f"subscribed {item.get('subscribed_events')}")
    check(_bindings(c) == [(e, events_url) for e in bound], f"the portal's bindings are {_bindings(c)}")
    check(stats["oauth_app_info_requests"] >= 1, "the install tokens were not checked with app.info")
    detail(
        f"LifecycleFunction: {handled} jobs (grant: app.info + user.admin → stored; subscribe: event.get + "
        f"event.bind); record v{item['version']}, role {item['grant_role']}"
    )
    detail(f"portal bindings: {', '.join(bound)} → {events_url}")
    connected = [e for e in c.received_events() if e["detail-type"] == "PortalConnected"]
    check(len(connected) == 1, f"the subscriber received {len(connected)} PortalConnected")
    check(connected[0]["detail"]["grant_role"] == "admin", f"PortalConnected says {connected[0]['detail']}")
    detail("subscriber's rule → SQS: PortalConnected (grant_role admin)")
    return (
        f"ONAPPINSTALL 200 accepted → record v{item['version']} {item['health']} ({item['grant_role']}), "
        f"ONAPPUNINSTALL and the lead events bound with event.bind; PortalConnected published"
    )


def _sign_in(c: StackClients, browser: requests.Session, detail: Detail) -> str:
    """What the user's browser does: /authorize, the portal (a form only if it shows one); the cookie's name."""
    start = browser.get(
        f"{c.info.api_url}/authorize",
        params={"domain": c.portal_domain},
        allow_redirects=False,
        timeout=_HTTP_TIMEOUT,
    )
    check(start.status_code == 302, f"/authorize answered {start.status_code}")
    location = start.headers["Location"]
    set_cookie = start.headers.get("Set-Cookie", "")
    cookie_name = set_cookie.split("=", 1)[0]
    check(bool(cookie_name), "/authorize set no state cookie")
    flags = [f for f in ("Secure", "HttpOnly", "SameSite=Lax") if f.lower() in set_cookie.lower()]
    query = parse_qs(urlsplit(location).query)
    check(location.startswith(f"{c.info.bitrix24_portal_url}/oauth/authorize/"), "not sent to the portal")
    check("state" in query and "client_id" in query, "the consent URL lacks state or client_id")
    detail(f"/authorize: 302 to the portal's /oauth/authorize/; cookie {cookie_name} ({', '.join(flags)})")

    done = browser.get(location, timeout=_HTTP_TIMEOUT)
    forms = html_forms(done.text) if urlsplit(done.url).path.startswith("/oauth/authorize") else []
    if forms:
        # A portal that shows a consent form: submit its one form as a browser does.
        check(len(forms) == 1, f"the consent page has {len(forms)} forms")
        form = forms[0]
        done = browser.post(urljoin(done.url, form.action), data=form.fields, timeout=_HTTP_TIMEOUT)
    hops = [f"{r.status_code} {urlsplit(r.url).path}" for r in done.history]
    callback = urlsplit(done.url)
    hops.append(f"{done.status_code} {callback.path}")
    detail(f"portal (logged-in user, {'a form' if forms else 'no form'}): {' → '.join(hops)}")
    check(callback.path == "/callback", f"ended at {callback.path}, not /callback")
    check(done.status_code == 200 and "Connected" in done.text, f"/callback answered {done.status_code}")
    return cookie_name


def step_authorize(c: StackClients, detail: Detail) -> str:
    """2. The full OAuth flow with a cookie jar: authorize, the portal's redirect, callback."""
    before = c.raw_item()
    old_version = int(plain_item(before)["version"]) if before else 0
    c.reset_stats()
    with LoopbackBrowserSession() as browser:
        cookie_name = _sign_in(c, browser, detail)
        cleared = not any(cookie.name == cookie_name for cookie in browser.cookies)
    check(cleared, "the state cookie was not cleared by /callback")
    item = c.item()
    c.remember_tokens()
    stats = c.stats()
    grants = stats["token_grants"]
    check(grants.get("authorization_code") == 1, f"token grants were {grants}")
    check(item["version"] > old_version and item["health"] == "active", "the grant was not stored")
    check(item.get("grant_role") == "admin", f"the grant's role is {item.get('grant_role')}")
    c.lifecycle()  # the new grant's subscription check
    return (
        f"/callback 200 'Connected', state cookie cleared, 1 code exchange, "
        f"record v{item['version']} {item['health']} ({item['grant_role']})"
    )


def step_takeover(c: StackClients, detail: Detail) -> str:
    """3. User 2 (not an administrator) tries both ways an employee could take the grant over."""
    before = c.raw_item()
    with LoopbackBrowserSession() as browser:
        start = browser.get(
            f"{c.info.api_url}/authorize",
            params={"domain": c.portal_domain},
            allow_redirects=False,
            timeout=_HTTP_TIMEOUT,
        )
        state = parse_qs(urlsplit(start.headers["Location"]).query)["state"][0]
        # The employee approves on their own portal session (the emulator's admin API stands in for it).
        location = c.admin("POST", "/authorize", {"state": state, "user_id": 2})["location"]
        refused = browser.get(location, timeout=_HTTP_TIMEOUT)
    reason = refused.headers.get("X-Reason-Code", "")
    check(
        refused.status_code == 403 and reason == "administrator_required",
        f"/callback answered {refused.status_code} {reason}",
    )
    check(c.raw_item() == before, "the employee's authorization changed the record")
    detail(f"user 2 via /authorize → /callback: {refused.status_code} {reason}; record unchanged")
    # The employee's own pair (as the app frame shows it) in a forged ONAPPINSTALL, with a token of their choice.
    pair = c.admin("POST", "/tokens/issue", {"user_id": 2})
    c.known_tokens.update({pair["access_token"], pair["refresh_token"]})
    forged = c.post_form(
        "/events",
        [
            ("event", "ONAPPINSTALL"),
            ("auth[access_token]", pair["access_token"]),
            ("auth[refresh_token]", pair["refresh_token"]),
            ("auth[expires_in]", "3600"),
            ("auth[domain]", c.portal_domain),
            ("auth[server_endpoint]", pair["server_endpoint"]),
            ("auth[client_endpoint]", pair["client_endpoint"]),
            ("auth[member_id]", c.member_id),
            ("auth[user_id]", "2"),
            ("auth[application_token]", secrets.token_hex(16)),
        ],
    )
    check(forged.status_code == 200, f"the forged ONAPPINSTALL answered {forged.status_code}")
    c.lifecycle()
    check(c.raw_item() == before, "the forged ONAPPINSTALL changed the record")
    detail(
        "user 2's own pair + a chosen application_token as ONAPPINSTALL: 200 accepted → refused; record unchanged"
    )
    return "employee /authorize → 403 administrator_required; forged ONAPPINSTALL → refused; record unchanged"


def _envelope_parts(blob: bytes, member_id: str) -> tuple[bytes, bytes, bytes, bytes]:
    """(encrypted data key, nonce, AES-GCM ciphertext, associated data) of a stored token envelope.

    The format is the vault's (functions/b24connector/vault/cipher.py), restated here because the demo
    looks at the stack from outside, as an operator would.
    """
    magic = b"B24E\x01"
    check(blob.startswith(magic), "token_ciphertext is not an envelope")
    (key_length,) = struct.unpack_from(">H", blob, len(magic))
    body = len(magic) + 2 + key_length
    aad = b"b24connector-tokens\0" + member_id.encode("utf-8") + b"\0" + blob[:body]
    return blob[len(magic) + 2 : body], blob[body : body + 12], blob[body + 12 :], aad


def step_at_rest(c: StackClients, detail: Detail) -> str:
    """4. The raw item: attribute names, a truncated blob, no token anywhere; KMS context binds it."""
    raw = require(c.raw_item(), "no record")
    names = " ".join(f"{name}({next(iter(raw[name]))})" for name in sorted(raw))
    detail(f"item attributes: {names}")
    blob: bytes = require(raw.get("token_ciphertext", {}).get("B"), "no binary token_ciphertext attribute")
    detail(f"token_ciphertext: {_b64_preview(blob)} ({len(blob)} bytes, base64 truncated)")
    c.remember_tokens()
    found = item_holds_any(raw, sorted(c.known_tokens))
    check(not found, f"{len(found)} token strings appear in the stored item")

    context = {"purpose": TOKEN_PURPOSE, "member_id": c.member_id}
    data_key_blob, nonce, sealed, aad = _envelope_parts(blob, c.member_id)
    data_key = c.kms.decrypt(CiphertextBlob=data_key_blob, EncryptionContext=context)["Plaintext"]
    plaintext = AESGCM(data_key).decrypt(nonce, sealed, aad)
    pair = json.loads(plaintext)
    access, refresh = str(pair.get("a", "")), str(pair.get("r", ""))
    live = c.live_pair()
    check(live == (access, refresh), "the decrypted pair is not the portal's live pair")
    detail(
        f"envelope: KMS Decrypt of its data key with {{purpose, member_id={c.member_id[:6]}…}}, then "
        f"AES-GCM: ok → access {fingerprint(access)}, "
        f"refresh {fingerprint(refresh)} (the emulator's live pair)"
    )
    other = ("0" if c.member_id[0] != "0" else "1") * len(c.member_id)
    try:
        c.kms.decrypt(CiphertextBlob=data_key_blob, EncryptionContext={**context, "member_id": other})
    except ClientError as exc:
        refused = str(exc.response.get("Error", {}).get("Code"))
    else:
        refused = ""
    check(
        refused == "InvalidCiphertextException", f"another member_id decrypted too ({refused or 'no error'})"
    )
    detail(f"KMS Decrypt with member_id={other[:6]}…: refused ({refused})")
    return (
        f"{len(raw)} attributes, tokens only as {len(blob)}-byte ciphertext; none of "
        f"{len(c.known_tokens)} issued tokens in the item; right context decrypts, another member_id does not"
    )


def step_read(c: StackClients, detail: Detail, page_limit: int, facts: dict[str, Any]) -> str:
    """5. LeadsFunction through boto3, following the cursor to the end."""
    seeded = int(c.admin("GET", "/leads")["count"])
    c.reset_stats()
    began = time.monotonic()
    leads, pages = c.read_leads(page_limit)
    seconds = time.monotonic() - began
    stats = c.stats()
    ids = [int(lead["ID"]) for lead in leads]
    check(len(ids) == len(set(ids)), "a lead came twice")
    check(ids == sorted(ids), "the leads are not in ascending ID order")
    check(len(leads) == seeded, f"read {len(leads)} leads, the portal holds {seeded}")
    check(pages == max(1, math.ceil(seeded / page_limit)), f"{pages} pages for {seeded} leads")
    check(stats["token_requests"] == 0, f"{stats['token_requests']} token calls during a plain read")
    facts.update(
        leads=len(leads),
        pages=pages,
        rest_requests=stats["requests"],
        count_queries=stats["count_queries"],
        read_seconds=round(seconds, 2),
    )
    detail(
        f"{pages} invocations of ≤{page_limit:,} leads each; IDs {ids[0]}…{ids[-1]} ascending, no duplicates"
        if ids
        else f"{pages} invocation, no leads"
    )
    return (
        f"{len(leads):,} of {seeded:,} leads in {pages} pages, {seconds:.1f} s; emulator: "
        f"{stats['requests']} REST requests, {stats['count_queries']} COUNT pages, "
        f"{stats['rows_returned']:,} rows"
    )


def step_events(c: StackClients, detail: Detail) -> str:
    """6. A lead added through REST reaches the subscriber's own rule once; a forged delivery is refused."""
    url = f"{c.info.api_url}/events"
    pair = require(c.live_pair(1), "no live pair of the administrator")
    added = c.http.post(
        f"{c.info.bitrix24_portal_url}/rest/crm.lead.add",
        json={"fields": {"TITLE": "Demo lead"}, "auth": pair[0]},
        timeout=_HTTP_TIMEOUT,
    ).json()
    lead_id = int(require(added.get("result"), f"crm.lead.add answered {added}"))
    c.admin("POST", "/events/flush", {"timeout": 10})
    deliveries = [d for d in c.admin("GET", "/events")["deliveries"] if d["event"] == "ONCRMLEADADD"]
    check(bool(deliveries) and deliveries[-1]["status"] == 200, f"ONCRMLEADADD answered {deliveries[-1:]}")
    detail(
        f"crm.lead.add (REST) → lead {lead_id}; the portal posts ONCRMLEADADD → {url}: 200 (recorded once)"
    )
    c.lifecycle()
    received = c.received_events()
    created = [e for e in received if e["detail-type"] == "LeadCreated"]
    check(len(created) == 1, f"the subscriber received {len(created)} LeadCreated")
    event = created[0]
    check(event["detail"]["lead_id"] == lead_id, f"LeadCreated names lead {event['detail']['lead_id']}")
    check(event["detail"]["member_id"] == c.member_id, "LeadCreated names another portal")
    application_token = str(c.admin("GET", "/credentials")["application_token"])
    c.remember_tokens()
    leaked = [t for t in (*c.known_tokens, application_token) if t in json.dumps(received)]
    check(not leaked, "a published event carries a token")
    detail(f"subscriber's rule → SQS: {event['detail-type']} {json.dumps(event['detail'], sort_keys=True)}")
    forged = [
        ("event", "ONCRMLEADADD"),
        ("data[FIELDS][ID]", "999999"),
        ("ts", str(int(time.time()))),
        ("auth[member_id]", c.member_id),
        ("auth[application_token]", secrets.token_hex(16)),
    ]
    answer = c.post_form("/events", forged)
    check(answer.status_code == 403, f"a forged ONCRMLEADADD answered {answer.status_code}")
    c.lifecycle()
    after = c.received_events()
    check(after == [], f"the forged delivery published {len(after)} events")
    detail("forged ONCRMLEADADD (random application_token): 403, nothing recorded, nothing published")
    return f"LeadCreated for lead {lead_id} at the subscriber's queue, no token in it; forged delivery 403, nothing published"


def step_lazy_refresh(c: StackClients, detail: Detail, facts: dict[str, Any]) -> str:
    """7. Expire the access token in the emulator; the next read refreshes once and answers."""
    version = int(c.item()["version"])
    expired = c.admin("POST", "/tokens/expire", {"member_id": c.member_id})["expired"]
    check(expired >= 1, "the emulator expired no access token")
    c.reset_stats()
    answer = c.invoke_leads({"member_id": c.member_id, "select": ["ID"], "limit": 50})
    stats = c.stats()
    c.remember_tokens()
    item = c.item()
    check("error" not in answer, f"the read after expiry answered {answer.get('error')}")
    check(answer["count"] == min(50, int(facts.get("leads", 50))), f"read {answer['count']} leads")
    check(stats["token_requests"] == 1, f"{stats['token_requests']} token calls (expected exactly one)")
    check(stats["token_grants"] == {"refresh_token": 1}, f"token grants were {stats['token_grants']}")
    check(stats["http_401"] >= 1, "the portal never answered expired_token")
    check(item["version"] == version + 1, f"version {version} → {item['version']}")
    facts["lazy_refresh_token_requests"] = stats["token_requests"]
    detail(
        f"expired {expired} access token(s); read → {stats['http_401']} expired_token answer → 1 refresh → retry"
    )
    return (
        f"{answer['count']} leads read; exactly 1 token call (refresh_token); "
        f"record v{version} → v{item['version']}"
    )


def step_scheduled_refresh(c: StackClients, detail: Detail, facts: dict[str, Any]) -> str:
    """8. Make the portal due, fire the schedule, let the worker drain the queue."""
    days = c.refresh_after_days()
    item = c.item()
    version = int(item["version"])
    aged = c.admin("POST", "/tokens/age-refresh", {"member_id": c.member_id, "days": days + 1})["aged"]
    check(aged >= 1, "the emulator aged no refresh token")
    # As if the stored pair had been obtained REFRESH_AFTER_DAYS + 1 days ago (and last tried then).
    obtained = int(time.time()) - (days + 1) * _DAY
    values: dict[str, Any] = {":obtained": {"N": str(obtained)}, ":due": {"N": str(obtained + days * _DAY)}}
    assignments = ["refresh_obtained_at = :obtained", "refresh_due_at = :due"]
    if "last_refresh_attempt_at" in item:
        assignments.append("last_refresh_attempt_at = :obtained")
    c.dynamodb.update_item(
        TableName=c.portals_table,
        Key={"member_id": {"S": c.member_id}},
        UpdateExpression="SET " + ", ".join(assignments),
        ConditionExpression="version = :version",
        ExpressionAttributeValues={**values, ":version": {"N": str(version)}},
    )
    detail(
        f"refresh token aged {days + 1} days in the emulator and in the record (REFRESH_AFTER_DAYS={days})"
    )
    c.reset_stats()
    run = c.stack.run_schedule("RefreshFunction")
    sweep = run.result.json() or {}
    stats = c.stats()
    c.remember_tokens()
    after = c.item()
    check(run.result.function_error is None, f"RefreshFunction failed: {sweep}")
    check(sweep.get("due") == 1 and sweep.get("queued") == 1, f"the sweep reported {sweep}")
    drain = require(run.drain, "the queue was not drained")
    check(drain.received == 1 and drain.deleted == 1, f"the worker took {drain.as_dict()}")
    check(stats["token_requests"] == 1, f"{stats['token_requests']} token calls (expected exactly one)")
    check(after["version"] == version + 1, f"version {version} → {after['version']}")
    check(after["refresh_obtained_at"] > obtained, "refresh_obtained_at did not move")
    check(after["refresh_due_at"] >= time.time() + (days - 1) * _DAY, "the next due time is not days away")
    facts["scheduled_refresh_token_requests"] = stats["token_requests"]
    detail(
        f"RefreshFunction: due {sweep['due']}, queued {sweep['queued']} → RefreshQueue → "
        f"RefreshWorkerFunction: received {drain.received}, deleted {drain.deleted}, failed {drain.failed}"
    )
    return (
        f"1 due, 1 queued, 1 processed; exactly 1 token call; record v{version} → v{after['version']}, "
        f"next refresh due in {(after['refresh_due_at'] - time.time()) / _DAY:.0f} days"
    )


def _forget_uninstall_check(c: StackClients) -> None:
    """Let the next unproven uninstall be checked at once (the connector allows one check a minute)."""
    c.dynamodb.update_item(
        TableName=c.portals_table,
        Key={"member_id": {"S": c.member_id}},
        UpdateExpression="REMOVE uninstall_check_at",
    )


def step_uninstall(c: StackClients, detail: Detail) -> str:
    """9. Forged ONAPPUNINSTALLs are checked with Bitrix24 and refused; the administrator's is applied."""
    url = f"{c.info.api_url}/events"
    before = c.item()
    # A random token, and the real one (newer install pages show it to every employee in the app frame).
    real = c.admin("GET", "/credentials")["application_token"]
    for label, token in (
        ("random application_token", secrets.token_hex(16)),
        ("the real application_token", real),
    ):
        forged = c.admin("POST", "/send-uninstall", {"url": url, "application_token": token})
        check(forged["status"] == 202, f"the forged ONAPPUNINSTALL answered {forged['status']}")
        c.lifecycle()
        after_forged = c.item()
        after_forged.pop("uninstall_check_at", None)
        check(after_forged == before, "a forged ONAPPUNINSTALL changed the record")
        detail(
            f"forged ONAPPUNINSTALL ({label}): 202 → app.info with the stored grant says installed → refused"
        )
        _forget_uninstall_check(c)
    version = int(before["version"])
    removed = c.admin("POST", "/uninstall", {"clean": False})
    delivery = _delivery(removed, "ONAPPUNINSTALL")
    check(delivery["handler"] == url, f"ONAPPUNINSTALL went to {delivery['handler']}")
    check(delivery["status"] == 202, f"the genuine ONAPPUNINSTALL answered {delivery['status']}")
    c.lifecycle()
    after = c.item()
    check(after["health"] == "uninstalled", f"health is {after['health']}")
    check("token_ciphertext" not in after, "the token ciphertext is still stored")
    check(after["version"] == version + 1, f"version {version} → {after['version']}")
    check("refresh_due_at" not in after, "the portal is still in the refresh due index")
    answer = c.invoke_leads({"member_id": c.member_id, "limit": 1})
    code = (answer.get("error") or {}).get("code")
    check(code == "REAUTH_REQUIRED", f"a read after the uninstall answered {answer}")
    gone = [e for e in c.received_events() if e["detail-type"] == "PortalUninstalled"]
    check(len(gone) == 1, f"the subscriber received {len(gone)} PortalUninstalled")
    check(gone[0]["detail"]["clean"] is False, f"PortalUninstalled says {gone[0]['detail']}")
    detail("subscriber's rule → SQS: PortalUninstalled (clean false)")
    detail(
        f"administrator removes the app → ONAPPUNINSTALL through the binding → {url}: 202 → app.info says gone"
    )
    return (
        f"2 forged → refused after a check, unchanged; genuine → through the binding, confirmed, {after['health']}; "
        f"LeadsFunction → {code}"
    )


def step_legacy_ui(c: StackClients, detail: Detail) -> str:
    """10. A UI app on a portal whose install page has no APPLICATION_TOKEN; its uninstall is confirmed."""
    c.admin("POST", "/config", {"app_mode": "ui"})
    c.admin("POST", "/install", {"user_id": 1})
    page = c.admin("POST", "/send-install", {"url": f"{c.info.api_url}/install", "kind": "page"})
    check(page["status"] == 200, f"install page answered {page['status']}: {page['body'][:120]}")
    check("installFinish" in page["body"], "the install page does not call BX24.installFinish()")
    check("APPLICATION_TOKEN" not in page["sent_fields"], "this portal sent the newer install page")
    c.admin("POST", "/install-finish")
    c.lifecycle()
    item = c.item()
    c.remember_tokens()
    check(
        item["health"] == "active" and item.get("subscription_state") == "bound",
        f"record {item.get('health')} / {item.get('subscription_state')}",
    )
    check("application_token_hash" not in item, "an application token was stored from a legacy page")
    detail(
        f"legacy install page (fields {', '.join(page['sent_fields'][:3])}, …): 200; installFinish; ONAPPUNINSTALL bound"
    )
    removed = c.admin("POST", "/uninstall", {"clean": True})
    delivery = _delivery(removed, "ONAPPUNINSTALL")
    check(delivery["status"] == 202, f"ONAPPUNINSTALL answered {delivery['status']} (expected 202: unproven)")
    check(c.item()["health"] == "active", "an unproven uninstall changed the record before the check")
    c.lifecycle()
    after = c.item()
    check(after["health"] == "uninstalled", f"health is {after['health']}")
    check("domain" not in after and "token_ciphertext" not in after, "CLEAN=1 left tenant data behind")
    detail(
        "ONAPPUNINSTALL CLEAN=1 → 202; LifecycleFunction: app.info with the stored grant → not installed → applied"
    )
    return f"page 200 + bound; uninstall 202 → confirmed with Bitrix24 → {after['health']}, cleaned ({len(after)} attributes left)"


def _reason_of(body: str) -> str:
    with contextlib.suppress(ValueError, AttributeError, TypeError):
        answer = json.loads(body)
        error = answer.get("error") if isinstance(answer, dict) else None
        if isinstance(error, dict):
            return str(error.get("reason") or error.get("code") or "")
        return str(answer.get("reason") or answer.get("code") or "")
    return ""


def check_logs(log_path: Path, tokens: set[str]) -> str:
    """StepFailed when any issued token appears in the captured function logs."""
    text = log_path.read_text(encoding="utf-8", errors="replace") if log_path.exists() else ""
    leaked = [token for token in tokens if token in text]
    check(not leaked, f"{len(leaked)} tokens appear in {log_path}")
    return f"{len(text.splitlines()):,} log lines, none holds any of the {len(tokens)} issued tokens"


# --- the journey ---------------------------------------------------------------------------------


def _run_step(
    clients: StackClients,
    result: DemoResult,
    *,
    number: int,
    title: str,
    step: Callable[[Detail], str],
    emit: Callable[[str], None],
) -> bool:
    """Run one step, print its details and its ✓/✗ line, record it; True when it held."""
    emit(f"{number}. {title}")
    details: list[str] = []

    def detail(line: str) -> None:
        line = clients.redact(line)
        details.append(line)
        emit(f"     · {line}")

    started = time.monotonic()
    try:
        evidence, ok = step(detail), True
    except StepFailed as exc:
        evidence, ok = str(exc), False
    except Exception as exc:
        # The demo reports rather than crashes; the type and a short message say what broke.
        evidence, ok = f"{type(exc).__name__}: {str(exc)[:200]}", False
    seconds = time.monotonic() - started
    if not ok:
        # A failure may quote an answer: learn the latest tokens first, so redaction knows them.
        with contextlib.suppress(Exception):
            clients.remember_tokens()
    evidence = clients.redact(evidence)
    result.steps.append(StepResult(number, title, ok, evidence, round(seconds, 3), details))
    emit(f"   {'✓' if ok else '✗'} {evidence}  ({seconds:.2f} s)")
    return ok


def run_demo(
    stack: LocalStack,
    *,
    out: Callable[[str], None] | None = None,
    page_limit: int = DEFAULT_PAGE_LIMIT,
) -> DemoResult:
    """Run every step against a running stack; stops at the first step that does not hold."""
    emit = out or (lambda line: None)
    clients = StackClients(stack)
    clients.subscribe()  # the user's own rule -> queue, before anything happens on the portal
    result = DemoResult()
    facts = result.facts
    steps: list[Callable[[Detail], str]] = [
        lambda d: step_install(clients, d),
        lambda d: step_authorize(clients, d),
        lambda d: step_takeover(clients, d),
        lambda d: step_at_rest(clients, d),
        lambda d: step_read(clients, d, page_limit, facts),
        lambda d: step_events(clients, d),
        lambda d: step_lazy_refresh(clients, d, facts),
        lambda d: step_scheduled_refresh(clients, d, facts),
        lambda d: step_uninstall(clients, d),
        lambda d: step_legacy_ui(clients, d),
    ]
    began = time.monotonic()
    try:
        for number, (title, step) in enumerate(zip(_STEP_TITLES, steps, strict=True), start=1):
            if not _run_step(clients, result, number=number, title=title, step=step, emit=emit):
                break
    finally:
        clients.close()
    result.wall_seconds = round(time.monotonic() - began, 3)
    facts["issued_tokens"] = len(clients.known_tokens)
    result.issued_tokens = set(clients.known_tokens)
    return result


@contextlib.contextmanager
def _stderr_to(path: Path) -> Iterator[TextIO]:
    """Send fd 2 (our children's logs: functions, moto) to `path`; our own stdout stays on the console."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    saved = os.dup(2)
    with path.open("w", encoding="utf-8") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield sink
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def build_parser() -> argparse.ArgumentParser:
    """Flags of `python -m local_stack demo`."""
    parser = argparse.ArgumentParser(prog="python -m local_stack demo", description=__doc__.splitlines()[0])
    parser.add_argument("--leads", type=int, default=DEFAULT_LEADS, help="leads seeded in the portal")
    parser.add_argument("--page-limit", type=int, default=DEFAULT_PAGE_LIMIT, help="leads per invocation")
    parser.add_argument(
        "--log-file", type=Path, default=DEFAULT_LOG_FILE, help="where the functions' log lines go"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Start a stack on ephemeral ports, run the journey, print the summary, stop; 0 only if all held."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    # `python -m local_stack demo -- --leads 500`: the CLI hands over everything after `demo`.
    if arguments[:1] == ["--"]:
        arguments = arguments[1:]
    args = build_parser().parse_args(arguments)
    wall = time.monotonic()

    def say(line: str) -> None:
        print(line, flush=True)

    say("Bitrix24 connector demo: the whole journey on a fresh local stack (ephemeral ports)")
    # No state file: a developer's `make serve` keeps its .local/stack.json and its ports.
    config = StackConfig(leads=args.leads, state_file=None, prewarm=False)
    log_path: Path = args.log_file.resolve()
    log_line = ""
    with _stderr_to(log_path):
        stack = LocalStack(config)
        try:
            stack.start()
        except (PortInUseError, OSError, RuntimeError) as exc:
            say(f"✗ the local stack did not start: {exc}")
            return 1
        try:
            info = stack.running_info()
            say(
                f"   stack up in {info.startup_seconds:.1f} s: API {info.api_url}, Lambda {info.lambda_endpoint_url}, "
                f"portal {info.portal_domain} ({args.leads:,} leads); function logs → {_display(log_path)}"
            )
            result = run_demo(stack, out=say, page_limit=args.page_limit)
            try:
                log_line = "✓ " + check_logs(log_path, result.issued_tokens)
            except StepFailed as exc:
                log_line = f"✗ {exc}"
        finally:
            stopping = time.monotonic()
            stack.stop()
            stop_seconds = time.monotonic() - stopping
    elapsed = time.monotonic() - wall
    say("")
    say(result.summary())
    say(f"  function logs: {log_line}")
    say(f"  stack stopped in {stop_seconds:.1f} s; wall time {elapsed:.1f} s")
    return 0 if result.ok and log_line.startswith("✓") else 1


def _display(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


if __name__ == "__main__":
    sys.exit(main())
