"""Leak canary: the whole test session runs with DEBUG logging and recognisable secrets, and fails if
any of them shows up where an operator, a browser or a caller could read it.

Canaries:
- every token, code, client secret and application token the Bitrix24 emulator mints starts with
  `B24_CANARY_PREFIX` (random per session, set here before anything runs; child processes inherit it);
- `canary_value(label)` mints canary-marked values for tests that build their own secrets;
- the fixed client secret the AWS test fixtures store (`tests.support.aws.provision`).

Where it looks (per test, attributed to the test's node id):
- every log record at any level: a handler on the root logger and on every non-propagating logger
  records the message, the exception text and the `extra` fields;
- the test's captured stdout/stderr and log sections, its failure text, and what `capsys`/`capfd`
  handed to the test (`readouterr`);
- exception texts of the product's exception classes (as they are built);
- answers: HttpApi answers (`HttpResponse.to_event`), LeadsFunction and SQS-batch answers, and what the
  local stack's Lambda runtime returns (payload and log tail);
- lifecycle journal messages (`JournalCodec.encode`: the SQS body, whose tokens must be sealed);
- published events (`BusEvent.detail_json`: every detail PutEvents sends); the local stack's
  subscriber queue is read back and checked by the demo journey.

Library loggers keep the levels the product gives them in every runtime (`b24connector.observability`
and `b24connector.bitrix24.transport` pin urllib3, botocore, boto3, requests and pynamodb at WARNING;
they are imported at configure time, so the canary judges what runs in Lambda). Nothing else is quiet.

A test that must show a secret (an emulator admin test reading `/tokens`) says so with
`@pytest.mark.allow_secret_output(reason="...")`. At session end any hit fails the run (exit status 1)
and the summary lists where, never the value.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import secrets
import string
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

CANARY_ENV = "B24_CANARY_PREFIX"
MARKER = "allow_secret_output"
# The client secret tests.support.aws.provision stores in Secrets Manager for most fixtures.
STATIC_CANARIES = ("test-client-secret",)
_ALPHABET = string.ascii_lowercase + string.digits
_SCANNED_FIELD_LIMIT = 200_000
_STANDARD_RECORD_FIELDS = frozenset(
    logging.LogRecord("n", logging.INFO, "p", 1, "m", None, None).__dict__
) | {"message", "asctime"}


def _session_prefix() -> str:
    existing = os.environ.get(CANARY_ENV, "")
    if re.fullmatch(r"[0-9a-f]{8,16}", existing):
        return existing  # a nested session or child process: keep the parent's canaries
    # Hex only, so it fits every minted format (32 lower-case letters/digits, 32 hex, 50 alphanumerics).
    return "c" + secrets.token_hex(5)


CANARY_PREFIX = _session_prefix()
os.environ[CANARY_ENV] = CANARY_PREFIX


def canary_value(label: str = "", length: int = 32) -> str:
    """A canary-marked secret of `length` lower-case letters/digits (label is kept if it fits)."""
    head = (CANARY_PREFIX + re.sub(r"[^a-z0-9]", "", label.lower()))[: max(length - 8, len(CANARY_PREFIX))]
    return head + "".join(secrets.choice(_ALPHABET) for _ in range(max(length - len(head), 8)))


_PATTERN = re.compile("|".join(re.escape(v) for v in (CANARY_PREFIX, *STATIC_CANARIES)))


def find_canaries(text: str) -> list[str]:
    """Which kinds of canary `text` contains ("minted" or "static"), never the values themselves."""
    kinds = set()
    for match in _PATTERN.finditer(text):
        kinds.add("minted" if match.group(0) == CANARY_PREFIX else "static client secret")
    return sorted(kinds)


@dataclass(frozen=True)
class Hit:
    """One place a canary appeared."""

    nodeid: str
    where: str
    kinds: tuple[str, ...]


class _Recorder:
    """Session-wide hit list plus the test currently running (for attribution)."""

    def __init__(self) -> None:
        self.hits: list[Hit] = []
        self.current: str = "<session>"
        self.exempt: set[str] = set()
        self.scanned = 0
        self._lock = threading.Lock()

    def scan(self, text: object, where: str, nodeid: str | None = None) -> None:
        if text is None:
            return
        if not isinstance(text, str):
            try:
                text = text.decode("utf-8", "replace") if isinstance(text, bytes | bytearray) else repr(text)
            except Exception:
                return
        node = nodeid or self.current
        with self._lock:
            self.scanned += 1
        if node in self.exempt or not text:
            return
        kinds = find_canaries(text[: _SCANNED_FIELD_LIMIT * 5])
        if kinds:
            with self._lock:
                self.hits.append(Hit(node, where, tuple(kinds)))


RECORDER = _Recorder()


class _RecordingHandler(logging.Handler):
    """Scans every record: message, exception text, stack info and `extra` fields."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            parts = [record.getMessage()]
        except Exception:
            parts = [str(record.msg), repr(record.args)]
        try:
            if record.exc_info:
                parts.append(logging.Formatter().formatException(record.exc_info))
            if record.exc_text:
                parts.append(record.exc_text)
            if record.stack_info:
                parts.append(record.stack_info)
            for key, value in record.__dict__.items():
                if key not in _STANDARD_RECORD_FIELDS:
                    parts.append(f"{key}={str(value)[:_SCANNED_FIELD_LIMIT]}")
        except Exception:  # noqa: S110 - a broken record must not break the test it belongs to
            pass
        RECORDER.scan("\n".join(parts), f"log record ({record.name}, {record.levelname})")


