"""Portal REST semantics: auth, limits, methods, batch and the modeled server cost. Called under the lock."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from bitrix24_emulator.clock import iso_local
from bitrix24_emulator.events import KNOWN_EVENTS
from bitrix24_emulator.leads import (
    ITEM_FILTER_FIELDS,
    LEAD_FILTER_FIELDS,
    PAGE_SIZE,
    QueryError,
    QueryResult,
    build_conditions,
    build_order,
    full_lead,
    item_row,
    lead_row,
)
from bitrix24_emulator.lifecycle import bound_deliveries
from bitrix24_emulator.phpquery import flatten_pairs, parse_pairs, php_array
from bitrix24_emulator.state import EmulatorState
from bitrix24_emulator.tokens import AuthFailure, Chain
from bitrix24_emulator.users import is_admin, users

# Texts as Bitrix24 and b24pysdk show them (docs/bitrix24-errors.md, docs/bitrix24-facts.md#f-rest-2).
QUERY_LIMIT = ("QUERY_LIMIT_EXCEEDED", "Too many requests")
OPERATION_LIMIT = ("OPERATION_TIME_LIMIT", "Method is blocked due to operation time limit.")
METHOD_NOT_FOUND = ("ERROR_METHOD_NOT_FOUND", "Method not found!")
INSUFFICIENT_SCOPE = (
    "insufficient_scope",
    "The request requires higher privileges than provided by the access token",
)
BATCH_TOO_LONG = ("ERROR_BATCH_LENGTH_EXCEEDED", "Max batch length exceeded")
BATCH_NOT_ALLOWED = ("ERROR_BATCH_METHOD_NOT_ALLOWED", "Method is not allowed for batch usage")

_REFERENCE = re.compile(
    r"\$(result|result_error|result_total|result_next|result_time)\[([^\]]*)\]((?:\[[^\]]*\])*)"
)
_PATH_PART = re.compile(r"\[([^\]]*)\]")
# docs/bitrix24-facts.md F-BATCH-2/3: roots result|next|total|time|error, case-insensitive, then any
# non-space text whose [key] parts are walked; `$result_total[c0]` is root `result` with path [c0].
_PHP_REFERENCE = re.compile(r"\$(result|next|total|time|error)(\S*)", re.IGNORECASE)
_PHP_PATH_PART = re.compile(r"\[([^\]]+)\]")
ACCESS_DENIED = "ACCESS_DENIED"


class RestError(Exception):
    """A REST error answer: HTTP status, `error`, `error_description` (and a reset time for 429)."""

    def __init__(self, status: int, error: str, description: str, *, reset_at: int | None = None) -> None:
        super().__init__(f"{error}: {description}")
        self.status = status
        self.error = error
        self.description = description
        self.reset_at = reset_at

    def body(self) -> dict[str, Any]:
        """The error envelope."""
        return {"error": self.error, "error_description": self.description}


class _MissingReference(Exception):
    """A batch reference names a command, row or field that does not exist."""


@dataclass
class CallOutcome:
    """One method execution: its JSON members and its modeled cost."""

    body: dict[str, Any]
    cost: float
    counted: bool = False
    rows: int = 0
    listing: bool = False


@dataclass
class RestAnswer:
    """What the portal sends back for one HTTP request, plus the modeled seconds it took."""

    status: int
    body: dict[str, Any]
    modeled_seconds: float = 0.0
    error: str | None = None


@dataclass
class _BatchState:
    results: dict[str, Any] = field(default_factory=dict)
    errors: dict[str, Any] = field(default_factory=dict)
    totals: dict[str, Any] = field(default_factory=dict)
    nexts: dict[str, Any] = field(default_factory=dict)
    times: dict[str, Any] = field(default_factory=dict)


Handler = Callable[["RestEngine", dict[str, Any], Chain, float], CallOutcome]


def normalize_method(raw: str) -> str:
    """Method names are case-insensitive; `.json` selects the (default) format."""
    return raw.strip().strip("/").lower().removesuffix(".json")


class RestEngine:
    """Runs REST calls against the state. Every public method expects the state lock to be held."""

    def __init__(self, state: EmulatorState) -> None:
        self.state = state

    # --- envelope ----------------------------------------------------------------------------------

    def _key(self, method: str) -> tuple[str, str]:
        return (self.state.config.client_id, method)

    def time_block(self, method: str, start: float, processing: float) -> dict[str, Any]:
        """The `time` member: wall times, modeled processing, and this method's operating counters."""
        state = self.state
        finish = start + processing
        used, reset_at = state.operating.operating(
            self._key(method), state.clock.now(), state.config.operating_window_minutes
        )
        return {
            "start": round(start, 6),
            "finish": round(finish, 6),
            "duration": round(finish - start, 6),
            "processing": round(processing, 6),
            "date_start": iso_local(start, state.tz),
            "date_finish": iso_local(finish, state.tz),
            "operating_reset_at": reset_at,
            "operating": round(used, 6),
        }

    def _error_answer(self, method: str, error: RestError, start: float) -> RestAnswer:
        # Error answers carry no `time` block, 429 included (docs/bitrix24-facts.md F-REST-2: appendDebugInfo
        # runs on success only); `operating_reset_at` is known only from successful answers.
        body = error.body()
        if self.state.config.error_time_block:  # the older reading, kept as a switch
            body["time"] = self.time_block(method, start, 0.0)
            if error.reset_at is not None:
                body["time"]["operating_reset_at"] = error.reset_at
        return RestAnswer(error.status, body, 0.0, error.error)

    # --- entry point -------------------------------------------------------------------------------

    def handle(self, method: str, params: dict[str, Any], client_key: str, start: float) -> RestAnswer:
        """One HTTP request to /rest/{method}: leaky bucket, auth, then the method or batch."""
        try:
            chain = self._admit(params, client_key)
            self.state.stats.requests_by_user[chain.user_id] += 1
            if method == "batch":
                return self._batch(params, chain, start)
            handler = self._resolve(method, chain)
            self._check_operating(method)
            outcome = self._run(method, handler, params, chain)
        except RestError as error:
            return self._error_answer(method, error, start)
        body = dict(outcome.body)
        body["time"] = self.time_block(method, start, outcome.cost)
        return RestAnswer(200, body, outcome.cost)

    def _admit(self, params: dict[str, Any], client_key: str) -> Chain:
        """The leaky bucket first (every HTTP request counts), then the token."""
        state = self.state
        limits = state.config.rate_limits()
        if limits is not None and not state.bucket.try_acquire(client_key, state.clock.now(), *limits):
            raise RestError(503, *QUERY_LIMIT)
        try:
            chain, _access = state.tokens.authenticate(
                _scalar(params.get("auth")), state.clock.now(), state.config.token_check_cache_seconds
            )
        except AuthFailure as failure:
            raise RestError(failure.status, failure.error, failure.description) from failure
        if chain.revoked_reason == "uninstalled":
            # A check still cached after the app was removed: the local app row is gone (F-AUTH-2/3).
            raise RestError(401, "APPLICATION_NOT_FOUND", "Application not found")
        return chain

    def _resolve(self, method: str, chain: Chain) -> Handler:
        handler = METHODS.get(method)
        if handler is None:
            raise RestError(404, *METHOD_NOT_FOUND)
        needed = method.split(".", 1)[0] if method.startswith("crm.") else None
        scopes = {s.strip() for s in self.state.config.scope.split(",")}
        if needed is not None and needed not in scopes:
            raise RestError(403, *INSUFFICIENT_SCOPE)
        return handler

    def _check_operating(self, method: str) -> None:
        state = self.state
        blocked = state.operating.blocked_until(
            self._key(method),
            state.clock.now(),
            state.config.operating_limit_seconds,
            state.config.operating_window_minutes,
        )
        if blocked is not None:
            raise RestError(429, *OPERATION_LIMIT, reset_at=blocked)

    def _run(self, method: str, handler: Handler, params: dict[str, Any], chain: Chain) -> CallOutcome:
        """Execute and charge: the base cost is paid even by a call that fails validation."""
        state = self.state
        now = state.clock.now()
        try:
            outcome = handler(self, params, chain, now)
        except RestError:
            self._charge(method, state.config.base_cost_seconds)
            state.stats.call(
                method, cost=state.config.base_cost_seconds, counted=False, rows=0, listing=False, failed=True
            )
            raise
        self._charge(method, outcome.cost)
        state.stats.call(
            method,
            cost=outcome.cost,
            counted=outcome.counted,
            rows=outcome.rows,
            listing=outcome.listing,
            failed=False,
        )
        return outcome

    def _charge(self, method: str, seconds: float) -> None:
        state = self.state
        # LoadLimiter ignores calls shorter than its minimal fix time (0.1 s).
        if seconds > 0 and seconds >= state.config.operating_min_seconds:
            state.operating.add(
                self._key(method), state.clock.now(), seconds, state.config.operating_window_minutes
            )

    # --- batch -------------------------------------------------------------------------------------

    def _batch(self, params: dict[str, Any], chain: Chain, start: float) -> RestAnswer:
        state = self.state
        commands = self._batch_commands(params.get("cmd"))
        halt = str(_scalar(params.get("halt")) or "0").lower() in ("1", "true", "y")
        state.stats.batch_requests += 1
        state.stats.batch_commands += len(commands)
        acc = _BatchState()
        total_cost = 0.0
        for command in commands:
            cost, failed = self._batch_command(command, chain, start + total_cost, acc)
            total_cost += cost
            if failed and halt:
                break
        # The outer batch is one request for the bucket but is not charged operating time itself.
        state.stats.call("batch", cost=0.0, counted=False, rows=0, listing=False, failed=False)
        body = {
            "result": {
                "result": php_array(acc.results),
                "result_error": php_array(acc.errors),
                "result_total": php_array(acc.totals),
                "result_next": php_array(acc.nexts),
                "result_time": php_array(acc.times),
            },
            "time": self.time_block("batch", start, total_cost),
        }
        return RestAnswer(200, body, total_cost)

    def _batch_commands(self, raw_cmd: Any) -> list[tuple[str, str, str]]:
        """(label, method, query) per sub-command; refuses long, nested or (by setting) blocked batches."""
        config = self.state.config
        if isinstance(raw_cmd, list):
            pairs = [(str(i), _scalar(v) or "") for i, v in enumerate(raw_cmd)]
        elif isinstance(raw_cmd, dict):
            pairs = [(str(k), _scalar(v) or "") for k, v in raw_cmd.items()]
        else:
            pairs = []
        if len(pairs) > config.batch_max_commands:
            raise RestError(400, *BATCH_TOO_LONG)
        commands = []
        for label, text in pairs:
            method_part, _, query = text.partition("?")
            sub_method = normalize_method(method_part)
            if sub_method == "batch":
                raise RestError(405, *BATCH_NOT_ALLOWED)
            commands.append((label, sub_method, query))
        if config.batch_blocked_method == "http_429":
            for _label, sub_method, _query in commands:
                if sub_method in METHODS:
                    self._check_operating(sub_method)
        return commands

    def _batch_command(
        self, command: tuple[str, str, str], chain: Chain, sub_start: float, acc: _BatchState
    ) -> tuple[float, bool]:
        """Run one (label, method, query) sub-command into `acc`; returns (modeled cost, failed)."""
        state = self.state
        label, sub_method, query = command
        try:
            sub_params = self._substitute(query, acc)
            handler = self._resolve(sub_method, chain)
            self._check_operating(sub_method)
        except (_MissingReference, RestError) as refused:
            # Refused before running: nothing is charged.
            acc.errors[label] = (
                refused.body()
                if isinstance(refused, RestError)
                else {"error": "ERROR_BATCH_REFERENCE", "error_description": str(refused)}
            )
            state.stats.call(sub_method, cost=0.0, counted=False, rows=0, listing=False, failed=True)
            state.stats.batch_errors[acc.errors[label]["error"]] += 1
            return 0.0, True
        try:
            outcome = self._run(sub_method, handler, sub_params, chain)
        except RestError as error:
            acc.errors[label] = error.body()
            state.stats.batch_errors[error.error] += 1
            return state.config.base_cost_seconds, True
        acc.results[label] = outcome.body.get("result")
        if "total" in outcome.body:
            acc.totals[label] = outcome.body["total"]
        if "next" in outcome.body:
            acc.nexts[label] = outcome.body["next"]
        acc.times[label] = self.time_block(sub_method, sub_start, outcome.cost)
        return outcome.cost, False

    def _substitute(self, query: str, acc: _BatchState) -> dict[str, Any]:
        """Parse a sub-command's query, replacing $result[...] references with earlier answers."""
        if self.state.config.batch_missing_reference == "parent":
            return self._substitute_php(query, acc)
        pairs: list[tuple[str, str]] = []
        for key, value in parse_qsl(query, keep_blank_values=True):
            whole = _REFERENCE.fullmatch(value)
            if whole is not None:
                resolved = self._resolve_reference(whole, acc)
                if isinstance(resolved, dict | list):
                    flatten_pairs(key, resolved, pairs)
                    continue
                pairs.append((key, _stringify(resolved)))
                continue
            pairs.append((key, _REFERENCE.sub(lambda m: _stringify(self._resolve_reference(m, acc)), value)))
        return parse_pairs(pairs)

    def _substitute_php(self, query: str, acc: _BatchState) -> dict[str, Any]:
        """The server's substitution: a missing key stops the walk, so its parent array is used."""
        roots = {
            "result": acc.results,
            "next": acc.nexts,
            "total": acc.totals,
            "time": acc.times,
            "error": acc.errors,
        }
        pairs: list[tuple[str, str]] = []
        for key, value in parse_qsl(query, keep_blank_values=True):
            matches = list(_PHP_REFERENCE.finditer(value))
            if not matches:
                pairs.append((key, value))
                continue
            if len(matches) == 1 and matches[0].group(0) == value:
                resolved = _php_walk(roots, matches[0])
                if isinstance(resolved, dict | list):
                    flatten_pairs(key, resolved, pairs)
                else:
                    pairs.append((key, _stringify(resolved)))
                continue
            text = value
            for match in matches:
                resolved = _php_walk(roots, match)
                if isinstance(resolved, str):  # PHP replaces inside a string only with a string
                    text = text.replace(match.group(0), resolved)
            pairs.append((key, text))
        return parse_pairs(pairs)

    def _resolve_reference(self, match: re.Match[str], acc: _BatchState) -> Any:
        source = {
            "result": acc.results,
            "result_error": acc.errors,
            "result_total": acc.totals,
            "result_next": acc.nexts,
            "result_time": acc.times,
        }[match.group(1)]
        node: Any = source.get(match.group(2), _ABSENT)
        for part in _PATH_PART.findall(match.group(3)):
            node = _step(node, part)
        if node is _ABSENT or node is None:
            mode = self.state.config.batch_missing_reference
            if mode == "keep":
                return match.group(0)
            if mode == "error":
                raise _MissingReference(f"Reference {match.group(0)} not found")
            return ""
        return node


