"""Integers from untrusted text: ASCII digits only, within sane bounds (issue 12 point 2)."""

from __future__ import annotations

import pytest

from b24connector.bitrix24.errors import MalformedTokenPayload
from b24connector.bitrix24.tokens import parse_token_payload
from b24connector.numbers import MAX_SAFE_INTEGER, ascii_int


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0, 0), ("42", 42), (" 7 ", 7), (3600.0, 3600), (MAX_SAFE_INTEGER, MAX_SAFE_INTEGER), ("0042", 42)],
)
def test_plain_integers_are_read(value: object, expected: int) -> None:
    assert ascii_int(value) == expected


@pytest.mark.parametrize(
    "value",
    ["²", "٣", "\uff13", "१", "①", "1²", "", "-", "+1", "1.5", "1e3", "0x1", "9" * 5_000, "9" * 17, True, None,
     [], {}, 1.5, float("nan"), float("inf"), 1e300, MAX_SAFE_INTEGER + 1, 10**4000, -1, "-1"],
)  # fmt: skip
def test_anything_else_is_none(value: object) -> None:
    assert ascii_int(value) is None


def test_negative_numbers_only_when_asked_for() -> None:
    assert ascii_int("-5", minimum=-10) == -5
    assert ascii_int(-11, minimum=-10) is None


@pytest.mark.parametrize("field", ["expires", "expires_in", "user_id"])
@pytest.mark.parametrize("value", ["²", "٣", "9" * 5_000, 10**40, -1, 1e300])
def test_token_payloads_with_such_numbers_are_malformed(field: str, value: object) -> None:
    payload = {"access_token": "a" * 8, "refresh_token": "r" * 8, "member_id": "m", "expires_in": 3600}
    with pytest.raises(MalformedTokenPayload):
        parse_token_payload({**payload, field: value}, now=1_000)
