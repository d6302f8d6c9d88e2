"""The local stack as one object: start, describe, invoke, run the schedule, drain the queues, stop."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

from local_stack.config import HOST, StackConfig, check_ports
from local_stack.event_sources import DrainReport, QueueBinding, SqsPoller, schedule_event
from local_stack.http_api import HttpApiFront
from local_stack.lambda_api import LambdaApi
from local_stack.resources import Physical, ResourceBuilder, aws_client
from local_stack.runtime import FunctionRuntime, FunctionSpec, InvocationResult
from local_stack.streams import StreamBinding, StreamPoller
from local_stack.template import ACCOUNT_ID, FunctionDef, Resolver, Template, TemplateError

_log = logging.getLogger("local_stack")
_MOTO_START_TIMEOUT_SECONDS = 30.0
# A drain alternates streams and queues until nothing moves; this bounds a function that keeps failing.
_MAX_DRAIN_ROUNDS = 20
_INFRA_DIR = Path(__file__).resolve().parents[1]


class FunctionError(RuntimeError):
    """The function failed (Lambda's X-Amz-Function-Error); carries the runtime's errorType/errorMessage."""

    def __init__(self, function: str, error: dict[str, Any]) -> None:
        self.function = function
        self.error_type = str(error.get("errorType", "Unknown"))
        self.error_message = str(error.get("errorMessage", ""))
        self.document = error
        super().__init__(f"{function} failed: {self.error_type}: {self.error_message}")


@dataclass(slots=True)
class ScheduleRun:
    """One on-demand firing of a scheduled function, and the queue drain that followed."""

    function: str
    event: Any
    result: InvocationResult
    drain: DrainReport | None

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly summary."""
        return {
            "function": self.function,
            "request_id": self.result.request_id,
            "function_error": self.result.function_error,
            "result": self.result.json(),
            "drain": self.drain.as_dict() if self.drain is not None else None,
        }


@dataclass(slots=True)
class StackInfo:
    """Where everything runs; the content of .local/stack.json."""

    api_url: str
    lambda_endpoint_url: str
    aws_endpoint_url: str
    aws_region: str
    bitrix24_portal_url: str | None
    oauth_server_url: str | None
    portal_domain: str | None
    member_id: str | None
    client_id: str | None
    client_secret: str | None
    emulator_admin_url: str | None
    local_admin_url: str
    stack_name: str
    template: str
    functions: list[str]
    routes: list[str]
    tables: dict[str, str] = field(default_factory=dict)
    queues: dict[str, str] = field(default_factory=dict)
    secrets: dict[str, str] = field(default_factory=dict)
    kms_keys: dict[str, str] = field(default_factory=dict)
    kms_key_arn: str | None = None
    kms_aliases: dict[str, str] = field(default_factory=dict)
    event_bus_name: str | None = None  # the stack's EventBridge bus (output EventBusName)
    pid: int = 0
    started_at: str = ""
    startup_seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready mapping (the stack.json document)."""
        return {name: getattr(self, name) for name in self.__slots__}


class _AccessLogHandler(WSGIRequestHandler):
    # API Gateway and Lambda do not announce a Werkzeug server; neither do we.
    server_version = "local-stack"
    sys_version = ""


class _QuietHandler(_AccessLogHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        return


class _Server:
    """A werkzeug server bound up front (so its port is known) and served from a thread."""

    def __init__(self, name: str, port: int, app: Callable[..., Iterable[bytes]], access_log: bool) -> None:
        self.name = name
        self._app: Callable[..., Iterable[bytes]] = _unavailable
        handler = _AccessLogHandler if access_log else _QuietHandler
        self.server: BaseWSGIServer = make_server(
            HOST, port, self._dispatch, threaded=True, request_handler=handler
        )
        self._app = app
        self._thread: threading.Thread | None = None

    def _dispatch(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        return self._app(environ, start_response)

    def set_app(self, app: Callable[..., Iterable[bytes]]) -> None:
        """Swap the WSGI app (the fronts need the server's port before they can be built)."""
        self._app = app

    @property
    def url(self) -> str:
        """http://127.0.0.1:<port>."""
        return f"http://{HOST}:{self.server.server_port}"

    def start(self) -> None:
        """Serve from a daemon thread."""
        self._thread = threading.Thread(
            target=self.server.serve_forever, name=f"{self.name}-http", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._thread is not None:
            self.server.shutdown()
            self._thread.join(timeout=10)
        self.server.server_close()


def _unavailable(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    response = Response(json.dumps({"message": "Service Unavailable"}), 503, content_type="application/json")
    return response(environ, start_response)


class LocalStack:
    """Everything of template.yaml running locally: ``with LocalStack(StackConfig()) as stack: ...``."""

    def __init__(self, config: StackConfig | None = None) -> None:
        self.config = config or StackConfig()
        self.template: Template | None = None
        self.info: StackInfo | None = None
        self.physical: dict[str, Physical] = {}
        self.runtimes: dict[str, FunctionRuntime] = {}
        self.emulator: Any = None
        self._moto: subprocess.Popen[bytes] | None = None
        self._servers: list[_Server] = []
        self._lambda_api: LambdaApi | None = None
        self._poller: SqsPoller | None = None
        self._streams: StreamPoller | None = None
        self._resolver: Resolver | None = None
        self._started = False
        self._stopped = False
        self._lock = threading.Lock()

    # ----------------------------------------------------------------- lifecycle

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> LocalStack:
        """Start moto, the emulator, the workers' fronts; create the resources; write stack.json."""
        if self._started:
            return self
        self._started = True
        began = time.monotonic()
        config = self.config
        template = Template(config.template, config.parameter_overrides)
        self.template = template
        check_ports(config.ports())
        try:
            self._start_moto(config.aws_port)
            api = _Server("api", config.api_port, _unavailable, config.access_log)
            self._servers.append(api)
            lam = _Server("lambda", config.lambda_port, _unavailable, config.access_log)
            self._servers.append(lam)
            if config.emulator:
                self._start_emulator(api.url)
            aws_url = self._wait_for_moto()
            self._build(template, api, lam, aws_url)
            for server in self._servers:
                server.start()
            if config.prewarm:
                for runtime in self.runtimes.values():
                    runtime.prewarm()
            if config.poll_queues and self._poller is not None:
                self._poller.start_background(config.poll_interval_seconds)
                if self._streams is not None:
                    self._streams.start_background(config.poll_interval_seconds)
        except BaseException:
            self.stop()
            raise
        info = self.running_info()
        info.startup_seconds = round(time.monotonic() - began, 3)
        if config.state_file is not None:
            self._write_state(config.state_file)
        return self

    def _start_moto(self, port: int) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(_INFRA_DIR), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        self._moto = subprocess.Popen(
            [sys.executable, "-m", "local_stack.moto_process", "--host", HOST, "--port", str(port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )

    def _wait_for_moto(self) -> str:
        stdout = self._moto.stdout if self._moto is not None else None
        if stdout is None:
            raise RuntimeError("the moto server was not started")
        result: dict[str, Any] = {}

        def read() -> None:
            line = stdout.readline()
            if line:
                result.update(json.loads(line))

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(_MOTO_START_TIMEOUT_SECONDS)
        if "port" not in result:
            detail = result.get("error") or "did not report its port"
            raise RuntimeError(f"the moto server failed to start: {detail}")
        return f"http://{HOST}:{result['port']}"

    def _start_emulator(self, api_url: str) -> None:
        from bitrix24_emulator import Emulator, EmulatorConfig

        settings = dict(self.config.emulator_settings)
        settings.update(
            host=HOST,
            portal_port=self.config.portal_port,
            oauth_port=self.config.oauth_port,
            leads=self.config.leads,
            redirect_uri=f"{api_url}/callback",
        )
        self.emulator = Emulator(EmulatorConfig(**settings))
        self.emulator.start()

    def _build(self, template: Template, api: _Server, lam: _Server, aws_url: str) -> None:
        config = self.config
        from operator_tools.cfn_yaml import table_definitions

        secret_values = dict(config.secret_values)
        if self.emulator is not None:
            secret_values.setdefault(config.client_secret_resource, self.emulator.client_secret)
        builder = ResourceBuilder(
            template,
            endpoint_url=aws_url,
            region=config.region,
            stack_name=config.stack_name,
            secret_values=secret_values,
            function_names={logical: logical for logical in template.functions},
            api_url=api.url,
            table_definitions=_tables_by_logical_id(table_definitions(template.document)),
        )
        self.physical = builder.build_all()
        self._resolver = builder.resolver

        for logical_id, fn in template.functions.items():
            spec = self._function_spec(template, fn, builder, aws_url=aws_url, lambda_url=lam.url)
            workers = config.workers_per_function
            # Resolved inside a mapping, which drops an Fn::If that chose AWS::NoValue (no reservation).
            reserved = builder.resolver.resolve(
                {"value": fn.properties.get("ReservedConcurrentExecutions")}
            ).get("value")
            if reserved is not None:
                # Reserved concurrency caps the environments Lambda runs for the function; so do we.
                workers = max(1, min(workers, int(reserved)))
            self.runtimes[logical_id] = FunctionRuntime(spec, max_workers=workers)

        local_admin = self._local_admin
        self._lambda_api = LambdaApi(self.runtimes, region=config.region, local_handler=local_admin)
        lam.set_app(self._lambda_api)
        routes = [route for route in template.routes if route.function in self.runtimes]
        api.set_app(HttpApiFront(routes, self._invoke_result, local_handler=local_admin))

        bindings = []
        for source in template.sqs_sources:
            queue = builder.ensure(source.queue)
            bindings.append(QueueBinding(source, queue.ref, queue.attributes["Arn"]))
        self._poller = SqsPoller(
            bindings,
            aws_client("sqs", aws_url, config.region),
            self._invoke_result,
            region=config.region,
            concurrency=config.workers_per_function,
        )
        streams = [
            StreamBinding(source, builder.ensure(source.table).attributes["StreamArn"])
            for source in template.stream_sources
        ]
        self._streams = StreamPoller(
            streams,
            aws_client("dynamodbstreams", aws_url, config.region),
            self._invoke_result,
            region=config.region,
        )
        self.info = self._describe(template, api.url, lam.url, aws_url)

    def _function_spec(
        self, template: Template, fn: FunctionDef, builder: ResourceBuilder, *, aws_url: str, lambda_url: str
    ) -> FunctionSpec:
        config = self.config
        props = fn.properties
        resolver = builder.resolver
        name = fn.logical_id
        memory = int(resolver.resolve(props.get("MemorySize", 128)))
        timeout = float(resolver.resolve(props.get("Timeout", 3)))
        runtime_name = str(resolver.resolve(props.get("Runtime", "python3.13")))
        code_dir = template.code_dir(fn)
        env: dict[str, str] = {
            # What the Lambda service itself puts in every Python function's environment.
            "AWS_LAMBDA_FUNCTION_NAME": name,
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(memory),
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{name}",
            "AWS_EXECUTION_ENV": f"AWS_Lambda_{runtime_name}",
            "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
            "AWS_REGION": config.region,
            "AWS_DEFAULT_REGION": config.region,
            "LAMBDA_TASK_ROOT": str(code_dir),
            "_HANDLER": str(resolver.resolve(props.get("Handler", ""))),
            "TZ": ":UTC",
            "LANG": "en_US.UTF-8",
            # The local equivalents of the execution role and the service endpoints.
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_SESSION_TOKEN": "test",
            "AWS_ENDPOINT_URL": aws_url,
            "AWS_ENDPOINT_URL_LAMBDA": lambda_url,
        }
        log_group = (props.get("LoggingConfig") or {}).get("LogGroup")
        if log_group is not None:
            env["AWS_LAMBDA_LOG_GROUP_NAME"] = resolver.resolve_str(log_group)
        variables = (props.get("Environment") or {}).get("Variables") or {}
        for key, value in resolver.resolve(variables).items():
            env[str(key)] = resolver.resolve_str(value)
        env["LOCAL_MODE"] = "true"
        env.setdefault("POWERTOOLS_SERVICE_NAME", config.stack_name)
        env.setdefault("POWERTOOLS_METRICS_NAMESPACE", "B24ConnectorLocal")
        # No X-Ray daemon locally: Powertools Tracer would only print connection errors.
        env["POWERTOOLS_TRACE_DISABLED"] = "true"
        if self.emulator is not None:
            env["BITRIX24_CLIENT_ID"] = self.emulator.client_id
            env["OAUTH_SERVERS"] = self.emulator.oauth_url.rstrip("/")
            env["ALLOWED_PORTAL_HOSTS"] = _host_port(self.emulator.portal_url)
            # The install page loads the emulator's BX24 stand-in: the real script is unreachable offline.
            env["INSTALL_FINISH_SCRIPT_URL"] = f"{self.emulator.portal_url.rstrip('/')}/_emulator/bx24.js"
        env.update(config.env_overrides)
        arn = f"arn:aws:lambda:{config.region}:{ACCOUNT_ID}:function:{name}"
        handler = env["_HANDLER"]
        if not handler:
            raise TemplateError(f"{name}: no Handler")
        return FunctionSpec(name, handler, code_dir, timeout, memory, env, arn, template=str(template.path))

    def _describe(self, template: Template, api_url: str, lambda_url: str, aws_url: str) -> StackInfo:
        emulator = self.emulator
        by_type: dict[str, dict[str, Physical]] = {}
        for logical_id, physical in self.physical.items():
            kind = str(template.resources[logical_id].get("Type"))
            by_type.setdefault(kind, {})[logical_id] = physical
        keys = by_type.get("AWS::KMS::Key", {})
        return StackInfo(
            api_url=api_url,
            lambda_endpoint_url=lambda_url,
            aws_endpoint_url=aws_url,
            aws_region=self.config.region,
            bitrix24_portal_url=emulator.portal_url if emulator else None,
            oauth_server_url=emulator.oauth_url if emulator else None,
            portal_domain=emulator.portal_domain if emulator else None,
            member_id=emulator.member_id if emulator else None,
            client_id=emulator.client_id if emulator else None,
            client_secret=emulator.client_secret if emulator else None,
            emulator_admin_url=emulator.admin_url if emulator else None,
            local_admin_url=f"{lambda_url}/_local",
            stack_name=self.config.stack_name,
            template=str(template.path),
            functions=sorted(self.runtimes),
            routes=[route.route_key for route in template.routes],
            tables={k: v.ref for k, v in by_type.get("AWS::DynamoDB::Table", {}).items()},
            queues={k: v.ref for k, v in by_type.get("AWS::SQS::Queue", {}).items()},
            secrets={k: v.ref for k, v in by_type.get("AWS::SecretsManager::Secret", {}).items()},
            kms_keys={k: v.ref for k, v in keys.items()},
            kms_key_arn=next((v.attributes["Arn"] for v in keys.values()), None),
            kms_aliases={k: v.ref for k, v in by_type.get("AWS::KMS::Alias", {}).items()},
            event_bus_name=next((v.ref for v in by_type.get("AWS::Events::EventBus", {}).values()), None),
            pid=os.getpid(),
            started_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )

    def _write_state(self, path: Path) -> None:
        info = self.running_info()
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".tmp")
        # The file holds the emulator app's client secret: readable by the owner only.
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump({"status": "running", **info.as_dict()}, handle, indent=2)
            handle.write("\n")
        temporary.replace(path)

    def stop(self) -> None:
        """Stop everything started (idempotent); children are reaped and stack.json removed."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        # First nothing new comes in (fronts and poller), then the parts go down side by side: each
        # werkzeug listener takes up to half a second to notice its shutdown flag.
        first: list[tuple[str, Callable[[], None]]] = [(f"the {s.name} front", s.stop) for s in self._servers]
        if self._poller is not None:
            first.append(("the SQS poller", self._poller.stop))
        if self._streams is not None:
            first.append(("the stream poller", self._streams.stop))
        _in_parallel(first)
        second: list[tuple[str, Callable[[], None]]] = [
            (f"{name}'s workers", runtime.close) for name, runtime in self.runtimes.items()
        ]
        if self._lambda_api is not None:
            second.append(("the async invoker", self._lambda_api.close))
        if self.emulator is not None:
            second.append(("the emulator", self.emulator.stop))
        if self._moto is not None:
            moto = self._moto
            second.append(("the moto server", lambda: self._stop_moto(moto)))
        _in_parallel(second)
        state_file = self.config.state_file
        if state_file is not None and self.info is not None and state_file.exists():
            try:
                current = json.loads(state_file.read_text(encoding="utf-8"))
            except ValueError:
                current = {}
            if current.get("pid") == os.getpid():
                state_file.unlink()

    @staticmethod
    def _stop_moto(process: subprocess.Popen[bytes]) -> None:
        try:
            if process.stdin is not None:
                process.stdin.close()
        except OSError:
            pass
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stdout is not None:
            process.stdout.close()

    # ----------------------------------------------------------------- operations

    def running_info(self) -> StackInfo:
        """The StackInfo of a started stack; RuntimeError when it is not running."""
        if self.info is None or self._stopped or self._lambda_api is None or self._poller is None:
            raise RuntimeError("the local stack is not running")
        return self.info

    def _require_info(self) -> StackInfo:
        return self.running_info()

    @property
    def api_url(self) -> str:
        """stack.json's api_url."""
        return self._require_info().api_url

    @property
    def lambda_endpoint_url(self) -> str:
        """stack.json's lambda_endpoint_url."""
        return self._require_info().lambda_endpoint_url

    @property
    def aws_endpoint_url(self) -> str:
        """stack.json's aws_endpoint_url."""
        return self._require_info().aws_endpoint_url

    @property
    def aws_region(self) -> str:
        """stack.json's aws_region."""
        return self._require_info().aws_region

    @property
    def bitrix24_portal_url(self) -> str | None:
        """stack.json's bitrix24_portal_url (None without the emulator)."""
        return self._require_info().bitrix24_portal_url

    @property
    def oauth_server_url(self) -> str | None:
        """stack.json's oauth_server_url (None without the emulator)."""
        return self._require_info().oauth_server_url

    @property
    def portal_domain(self) -> str | None:
        """stack.json's portal_domain (None without the emulator)."""
        return self._require_info().portal_domain

    @property
    def member_id(self) -> str | None:
        """stack.json's member_id (None without the emulator)."""
        return self._require_info().member_id

    @property
    def client_id(self) -> str | None:
        """stack.json's client_id (None without the emulator)."""
        return self._require_info().client_id

    @property
    def client_secret(self) -> str | None:
        """stack.json's client_secret (None without the emulator)."""
        return self._require_info().client_secret

    @property
    def emulator_admin_url(self) -> str | None:
        """stack.json's emulator_admin_url (None without the emulator)."""
        return self._require_info().emulator_admin_url

    def as_dict(self) -> dict[str, Any]:
        """The stack.json document."""
        return self._require_info().as_dict()

    def _runtime(self, function: str) -> FunctionRuntime:
        if self._lambda_api is None:
            raise RuntimeError("the local stack is not running")
        logical_id = self._lambda_api.resolve(function)
        if logical_id is None:
            raise KeyError(f"no function {function!r} in the template")
        return self.runtimes[logical_id]

    def _invoke_result(self, function: str, payload: Any) -> InvocationResult:
        return self._runtime(function).invoke(payload)

    def invoke_raw(self, function: str, payload: Any = None) -> InvocationResult:
        """Invoke synchronously; the Lambda-shaped outcome (function errors are not raised)."""
        self._require_info()
        return self._invoke_result(function, {} if payload is None else payload)

    def invoke(self, function: str, payload: Any = None) -> Any:
        """Invoke synchronously and return the decoded result; raise FunctionError on a function error."""
        outcome = self.invoke_raw(function, payload)
        if outcome.function_error:
            raise FunctionError(function, outcome.json() or {})
        return outcome.json()

    def drain_queues(self) -> DrainReport:
        """Feed every visible message of the SQS event sources and every new record of the DynamoDB
        streams to their functions, until nothing moves (a queue's work writes tables whose streams
        publish, a stream's work may queue more)."""
        self._require_info()
        if self._poller is None:
            raise RuntimeError("the local stack is not running")
        # The report lists the SQS batches (what callers count); stream batches are drained alongside.
        report = DrainReport()
        for _ in range(_MAX_DRAIN_ROUNDS):
            moved = 0
            for poller in (self._streams, self._poller, self._streams):
                if poller is None:
                    continue
                step = poller.drain()
                if poller is self._poller:
                    report.batches.extend(step.batches)
                moved += step.deleted
            if not moved:
                break
        return report

    def run_schedule(self, function: str = "RefreshFunction", *, drain: bool = True) -> ScheduleRun:
        """Fire the function's schedule once (Scheduler-shaped event), then drain the queues."""
        self._require_info()
        if self.template is None or self._resolver is None:
            raise RuntimeError("the local stack is not running")
        runtime = self._runtime(function)
        fn = self.template.functions[runtime.spec.logical_id]
        if not fn.schedules:
            raise KeyError(f"{runtime.spec.logical_id} has no Schedule/ScheduleV2 event")
        schedule = fn.schedules[0]
        raw_input = None if schedule.input is None else self._resolver.resolve_str(schedule.input)
        event = schedule_event(schedule, raw_input, self.config.region, self.config.stack_name)
        result = runtime.invoke(event)
        report = self.drain_queues() if drain else None
        return ScheduleRun(runtime.spec.logical_id, event, result, report)

    def _local_admin(self, request: Request) -> Response | None:
        """POST /_local/schedule/<Function>, POST /_local/drain, GET /_local/stack."""
        parts = [part for part in request.path.split("/") if part][1:]
        try:
            if request.method == "POST" and len(parts) == 2 and parts[0] == "schedule":
                body: dict[str, Any] = self.run_schedule(parts[1]).as_dict()
            elif request.method == "POST" and parts == ["drain"]:
                body = self.drain_queues().as_dict()
            elif request.method == "GET" and parts == ["stack"]:
                body = self.as_dict()
            else:
                return None
        except KeyError as exc:
            return Response(json.dumps({"message": str(exc.args[0])}), 404, content_type="application/json")
        return Response(json.dumps(body), 200, content_type="application/json")


def _in_parallel(steps: list[tuple[str, Callable[[], None]]]) -> None:
    """Run shutdown steps concurrently; a failing step is logged and does not stop the others."""

    def run(name: str, step: Callable[[], None]) -> None:
        try:
            step()
        except Exception:
            _log.exception("stopping %s failed", name)

    threads = [threading.Thread(target=run, args=step, daemon=True) for step in steps]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)


def _host_port(url: str) -> str:
    from urllib.parse import urlsplit

    return urlsplit(url).netloc


def _tables_by_logical_id(definitions: Any) -> dict[str, dict[str, Any]]:
    """Adapt operator_tools.cfn_yaml.table_definitions' answer to {logical ID: create_table kwargs}."""
    if isinstance(definitions, dict):
        return {str(k): dict(v) for k, v in definitions.items()}
    raise TemplateError("table_definitions returned an unexpected shape")
