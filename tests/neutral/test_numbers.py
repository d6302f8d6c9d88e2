"""Integers from untrusted text: ASCII digits only, within sane bounds (issue 12 point 2)."""

from __future__ import annotations

import re

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


@pytest.mark.parametrize(
    "value", ["0", "7", "0042", "12345", "9" * 16, "9" * 17, "9" * 15 + "²", "12 ", " 12", "1_000", "-0"]
)
def test_the_id_string_fast_path_answers_as_the_full_check(value: str) -> None:
    # The fast path (plain ASCII digit strings) must agree with the general rule for every string.
    match = re.fullmatch(r"-?[0-9]{1,16}", value.strip())
    expected = int(value) if match and 0 <= int(value) <= MAX_SAFE_INTEGER else None
    assert ascii_int(value) == expected


def test_the_fast_path_keeps_the_bounds() -> None:
    assert ascii_int("9" * 16) is None  # 16 digits, above 2**53 - 1
    assert ascii_int("5", minimum=6) is None
    assert ascii_int("5", maximum=4) is None
    assert ascii_int("5", minimum=5, maximum=5) == 5
