"""docs/bitrix24-errors.md is the contract of the REST error taxonomy: parse it and hold the code to it."""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest

from b24connector.bitrix24 import errors
from b24connector.bitrix24.envelope import error_of, known_codes, make_error
from b24connector.leads import error_for
from tests.support.servers import REPO_ROOT

TABLE = REPO_ROOT / "docs" / "bitrix24-errors.md"
HEADER = ["Code", "HTTP", "Class", "Caller gets", "Handling", "Source"]
ANY_OTHER = "*(any other)*"
# Codes Bitrix24 might invent tomorrow: an unknown code must follow the table's "(any other)" row.
NEW_CODES = ("SOMETHING_NEW", "")


@dataclass(frozen=True)
class Row:
    code: str  # as written, without backticks; ANY_OTHER for the fallback rows
    status: int
    error_class: str
    caller_gets: str


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def parse_rows(text: str) -> list[Row]:
    """Every row of every table whose header is HEADER."""
    rows: list[Row] = []
    in_table = False
    for line in text.splitlines():
        if not line.startswith("|"):
            in_table = False
            continue
        cells = _cells(line)
        if cells == HEADER:
            in_table = True
            continue
        if not in_table or set(line.replace("|", "").strip()) <= {"-"}:
            continue
        assert len(cells) == len(HEADER), line
        status = re.match(r"\d{3}", cells[1])
        assert status is not None, f"no HTTP status in {line!r}"
        rows.append(Row(cells[0].strip("`"), int(status.group()), cells[2], cells[3]))
    return rows


ROWS = parse_rows(TABLE.read_text(encoding="utf-8"))
NAMED = [row for row in ROWS if row.code != ANY_OTHER]
FALLBACK = [row for row in ROWS if row.code == ANY_OTHER]


def test_the_table_and_the_code_classify_the_same_codes_the_same_way() -> None:
    in_table = {row.code.upper(): row.error_class for row in NAMED}
    assert len(in_table) == len(NAMED), "a code is listed twice"
    in_code = {code: cls.__name__ for code, cls in known_codes().items()}
    assert in_table == in_code


def test_every_401_code_of_the_token_check_is_classified_explicitly() -> None:
    # Bitrix's own check (rest lib/oauth/auth.php) and the codes issue 10 names; PORTAL_DELETED is 403.
    required = {
        "CONNECTION_ERROR",
        "APPLICATION_NOT_FOUND",
        "ACCESS_DENIED",
        "INSUFFICIENT_SCOPE",
        "AUTHORIZATION_ERROR",
        "USER_ACCESS_ERROR",
        "EXPIRED_TOKEN",
        "INVALID_TOKEN",
        "NO_AUTH_FOUND",
        "ERROR_OAUTH",
        "METHOD_CONFIRM_WAITING",
    }
    listed_401 = {row.code.upper() for row in NAMED if row.status == 401}
    assert required <= listed_401
    assert {row.code for row in NAMED if row.status == 403} >= {"PORTAL_DELETED"}


@pytest.mark.parametrize("row", NAMED, ids=lambda row: row.code)
def test_each_named_code_maps_as_the_table_says(row: Row) -> None:
    error = error_of(row.status, {"error": row.code, "error_description": "text"})
    assert type(error).__name__ == row.error_class
    assert isinstance(error, errors.Bitrix24Error)
    assert error_for(error).code == row.caller_gets
    # Sub-command errors inside a batch carry no status: the code alone must decide.
    assert type(make_error(row.code, "", None)).__name__ == row.error_class


@pytest.mark.parametrize("row", FALLBACK, ids=lambda row: str(row.status))
@pytest.mark.parametrize("code", NEW_CODES)
def test_unknown_codes_follow_the_fallback_rows(row: Row, code: str) -> None:
    error = error_of(row.status, {"error": code, "error_description": "something new"})
    assert type(error).__name__ == row.error_class
    assert isinstance(error, errors.Bitrix24Error)
    assert error_for(error).code == row.caller_gets


def test_connection_error_is_transient_and_never_reauth() -> None:
    error = error_of(
        401, {"error": "CONNECTION_ERROR", "error_description": "Error connecting to authorization server"}
    )
    assert isinstance(error, errors.TransientError)
    assert error.retryable
    assert not isinstance(error, errors.InvalidToken)
    assert error_for(error).code == "UPSTREAM_ERROR"


def test_an_unknown_401_is_not_a_dead_grant() -> None:
    error = error_of(401, {"error": "SOMETHING_NEW", "error_description": "?"})
    assert not isinstance(error, errors.InvalidToken)
    assert error_for(error).code != "REAUTH_REQUIRED"
