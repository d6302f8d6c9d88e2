"""RefreshWorkerFunction: which failed refreshes go back to the queue, and which are deferred.

- A token request that provably never reached Bitrix24 (here: connection refused) leaves no trace on
  the record and goes back to the queue; the redelivery refreshes.
- One that may have reached Bitrix24 (here: a 502 from the OAuth server) is deferred for
  MIN_REFRESH_INTERVAL_HOURS: acknowledged, counted, and not retried by a redelivery.
- DynamoDB/KMS failing before any token call goes back to the queue, with nothing recorded.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from b24connector import wiring
from b24connector.settings import get_settings
from b24connector.vault.cipher import TokenCipher
from b24connector.vault.errors import VaultUnavailable
from bitrix24_emulator import Emulator
from tests.support.aws_events import sqs_event
from tests.support.emf import emf_counts
from tests.support.rig import Rig

pytestmark = pytest.mark.integration

DAY = 86_400


class Gate:
    """A loopback port that refuses connections until opened, then forwards them to `target_port`.

    Bound but not listening, the kernel answers every connection attempt with a reset (refused), and
    the port stays ours for the later `open()`.
    """

    def __init__(self, target_port: int) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self._target = target_port

    def open(self) -> None:
        self.sock.listen()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self._target))
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pump, args=(source, sink), daemon=True).start()

    def close(self) -> None:
        self.sock.close()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
        sink.shutdown(socket.SHUT_WR)
    except OSError:
        pass


@pytest.fixture
def gate(emulator: Emulator) -> Iterator[Gate]:
    """A refusing address in front of the emulator's OAuth server."""
    opened = Gate(int(emulator.oauth_url.rsplit(":", 1)[1]))
    yield opened
    opened.close()


def _install_due(rig: Rig, emulator: Emulator, **extra: str) -> dict[str, Any]:
    """Install the portal and make its refresh due (22-day-old refresh token), written straight to the table."""
    rig.http.install_event()
    past = int(time.time()) - 22 * DAY
    names = {f"#{k}": k for k in ("refresh_obtained_at", "refresh_due_at", *extra)}
    values = {":refresh_obtained_at": {"N": str(past)}, ":refresh_due_at": {"N": str(past + 21 * DAY)}}
    values.update({f":{k}": {"S": v} for k, v in extra.items()})
    rig.stack.client("dynamodb").update_item(
        TableName=rig.stack.portals_table,
        Key={"member_id": {"S": emulator.member_id}},
        UpdateExpression="SET " + ", ".join(f"#{k} = :{k}" for k in names.values()),
        ExpressionAttributeNames=names,
        ExpressionAttributeValues=values,
    )
    item = rig.portal()
    assert item is not None
    return item


def _deliver(rig: Rig, event: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> Any:
    """One RefreshWorkerFunction invocation: (message ids sent back, metric counts)."""
    capsys.readouterr()
    answer = rig.invoke("RefreshWorkerFunction", event)
    failed = [f["itemIdentifier"] for f in answer["batchItemFailures"]]
    return failed, emf_counts(capsys.readouterr().out)


def _message(item: dict[str, Any]) -> dict[str, Any]:
    return sqs_event([{"member_id": item["member_id"]["S"], "version": int(item["version"]["N"])}])


def test_a_refused_token_request_goes_back_to_the_queue_and_the_redelivery_refreshes(
    rig: Rig,
    emulator: Emulator,
    gate: Gate,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given a due portal whose OAuth server address refuses connections
    server = f"http://127.0.0.1:{gate.port}"
    monkeypatch.setenv("OAUTH_SERVERS", f"{server},{emulator.oauth_url}")
    get_settings.cache_clear()
    before = _install_due(rig, emulator, server_endpoint=f"{server}/rest/")
    emulator.reset()
    event = _message(before)
    # When the worker takes the message
    failed, metrics = _deliver(rig, event, capsys)
    # Then it goes back to the queue, and the record shows no attempt (nothing reached Bitrix24)
    assert failed == [event["Records"][0]["messageId"]]
    assert metrics.get("RefreshRetried") == 1
    assert "RefreshDeferred" not in metrics
    assert rig.portal() == before
    assert emulator.stats()["token_requests"] == 0
    # When the server is back and SQS redelivers the message
    gate.open()
    failed, metrics = _deliver(rig, event, capsys)
    # Then the portal is refreshed
    assert failed == []
    assert metrics.get("TokenRefreshed") == 1
    after = rig.portal()
    assert after is not None
    assert int(after["version"]["N"]) == int(before["version"]["N"]) + 1
    assert int(after["refresh_due_at"]["N"]) > time.time() + 20 * DAY
    assert emulator.stats()["token_requests"] == 1


def test_a_token_request_that_may_have_reached_bitrix24_is_deferred_not_retried(
    rig: Rig, emulator: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a due portal, and an OAuth server that answers its token request with a 502 page
    before = _install_due(rig, emulator)
    emulator.reset()
    emulator.add_faults([{"target": "oauth", "kind": "html", "method": "token", "status": 502, "count": 5}])
    event = _message(before)
    started = time.time()
    # When the worker takes the message
    failed, metrics = _deliver(rig, event, capsys)
    # Then the message is acknowledged and counted as deferred, and the failure is on record
    assert failed == []
    assert (metrics.get("RefreshDeferred"), metrics.get("TokenRefreshTransientFailure")) == (1, 1)
    assert "RefreshRetried" not in metrics
    assert emulator.stats()["token_requests"] == 1
    item = rig.portal()
    assert item is not None
    assert (item["version"], item["token_ciphertext"], item["health"]) == (
        before["version"],
        before["token_ciphertext"],
        before["health"],
    )
    assert "lease_owner" not in item
    # deferred by the minimum interval (24 h), which also keeps the next sweeps away
    due = int(item["refresh_due_at"]["N"])
    assert int(started) + 24 * 3600 <= due <= time.time() + 24 * 3600
    assert float(item["last_refresh_attempt_at"]["N"]) >= int(started)
    # And a duplicate delivery makes no token call
    failed, _ = _deliver(rig, event, capsys)
    assert failed == []
    assert emulator.stats()["token_requests"] == 1


def test_kms_failing_before_the_token_call_goes_back_to_the_queue_with_nothing_recorded(
    rig: Rig,
    emulator: Emulator,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given a due portal, a cold container (no decrypted pair cached) and KMS failing
    before = _install_due(rig, emulator)
    wiring.reset()  # a cold container: nothing built, no decrypted pair cached
    emulator.reset()

    def kms_down(*_: Any, **__: Any) -> bytes:
        raise VaultUnavailable("KMS Decrypt failed (KMSInternalException)")

    event = _message(before)
    with monkeypatch.context() as patch:
        patch.setattr(TokenCipher, "decrypt", kms_down)
        failed, _ = _deliver(rig, event, capsys)
    # Then the message goes back to the queue and the record is untouched
    assert failed == [event["Records"][0]["messageId"]]
    assert rig.portal() == before
    assert emulator.stats()["token_requests"] == 0
    # And the redelivery refreshes once KMS is back
    failed, _ = _deliver(rig, event, capsys)
    assert failed == []
    after = rig.portal()
    assert after is not None
    assert int(after["version"]["N"]) == int(before["version"]["N"]) + 1
