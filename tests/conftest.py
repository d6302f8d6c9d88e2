"""Project-wide fixtures: safe AWS defaults, no sockets in unit tests, moto/dynalite servers, AWS stacks.

Tests sit beside the package they test (tests/<package> mirrors functions/b24connector/<package>); a
test that opens sockets (moto or dynalite servers, the emulator over HTTP, child processes) is marked
`integration`, in its module (`pytestmark`) or, for the folders that hold nothing else, here
(INTEGRATION_DIRS). Every other test is a unit test: any TCP/UDP connect fails loudly.

Fixtures (details in tests/support):
- `moto_server` (session): moto's server in a child process on an ephemeral port; DynamoDB calls
  serialised so conditional writes are atomic as in AWS (`raw_moto_server`: as shipped, not atomic).
- `dynalite_server` (session): dynalite (node) in a child process; installed into `.local/node` by
  .ci/run, or by the fixture on first use (npm).
- `aws_stack` (function): unique tables (from template.yaml), KMS key, secrets and queues on
  `moto_server`, with every env var the settings read set (monkeypatched) and get_settings() reset.
- `aws_stack_factory` (function): build more stacks, e.g. `aws_stack_factory(dynamodb="dynalite")`
  (backends: "moto", "dynalite", "raw-moto"); extra keyword arguments become env vars.
- `rig_factory` / `rig` (function): the one test rig (tests/support/rig.py): a stack plus emulated
  portal(s), driving the handlers in process, the API on a loopback socket, or the vault per worker.
- `scene_factory` (function): a rig whose portal's grant is already saved through the vault.
- `aws_calls` (function): every botocore call (service, operation, table) made during the test.
- `metrics_capture` (function): the Powertools metric buffer, cleared before and after the test.

`--aws-call-log PATH` (make test passes .local/iam-calls.jsonl): record every AWS call each template
function makes, in this process and in local-stack workers, for the IAM check (infra/iam_check).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.support.aws import FAKE_CREDENTIALS, TEST_REGION, AwsStack, provision
from tests.support.servers import DynaliteServer, MotoServer, ensure_dynalite

if TYPE_CHECKING:  # imported in the fixtures: the rig imports the handlers, after the env below is set
    from tests.support.rig import ApiFront, AwsCalls, Rig, Scene

pytest_plugins = ["tests.leak_canary"]  # DEBUG logging + secret canaries for the whole session

# Set before any test module imports boto3/Powertools: never real AWS, never a developer's profile.
for _name, _value in {
    **FAKE_CREDENTIALS,
    "AWS_DEFAULT_REGION": TEST_REGION,
    "AWS_REGION": TEST_REGION,
    "POWERTOOLS_SERVICE_NAME": "b24connector-tests",
    "POWERTOOLS_METRICS_NAMESPACE": "B24ConnectorTests",
    "POWERTOOLS_LOG_LEVEL": "INFO",
}.items():
    os.environ[_name] = _value
for _name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_DYNAMODB"):
    os.environ.pop(_name, None)

_TESTS = Path(__file__).parent
# Folders whose every test opens sockets: the attacks through the real handlers, the browser journeys,
# and the local infrastructure (the emulator and the local stack run as servers).
INTEGRATION_DIRS = tuple(_TESTS / name for name in ("security", "e2e", "infra/emulator", "infra/local_stack"))


def pytest_addoption(parser: pytest.Parser) -> None:
    """--aws-call-log: where to append the AWS calls of the template's functions (IAM check input)."""
    parser.addoption(
        "--aws-call-log",
        default=None,
        help="append every AWS call made by a template function to this JSONL file (make test's IAM check)",
    )


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test of the integration-only folders `integration`."""
    for item in items:
        if any(folder in item.path.parents for folder in INTEGRATION_DIRS):
            item.add_marker(pytest.mark.integration)


def pytest_configure(config: pytest.Config) -> None:
    """Start recording AWS calls before any test module imports boto3, PynamoDB or a handler."""
    path = config.getoption("--aws-call-log")
    if not path:
        return
    from local_stack import aws_calls
    from operator_tools.cfn_yaml import function_handlers, load_template
    from tests.support.servers import REPO_ROOT

    target = Path(path).resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    # Local-stack workers (and `python -m local_stack` children) read it to record their calls too.
    os.environ[aws_calls.ENV_LOG] = str(target)
    template = REPO_ROOT / "template.yaml"
    aws_calls.install(
        str(target), template=str(template), handlers=function_handlers(load_template(template))
    )


_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex


def _guarded(real: Callable[..., Any]) -> Callable[..., Any]:
    def connect(self: socket.socket, address: Any) -> Any:
        if self.family in (socket.AF_INET, socket.AF_INET6):
            raise RuntimeError(f"unit tests must not open network connections (tried {address!r})")
        return real(self, address)

    return connect


@pytest.fixture(autouse=True)
def _no_sockets_in_unit_tests(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A test not marked `integration` is a unit test: any TCP/UDP connect fails loudly."""
    if request.node.get_closest_marker("integration") is None:
        monkeypatch.setattr(socket.socket, "connect", _guarded(_real_connect))
        monkeypatch.setattr(socket.socket, "connect_ex", _guarded(_real_connect_ex))


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    """moto's server in its own process (shared by the session; every test uses unique names)."""
    with MotoServer() as server:
        assert isinstance(server, MotoServer)
        yield server


