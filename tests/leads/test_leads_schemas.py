"""docs/leads-{request,answer}.schema.json: valid schemas, documented examples, and agreement with the code."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest

import b24connector_client
from b24connector import leads as leads_module
from b24connector.leads import MAX_LIMIT, MAX_SPLIT, LeadsRefusal, parse_request
from tests.client.test_client_fetch_leads import FakeLambda
from tests.leads.test_leads_reader import leads, normalize, reader, request
from tests.support.servers import REPO_ROOT

DOCS = REPO_ROOT / "docs"


def _validator(name: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((DOCS / f"leads-{name}.schema.json").read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


REQUEST = _validator("request")
ANSWER = _validator("answer")


def _accepted_by_the_function(payload: object) -> bool:
    try:
        parse_request(payload, normalize)
    except LeadsRefusal:
        return False
    return True


@pytest.mark.parametrize("name", ["request", "answer"])
def test_every_documented_example_is_valid(name: str) -> None:
    validator = _validator(name)
    examples = validator.schema["examples"]
    assert examples
    for example in examples:
        validator.validate(example)


def test_documented_request_examples_are_accepted_by_the_function() -> None:
    for example in REQUEST.schema["examples"]:
        # The examples' portal is acme.bitrix24.com, which the test allow-list accepts.
        assert _accepted_by_the_function(example), example


# Requests the schema can judge (an allowed-host check and 1000.0-versus-1000 are the function's own).
AGREEMENT = [
    {"member_id": "m1"},
    {"domain": "one.bitrix24.com"},
    {"member_id": "m1", "select": [], "filter": {}, "order": {"id": "asc"}, "limit": 1, "cursor": "c"},
    {"member_id": "m1", "select": None, "filter": None, "order": None, "cursor": None, "split": None},
    {"member_id": "m1", "select": ["*", "UF_*", "TITLE"], "limit": MAX_LIMIT, "split": MAX_SPLIT},
    {"member_id": "m1", "filter": {">=ID": 5, "<ID": "99", "@SOURCE_ID": ["WEB", 1, True], "TITLE": None}},
    {"member_id": "m1", "filter": {"!%TITLE": "x" * 1000, "OPPORTUNITY": 1.5}},
    {},
    {"member_id": "m1", "domain": "one.bitrix24.com"},
    {"member_id": ""},
    {"member_id": 5},
    {"member_id": "m 1"},
    {"member_id": "x" * 65},
    {"domain": 7},
    {"member_id": "m1", "bogus": 1},
    {"member_id": "m1", "select": "TITLE"},
    {"member_id": "m1", "select": ["TITLE; DROP"]},
    {"member_id": "m1", "select": [1]},
    {"member_id": "m1", "select": ["F"] * 201},
    {"member_id": "m1", "filter": []},
    {"member_id": "m1", "filter": {"TITLE LIKE": "x"}},
    {"member_id": "m1", "filter": {"TITLE": {"nested": 1}}},
    {"member_id": "m1", "filter": {"TITLE": [{"a": 1}]}},
    {"member_id": "m1", "filter": {"TITLE": [None]}},
    {"member_id": "m1", "filter": {"TITLE": ["x"] * 501}},
    {"member_id": "m1", "filter": {"TITLE": "x" * 1001}},
    {"member_id": "m1", "filter": {">ID": -1}},
    {"member_id": "m1", "filter": {">ID": "abc"}},
    {"member_id": "m1", "filter": {"<=id": 1.5}},
    {"member_id": "m1", "filter": {">ID": True}},
    {"member_id": "m1", "filter": {f"F{i}": 1 for i in range(51)}},
    {"member_id": "m1", "order": {"ID": "DESC"}},
    {"member_id": "m1", "order": {"TITLE": "ASC"}},
    {"member_id": "m1", "order": {"ID": "ASC", "TITLE": "ASC"}},
    {"member_id": "m1", "order": "ID"},
    {"member_id": "m1", "order": {}},
    {"member_id": "m1", "limit": 0},
    {"member_id": "m1", "limit": MAX_LIMIT + 1},
    {"member_id": "m1", "limit": "10"},
    {"member_id": "m1", "limit": True},
    {"member_id": "m1", "limit": None},
    {"member_id": "m1", "cursor": 5},
    {"member_id": "m1", "cursor": ""},
    {"member_id": "m1", "cursor": "x" * 2000},
    {"member_id": "m1", "split": 0},
    {"member_id": "m1", "split": MAX_SPLIT + 1},
    {"member_id": "m1", "split": True},
    {"member_id": "m1", "split": "4"},
]


@pytest.mark.parametrize("payload", AGREEMENT)
def test_the_request_schema_agrees_with_the_function(payload: dict[str, Any]) -> None:
    assert REQUEST.is_valid(payload) == _accepted_by_the_function(payload)


def test_the_client_sends_requests_the_schema_accepts() -> None:
    lambda_client = FakeLambda([{"leads": [], "count": 0, "next_cursor": None}])
    b24connector_client.fetch_leads_page(
        domain="acme.bitrix24.com",
        select=["TITLE"],
        filter={"STATUS_ID": "NEW", ">ID": 10},
        limit=500,
        cursor="c1",
        split=4,
        lambda_client=lambda_client,
    )
    (sent,) = lambda_client.requests
    REQUEST.validate(sent["Payload"])


def test_answers_of_every_kind_match_the_answer_schema() -> None:
    # Given a reader over 120 leads with extra fields of Bitrix24's shapes
    rows = leads(120, PHONE=[{"VALUE": "+49 30 1234", "VALUE_TYPE": "WORK"}])  # type: ignore[arg-type]
    service, _, _ = reader(rows)

    # When pages, a last page, a split answer and each error are produced
    first = service.read(request(member_id="m1", limit=50)).answer()
    last = service.read(request(member_id="m1", limit=50, cursor=first["next_cursor"])).answer()
    split = service.read(request(member_id="m1", limit=10, split=3)).answer()
    errors = [LeadsRefusal(code, "why").answer() for code in _error_codes()]

    # Then every one of them is a valid answer
    for answer in [first, last, split, *errors]:
        ANSWER.validate(answer)
    assert "split_cursors" in split


def _error_codes() -> list[str]:
    return [
        leads_module.INVALID_REQUEST,
        leads_module.PORTAL_NOT_FOUND,
        leads_module.REAUTH_REQUIRED,
        leads_module.RATE_LIMITED,
        leads_module.UPSTREAM_ERROR,
    ]


def test_the_error_codes_are_the_function_s_and_the_client_s() -> None:
    documented = set(ANSWER.schema["$defs"]["error"]["properties"]["error"]["properties"]["code"]["enum"])
    assert documented == set(_error_codes())
    assert documented == set(b24connector_client._ERRORS)


@pytest.mark.parametrize(
    "answer",
    [
        {"leads": [], "count": 0},
        {"leads": [{"TITLE": "no id"}], "count": 1, "next_cursor": None},
        {"leads": [], "count": 0, "next_cursor": None, "extra": 1},
        {"error": {"code": "TEAPOT", "message": "x"}},
        {"error": {"code": "RATE_LIMITED"}},
        {"errorMessage": "Task timed out", "errorType": "Sandbox.Timedout"},
    ],
)
def test_the_answer_schema_refuses_what_is_not_an_answer(answer: dict[str, Any]) -> None:
    assert not ANSWER.is_valid(answer)
