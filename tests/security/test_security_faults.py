"""Races and faults through the handlers: concurrent lazy refreshes (threads and processes, moto and
dynalite), DynamoDB throttling/5xx on commit (retried, then rescued and applied), KMS and Secrets Manager
outages, and a Bitrix24 OAuth server that is down (portal untouched, metric emitted)."""

from __future__ import annotations

import json
import multiprocessing
import threading
import time
from collections.abc import Callable
from typing import Any

import botocore.retries.standard
import pytest

from b24connector import wiring
from b24connector.settings import get_settings
from tests.support.emf import emf_counts
from tests.support.faults import InjectedFault, cold_start, inject, leads_process
from tests.support.rig import BACKENDS, Rig, header, invoke

THREADS = 10
PROCESSES = 4
THREADS_PER_PROCESS = 3
# The production default (10 s) plus headroom: a dozen callers at once on a loaded 2-core CI machine can
# keep the emulator's token endpoint busy past the rig's 3 s, and a timed-out refresh is another test's
# subject (test_bitrix24_down_...), not these races'.
CONCURRENT_TIMEOUT = "15"
LEASE_FIELDS = {"last_refresh_attempt_at", "lease_owner", "lease_expires_at"}


@pytest.fixture(autouse=True)
def _no_botocore_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """botocore retries as configured, without sleeping between attempts (the count is what we check)."""
    monkeypatch.setattr(
        botocore.retries.standard.ExponentialBackoff, "delay_amount", lambda self, context: 0.0
    )


def _installed(rig: Rig) -> str:
    answer, _fields = rig.install_event()
    assert answer["statusCode"] == 200, answer
    return rig.emulator.member_id


def _page(rig: Rig, member_id: str) -> dict[str, Any]:
    return {"member_id": member_id, "limit": 5, "select": ["TITLE"]}


def _emulator_tokens(rig: Rig) -> list[str]:
    return [
        value
        for chain in rig.emulator.tokens()
        for key, value in chain.items()
        if key.endswith("_token") and value
    ]


def _without(item: dict[str, Any] | None, fields: set[str]) -> dict[str, Any]:
    assert item is not None
    return {k: v for k, v in item.items() if k not in fields}


# --- concurrent lazy refreshes -------------------------------------------------------------------


def _every_caller_served(answers: list[Any]) -> None:
    # Also the callers whose request left with the old token just after the refresh revoked it: they
    # meet invalid_token and adopt the stored newer pair (test_a_token_revoked_by_another_containers...).
    assert all(answer.get("count") == 5 for answer in answers), answers