_HANDLER = _RecordingHandler(level=logging.DEBUG)


def _attach_to_all_loggers() -> None:
    root = logging.getLogger()
    if _HANDLER not in root.handlers:
        root.addHandler(_HANDLER)
    for logger in list(logging.Logger.manager.loggerDict.values()):
        if isinstance(logger, logging.Logger) and not logger.propagate and _HANDLER not in logger.handlers:
            logger.addHandler(_HANDLER)


# --- answers and exception texts -----------------------------------------------------------------


def _wrap_result(owner: type, name: str, where: str) -> None:
    original = owner.__dict__.get(name)
    if original is None or getattr(original, "__leak_canary__", False):
        return

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        RECORDER.scan(result, where)
        return result

    wrapper.__leak_canary__ = True  # type: ignore[attr-defined]
    setattr(owner, name, wrapper)


def _wrap_init(owner: type, where: str, fields: Callable[[Any], list[object]]) -> None:
    original = owner.__init__
    if getattr(original, "__leak_canary__", False):
        return

    @functools.wraps(original)
    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        try:
            for value in fields(self):
                RECORDER.scan(value, where)
        except Exception:  # noqa: S110 - half-built objects (subclass __init__ still running) are skipped
            pass

    init.__leak_canary__ = True  # type: ignore[attr-defined]
    owner.__init__ = init  # type: ignore[misc]


def _product_exception_classes() -> Iterator[type[BaseException]]:
    seen: set[type] = set()
    stack: list[type] = [Exception]
    while stack:
        cls = stack.pop()
        for sub in cls.__subclasses__():
            if sub in seen:
                continue
            seen.add(sub)
            stack.append(sub)
            if sub.__module__.startswith("b24connector."):
                yield sub


def _install_answer_and_exception_probes() -> None:
    # Importing these is cheap and has no side effect the suite depends on (Powertools reads the
    # POWERTOOLS_* variables already set above).
    import b24connector.credentials
    import b24connector.events.catalogue
    import b24connector.leads
    import b24connector.portals
    import b24connector.problems
    import b24connector.settings
    import b24connector.token_refresh.outcomes
    import b24connector.vault.journal
    from b24connector.web.http import HttpResponse

    _wrap_result(HttpResponse, "to_event", "HttpApi answer")
    _wrap_result(b24connector.leads.LeadsRefusal, "answer", "LeadsFunction answer")
    _wrap_result(b24connector.leads.PageAnswer, "answer", "LeadsFunction answer")
    _wrap_result(b24connector.token_refresh.outcomes.BatchReport, "answer", "SQS batch answer")
    # Lifecycle journal messages (SQS bodies): tokens must be sealed, never in the clear facts
    _wrap_result(b24connector.vault.journal.JournalCodec, "encode", "lifecycle journal message")
    # Every event detail put on the bus is built by detail_json (events.bus): no token, code, secret
    _wrap_result(b24connector.events.catalogue.BusEvent, "detail_json", "published event detail")
    for cls in _product_exception_classes():
        if "__init__" in cls.__dict__ or all(
            not base.__module__.startswith("b24connector.") for base in cls.__mro__[1:]
        ):
            _wrap_init(cls, f"exception text ({cls.__name__})", lambda exc: [str(exc), repr(exc.args)])
    try:
        from local_stack.runtime import InvocationResult
    except ImportError:  # pragma: no cover - the local stack is part of the repository
        return
    _wrap_init(InvocationResult, "local stack invoke answer", lambda r: [r.payload, r.log_tail])


