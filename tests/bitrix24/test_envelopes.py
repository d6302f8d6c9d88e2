"""REST envelope parsing and the error taxonomy of fact sheet 4.3; batch containers of 5.3."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from b24connector.bitrix24.envelope import error_of, make_error, parse_batch, parse_response, reset_at_of
from b24connector.bitrix24.errors import (
    AccessDenied,
    AuthServerUnavailable,
    BadRequest,
    ExpiredToken,
    InvalidToken,
    MethodConfirmWaiting,
    MethodNotFound,
    OperationTimeLimit,
    OverloadLimit,
    PortalDeleted,
    QueryLimitExceeded,
    RestError,
    ServerError,
    TransientError,
    UnknownAuthError,
)
from b24connector.bitrix24.transport import decode_body


def envelope(code: str, description: str = "") -> dict[str, Any]:
    return {"error": code, "error_description": description}


# Every row of fact sheet 4.3, with the description texts it quotes.
TAXONOMY: list[tuple[int, dict[str, Any], type[Exception]]] = [
    (401, envelope("expired_token", "The access token provided has expired"), ExpiredToken),
    (401, envelope("invalid_token", "Unable to get application by token"), InvalidToken),
    (401, envelope("NO_AUTH_FOUND", "Wrong authorization data"), InvalidToken),
    (401, envelope("ERROR_OAUTH", "Application not installed"), InvalidToken),
    (401, envelope("authorization_error", "Unable to authorize user"), InvalidToken),
    (401, envelope("APPLICATION_NOT_FOUND", "Application not found"), InvalidToken),
    (401, envelope("user_access_error", "The user does not have access to the application."), InvalidToken),
    (401, envelope("CONNECTION_ERROR", "Error connecting to authorization server"), AuthServerUnavailable),
    (401, envelope("insufficient_scope"), AccessDenied),
    (401, envelope("ACCESS_DENIED", "REST is available only on commercial plans."), AccessDenied),
    (401, envelope("METHOD_CONFIRM_WAITING", "Waiting for confirmation"), MethodConfirmWaiting),
    (403, envelope("insufficient_scope"), AccessDenied),
    (403, envelope("ACCESS_DENIED", "REST API is available only on commercial plans"), AccessDenied),
    (403, envelope("INVALID_CREDENTIALS"), AccessDenied),
    (403, envelope("user_access_error"), InvalidToken),
    (403, envelope("PORTAL_DELETED", "Portal was deleted"), PortalDeleted),
    (404, envelope("ERROR_METHOD_NOT_FOUND", "Method not found!"), MethodNotFound),
    (400, envelope("INVALID_REQUEST", "Https required."), BadRequest),
    (400, envelope("ERROR_BATCH_LENGTH_EXCEEDED", "Max batch length exceeded"), BadRequest),
    (405, envelope("ERROR_BATCH_METHOD_NOT_ALLOWED", "Method is not allowed for batch usage"), BadRequest),
    (
        429,
        envelope("OPERATION_TIME_LIMIT", "Method is blocked due to operation time limit."),
        OperationTimeLimit,
    ),
    (503, envelope("QUERY_LIMIT_EXCEEDED", "Too many requests"), QueryLimitExceeded),
    (503, envelope("OVERLOAD_LIMIT"), OverloadLimit),
    (500, envelope("INTERNAL_SERVER_ERROR", "Internal server error"), ServerError),
    (500, envelope("ERROR_UNEXPECTED_ANSWER", "Server returned an unexpected response."), ServerError),
    (500, envelope("PORTAL_DELETED", "Portal was deleted"), PortalDeleted),
    (410, envelope("PORTAL_DELETED", "Portal was deleted"), PortalDeleted),
    # "error": "" with only a description (crm.lead.list "Access denied.").
    (400, envelope("", "Access denied."), AccessDenied),
    (200, envelope("", "Access denied."), AccessDenied),
    (403, envelope("", "Some other text"), AccessDenied),
    # REST v3 error objects.
    (401, {"error": {"code": "expired_token", "message": "expired"}}, ExpiredToken),
    (404, {"error": {"code": "ERROR_METHOD_NOT_FOUND", "message": "Method not found"}}, MethodNotFound),
    (400, {"error": {"code": "", "message": "Validation failed"}}, BadRequest),
    # Unknown codes fall back on the status.
    (401, envelope("SOMETHING_NEW"), UnknownAuthError),
    (400, envelope("ERROR_CORE", "Not found"), BadRequest),
    (502, envelope("BAD_GATEWAY"), ServerError),
    (200, envelope("ERROR_SOMETHING"), RestError),
]


@pytest.mark.parametrize(("status", "payload", "error_class"), TAXONOMY)
def test_error_envelopes_map_to_the_taxonomy(
    status: int, payload: dict[str, Any], error_class: type[Exception]
) -> None:
    error = error_of(status, payload)
    assert type(error) is error_class
    assert error is not None
    assert error.http_status == status


def test_error_texts_carry_code_status_and_description() -> None:
    error = error_of(401, envelope("expired_token", "The access token provided has expired"))
    assert str(error) == "expired_token (HTTP 401): The access token provided has expired"
    assert error is not None
    assert error.code == "expired_token"


def test_long_descriptions_are_capped() -> None:
    error = error_of(400, envelope("ERROR_CORE", "x" * 10_000))
    assert error is not None
    assert len(error.description) == 200


@pytest.mark.parametrize(
    ("status", "body", "error_class", "retryable"),
    [
        (500, "<html><body>Internal Server Error</body></html>", ServerError, True),
        (502, "<html>Bad Gateway</html>", ServerError, True),
        (503, "<html>Service Unavailable</html>", ServerError, True),
        (504, None, ServerError, True),
        (429, "<html>Too Many</html>", OperationTimeLimit, False),
        (401, "<html>login</html>", UnknownAuthError, False),
        (403, "<html>Forbidden</html>", AccessDenied, False),
        (200, "<html>maintenance</html>", TransientError, True),
        (404, "<html>Not found</html>", TransientError, True),
    ],
)
def test_non_json_bodies_map_by_status(
    status: int, body: str | None, error_class: type[Exception], retryable: bool
) -> None:
    response = requests.Response()
    response.status_code = status
    response._content = b"" if body is None else body.encode()
    error = error_of(status, decode_body(response.content))
    assert type(error) is error_class
    assert error is not None
    assert error.retryable is retryable


def test_success_without_result_is_transient() -> None:
    error = error_of(200, {"time": {}})
    assert isinstance(error, TransientError)
    assert error_of(200, {"result": [], "time": {}}) is None


def test_non_200_without_error_field_maps_by_status() -> None:
    assert isinstance(error_of(503, {"result": []}), ServerError)
    assert isinstance(error_of(403, {"result": []}), AccessDenied)


def test_operation_time_limit_carries_reset_at_from_the_body() -> None:
    payload = dict(
        envelope("OPERATION_TIME_LIMIT"), time={"operating_reset_at": 1778747792, "operating": 481.0}
    )
    error = error_of(429, payload)
    assert isinstance(error, OperationTimeLimit)
    assert error.reset_at == 1778747792.0


def test_make_error_without_status() -> None:
    assert type(make_error("insufficient_scope", "", None)) is AccessDenied
    assert type(make_error("ERROR_CORE", "", None)) is RestError
    assert make_error("", "", None).code == "UNKNOWN_ERROR"


def test_parse_response_reads_paging_and_time() -> None:
    payload = {
        "result": [{"ID": "1"}],
        "next": 50,
        "total": "654",
        "time": {"start": 1778747192.910734, "operating_reset_at": 1778747792, "operating": 3.3},
    }
    response = parse_response(payload)
    assert response.result == [{"ID": "1"}]
    assert (response.next, response.total) == (50, 654)
    assert reset_at_of(response.time) == 1778747792.0
    assert parse_response({"result": True}).next is None


@pytest.mark.parametrize(
    ("block", "expected"),
    [
        ({"operating_reset_at": "1778747792"}, 1778747792.0),
        ({}, None),
        (None, None),
        ({"operating_reset_at": True}, None),
    ],
)
def test_reset_at_forms(block: object, expected: float | None) -> None:
    assert reset_at_of(block) == expected


# --- batch ------------------------------------------------------------------------------------------

BATCH_SAMPLE = {
    "result": {
        "result": {"get_user": {"ID": "1"}, "get_department": [{"ID": "1", "NAME": "HQ"}]},
        "result_error": {"cmdX": {"error": "insufficient_scope", "error_description": ""}},
        "result_total": {"get_department": 1},
        "result_next": {"cmdY": 50},
        "result_time": {
            "get_user": {"start": 1724916859.46, "finish": 1724916859.46, "duration": 0.003},
        },
    },
    "time": {"start": 1.0},
}


def test_batch_sample_of_the_fact_sheet() -> None:
    batch = parse_batch(BATCH_SAMPLE)
    assert batch.results["get_department"] == [{"ID": "1", "NAME": "HQ"}]
    assert set(batch.errors) == {"cmdX"}
    assert type(batch.errors["cmdX"]) is AccessDenied
    assert batch.totals == {"get_department": 1}
    assert batch.nexts == {"cmdY": 50}
    assert set(batch.times) == {"get_user"}
    assert batch.time == {"start": 1.0}


@pytest.mark.parametrize("empty", [[], {}])
def test_batch_empty_containers_as_list_or_object(empty: Any) -> None:
    payload = {
        "result": {
            "result": {"a": [{"ID": "1"}]},
            "result_error": empty,
            "result_total": empty,
            "result_next": empty,
            "result_time": empty,
        }
    }
    batch = parse_batch(payload)
    assert batch.errors == {}
    assert batch.totals == {}
    assert batch.nexts == {}
    assert batch.times == {}
    assert batch.results == {"a": [{"ID": "1"}]}


def test_batch_numeric_command_ids_serialized_as_a_list() -> None:
    payload = {"result": {"result": [[{"ID": "1"}], True], "result_error": [], "result_total": [0, 5]}}
    batch = parse_batch(payload)
    assert batch.results == {"0": [{"ID": "1"}], "1": True}
    assert batch.totals == {"0": 0, "1": 5}


def test_batch_sub_errors_keep_their_codes_and_halt_leaves_later_commands_out() -> None:
    payload = {
        "result": {
            "result": {"c0": [{"ID": "1"}]},
            "result_error": {
                "c1": {"error": "OPERATION_TIME_LIMIT", "error_description": "Method is blocked"},
            },
            "result_total": [],
            "result_next": [],
            "result_time": [],
        }
    }
    batch = parse_batch(payload)
    assert type(batch.errors["c1"]) is OperationTimeLimit
    assert "c2" not in batch.results
    assert "c2" not in batch.errors


def test_batch_without_result_object_is_transient() -> None:
    with pytest.raises(TransientError):
        parse_batch({"result": []})
