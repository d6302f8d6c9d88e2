"""Portal REST client: JSON POSTs with `auth` in the body, the error taxonomy, and its narrow retries.

Retries are narrow on purpose: 503 QUERY_LIMIT_EXCEEDED (docs/bitrix24-facts.md#f-limit-1) and 401
CONNECTION_ERROR (the portal could not check our token with the OAuth server, #f-auth-2) get bounded,
fully jittered backoff within the deadline; 429 OPERATION_TIME_LIMIT (#f-limit-2) waits for
`operating_reset_at` only when that fits the caller's budget; 401 expired_token renews the access token
once; 401 invalid_token adopts a newer stored access token once (a refresh elsewhere revoked ours),
never renews; a 302 portal rename (#f-host-1) is re-POSTed to an allowed new host (its scheme and host
only, #f-host-2; the path stays ours). The portal the call is for, with its renewal hooks, is a
portal_context.PortalContext.
Nothing else is retried here (callers own that), and no body, URL query or token is ever logged.
"""

from __future__ import annotations

import json
import random
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit

import requests

from b24connector.bitrix24.encoding import batch_command
from b24connector.bitrix24.envelope import (
    BatchResult,
    RestResponse,
    error_of,
    parse_batch,
    parse_response,
    reset_at_of,
)
from b24connector.bitrix24.errors import (
    AnswerTooLarge,
    AuthServerUnavailable,
    Bitrix24Error,
    DeadlineExceeded,
    ExpiredToken,
    InvalidToken,
    OperationTimeLimit,
    PortalMoved,
    QueryLimitExceeded,
    RequestTooLarge,
    TransientError,
    UnknownAuthError,
    UnsafeEndpoint,
)
from b24connector.bitrix24.pacing import LocalTokenBucket, Pacer, PlanningPacer
from b24connector.bitrix24.portal_context import PortalContext
from b24connector.bitrix24.transport import (
    DEFAULT_TIMEOUT,
    BodyDeadline,
    BodyTooLarge,
    call_deadline,
    close_response,
    decode_body,
    read_body,
    shared_session,
)
from b24connector.portals import InvalidPortal, PortalPolicy

if TYPE_CHECKING:
    from b24connector.settings import Settings

MAX_BATCH_COMMANDS = 50
# A lead filter is repeated, URL-encoded, in each of a batch's 50 chained commands: a query at
# leads.MAX_QUERY_BYTES builds bodies of about 4.2 MB at worst (tests/leads/test_leads_size_caps.py).
MAX_REQUEST_BYTES = 8 * 1024 * 1024
# A batch of 50 pages of 50 leads with every field weighs ~3 MiB in the emulator (about 1.2 KB a row);
# real portals with many user fields and long comments stay far below 6.7 KB a row, which this allows.
MAX_ANSWER_BYTES = 16 * 1024 * 1024
_METHOD = re.compile(r"[A-Za-z][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*\Z")
_COMMAND_ID = re.compile(r"[A-Za-z0-9_]{1,64}\Z")
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_JSON_HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}
_RESET_MARGIN_SECONDS = 0.5  # operating_reset_at has one-second resolution
_MIN_REQUEST_SECONDS = 0.05  # below this a request cannot complete; fail fast instead
_MAX_REMEMBERED_RESETS = 4096


def check_method(method: str) -> str:
    """The method name if it is a plain dotted REST method name (it becomes part of the URL path)."""
    if not isinstance(method, str) or not _METHOD.match(method):
        raise ValueError("REST method names look like crm.lead.list")
    return method


def encode_commands(
    commands: Mapping[str, tuple[str, Mapping[str, Any]] | str],
) -> tuple[dict[str, str], dict[str, str]]:
    """(cmd, method by command id) for a batch; raise ValueError before anything is sent."""
    if not commands:
        raise ValueError("a batch needs at least one command")
    if len(commands) > MAX_BATCH_COMMANDS:
        raise ValueError(f"a batch holds at most {MAX_BATCH_COMMANDS} commands")
    cmd: dict[str, str] = {}
    methods: dict[str, str] = {}
    for key, command in commands.items():
        if not isinstance(key, str) or not _COMMAND_ID.match(key):
            raise ValueError("batch command ids are 1-64 letters, digits or underscores")
        if isinstance(command, str):
            method = check_method(command.partition("?")[0])
            cmd[key] = command
        else:
            method, params = command
            cmd[key] = batch_command(check_method(method), params)
        methods[key] = method
    return cmd, methods


@dataclass(slots=True)
class _Retries:
    """What one call has used of each retry allowance."""

    token_retried: bool = False  # expired_token renewed, or invalid_token reloaded, or a newer token used
    limit_waited: bool = False  # one wait for operating_reset_at
    query_limit: int = 0
    auth_check: int = 0
    redirects: int = 0


