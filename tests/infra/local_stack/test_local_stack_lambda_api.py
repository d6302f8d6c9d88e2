"""The Lambda Invoke API: an unmodified boto3 Lambda client against the local functions."""

from __future__ import annotations

import base64
import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from local_stack import FunctionError, LocalStack


@pytest.fixture(scope="module")
def lambda_client(fake_stack: LocalStack) -> Any:
    return boto3.client(
        "lambda",
        endpoint_url=fake_stack.lambda_endpoint_url,
        region_name=fake_stack.aws_region,
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )


def _invoke(
    client: Any, payload: Any, name: str = "DirectFunction", **kwargs: Any
) -> tuple[dict[str, Any], Any]:
    answer = client.invoke(FunctionName=name, Payload=json.dumps(payload).encode(), **kwargs)
    return answer, json.loads(answer["Payload"].read())


def test_invoke_returns_the_result_with_a_lambda_context(lambda_client: Any, fake_stack: LocalStack) -> None:
    answer, result = _invoke(lambda_client, {"member_id": "m-1"})
    assert answer["StatusCode"] == 200
    assert "FunctionError" not in answer
    assert answer["ExecutedVersion"] == "$LATEST"
    assert result["echo"] == {"member_id": "m-1"}
    assert result["function_name"] == "DirectFunction"
    assert result["memory_limit_in_mb"] == 1024
    assert result["invoked_function_arn"].endswith(":function:DirectFunction")
    assert 0 < result["remaining_ms"] <= 2000  # the function's own Timeout (2 s)
    assert result["aws_request_id"] == answer["ResponseMetadata"]["RequestId"]
    env = result["env"]
    assert env["ONLY_HERE"] == "direct"  # the function's own variable, merged over Globals
    assert env["LOCAL_MODE"] == "true"
    assert env["AWS_ENDPOINT_URL"] == fake_stack.aws_endpoint_url
    assert env["AWS_LAMBDA_FUNCTION_NAME"] == "DirectFunction"
    assert env["TIER"] == "tin"
    assert env["JOINED"] == "a:test"
    assert env["SUBBED"] == "b24connector-local/test/b24connector-local-WorkQueue/${Literal}"
    assert env["KEY_ALIAS"] == "alias/b24connector-local-fake"
    assert env["FAKE_KEY_ARN"].startswith("arn:aws:kms:")
    assert env["WORK_QUEUE_URL"].startswith(fake_stack.aws_endpoint_url)
    assert "PYTEST_CURRENT_TEST" not in env  # the developer's environment does not leak in
    # /var/task is the CodeUri: only the function's code (and packages) on the path, not infra/
    assert result["sys_path"][0].endswith("fake_functions")
    assert not any(part.rstrip("/").endswith("infra") for part in result["sys_path"])


def test_full_arn_and_qualified_names_are_accepted(lambda_client: Any, fake_stack: LocalStack) -> None:
    arn = f"arn:aws:lambda:{fake_stack.aws_region}:123456789012:function:DirectFunction"
    for name in (arn, "DirectFunction:$LATEST", "123456789012:function:DirectFunction"):
        answer, result = _invoke(lambda_client, {"n": 1}, name=name)
        assert answer["StatusCode"] == 200
        assert result["echo"] == {"n": 1}


def test_unhandled_error_is_200_with_function_error(lambda_client: Any) -> None:
    answer, error = _invoke(lambda_client, {"raise": "portal unreachable"})
    assert answer["StatusCode"] == 200
    assert answer["FunctionError"] == "Unhandled"
    assert error["errorType"] == "LeadsUnavailableError"
    assert error["errorMessage"] == "portal unreachable"
    assert error["requestId"] == answer["ResponseMetadata"]["RequestId"]
    # As the Python runtime: frames of the handler only, not of our worker
    assert any("direct.py" in frame for frame in error["stackTrace"])
    assert not any("worker_main" in frame for frame in error["stackTrace"])