@pytest.fixture(scope="session")
def raw_moto_server() -> Iterator[MotoServer]:
    """moto's server exactly as shipped: its DynamoDB conditional writes are not atomic under threads."""
    with MotoServer(atomic_dynamodb=False) as server:
        assert isinstance(server, MotoServer)
        yield server


@pytest.fixture(scope="session")
def dynalite_server() -> Iterator[DynaliteServer]:
    """dynalite in its own process: a second DynamoDB implementation with per-table locking."""
    ensure_dynalite()  # .ci/run installs it up front; this covers a plain `make test`
    with DynaliteServer() as server:
        assert isinstance(server, DynaliteServer)
        yield server


@pytest.fixture
def aws_stack_factory(
    request: pytest.FixtureRequest, moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., AwsStack]]:
    """Provision a stack; `dynamodb="dynalite"` (or "raw-moto") puts its tables on that server instead."""
    from b24connector.settings import get_settings

    def build(*, dynamodb: str = "moto", activate: bool = True, **extra_env: str) -> AwsStack:
        dynamodb_url = None
        if dynamodb in ("dynalite", "raw-moto"):
            fixture = {"dynalite": "dynalite_server", "raw-moto": "raw_moto_server"}[dynamodb]
            dynamodb_url = request.getfixturevalue(fixture).endpoint_url
        elif dynamodb != "moto":
            raise ValueError(f"unknown DynamoDB backend {dynamodb!r}")
        stack = provision(moto_server.endpoint_url, dynamodb_endpoint_url=dynamodb_url)
        stack.extra_env.update(extra_env)
        if activate:
            monkeypatch.delenv("AWS_ENDPOINT_URL_DYNAMODB", raising=False)
            for name, value in stack.env().items():
                monkeypatch.setenv(name, value)
            get_settings.cache_clear()
        return stack

    yield build
    get_settings.cache_clear()


@pytest.fixture
def aws_stack(aws_stack_factory: Callable[..., AwsStack]) -> AwsStack:
    """A fresh stack on the moto server, active in this process's environment."""
    return aws_stack_factory()