def _wrap_readouterr() -> None:
    from _pytest.capture import CaptureFixture

    _wrap_result(CaptureFixture, "readouterr", "capsys/capfd output read by the test")


# --- pytest hooks --------------------------------------------------------------------------------


def pytest_configure(config: pytest.Config) -> None:
    """Register the marker, switch logging to DEBUG and install the probes."""
    config.addinivalue_line(
        "markers",
        f"{MARKER}(reason): this test deliberately shows a secret (exempt from the leak canary)",
    )
    os.environ["POWERTOOLS_LOG_LEVEL"] = "DEBUG"
    logging.getLogger().setLevel(logging.DEBUG)
    _attach_to_all_loggers()
    _install_answer_and_exception_probes()
    _wrap_readouterr()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Note the exempt tests; an exemption without a reason is a usage error."""
    for item in items:
        marker = item.get_closest_marker(MARKER)
        if marker is None:
            continue
        reason = marker.kwargs.get("reason") or (marker.args[0] if marker.args else "")
        if not str(reason).strip():
            raise pytest.UsageError(f"{item.nodeid}: @pytest.mark.{MARKER} needs reason='why'")
        RECORDER.exempt.add(item.nodeid)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Iterator[None]:
    """Attribute log records to the running test."""
    RECORDER.current = item.nodeid
    _attach_to_all_loggers()
    yield
    RECORDER.current = "<between tests>"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item) -> Iterator[None]:
    """Scan what the phase captured and its failure text."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    for where, text in (
        ("captured stdout", report.capstdout),
        ("captured stderr", report.capstderr),
        ("captured log", report.caplog),
        ("failure text", report.longreprtext),
    ):
        RECORDER.scan(text, f"{where} ({report.when})", item.nodeid)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    """pytest-xdist controller: collect what a worker saw."""
    output = getattr(node, "workeroutput", {}) or {}
    RECORDER.scanned += int(output.get("leak_canary_scanned", 0))
    RECORDER.exempt.update(output.get("leak_canary_exempt", []))
    for nodeid, where, kinds in output.get("leak_canary_hits", []):
        RECORDER.hits.append(Hit(nodeid, where, tuple(kinds)))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the session when any canary was seen (an xdist worker hands its hits to the controller)."""
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["leak_canary_hits"] = [(h.nodeid, h.where, list(h.kinds)) for h in RECORDER.hits]
        workeroutput["leak_canary_scanned"] = RECORDER.scanned
        workeroutput["leak_canary_exempt"] = sorted(RECORDER.exempt)
    if RECORDER.hits and exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Say where canaries appeared (locations and kinds only)."""
    hits = RECORDER.hits
    if not hits:
        terminalreporter.write_line(
            f"leak canary: 0 hits ({RECORDER.scanned} texts scanned, {len(RECORDER.exempt)} tests exempt)"
        )
        return
    terminalreporter.section("leak canary: secrets appeared in output", red=True, bold=True)
    grouped: dict[tuple[str, str], set[str]] = {}
    for hit in hits:
        grouped.setdefault((hit.nodeid, hit.where), set()).update(hit.kinds)
    for (nodeid, where), kinds in sorted(grouped.items()):
        terminalreporter.write_line(f"{nodeid}: {where}: {', '.join(sorted(kinds))}")
    terminalreporter.write_line(
        f"leak canary: {len(hits)} hits in {len({h.nodeid for h in hits})} tests; the session fails. "
        f"Fix the leak, or mark a test that must show a secret with @pytest.mark.{MARKER}(reason=...)."
    )
