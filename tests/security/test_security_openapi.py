"""schemathesis against docs/openapi.yaml and the local stack's HttpApi front (the real template, the
functions in worker processes, moto and the emulator): no 5xx, and every status code, content type and
header the routes answer is documented."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    status_code_conformance,
)

from local_stack import LocalStack, StackConfig
from tests.support.servers import REPO_ROOT

OPENAPI = REPO_ROOT / "docs" / "openapi.yaml"
EXAMPLES_PER_OPERATION = {GenerationMode.POSITIVE: 60, GenerationMode.NEGATIVE: 40}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance]
RUNS: dict[str, int] = {}


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    """The local stack on ephemeral ports (functions in their own worker processes)."""
    with LocalStack(StackConfig(leads=50, emulator_settings={"rate_plan": "off"})) as running:
        yield running


def _operations() -> list[str]:
    schema = schemathesis.openapi.from_path(OPENAPI)
    return [result.ok().label for result in schema.get_all_operations()]


def test_the_document_describes_the_four_routes() -> None:
    assert sorted(_operations()) == ["GET /authorize", "GET /callback", "POST /events", "POST /install"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["positive", "negative"]
)
@pytest.mark.parametrize("label", ["GET /authorize", "GET /callback", "POST /install", "POST /events"])
def test_the_api_conforms_to_its_document(stack: LocalStack, label: str, mode: GenerationMode) -> None:
    schema = schemathesis.openapi.from_path(OPENAPI)
    operation = schema[label.split(" ", 1)[1]][label.split(" ", 1)[0]]
    session = requests.Session()
    key = f"{label} {mode.value}"
    RUNS[key] = 0

    @settings(
        max_examples=EXAMPLES_PER_OPERATION[mode],
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def check(case: Any) -> None:
        RUNS[key] += 1
        response = case.call(base_url=stack.api_url, session=session, allow_redirects=False, timeout=30)
        case.validate_response(response, checks=CHECKS)

    check()
    print(f"schemathesis {key}: {RUNS[key]} cases")
    assert RUNS[key] >= 5
