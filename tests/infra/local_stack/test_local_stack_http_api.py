"""The HttpApi front: payload-2.0 events in, API Gateway answers out (over real HTTP)."""

from __future__ import annotations

import base64
import http.client
import json
from typing import Any
from urllib.parse import urlsplit

import requests

from local_stack import LocalStack


def _raw_request(
    stack: LocalStack, method: str, path: str, headers: list[tuple[str, str]], body: bytes = b""
) -> tuple[int, list[tuple[str, str]], bytes]:
    netloc = urlsplit(stack.api_url)
    connection = http.client.HTTPConnection(netloc.hostname, netloc.port, timeout=10)
    try:
        connection.putrequest(method, path, skip_accept_encoding=True)
        for name, value in headers:
            connection.putheader(name, value)
        if body:
            connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body or None)
        response = connection.getresponse()
        return response.status, response.getheaders(), response.read()
    finally:
        connection.close()


def _echoed(body: bytes) -> dict[str, Any]:
    return json.loads(body)["event"]


def test_get_event_has_the_payload_v2_shape(fake_stack: LocalStack) -> None:
    # Given a GET with duplicate query parameters, cookies and a repeated header
    status, _, body = _raw_request(
        fake_stack,
        "GET",
        "/echo?b=1&a=x%20y&b=2&empty=",
        [
            ("Cookie", "s1=v1; s2=v2"),
            ("Cookie", "s3=v3"),
            ("X-Trace-Me", "one"),
            ("X-Trace-Me", "two"),
            ("User-Agent", "pytest-agent"),
        ],
    )
    # Then the handler sees API Gateway's payload format 2.0
    assert status == 200
    event = _echoed(body)
    assert event["version"] == "2.0"
    assert event["routeKey"] == "GET /echo"
    assert event["rawPath"] == "/echo"
    assert event["rawQueryString"] == "b=1&a=x%20y&b=2&empty="
    assert event["queryStringParameters"] == {"b": "1,2", "a": "x y", "empty": ""}
    assert event["cookies"] == ["s1=v1", "s2=v2", "s3=v3"]
    assert "cookie" not in event["headers"]
    assert event["headers"]["x-trace-me"] == "one,two"
    assert event["headers"]["user-agent"] == "pytest-agent"
    assert all(name == name.lower() for name in event["headers"])
    assert event["headers"]["x-forwarded-proto"] == "http"
    assert event["isBase64Encoded"] is False
    assert "body" not in event
    assert "pathParameters" not in event
    context = event["requestContext"]
    assert context["stage"] == "$default"
    assert context["routeKey"] == "GET /echo"
    assert context["http"] == {
        "method": "GET",
        "path": "/echo",
        "protocol": "HTTP/1.1",
        "sourceIp": "127.0.0.1",
        "userAgent": "pytest-agent",
    }
    assert context["requestId"]
    assert isinstance(context["timeEpoch"], int)
    assert context["time"].endswith("+0000")
    assert context["domainName"] == urlsplit(fake_stack.api_url).netloc


def test_form_post_body_arrives_base64_encoded(fake_stack: LocalStack) -> None:
    # Given a form post (Bitrix24's install page and events arrive like this)
    form = "DOMAIN=portal.example&AUTH_ID=a%2Bb&event=ONAPPINSTALL"
    response = requests.post(
        f"{fake_stack.api_url}/echo",
        data=form,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        timeout=10,
    )
    # Then, as HttpApi does for non-text types, the body is base64 with isBase64Encoded
    event = response.json()["event"]
    assert event["isBase64Encoded"] is True
    assert base64.b64decode(event["body"]).decode() == form
    assert event["headers"]["content-type"] == "application/x-www-form-urlencoded"


def test_json_and_text_bodies_arrive_as_text(fake_stack: LocalStack) -> None:
    for content_type, payload in (
        ("application/json; charset=utf-8", '{"k": "v"}'),
        ("text/plain", "hi there"),
    ):
        response = requests.post(
            f"{fake_stack.api_url}/echo",
            data=payload.encode(),
            headers={"Content-Type": content_type},
            timeout=10,
        )
        event = response.json()["event"]
        assert event["isBase64Encoded"] is False
        assert event["body"] == payload


def test_body_without_content_type_is_base64(fake_stack: LocalStack) -> None:
    status, _, body = _raw_request(fake_stack, "POST", "/echo", [], b"\x00\x01raw")
    event = _echoed(body)
    assert status == 200
    assert event["isBase64Encoded"] is True
    assert base64.b64decode(event["body"]) == b"\x00\x01raw"