_ABSENT: Any = object()


def _php_walk(roots: dict[str, Any], match: re.Match[str]) -> Any:
    node: Any = roots[match.group(1).lower()]
    for part in _PHP_PATH_PART.findall(match.group(2)):
        child = _step(node, part)
        if child is _ABSENT or child is None:  # isset() fails: keep the parent
            break
        node = child
    return node


def _step(node: Any, part: str) -> Any:
    if node is _ABSENT:
        return _ABSENT
    if isinstance(node, list):
        if part.lstrip("-").isdigit() and 0 <= int(part) < len(node):
            return node[int(part)]
        return _ABSENT
    if isinstance(node, dict):
        return node.get(part, _ABSENT)
    return _ABSENT


def _stringify(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else ""
    return "" if value is None else str(value)


def _scalar(value: Any) -> str | None:
    if value is None or isinstance(value, dict | list):
        return None
    return str(value)


def _select(params: dict[str, Any]) -> list[str] | None:
    raw = params.get("select")
    if raw in (None, "", []):
        return None
    if isinstance(raw, dict):
        return [str(v) for v in raw.values()]
    if isinstance(raw, list):
        return [str(v) for v in raw]
    return [str(raw)]


def _start(params: dict[str, Any]) -> int:
    raw = _scalar(params.get("start"))
    if raw is None or raw.strip() == "":
        return 0
    try:
        return int(float(raw))
    except ValueError:
        return 0


def _param(params: dict[str, Any], *names: str) -> Any:
    lowered = {k.lower(): v for k, v in params.items()}
    for name in names:
        if name.lower() in lowered:
            return lowered[name.lower()]
    return None


def _list_cost(engine: RestEngine, counted: bool, matched: int) -> float:
    config = engine.state.config
    return config.base_cost_seconds + (config.count_cost_per_row * matched if counted else 0.0)


# --- methods -------------------------------------------------------------------------------------


def _crm_lead_list(engine: RestEngine, params: dict[str, Any], chain: Chain, now: float) -> CallOutcome:
    state = engine.state
    conditions, impossible = build_conditions(
        params.get("filter"),
        LEAD_FILTER_FIELDS,
        portal_tz=state.tz,
        strict_fields=False,
        empty_value=state.config.empty_filter_value,
        case_insensitive=True,
    )
    order = build_order(params.get("order"), LEAD_FILTER_FIELDS, strict_fields=False, case_insensitive=True)
    start = _start(params)
    counted = start >= 0
    if counted:
        # The classic list pages by number: start is floored to a page, and a page past the end
        # comes back as the last page (CDBResult navigation).
        start = (start // PAGE_SIZE) * PAGE_SIZE
    result = QueryResult([], 0) if impossible else state.leads.query(conditions, order, start)
    if counted and not result.rows and result.matched and state.config.start_past_end == "last_page":
        last_page = ((result.matched - 1) // PAGE_SIZE) * PAGE_SIZE
        start = last_page
        result = state.leads.query(conditions, order, start)
    select = _select(params)
    rows = [lead_row(lead, select, state.tz) for lead in result.rows]
    body: dict[str, Any] = {"result": rows}
    if counted:
        if start + PAGE_SIZE < result.matched:
            body["next"] = start + PAGE_SIZE
        body["total"] = result.matched
    else:
        body["total"] = 0
    return CallOutcome(body, _list_cost(engine, counted, result.matched), counted, len(rows), True)


def _crm_item_list(engine: RestEngine, params: dict[str, Any], chain: Chain, now: float) -> CallOutcome:
    state = engine.state
    entity = _scalar(_param(params, "entityTypeId"))
    if entity is None or entity.strip() != "1":
        raise RestError(400, "NOT_FOUND", "Smart process not found")
    try:
        conditions, impossible = build_conditions(
            params.get("filter"),
            ITEM_FILTER_FIELDS,
            portal_tz=state.tz,
            strict_fields=True,
            empty_value=state.config.empty_filter_value,
            case_insensitive=False,
        )
        order = build_order(
            params.get("order"), ITEM_FILTER_FIELDS, strict_fields=True, case_insensitive=False
        )
    except QueryError as exc:
        raise RestError(400, "INVALID_ARG_VALUE", str(exc)) from exc
    start = _start(params)
    counted = start >= 0
    result = QueryResult([], 0) if impossible else state.leads.query(conditions, order, start)
    select = _select(params)
    items = [item_row(lead, select, state.tz) for lead in result.rows]
    body: dict[str, Any] = {"result": {"items": items}}
    if counted:
        if start + PAGE_SIZE < result.matched:
            body["next"] = start + PAGE_SIZE
        body["total"] = result.matched
    else:
        body["total"] = 0
    return CallOutcome(body, _list_cost(engine, counted, result.matched), counted, len(items), True)


def _lead_id(params: dict[str, Any]) -> int:
    raw = _scalar(_param(params, "id"))
    try:
        value = int(raw or "")
    except ValueError:
        value = 0
    if value <= 0:
        raise RestError(400, "", "ID is not defined or invalid.")
    return value


def _crm_lead_get(engine: RestEngine, params: dict[str, Any], chain: Chain, now: float) -> CallOutcome:
    state = engine.state
    lead = state.leads.get(_lead_id(params))
    if lead is None:
        raise RestError(400, "", "Not found")
    return CallOutcome({"result": full_lead(lead, state.tz)}, state.config.base_cost_seconds, rows=1)


def _crm_lead_add(engine: RestEngine, params: dict[str, Any], chain: Chain, now: float) -> CallOutcome:
    state = engine.state
    fields = _param(params, "fields")
    if not isinstance(fields, dict) or not fields:
        raise RestError(400, "", "Parameter 'fields' must be array.")
    upper = {str(k).upper(): v for k, v in fields.items()}
    try:
        lead = state.leads.add(upper, now, chain.user_id)
    except (TypeError, ValueError) as exc:
        raise RestError(400, "", "Invalid field value.") from exc
    _raise_crm_event(engine, "ONCRMLEADADD", lead.id, chain)
    return CallOutcome({"result": lead.id}, state.config.base_cost_seconds)


def _crm_lead_update(engine: RestEngine, params: dict[str, Any], chain: Chain, now: float) -> CallOutcome:
    state = engine.state
    lead_id = _lead_id(params)
    fields = _param(params, "fields")
    if not isinstance(fields, dict) or not fields:
        raise RestError(400, "", "Parameter 'fields' must be array.")
    upper = {str(k).upper(): v for k, v in fields.items()}
    try:
        lead = state.leads.update(lead_id, upper, now)
    except (TypeError, ValueError) as exc:
        raise RestError(400, "", "Invalid field value.") from exc
    if lead is None:
        raise RestError(400, "", "Not found")
    _raise_crm_event(engine, "ONCRMLEADUPDATE", lead_id, chain)
    return CallOutcome({"result": True}, state.config.base_cost_seconds)


def _crm_lead_delete(engine: RestEngine, params: dict[str, Any], chain: Chain, now: float) -> CallOutcome:
    state = engine.state
    lead_id = _lead_id(params)
    if not state.leads.delete(lead_id):
        raise RestError(400, "", "Not found")
    _raise_crm_event(engine, "ONCRMLEADDELETE", lead_id, chain)
    return CallOutcome({"result": True}, state.config.base_cost_seconds)


def _raise_crm_event(engine: RestEngine, event: str, lead_id: int, chain: Chain) -> None:
    """Queue the event for every handler bound to it (delivered after the answer, once)."""
    state = engine.state
    state.pending_deliveries.extend(
        bound_deliveries(state, event, [("data[FIELDS][ID]", str(lead_id))], chain.user_id)
    )


# --- users and events (docs/bitrix24-facts.md F-USER-1/2, F-BIND-1..9) -----------------------------


def _user_admin(engine: RestEngine, params: dict[str, Any], chain: Chain, now: float) -> CallOutcome:
    state = engine.state
    return CallOutcome({"result": is_admin(state.config, chain.user_id)}, state.config.base_cost_seconds)


def _profile(engine: RestEngine, params: dict[str, Any], chain: Chain, now: float) -> CallOutcome:
    state = engine.state
    user = users(state.config).get(chain.user_id)
    if user is None:
        raise RestError(401, "authorization_error", "User is not active")
    result = {
        "ID": str(user.user_id),
        "ADMIN": user.admin,
        "NAME": user.name,
        "LAST_NAME": user.last_name,
        "PERSONAL_GENDER": "",
        "TIME_ZONE": "",
    }
    return CallOutcome({"result": result}, state.config.base_cost_seconds)


def _access_denied(detail: str = "") -> RestError:
    return RestError(403, ACCESS_DENIED, f"Access denied!{' ' + detail if detail else ''}")


def _argument_null(name: str) -> RestError:
    return RestError(400, "ERROR_ARGUMENT", f"Argument '{name}' is null or empty")


def _event_type(params: dict[str, Any]) -> str:
    raw = (_scalar(_param(params, "event_type")) or "").strip().lower()
    if raw == "":
        return "online"
    if raw not in ("online", "offline"):
        raise RestError(400, "ERROR_ARGUMENT", "Value must be one of {online|offline}")
    return raw


def _int_param(raw: Any) -> int:
    try:
        return int(float(_scalar(raw) or 0))
    except ValueError:
        return 0


def _event_bind(engine: RestEngine, params: dict[str, Any], chain: Chain, now: float) -> CallOutcome:
    state = engine.state
    config = state.config
    admin = is_admin(config, chain.user_id)
    if config.event_bind_requires_admin and not admin:
        raise _access_denied()
    event = (_scalar(_param(params, "event")) or "").strip().upper()
    event_type = _event_type(params)
    user_id = _int_param(_param(params, "auth_type"))
    handler = _scalar(_param(params, "handler")) or ""
    if user_id > 0:
        if not admin and user_id != chain.user_id:
            raise _access_denied("Event binding with AUTH_TYPE requires administrator access rights")
    elif not admin:
        user_id = chain.user_id  # a non-administrator's handler always runs as that user
    if event == "":
        raise _argument_null("EVENT")
    if event_type == "offline":
        if not admin:
            raise _access_denied("Offline events binding requires administrator access rights")
        handler, user_id = "", 0
    elif handler == "":
        raise _argument_null("HANDLER")
    else:
        _check_handler_url(handler)
    scopes = {s.strip() for s in config.scope.split(",")}
    needed = KNOWN_EVENTS.get(event, "unknown")
    if needed == "unknown" or (needed is not None and needed not in scopes):
        raise RestError(400, "ERROR_EVENT_NOT_FOUND", "Event not found")
    try:
        state.bindings.add(event, handler, user_id)
    except ValueError as exc:
        raise RestError(400, "ERROR_CORE", f"Unable to set event handler: {exc}") from exc
    return CallOutcome({"result": True}, config.base_cost_seconds)


def _check_handler_url(handler: str) -> None:
    """F-BIND-4: a host with a dot (not first), then http(s) only."""
    parts = urlsplit(handler)
    host = parts.hostname or ""
    if host.find(".") <= 0:
        raise RestError(400, "ERROR_WRONG_HANDLER_URL", "Wrong handler URL")
    if parts.scheme not in ("http", "https"):
        raise RestError(400, "ERROR_UNSUPPORTED_PROTOCOL", "Unsupported handler protocol")


def _event_unbind(engine: RestEngine, params: dict[str, Any], chain: Chain, now: float) -> CallOutcome:
    state = engine.state
    admin = is_admin(state.config, chain.user_id)
    event = (_scalar(_param(params, "event")) or "").strip().upper()
    if event == "":
        raise _argument_null("EVENT")
    event_type = _event_type(params)
    handler = _scalar(_param(params, "handler")) or ""
    user_filter: int | None = None
    if event_type == "offline":
        if not admin:
            raise _access_denied("Offline events unbinding requires administrator access rights")
        handler = ""
    elif handler == "":
        raise _argument_null("HANDLER")
    raw_auth_type = _param(params, "auth_type")
    if event_type == "online" and raw_auth_type is not None:
        # PHP compares the raw (string) parameter with an int: a non-admin passing auth_type is refused.
        if not admin and not (isinstance(raw_auth_type, int) and raw_auth_type == chain.user_id):
            raise _access_denied("Event unbinding with AUTH_TYPE requires administrator access rights")
        user_filter = _int_param(raw_auth_type)
    elif event_type == "online" and not admin:
        user_filter = chain.user_id
    count = state.bindings.remove(event, handler, user_filter)
    return CallOutcome({"result": {"count": count}}, state.config.base_cost_seconds)


def _event_get(engine: RestEngine, params: dict[str, Any], chain: Chain, now: float) -> CallOutcome:
    state = engine.state
    admin = is_admin(state.config, chain.user_id)
    rows = state.bindings.rows(user_id=None if admin else chain.user_id)
    return CallOutcome({"result": [row.public() for row in rows]}, state.config.base_cost_seconds)


def _app_info(engine: RestEngine, params: dict[str, Any], chain: Chain, now: float) -> CallOutcome:
    state = engine.state
    config = state.config
    result = {
        "ID": "1",
        "CODE": config.client_id,
        "VERSION": 1,
        "STATUS": config.app_status,
        "INSTALLED": state.installed,
        "PAYMENT_EXPIRED": "N",
        "DAYS": None,
        "LANGUAGE_ID": config.language,
        "LICENSE": f"{config.language}_project",
        "LICENSE_TYPE": "project",
        "LICENSE_FAMILY": "project",
    }
    return CallOutcome({"result": result}, config.base_cost_seconds)


METHODS: dict[str, Handler] = {
    "app.info": _app_info,
    "crm.lead.list": _crm_lead_list,
    "crm.item.list": _crm_item_list,
    "crm.lead.get": _crm_lead_get,
    "crm.lead.add": _crm_lead_add,
    "crm.lead.update": _crm_lead_update,
    "crm.lead.delete": _crm_lead_delete,
    "user.admin": _user_admin,
    "profile": _profile,
    "event.bind": _event_bind,
    "event.unbind": _event_unbind,
    "event.get": _event_get,
}