@pytest.fixture
def rig_factory(
    request: pytest.FixtureRequest, moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., Rig]]:
    """Build a rig, active in this process's environment (settings reset).

    `backend` moto|dynalite (where the tables live), `portals` emulated portals (all allow-listed),
    `emulator` EmulatorConfig overrides (default: 120 leads, seed 11, no rate limit), `extra_oauth_servers`
    more trusted OAuth servers; other keyword arguments become environment variables.
    """
    from b24connector.settings import get_settings
    from bitrix24_emulator import Emulator, EmulatorConfig
    from tests.support.rig import CLIENT_ID, CLIENT_SECRET, ApiFront, Rig

    started: list[Emulator] = []
    fronts: list[ApiFront] = []

    def build(
        *,
        backend: str = "moto",
        portals: int = 1,
        extra_oauth_servers: tuple[str, ...] = (),
        emulator: dict[str, Any] | None = None,
        **env: str,
    ) -> Rig:
        dynamodb_url = None
        if backend == "dynalite":
            dynamodb_url = request.getfixturevalue("dynalite_server").endpoint_url
        elif backend != "moto":
            raise ValueError(f"unknown DynamoDB backend {backend!r}")
        stack = provision(
            moto_server.endpoint_url, dynamodb_endpoint_url=dynamodb_url, client_secret=CLIENT_SECRET
        )
        config = {
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "redirect_uri": "https://api.test/callback",
            "leads": 120,
            "seed": 11,
            "rate_plan": "off",
            **(emulator or {}),
        }
        emulators = [Emulator(EmulatorConfig(**config)).start() for _ in range(portals)]
        started.extend(emulators)
        front = ApiFront().start()
        fronts.append(front)
        full_env = {
            **stack.env(),
            "LOCAL_MODE": "true",
            "ALLOWED_PORTAL_HOSTS": ",".join(e.portal_domain for e in emulators),
            "OAUTH_SERVERS": ",".join([*(e.oauth_url for e in emulators), *extra_oauth_servers]),
            "HTTP_TIMEOUT_SECONDS": "10",  # production default: a loaded CI machine must not time out
            "EVENTS_URL": f"{front.url}/events",
            **env,
        }
        monkeypatch.delenv("AWS_ENDPOINT_URL_DYNAMODB", raising=False)
        for name, value in full_env.items():
            monkeypatch.setenv(name, value)
        get_settings.cache_clear()
        return Rig(stack, emulators[0], full_env, backend, emulators[1:], front.url)

    yield build
    for running in started:
        running.stop()
    for front in fronts:
        front.stop()
    get_settings.cache_clear()


@pytest.fixture
def rig(rig_factory: Callable[..., Rig]) -> Rig:
    """One emulated portal on moto."""
    return rig_factory()


@pytest.fixture
def scene_factory(rig_factory: Callable[..., Rig]) -> Callable[..., Scene]:
    """A portal installed at the vault level on `backend`, with RefreshPolicy overrides as kwargs.

    The emulator runs the portal's standard rate plan and holds no leads (nothing here lists them).
    """

    def build(backend: str = "moto", **policy: Any) -> Scene:
        return rig_factory(backend=backend, emulator={"leads": 0, "rate_plan": "standard"}).scene(**policy)

    return build


@pytest.fixture
def aws_calls(monkeypatch: pytest.MonkeyPatch) -> AwsCalls:
    """Record botocore calls (boto3, PynamoDB and Powertools all go through BaseClient._make_api_call)."""
    import botocore.client

    from tests.support.rig import AwsCalls

    recorded = AwsCalls()
    real = botocore.client.BaseClient._make_api_call

    def recording(self: Any, operation_name: str, api_params: Any) -> Any:
        recorded.record(self.meta.service_model.service_name, operation_name, api_params)
        return real(self, operation_name, api_params)

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", recording)
    return recorded


@pytest.fixture
def metrics_capture() -> Iterator[dict[str, Any]]:
    """The shared Powertools metric set (name -> {"Unit", "Value": [...]}), empty at the start."""
    from b24connector.observability import metrics

    metrics.clear_metrics()
    yield metrics.metric_set
    metrics.clear_metrics()


@pytest.fixture
def one_metric_flush_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Serialize Powertools' per-process metric set for tests that run handlers on several threads.

    Lambda runs one invocation per container at a time, so the shared metric set is never touched
    concurrently there; threads in one process stand in for concurrent containers only with this.
    """
    import threading

    from aws_lambda_powertools.metrics.provider.cloudwatch_emf.cloudwatch import AmazonCloudWatchEMFProvider

    lock = threading.RLock()
    for name in ("add_metric", "add_dimension", "flush_metrics", "serialize_metric_set", "clear_metrics"):
        real = getattr(AmazonCloudWatchEMFProvider, name)

        def locked(self: Any, *args: Any, _real: Any = real, **kwargs: Any) -> Any:
            with lock:
                return _real(self, *args, **kwargs)

        monkeypatch.setattr(AmazonCloudWatchEMFProvider, name, locked)