def test_path_parameters_and_greedy_routes(fake_stack: LocalStack) -> None:
    item = requests.delete(f"{fake_stack.api_url}/items/42", timeout=10).json()["event"]
    assert item["routeKey"] == "ANY /items/{id}"
    assert item["pathParameters"] == {"id": "42"}
    files = requests.get(f"{fake_stack.api_url}/files/a/b/c.txt", timeout=10).json()["event"]
    assert files["routeKey"] == "GET /files/{proxy+}"
    assert files["pathParameters"] == {"proxy": "a/b/c.txt"}


def test_redirect_with_cookies_becomes_302_and_set_cookie_lines(fake_stack: LocalStack) -> None:
    status, headers, body = _raw_request(fake_stack, "GET", "/shaped?case=redirect", [])
    assert status == 302
    assert body == b""
    assert ("Location", "https://example.invalid/next?x=1") in headers
    assert ("Cache-Control", "no-store") in headers
    set_cookies = [value for name, value in headers if name.lower() == "set-cookie"]
    assert set_cookies == ["a=1; Path=/; HttpOnly", "__Host-b24-oauth=xyz; Secure; Path=/; SameSite=Lax"]


def test_base64_response_body_is_decoded(fake_stack: LocalStack) -> None:
    response = requests.get(f"{fake_stack.api_url}/shaped", params={"case": "binary"}, timeout=10)
    assert response.status_code == 201
    assert response.content == bytes(range(256))
    assert response.headers["content-type"] == "application/octet-stream"


def test_status_and_header_values_pass_through(fake_stack: LocalStack) -> None:
    response = requests.get(f"{fake_stack.api_url}/shaped", params={"case": "teapot"}, timeout=10)
    assert response.status_code == 418
    assert response.text == "short and stout"
    assert response.headers["X-Count"] == "3"
    assert response.headers["apigw-requestid"]


def test_results_without_status_code_are_inferred_as_json(fake_stack: LocalStack) -> None:
    plain = requests.get(f"{fake_stack.api_url}/shaped", params={"case": "string"}, timeout=10)
    assert plain.status_code == 200
    assert plain.headers["content-type"] == "application/json"
    assert plain.text == "plain words"
    mapping = requests.get(f"{fake_stack.api_url}/shaped", params={"case": "dict"}, timeout=10)
    assert mapping.status_code == 200
    assert mapping.json() == {"hello": "world"}


def test_multi_value_headers_are_ignored_as_in_format_2(fake_stack: LocalStack) -> None:
    response = requests.get(f"{fake_stack.api_url}/shaped", params={"case": "multi"}, timeout=10)
    assert response.status_code == 200
    assert "X-Multi" not in response.headers


def test_unknown_route_and_wrong_method_are_404_not_found(fake_stack: LocalStack) -> None:
    for method, path in (("GET", "/nowhere"), ("POST", "/shaped"), ("GET", "/items")):
        response = requests.request(method, f"{fake_stack.api_url}{path}", timeout=10)
        assert response.status_code == 404, path
        assert response.json() == {"message": "Not Found"}
        assert response.headers["content-type"] == "application/json"


def test_handler_exception_is_a_bare_500(fake_stack: LocalStack) -> None:
    # Given a handler that raises with a token in a local variable
    response = requests.get(f"{fake_stack.api_url}/shaped", params={"case": "boom"}, timeout=10)
    # Then the client sees API Gateway's generic 500 and nothing of the failure
    assert response.status_code == 500
    assert response.json() == {"message": "Internal Server Error"}
    assert "Traceback" not in response.text
    assert "SECRET" not in response.text
    assert "upstream" not in response.text


def test_malformed_answer_is_a_500(fake_stack: LocalStack) -> None:
    response = requests.get(f"{fake_stack.api_url}/shaped", params={"case": "malformed"}, timeout=10)
    assert response.status_code == 500
    assert response.json() == {"message": "Internal Server Error"}


def test_bodies_over_10_mb_are_refused(fake_stack: LocalStack) -> None:
    response = requests.post(
        f"{fake_stack.api_url}/echo",
        data=b"x" * (10 * 1024 * 1024 + 1),
        headers={"Content-Type": "text/plain"},
        timeout=30,
    )
    assert response.status_code == 413
    assert response.json() == {"message": "Request Entity Too Large"}


def test_function_environment_comes_from_the_template_with_local_overrides(fake_stack: LocalStack) -> None:
    env = requests.get(f"{fake_stack.api_url}/echo", timeout=10).json()["env"]
    assert env["LOCAL_MODE"] == "true"  # the template says "false"; the local stack overrides it
    assert env["APP_ENV"] == "test"
    assert env["FAKE_TABLE"] == fake_stack.running_info().tables["FakeTable"]
    assert env["AWS_ENDPOINT_URL"] == fake_stack.aws_endpoint_url