def test_unknown_function_is_resource_not_found(lambda_client: Any) -> None:
    with pytest.raises(ClientError) as caught:
        lambda_client.invoke(FunctionName="NoSuchFunction", Payload=b"{}")
    error = caught.value.response
    assert error["Error"]["Code"] == "ResourceNotFoundException"
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 404
    assert "NoSuchFunction" in error["Error"]["Message"]


def test_invalid_json_payload_is_rejected(lambda_client: Any) -> None:
    with pytest.raises(ClientError) as caught:
        lambda_client.invoke(FunctionName="DirectFunction", Payload=b"{not json")
    assert caught.value.response["Error"]["Code"] == "InvalidRequestContentException"


def test_event_invocation_is_accepted_with_202(lambda_client: Any) -> None:
    answer = lambda_client.invoke(FunctionName="DirectFunction", InvocationType="Event", Payload=b"{}")
    assert answer["StatusCode"] == 202
    dry = lambda_client.invoke(FunctionName="DirectFunction", InvocationType="DryRun", Payload=b"{}")
    assert dry["StatusCode"] == 204


def test_log_tail_carries_the_invocation_output(lambda_client: Any) -> None:
    answer, _ = _invoke(lambda_client, {"print": "hello from the handler"}, LogType="Tail")
    assert "hello from the handler" in base64.b64decode(answer["LogResult"]).decode()


def test_timeout_answers_sandbox_timedout_and_the_next_call_gets_a_fresh_worker(lambda_client: Any) -> None:
    answer, error = _invoke(lambda_client, {"sleep": 5})
    assert answer["FunctionError"] == "Unhandled"
    assert error["errorType"] == "Sandbox.Timedout"
    assert "Task timed out after 2.00 seconds" in error["errorMessage"]
    _, after = _invoke(lambda_client, {"ok": True})
    assert after["echo"] == {"ok": True}


def test_runtime_exit_answers_runtime_exit_error(lambda_client: Any) -> None:
    answer, error = _invoke(lambda_client, {"exit": 3})
    assert answer["FunctionError"] == "Unhandled"
    assert error["errorType"] == "Runtime.ExitError"
    assert "exit status 3" in error["errorMessage"]


def test_import_failure_answers_import_module_error(lambda_client: Any) -> None:
    answer, error = _invoke(lambda_client, {}, name="BrokenFunction")
    assert answer["FunctionError"] == "Unhandled"
    assert error["errorType"] == "Runtime.ImportModuleError"
    assert "not_a_module_that_exists" in error["errorMessage"]


def test_oversized_response_is_a_function_error(lambda_client: Any) -> None:
    answer, error = _invoke(lambda_client, {"big": 6_300_000})
    assert answer["FunctionError"] == "Unhandled"
    assert error["errorType"] == "Function.ResponseSizeTooLarge"


def test_warm_workers_keep_module_state_and_concurrent_calls_get_their_own(fake_stack: LocalStack) -> None:
    # Sequential calls reuse a warm worker: module state survives, as in a warm Lambda container
    first = fake_stack.invoke("DirectFunction", {})
    second = fake_stack.invoke("DirectFunction", {})
    assert second["pid"] == first["pid"]
    assert second["invocations"] == first["invocations"] + 1
    # Concurrent calls run in separate workers (the pool allows two per function here)
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda _: fake_stack.invoke("DirectFunction", {"sleep": 0.5}), range(2)))
    assert len({result["pid"] for result in results}) == 2


def test_python_api_raises_function_error(fake_stack: LocalStack) -> None:
    with pytest.raises(FunctionError) as caught:
        fake_stack.invoke("DirectFunction", {"raise": "nope"})
    assert caught.value.error_type == "LeadsUnavailableError"
    assert caught.value.error_message == "nope"
    outcome = fake_stack.invoke_raw("DirectFunction", {"raise": "nope"})
    assert outcome.function_error == "Unhandled"
