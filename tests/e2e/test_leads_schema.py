"""Real LeadsFunction answers from the local stack against docs/leads-{request,answer}.schema.json."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import boto3
import jsonschema

from local_stack import LocalStack
from tests.e2e.helpers import admin, install_app
from tests.support.servers import REPO_ROOT

if TYPE_CHECKING:
    from mypy_boto3_lambda import LambdaClient

DOCS = REPO_ROOT / "docs"


def _validator(name: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((DOCS / f"leads-{name}.schema.json").read_text(encoding="utf-8"))
    return jsonschema.Draft202012Validator(schema)


def _invoke(client: LambdaClient, payload: dict[str, Any]) -> dict[str, Any]:
    response = client.invoke(FunctionName="LeadsFunction", Payload=json.dumps(payload).encode())
    assert "FunctionError" not in response
    answer: dict[str, Any] = json.loads(response["Payload"].read())
    return answer


def test_every_kind_of_answer_matches_the_published_schemas(stack: LocalStack) -> None:
    # Given an installed portal and the published schemas
    install_app(stack)
    seeded = admin(stack, "GET", "/leads")["count"]
    request_schema, answer_schema = _validator("request"), _validator("answer")
    client: LambdaClient = boto3.client(
        "lambda",
        endpoint_url=stack.lambda_endpoint_url,
        region_name=stack.aws_region,
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )
    member = {"member_id": stack.member_id}

    # When pages are read (first, following, split, all fields) and bad requests are sent
    valid_requests: list[dict[str, Any]] = [
        {**member, "select": ["ID", "TITLE", "STATUS_ID"], "limit": 300},
        {"domain": stack.portal_domain, "limit": 50, "filter": {">ID": 10}, "order": {"ID": "ASC"}},
        {**member, "select": ["ID", "TITLE"], "limit": 200, "split": 3},
        {**member, "limit": 2},
    ]
    answers = []
    for payload in valid_requests:
        request_schema.validate(payload)
        answers.append(_invoke(client, payload))
    following = {**valid_requests[0], "cursor": answers[0]["next_cursor"]}
    request_schema.validate(following)
    answers.append(_invoke(client, following))
    last = _invoke(client, {**member, "filter": {">ID": 10**12}})
    not_found = _invoke(client, {"domain": "unknown.bitrix24.com"})
    invalid_payloads: list[dict[str, Any]] = [
        {**member, "limit": 0},
        {**member, "bogus": True},
        {**member, "domain": stack.portal_domain},
    ]
    invalid = [_invoke(client, payload) for payload in invalid_payloads]

    # Then every answer is valid against the answer schema, with the shapes the schema describes
    for answer in [*answers, last, not_found, *invalid]:
        answer_schema.validate(answer)
    assert all(answer["count"] == len(answer["leads"]) for answer in [*answers, last])
    assert answers[0]["count"] == min(300, seeded)
    assert "split_cursors" in answers[2]
    assert "split_cursors" not in answers[0]
    assert last == {"leads": [], "count": 0, "next_cursor": None}
    assert not_found["error"]["code"] == "PORTAL_NOT_FOUND"
    # And what the function refuses, the request schema refuses too
    for payload, answer in zip(invalid_payloads, invalid, strict=True):
        assert answer["error"]["code"] == "INVALID_REQUEST"
        assert not request_schema.is_valid(payload)