class RestClient:
    """Calls REST methods on validated portal endpoints through one shared requests.Session."""

    def __init__(
        self,
        policy: PortalPolicy,
        *,
        session: requests.Session | None = None,
        pacer: Pacer | None = None,
        timeout: tuple[float, float] = DEFAULT_TIMEOUT,
        max_query_limit_retries: int = 4,
        max_auth_check_retries: int = 2,
        backoff_base: float = 0.5,
        backoff_cap: float = 8.0,
        max_limit_wait: float = 60.0,
        max_redirects: int = 2,
        max_request_bytes: int = MAX_REQUEST_BYTES,
        max_answer_bytes: int = MAX_ANSWER_BYTES,
        total_timeout: float | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rand: Callable[[], float] = random.random,
        monotonic: Callable[[], float] = time.monotonic,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.policy = policy
        self._session = session
        self.pacer: Pacer = pacer if pacer is not None else LocalTokenBucket()
        self._timeout = timeout
        self._max_query_limit_retries = max_query_limit_retries
        self._max_auth_check_retries = max_auth_check_retries
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._max_limit_wait = max_limit_wait
        self._max_redirects = max_redirects
        self._max_request_bytes = max_request_bytes
        self._max_answer_bytes = max_answer_bytes
        # The whole request, answer included; connect/read timeouts only bound each socket wait.
        self._total_timeout = total_timeout if total_timeout is not None else sum(timeout)
        self._sleep = sleep
        self._rand = rand
        self._monotonic = monotonic
        self._clock = clock
        self._resets: dict[tuple[str, str], float] = {}
        self._resets_lock = threading.Lock()

    @classmethod
    def from_settings(
        cls, settings: Settings, *, session: requests.Session | None = None, pacer: Pacer | None = None
    ) -> RestClient:
        """A client configured by the environment (policy, timeout, pacing)."""
        read_timeout = settings.http_timeout_seconds
        return cls(
            PortalPolicy.from_settings(settings),
            session=session,
            pacer=pacer or LocalTokenBucket(settings.rate_limit_per_second, settings.rate_limit_burst),
            timeout=(min(3.05, read_timeout), read_timeout),
            # A batch answer of up to 16 MiB may take a while to arrive after its first byte.
            total_timeout=2 * read_timeout,
        )

    def __repr__(self) -> str:
        return f"RestClient(policy={self.policy!r}, pacer={self.pacer!r}, timeout={self._timeout!r})"

    # --- public API -------------------------------------------------------------------------------

    def expect_requests(self, portal: PortalContext, requests: int) -> None:
        """Tell the pacer that `requests` requests to `portal` start now together (it may reserve them at once)."""
        if requests > 1 and isinstance(self.pacer, PlanningPacer):
            self.pacer.expect(portal.pacing_key, requests)

    def call(
        self, portal: PortalContext, method: str, params: Mapping[str, Any] | None = None
    ) -> RestResponse:
        """POST one REST method; return its result or raise the typed error."""
        check_method(method)
        body = dict(params or {})
        if "auth" in body:
            raise ValueError("the access token comes from the portal context, not from params")
        data = self._request(portal, method, lambda token: {**body, "auth": token}, (method,))
        response = parse_response(data)
        self._remember_reset(portal.host, method, response.time)
        return response

    def batch(
        self,
        portal: PortalContext,
        commands: Mapping[str, tuple[str, Mapping[str, Any]] | str],
        *,
        halt: bool = False,
    ) -> BatchResult:
        """Run up to 50 commands in one HTTP request; sub-call failures come back in `errors`."""
        cmd, methods = encode_commands(commands)
        halt_flag = 1 if halt else 0
        data = self._request(
            portal,
            "batch",
            lambda token: {"halt": halt_flag, "cmd": cmd, "auth": token},
            tuple(set(methods.values())),
        )
        result = parse_batch(data, (portal.access_token,))
        for key, time_block in result.times.items():
            if key in methods:
                self._remember_reset(portal.host, methods[key], time_block)
        return result

    def known_reset_at(self, host: str, methods: Iterable[str]) -> float | None:
        """The latest `operating_reset_at` seen in successful answers of these methods on this host."""
        with self._resets_lock:
            known = [self._resets.get((host, m.lower())) for m in methods]
        values = [v for v in known if v is not None]
        return max(values) if values else None

    def wait_for_operating_reset(
        self, portal: PortalContext, error: OperationTimeLimit, methods: Iterable[str]
    ) -> None:
        """Sleep until the method unblocks if that fits the budget; else raise the error with `reset_at`."""
        reset_at = error.reset_at if error.reset_at is not None else self.known_reset_at(portal.host, methods)
        if reset_at is None:
            raise _with_reset(error, None)
        wait = max(0.0, reset_at - self._clock() + _RESET_MARGIN_SECONDS)
        budget = self._max_limit_wait
        remaining = self._remaining(portal)
        if remaining is not None:
            budget = min(budget, remaining - _MIN_REQUEST_SECONDS)
        if wait > budget:
            raise _with_reset(error, reset_at)
        if wait > 0:
            self._sleep(wait)

    # --- internals --------------------------------------------------------------------------------

    def _remaining(self, portal: PortalContext) -> float | None:
        return None if portal.deadline is None else portal.deadline - self._monotonic()

    def _remember_reset(self, host: str, method: str, time_block: object) -> None:
        reset_at = reset_at_of(time_block)
        if reset_at is None:
            return
        with self._resets_lock:
            if len(self._resets) >= _MAX_REMEMBERED_RESETS:
                self._resets.clear()
            self._resets[(host, method.lower())] = reset_at

    def _endpoint(self, portal: PortalContext) -> str:
        try:
            return self.policy.check_client_endpoint(portal.client_endpoint, portal.domain)
        except InvalidPortal as exc:
            raise UnsafeEndpoint(
                "UNSAFE_CLIENT_ENDPOINT", f"client endpoint rejected ({exc.reason})"
            ) from None

    def _request(
        self,
        portal: PortalContext,
        method: str,
        make_body: Callable[[str], Mapping[str, Any]],
        limit_methods: tuple[str, ...],
    ) -> Mapping[str, Any]:
        """POST until Bitrix24 answers a success envelope, retrying only what the module docstring allows."""
        spent = _Retries()
        while True:
            token = portal.access_token
            status, data, location = self._send(portal, method, self._encode(method, make_body(token)))
            if status in _REDIRECTS:
                spent.redirects += 1
                self._follow_rename(portal, location, spent.redirects)
                continue
            error = error_of(status, data, (token,))
            if error is None:
                return data  # type: ignore[no-any-return]  # error_of vetted it as a success envelope
            if not (
                self._retry_with_another_token(portal, error, token, spent)
                or self._wait_out_limit(portal, error, spent, limit_methods)
            ):
                raise error

    def _encode(self, method: str, body: Mapping[str, Any]) -> bytes:
        encoded = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        if len(encoded) > self._max_request_bytes:
            raise RequestTooLarge(
                "REQUEST_TOO_LARGE",
                f"the {method} request would be larger than {self._max_request_bytes} bytes",
            )
        return encoded

    @staticmethod
    def _retry_with_another_token(
        portal: PortalContext, error: Bitrix24Error, token: str, spent: _Retries
    ) -> bool:
        """True when the call should go again with another access token: at most once per call."""
        if spent.token_retried or not isinstance(error, ExpiredToken | InvalidToken | UnknownAuthError):
            return False
        spent.token_retried = True
        if portal.access_token != token:
            # Another thread renewed while this request was in flight (and the refresh may have
            # revoked the old token): retry with the new token, without renewing again.
            return True
        if isinstance(error, ExpiredToken):
            if not portal.can_renew:
                return False
            portal.renew_token(token)
            return True
        # Another container's refresh revokes the token we cached (invalid_token, not expired_token):
        # adopt the stored newer one and retry once. Never refresh here: a truly revoked grant must end
        # as it is, without spending the refresh token.
        return portal.can_reload and portal.reload_token(token)

    def _wait_out_limit(
        self, portal: PortalContext, error: Bitrix24Error, spent: _Retries, limit_methods: tuple[str, ...]
    ) -> bool:
        """True after waiting out a limit the call may be retried after; raises when it may not."""
        if isinstance(error, QueryLimitExceeded):
            self._back_off(portal, error, spent.query_limit, self._max_query_limit_retries)
            spent.query_limit += 1
            return True
        if isinstance(error, AuthServerUnavailable):
            # Bitrix24's own check with the OAuth server failed (docs/bitrix24-errors.md): the
            # grant is fine, a moment later the check usually passes.
            self._back_off(portal, error, spent.auth_check, self._max_auth_check_retries)
            spent.auth_check += 1
            return True
        if isinstance(error, OperationTimeLimit):
            if spent.limit_waited:
                raise _with_reset(error, error.reset_at or self.known_reset_at(portal.host, limit_methods))
            self.wait_for_operating_reset(portal, error, limit_methods)
            spent.limit_waited = True
            return True
        return False

    def _back_off(self, portal: PortalContext, error: TransientError, attempt: int, max_retries: int) -> None:
        if attempt >= max_retries:
            raise error
        # Full jitter (AWS architecture blog): spreads competing clients across the whole window.
        delay = self._rand() * min(self._backoff_cap, self._backoff_base * (2**attempt))
        remaining = self._remaining(portal)
        if remaining is not None and delay + _MIN_REQUEST_SECONDS > remaining:
            raise error
        self._sleep(delay)

    def _timeout_for(self, portal: PortalContext) -> tuple[float, float]:
        connect, read = self._timeout
        remaining = self._remaining(portal)
        if remaining is None:
            return connect, read
        if remaining < _MIN_REQUEST_SECONDS:
            raise DeadlineExceeded("DEADLINE_EXCEEDED", "no time left for another portal request")
        return min(connect, remaining), min(read, remaining)

    def _send(self, portal: PortalContext, method: str, body: bytes) -> tuple[int, Any, str | None]:
        url = self._endpoint(portal) + method
        timeout = self._timeout_for(portal)
        self.pacer.acquire(portal.pacing_key, portal.deadline)
        timeout = self._timeout_for(portal)  # pacing may have used part of the budget
        remaining = self._remaining(portal)
        budget = self._total_timeout if remaining is None else min(self._total_timeout, remaining)
        deadline = self._monotonic() + budget
        session = self._session or shared_session()
        try:
            with call_deadline(time.monotonic() + budget):
                response = session.post(
                    url, data=body, headers=_JSON_HEADERS, timeout=timeout, allow_redirects=False, stream=True
                )
        except requests.Timeout:
            raise TransientError("TIMEOUT", "the portal did not answer in time") from None
        except requests.RequestException:
            if self._monotonic() >= deadline:  # the deadline cut the wait for headers
                raise TransientError("TIMEOUT", "the portal did not answer in time") from None
            raise TransientError("CONNECTION_ERROR", "the portal could not be reached") from None
        except ValueError:
            # requests parses a redirect's Location even with allow_redirects=False, and a malformed one
            # (an unbalanced IPv6 bracket) raises ValueError there: a redirect we cannot follow.
            raise PortalMoved("PORTAL_MOVED", "redirect to a malformed address", http_status=302) from None
        if response.status_code in _REDIRECTS:
            close_response(response)
            return response.status_code, None, response.headers.get("Location")
        try:
            content = read_body(
                response, max_bytes=self._max_answer_bytes, deadline=deadline, monotonic=self._monotonic
            )
        except BodyTooLarge:
            raise AnswerTooLarge(
                "ANSWER_TOO_LARGE",
                f"the portal answered more than {self._max_answer_bytes} bytes",
                http_status=response.status_code,
            ) from None
        except BodyDeadline:
            raise TransientError("TIMEOUT", "the portal did not finish its answer in time") from None
        except requests.RequestException:
            raise TransientError("CONNECTION_ERROR", "the portal's answer broke off") from None
        return response.status_code, decode_body(content), None

    def _follow_rename(self, portal: PortalContext, location: str | None, redirects: int) -> None:
        if redirects > self._max_redirects:
            raise PortalMoved("PORTAL_MOVED", "too many portal redirects", http_status=302)
        if not location:
            raise PortalMoved("PORTAL_MOVED", "redirect without a Location", http_status=302)
        # Only scheme and host count, as in the official SDKs (b24phpsdk Core, b24pysdk's 302 handling):
        # the request goes to our own /rest/<method> path on the new host, whatever path Location names.
        try:
            target = urlsplit(urljoin(portal.client_endpoint, location))
        except ValueError:  # e.g. an unbalanced IPv6 bracket
            raise PortalMoved("PORTAL_MOVED", "redirect to a malformed address", http_status=302) from None
        origin = f"{target.scheme}://{target.netloc}"
        if target.netloc.lower() == portal.host and not target.path.startswith("/rest/"):
            # Same host, another page (a login form, say): not a rename, and re-sending would loop.
            raise PortalMoved(
                "PORTAL_MOVED", "redirect outside the REST API", http_status=302, location=origin
            )
        try:
            endpoint = self.policy.check_client_endpoint(f"{origin}/rest/")
        except InvalidPortal as exc:
            raise PortalMoved(
                "PORTAL_MOVED",
                f"new portal address rejected ({exc.reason})",
                http_status=302,
                location=origin,
            ) from None
        portal.move_to(endpoint)


def _with_reset(error: Bitrix24Error, reset_at: float | None) -> OperationTimeLimit:
    return OperationTimeLimit(error.code, error.description, http_status=error.http_status, reset_at=reset_at)
