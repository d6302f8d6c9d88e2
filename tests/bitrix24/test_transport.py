"""The shared HTTP plumbing: session settings, quiet loggers, JSON decoding."""

from __future__ import annotations

import logging

import pytest

from b24connector.bitrix24 import transport


def test_sessions_ignore_the_environment_and_never_retry() -> None:
    session = transport.new_session()
    assert session.trust_env is False
    adapter = session.get_adapter("https://acme.bitrix24.com/rest/")
    assert adapter.max_retries.total == 0  # type: ignore[attr-defined]
    assert session.headers["Accept"] == "application/json"
    assert session.headers["User-Agent"].startswith("b24connector/")


def test_the_shared_session_is_one_per_process() -> None:
    assert transport.shared_session() is transport.shared_session()


@pytest.mark.parametrize("name", ["urllib3", "botocore", "requests"])
def test_chatty_library_loggers_are_quiet(name: str) -> None:
    assert logging.getLogger(name).level == logging.WARNING


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"result": [1]}', {"result": [1]}),
        (b"", None),
        (b"<html>502</html>", None),
        (b"\xff\xfe", None),
        (b"[1, 2]", [1, 2]),
    ],
)
def test_decode_body(body: bytes, expected: object) -> None:
    assert transport.decode_body(body) == expected