@pytest.mark.filterwarnings("ignore:No application metrics to publish")  # threads share one metric set
@pytest.mark.parametrize("backend", BACKENDS)
def test_concurrent_lead_reads_on_an_expired_token_refresh_once_threads(
    rig_factory: Callable[..., Rig], backend: str, one_metric_flush_at_a_time: None
) -> None:
    rig = rig_factory(backend=backend, HTTP_TIMEOUT_SECONDS=CONCURRENT_TIMEOUT)
    member_id = _installed(rig)
    assert "leads" in rig.leads(_page(rig, member_id))  # warm: the pair is decrypted and cached
    version = int(rig.portal()["version"]["N"])  # type: ignore[index]
    rig.emulator.reset()
    rig.emulator.expire_access_tokens()
    barrier = threading.Barrier(THREADS)
    answers: list[Any] = [None] * THREADS

    def read(index: int) -> None:
        barrier.wait()
        try:
            answers[index] = rig.leads(_page(rig, member_id))
        except Exception as exc:  # reported by the assertion below
            answers[index] = {"raised": repr(exc)}

    threads = [threading.Thread(target=read, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    _every_caller_served(answers)
    assert rig.emulator.stats()["token_requests"] == 1
    item = rig.portal()
    assert item is not None
    assert (int(item["version"]["N"]), item["health"]["S"]) == (version + 1, "active")


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_concurrent_lead_reads_on_an_expired_token_refresh_once_processes(
    rig_factory: Callable[..., Rig], backend: str
) -> None:
    # Given a portal whose access token expired, and PROCESSES cold containers (spawned interpreters)
    rig = rig_factory(backend=backend, HTTP_TIMEOUT_SECONDS=CONCURRENT_TIMEOUT)
    member_id = _installed(rig)
    rig.emulator.reset()
    rig.emulator.expire_access_tokens()
    context = multiprocessing.get_context("spawn")
    ready, results, go = context.Queue(), context.Queue(), context.Event()
    children = [
        context.Process(
            target=leads_process, args=(_page(rig, member_id), THREADS_PER_PROCESS, ready, go, results)
        )
        for _ in range(PROCESSES)
    ]
    for child in children:
        child.start()
    try:
        for _ in children:
            ready.get(timeout=120)
        # When all of them read leads at the same moment
        go.set()
        outcomes = [entry for _ in children for entry in results.get(timeout=180)]
    finally:
        for child in children:
            child.join(30)
            if child.is_alive():
                child.kill()
    # Then every caller got its page and Bitrix24 saw exactly one refresh
    _every_caller_served([{"count": n} if kind == "ok" else {"error": {"code": n}} for kind, n in outcomes])
    assert len(outcomes) == PROCESSES * THREADS_PER_PROCESS
    assert rig.emulator.stats()["token_requests"] == 1
    item = rig.portal()
    assert item is not None
    assert item["health"]["S"] == "active"


def test_a_token_revoked_by_another_containers_refresh_is_not_reauth_required(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    from b24connector.bitrix24.oauth import OAuthClient
    from b24connector.bitrix24.transport import shared_session
    from b24connector.token_refresh.coordinator import RefreshCoordinator
    from b24connector.token_refresh.policy import RefreshPolicy
    from b24connector.token_refresh.rescue import SqsRescueQueue
    from b24connector.vault import Vault
    from b24connector.vault.endpoints import EndpointGuard
    from tests.support.rig import CLIENT_SECRET
    from tests.support.vault_fakes import current_tokens

    member_id = _installed(rig)
    assert "leads" in rig.leads(_page(rig, member_id))  # this container caches the current pair
    conf = get_settings()
    other_vault = Vault.from_settings(conf)  # its own decrypted-token cache, like another container
    other_container = RefreshCoordinator(
        other_vault.portals,
        OAuthClient.from_settings(conf, lambda: CLIENT_SECRET),
        SqsRescueQueue(conf.rescue_queue_url),
        endpoints=EndpointGuard.from_settings(conf),
        policy=RefreshPolicy.from_settings(conf),
    )
    stale = current_tokens(other_vault.portals, member_id).access_token
    session = shared_session()  # the container's HTTP session, which the REST client sends through
    real_post = session.post
    interleaved: list[bool] = []

    def post_after_the_other_container_refreshed(url: str, *args: Any, **kwargs: Any) -> Any:
        if not interleaved and "/rest/" in url:
            # Our request is about to leave with the cached token; another container refreshes first
            # (Bitrix24 may revoke the access token issued with the spent refresh token:
            # docs/bitrix24-facts.md#f-oauth-12).
            interleaved.append(True)
            other_container.fresh_access_token(member_id, stale)
        return real_post(url, *args, **kwargs)

    monkeypatch.setattr(session, "post", post_after_the_other_container_refreshed)
    rig.emulator.reset()
    answer = rig.leads(_page(rig, member_id))
    assert rig.emulator.stats()["token_requests"] == 1  # the other container's refresh only
    assert answer.get("count") == 5, answer


# --- DynamoDB failures on commit: retried, then rescued --------------------------------------------


@pytest.mark.parametrize(
    ("status", "error_code"),
    [
        (400, "com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException"),
        (400, "com.amazonaws.dynamodb.v20120810#ThrottlingException"),
        (500, "com.amazonaws.dynamodb.v20120810#InternalServerError"),
    ],
    ids=["throughput", "throttling", "5xx"],
)
def test_a_commit_that_keeps_failing_is_retried_then_rescued_and_applied(
    rig: Rig, status: int, error_code: str
) -> None:
    member_id = _installed(rig)
    assert "leads" in rig.leads(_page(rig, member_id))
    before = rig.portal()
    assert before is not None
    version = int(before["version"]["N"])
    rig.emulator.reset()
    rig.emulator.expire_access_tokens()
    # Given every commit of a refreshed pair fails at DynamoDB (botocore event hook on UpdateItem)
    client = wiring.vault(get_settings()).portals.model._get_connection().connection.client
    fault = inject(
        client, "dynamodb.UpdateItem", InjectedFault(status, error_code, body_contains=b"token_ciphertext")
    )
    # When a lead read finds the token expired
    page = rig.leads(_page(rig, member_id))
    # Then the refresh happened once, the commit was retried (botocore x coordinator), and the pair was
    # parked on the rescue queue as ciphertext; the caller still got its page with the new token
    assert page.get("count") == 5, page
    assert rig.emulator.stats()["token_requests"] == 1
    botocore_attempts = client.meta.config.retries["total_max_attempts"]
    coordinator_attempts = wiring.coordinator(get_settings()).policy.commit_attempts
    assert botocore_attempts > 1
    assert coordinator_attempts > 1
    assert fault.seen == botocore_attempts * coordinator_attempts
    assert int(rig.portal()["version"]["N"]) == version  # type: ignore[index]
    bodies = rig.queue_bodies(rig.stack.rescue_queue_url)
    assert len(bodies) == 1
    live = _emulator_tokens(rig)
    assert live
    assert not any(token in bodies[0] for token in live)
    assert json.loads(bodies[0])["base_version"] == version
    # And once DynamoDB is back, TokenRescueFunction applies it
    fault.remaining = 0
    cold_start()
    assert rig.sqs("TokenRescueFunction", bodies) == {"batchItemFailures": []}
    assert int(rig.portal()["version"]["N"]) == version + 1  # type: ignore[index]
    cold_start()
    assert rig.leads(_page(rig, member_id)).get("count") == 5
    assert rig.emulator.stats()["token_requests"] == 1  # the rescued pair works: no second refresh


def _make_due(rig: Rig, member_id: str) -> None:
    """The portal's refresh token is 22 days old (written straight to the table)."""
    past = int(time.time()) - 22 * 86_400
    rig.stack.client("dynamodb").update_item(
        TableName=rig.stack.portals_table,
        Key={"member_id": {"S": member_id}},
        UpdateExpression="SET refresh_obtained_at = :o, refresh_due_at = :d",
        ExpressionAttributeValues={":o": {"N": str(past)}, ":d": {"N": str(past + 21 * 86_400)}},
    )


def test_a_scheduled_refresh_whose_commit_keeps_failing_is_rescued_and_a_replayed_rescue_is_stale(
    rig: Rig,
) -> None:
    member_id = _installed(rig)
    _make_due(rig, member_id)
    before = rig.portal()
    assert before is not None
    version = int(before["version"]["N"])
    # Given every commit of a refreshed pair fails at DynamoDB
    client = wiring.vault(get_settings()).portals.model._get_connection().connection.client
    fault = inject(
        client, "dynamodb.UpdateItem", InjectedFault(500, "com.amazonaws.dynamodb.v20120810#InternalServerError",
                                                     body_contains=b"token_ciphertext"),
    )  # fmt: skip
    # When the refresh worker refreshes the due portal
    body = json.dumps({"member_id": member_id, "version": version})
    assert invoke("RefreshWorkerFunction", _sqs([body])) == {"batchItemFailures": []}
    # Then Bitrix24 rotated the pair once and the new pair waits on the rescue queue as ciphertext
    assert rig.emulator.stats()["token_requests"] == 1
    assert fault.seen > 1
    assert int(rig.portal()["version"]["N"]) == version  # type: ignore[index]
    bodies = rig.queue_bodies(rig.stack.rescue_queue_url)
    assert len(bodies) == 1
    assert not any(token in bodies[0] for token in _emulator_tokens(rig))
    # And TokenRescueFunction applies it once DynamoDB is back
    fault.remaining = 0
    cold_start()
    assert rig.sqs("TokenRescueFunction", bodies) == {"batchItemFailures": []}
    applied = rig.portal()
    assert int(applied["version"]["N"]) == version + 1  # type: ignore[index]
    # And the same message delivered again (SQS is at-least-once) is stale: dropped, nothing changes
    cold_start()
    assert rig.sqs("TokenRescueFunction", bodies) == {"batchItemFailures": []}
    assert rig.portal() == applied


# --- KMS unavailable -------------------------------------------------------------------------------


KMS_DOWN = (500, "KMSInternalException")
# Pairs are sealed with a KMS data key (docs/decisions/0002-envelope-encryption.md).
SEAL = "kms.GenerateDataKey"


def test_kms_down_at_callback_is_a_clear_5xx_and_stores_nothing(rig: Rig) -> None:
    consent_url, nonce = rig.authorize()
    query = rig.consent(consent_url)
    kms = wiring.vault(get_settings()).cipher.kms
    fault = inject(kms, SEAL, InjectedFault(*KMS_DOWN))
    answer = rig.callback(query, nonce)
    assert (answer["statusCode"], header(answer, "X-Reason-Code")) == (503, "storage_unavailable")
    assert fault.seen >= 1
    assert rig.items() == []
    assert "KMSInternalException" not in answer["body"]


@pytest.mark.filterwarnings("ignore:No application metrics to publish")  # a batch where every job failed
def test_kms_down_at_install_stores_nothing(rig: Rig) -> None:
    # KMS down when the event arrives: it cannot be sealed, so nothing is journaled (Bitrix24 gets a 503)
    kms = wiring.vault(get_settings()).cipher.kms
    fault = inject(kms, SEAL, InjectedFault(*KMS_DOWN))
    answer, _fields = rig.install_event(drain=False)
    assert (answer["statusCode"], header(answer, "X-Reason-Code")) == (503, "journal_unavailable")
    assert "KMSInternalException" not in answer["body"]
    assert rig.queue_bodies(rig.stack.lifecycle_queue_url) == []
    assert rig.items() == []
    # KMS down when LifecycleFunction applies a journaled event: retried, nothing stored meanwhile ...
    fault.remaining = 0
    answer, fields = rig.install_event(drain=False)
    assert answer["statusCode"] == 200
    fault.remaining = 1_000_000
    first = rig.drain_lifecycle(rounds=2)
    assert (first.done, first.retried) == (0, 2)
    assert rig.items() == []
    # ... and applied once KMS is back: the event was not lost
    fault.remaining = 0
    assert rig.drain_lifecycle().of("grant") == ["stored"]
    item = rig.portal()
    assert item is not None
    assert item["health"]["S"] == "active"
    assert dict(fields)["auth[refresh_token]"] not in json.dumps(rig.items(), default=str)


def test_kms_down_at_a_refresh_spends_nothing_and_writes_no_plaintext(
    rig: Rig, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a warm container, an expired access token, and KMS down
    member_id = _installed(rig)
    assert "leads" in rig.leads(_page(rig, member_id))
    before = rig.portal()
    rig.emulator.reset()
    rig.emulator.expire_access_tokens()
    kms = wiring.vault(get_settings()).cipher.kms
    fault = inject(kms, SEAL, InjectedFault(*KMS_DOWN))
    capsys.readouterr()
    answer = rig.leads(_page(rig, member_id))
    # Then the encryption material was asked for before the spend, and without it nothing was sent:
    # the chain is intact (no needs_reauth), the attempt left no lease or throttle behind
    assert answer["error"]["code"] == "UPSTREAM_ERROR", answer
    assert fault.seen >= 1
    assert rig.emulator.stats()["token_requests"] == 0
    assert rig.portal() == before
    stored = json.dumps(rig.items(), default=str) + "".join(rig.queue_bodies(rig.stack.rescue_queue_url))
    assert not any(token in stored for token in _emulator_tokens(rig))
    assert "PortalNeedsReauth" not in emf_counts(capsys.readouterr().out)


def test_every_path_that_flags_needs_reauth_emits_the_alarmed_metric(
    rig: Rig, capsys: pytest.CaptureFixture[str]
) -> None:
    # A dead grant (the refresh token no longer works) is the path left: KMS can no longer cause one
    member_id = _installed(rig)
    rig.emulator.expire_access_tokens()
    rig.emulator.invalidate_refresh_tokens()
    capsys.readouterr()
    answer = rig.leads(_page(rig, member_id))
    assert answer["error"]["code"] == "REAUTH_REQUIRED", answer
    item = rig.portal()
    assert item is not None
    assert item["health"]["S"] == "needs_reauth"
    assert emf_counts(capsys.readouterr().out).get("PortalNeedsReauth", 0) >= 1


def test_kms_down_on_a_cold_read_is_a_clear_error(rig: Rig) -> None:
    member_id = _installed(rig)
    cold_start()
    before = rig.items()
    kms = wiring.vault(get_settings()).cipher.kms
    inject(kms, "kms.Decrypt", InjectedFault(*KMS_DOWN))
    answer = rig.leads(_page(rig, member_id))
    assert answer == {
        "error": {
            "code": "UPSTREAM_ERROR",
            "message": "the token vault is unavailable right now; retry later",
        }
    }
    assert rig.items() == before


# --- Secrets Manager unavailable -----------------------------------------------------------------


@pytest.fixture
def secrets_down(monkeypatch: pytest.MonkeyPatch) -> InjectedFault:
    """Secrets Manager answers 503 to every call (a cold container, so nothing is cached)."""
    import boto3
    from aws_lambda_powertools.utilities.parameters import SecretsProvider
    from aws_lambda_powertools.utilities.parameters.constants import DEFAULT_PROVIDERS
    from botocore.config import Config

    cold_start()
    client = boto3.client("secretsmanager", config=Config(retries={"mode": "standard", "max_attempts": 3}))
    fault = inject(client, "secrets-manager.GetSecretValue", InjectedFault(503, "ServiceUnavailable"))
    monkeypatch.setitem(DEFAULT_PROVIDERS, "secrets", SecretsProvider(boto3_client=client))
    return fault


def test_secrets_manager_down_at_callback_is_a_5xx_without_details(
    rig: Rig, request: pytest.FixtureRequest
) -> None:
    consent_url, nonce = rig.authorize()
    query = rig.consent(consent_url)
    rig.emulator.reset()
    fault: InjectedFault = request.getfixturevalue("secrets_down")
    answer = rig.callback(query, nonce)
    # An outage, answered as one (503 + reason), not as an unexpected error (500)
    assert (answer["statusCode"], header(answer, "X-Reason-Code")) == (503, "secret_unavailable")
    assert fault.seen >= 1
    for detail in ("Traceback", "SecretUnavailable", rig.stack.client_secret_id, "ServiceUnavailable"):
        assert detail not in answer["body"]
    assert rig.emulator.stats()["token_requests"] == 0  # the code was never sent without the secret
    assert rig.items() == []


def test_secrets_manager_down_during_a_refresh_leaves_the_portal_untouched(
    rig: Rig, request: pytest.FixtureRequest
) -> None:
    member_id = _installed(rig)
    before = rig.portal()
    rig.emulator.reset()
    rig.emulator.expire_access_tokens()
    request.getfixturevalue("secrets_down")
    answer = rig.leads(_page(rig, member_id))
    assert answer["error"]["code"] == "UPSTREAM_ERROR"
    assert rig.emulator.stats()["token_requests"] == 0
    assert _without(rig.portal(), LEASE_FIELDS) == _without(before, LEASE_FIELDS)


# --- client secret not put yet (deploy marker) --------------------------------------------------


def _client_secret_not_set(rig: Rig) -> None:
    """ClientSecret holds the template's marker, as between `make deploy` and `make put-secret`."""
    from b24connector.credentials import CLIENT_SECRET_NOT_SET

    rig.stack.client("secretsmanager").put_secret_value(
        SecretId=rig.stack.client_secret_id, SecretString=CLIENT_SECRET_NOT_SET
    )
    cold_start()


def test_callback_before_put_secret_is_a_clear_503_and_never_sends_the_code(
    rig: Rig, capsys: pytest.CaptureFixture[str]
) -> None:
    consent_url, nonce = rig.authorize()
    query = rig.consent(consent_url)
    rig.emulator.reset()
    _client_secret_not_set(rig)
    capsys.readouterr()
    answer = rig.callback(query, nonce)
    out = capsys.readouterr().out
    assert (answer["statusCode"], header(answer, "X-Reason-Code")) == (503, "client_secret_not_set")
    assert "client secret has not been stored" in answer["body"]
    assert rig.emulator.stats()["token_requests"] == 0  # the code never went out with a wrong secret
    assert rig.items() == []
    assert emf_counts(out).get("ClientSecretMissing") == 1


def test_refresh_before_put_secret_waits_without_spending_the_refresh_token(
    rig: Rig, capsys: pytest.CaptureFixture[str]
) -> None:
    member_id = _installed(rig)
    before = rig.portal()
    rig.emulator.reset()
    rig.emulator.expire_access_tokens()
    _client_secret_not_set(rig)
    capsys.readouterr()
    answer = rig.leads(_page(rig, member_id))
    out = capsys.readouterr().out
    assert answer["error"]["code"] == "UPSTREAM_ERROR"
    assert rig.emulator.stats()["token_requests"] == 0
    assert _without(rig.portal(), LEASE_FIELDS) == _without(before, LEASE_FIELDS)
    assert emf_counts(out).get("ClientSecretMissing", 0) >= 1


# --- Bitrix24 OAuth server down ------------------------------------------------------------------


def test_oauth_server_down_during_a_lazy_refresh_leaves_the_portal_untouched(
    rig: Rig, capsys: pytest.CaptureFixture[str]
) -> None:
    member_id = _installed(rig)
    assert "leads" in rig.leads(_page(rig, member_id))
    before = rig.portal()
    rig.emulator.reset()
    rig.emulator.expire_access_tokens()
    rig.emulator.add_faults(
        [{"target": "oauth", "kind": "server_error", "method": "token", "status": 503, "count": 10}]
    )
    capsys.readouterr()
    answer = rig.leads(_page(rig, member_id))
    out = capsys.readouterr().out
    assert answer["error"]["code"] == "UPSTREAM_ERROR"
    assert rig.emulator.stats()["token_requests"] == 1
    assert _without(rig.portal(), LEASE_FIELDS) == _without(before, LEASE_FIELDS)
    assert "lease_owner" not in rig.portal()  # type: ignore[operator]  # released for the next attempt
    assert _outage_counted(emf_counts(out))


def test_oauth_server_down_during_a_scheduled_refresh_retries_later(
    rig: Rig, capsys: pytest.CaptureFixture[str]
) -> None:
    member_id = _installed(rig)
    # Given the portal is due (its refresh token is 22 days old; written straight to the table)
    past = int(time.time()) - 22 * 86_400
    rig.stack.client("dynamodb").update_item(
        TableName=rig.stack.portals_table,
        Key={"member_id": {"S": member_id}},
        UpdateExpression="SET refresh_obtained_at = :o, refresh_due_at = :d",
        ExpressionAttributeValues={":o": {"N": str(past)}, ":d": {"N": str(past + 21 * 86_400)}},
    )
    before = rig.portal()
    assert before is not None
    rig.emulator.add_faults(
        [{"target": "oauth", "kind": "html", "method": "token", "status": 502, "count": 10}]
    )
    capsys.readouterr()
    body = json.dumps({"member_id": member_id, "version": int(before["version"]["N"])})
    answer = invoke("RefreshWorkerFunction", _sqs([body]))
    out = capsys.readouterr().out
    # Retried through the queue (then the DLQ and its alarm), or deferred past the minimum interval:
    # either way the message is accounted for and nothing about the portal's grant changed
    assert set(answer) == {"batchItemFailures"}
    assert len(answer["batchItemFailures"]) <= 1
    volatile = LEASE_FIELDS | {"refresh_due_at"}  # deferred so the sweep does not pick it up hourly
    after = rig.portal()
    assert _without(after, volatile) == _without(before, volatile)
    assert int(after["refresh_due_at"]["N"]) >= int(before["refresh_due_at"]["N"])  # type: ignore[index]
    assert _outage_counted(emf_counts(out))


def _outage_counted(metrics: dict[str, float]) -> bool:
    """A metric says the OAuth server failed (transient failure, or a refresh deferred because of it)."""
    return any(
        ("TransientFailure" in name or "Deferred" in name) and value >= 1 for name, value in metrics.items()
    )


def _sqs(bodies: list[str]) -> dict[str, Any]:
    from tests.support.aws_events import sqs_event

    return sqs_event(bodies)
