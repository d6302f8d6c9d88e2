"""b24connector.client: paging through cursors over Lambda Invoke and typed errors."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest

from b24connector import client
from b24connector.client import fetch_leads, fetch_leads_page, parse_answer


class FakeLambda:
    """Answers Invoke calls from a script of payloads, recording what was asked."""

    def __init__(self, answers: list[Any], *, function_error: str | None = None) -> None:
        self.answers = list(answers)
        self.requests: list[dict[str, Any]] = []
        self.function_error = function_error

    def invoke(self, **kwargs: Any) -> dict[str, Any]:
        self.requests.append({**kwargs, "Payload": json.loads(kwargs["Payload"])})
        answer = self.answers.pop(0)
        raw = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
        response: dict[str, Any] = {"StatusCode": 200, "Payload": io.BytesIO(raw)}
        if self.function_error:
            response["FunctionError"] = self.function_error
        return response


def test_fetch_leads_follows_cursors_until_the_end() -> None:
    fake = FakeLambda(
        [
            {"leads": [{"ID": "1"}, {"ID": "2"}], "count": 2, "next_cursor": "c1"},
            {"leads": [{"ID": "3"}], "count": 1, "next_cursor": None},
        ]
    )
    leads = list(
        fetch_leads(
            domain="acme.bitrix24.com",
            select=["TITLE"],
            filter={"STATUS_ID": "NEW"},
            limit=2,
            lambda_client=fake,  # type: ignore[arg-type]
        )
    )
    assert [lead["ID"] for lead in leads] == ["1", "2", "3"]
    first, second = (r["Payload"] for r in fake.requests)
    assert first == {
        "domain": "acme.bitrix24.com",
        "select": ["TITLE"],
        "filter": {"STATUS_ID": "NEW"},
        "limit": 2,
    }
    assert second == {**first, "cursor": "c1"}
    assert all(
        r["FunctionName"] == "LeadsFunction" and r["InvocationType"] == "RequestResponse"
        for r in fake.requests
    )


def test_fetch_leads_is_lazy() -> None:
    fake = FakeLambda([{"leads": [{"ID": "1"}], "count": 1, "next_cursor": "c1"}])
    iterator = fetch_leads(member_id="m", lambda_client=fake)  # type: ignore[arg-type]
    assert next(iterator) == {"ID": "1"}
    assert len(fake.requests) == 1


@pytest.mark.parametrize(
    ("code", "error_class"),
    [
        ("INVALID_REQUEST", client.InvalidRequest),
        ("PORTAL_NOT_FOUND", client.PortalNotFound),
        ("REAUTH_REQUIRED", client.ReauthRequired),
        ("RATE_LIMITED", client.RateLimited),
        ("UPSTREAM_ERROR", client.UpstreamError),
    ],
)
def test_error_codes_raise_typed_errors(code: str, error_class: type[client.LeadsError]) -> None:
    fake = FakeLambda([{"error": {"code": code, "message": "because"}}])
    with pytest.raises(error_class) as caught:
        fetch_leads_page(member_id="m", lambda_client=fake)  # type: ignore[arg-type]
    assert caught.value.code == code
    assert caught.value.message == "because"
    assert isinstance(caught.value, client.LeadsError)


def test_unknown_codes_raise_the_base_error() -> None:
    with pytest.raises(client.LeadsError) as caught:
        parse_answer({"error": {"code": "NEW_CODE", "message": "m"}})
    assert type(caught.value) is client.LeadsError
    assert caught.value.code == "NEW_CODE"


def test_function_errors_raise_an_invocation_error() -> None:
    fake = FakeLambda([{"errorType": "Runtime.ExitError", "errorMessage": "x"}], function_error="Unhandled")
    with pytest.raises(client.InvocationError, match=r"Runtime\.ExitError"):
        fetch_leads_page(member_id="m", lambda_client=fake)  # type: ignore[arg-type]


@pytest.mark.parametrize("answer", [b"not json", [], {"leads": "x"}, {"leads": [], "next_cursor": 5}])
def test_malformed_answers_raise_an_invocation_error(answer: Any) -> None:
    fake = FakeLambda([answer])
    with pytest.raises(client.InvocationError):
        fetch_leads_page(member_id="m", lambda_client=fake)  # type: ignore[arg-type]


@pytest.mark.parametrize("kwargs", [{}, {"member_id": "m", "domain": "d.bitrix24.com"}])
def test_exactly_one_portal_key(kwargs: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        fetch_leads_page(lambda_client=FakeLambda([]), **kwargs)  # type: ignore[arg-type]
