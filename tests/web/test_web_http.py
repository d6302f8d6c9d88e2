"""HTTP plumbing: payload 2.0 parsing, form bodies in any charset, cookies, and the problem mapping."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from b24connector.problems import forbidden, invalid, unavailable, upstream_rejected
from b24connector.web.errors import safe_traceback, serve
from b24connector.web.http import (
    HttpProblem,
    HttpRequest,
    HttpResponse,
    clear_cookie,
    nest_fields,
    set_cookie,
)
from tests.support.aws_events import form_post, http_event


class RecordingLogger:
    """Collects log calls so tests can check nothing secret was logged."""

    def __init__(self) -> None:
        self.records: list[tuple[str, object, dict[str, Any]]] = []

    def info(self, msg: object, *args: object, **kwargs: Any) -> None:
        self.records.append(("info", msg, kwargs))

    def warning(self, msg: object, *args: object, **kwargs: Any) -> None:
        self.records.append(("warning", msg, kwargs))

    def error(self, msg: object, *args: object, **kwargs: Any) -> None:
        self.records.append(("error", msg, kwargs))


def test_query_duplicates_are_kept_apart_from_the_raw_string() -> None:
    # Given API Gateway comma-joined a duplicated parameter in queryStringParameters
    event = http_event(
        "GET", "/authorize", query=[("domain", "a.bitrix24.com"), ("domain", "b.bitrix24.com")]
    )
    assert event["queryStringParameters"]["domain"] == "a.bitrix24.com,b.bitrix24.com"
    # When the request is parsed
    request = HttpRequest.from_event(event)
    # Then both values are seen, and asking for one of them is refused
    assert request.query.all("domain") == ["a.bitrix24.com", "b.bitrix24.com"]
    with pytest.raises(HttpProblem) as caught:
        request.query.one("domain")
    assert (caught.value.status, caught.value.reason) == (400, "domain_duplicate")


def test_identical_duplicates_are_tolerated() -> None:
    request = HttpRequest.from_event(http_event("GET", "/x", query=[("a", "1"), ("a", "1")]))
    assert request.query.one("a") == "1"


def test_invalid_utf8_in_the_query_is_a_400() -> None:
    with pytest.raises(HttpProblem) as caught:
        HttpRequest.from_event(http_event("GET", "/x", query="domain=%FF%FE"))
    assert (caught.value.status, caught.value.reason) == (400, "query_invalid_encoding")


def test_cookies_come_from_the_cookies_array() -> None:
    request = HttpRequest.from_event(http_event("GET", "/x", cookies=["a=1", "__Host-b24-oauth=nonce"]))
    assert request.cookie("__Host-b24-oauth") == "nonce"
    assert request.cookie("missing") is None


def test_two_different_values_of_one_cookie_are_refused() -> None:
    request = HttpRequest.from_event(http_event("GET", "/x", cookies=["n=1", "n=2"]))
    with pytest.raises(HttpProblem) as caught:
        request.cookie("n")
    assert caught.value.reason == "cookie_ambiguous"


def test_base64_form_body_in_utf8() -> None:
    event = form_post("/install", [("TITLE", "Zoë & Co"), ("auth[member_id]", "m1")])
    assert event["isBase64Encoded"] is True
    fields = HttpRequest.from_event(event).form()
    assert fields.one("TITLE") == "Zoë & Co"
    assert fields.nested() == {"TITLE": "Zoë & Co", "auth": {"member_id": "m1"}}


def test_form_body_in_windows_1251() -> None:
    # Given a portal that posts in windows-1251 and says so
    event = form_post("/events", [("data[NAME]", "Привет")], charset="windows-1251", encoding="cp1251")
    # When the form is read, Then the declared charset decodes it
    assert HttpRequest.from_event(event).form().nested() == {"data": {"NAME": "Привет"}}


def test_form_body_passed_as_text_is_read_too() -> None:
    event = http_event(
        "POST",
        "/events",
        headers={"content-type": "application/x-www-form-urlencoded"},
        body="event=ONAPPUNINSTALL&auth%5Bmember_id%5D=m",
        base64_body=False,
    )
    assert HttpRequest.from_event(event).form().nested() == {
        "event": "ONAPPUNINSTALL",
        "auth": {"member_id": "m"},
    }


@pytest.mark.parametrize(
    ("headers", "body", "status", "reason"),
    [
        ({"content-type": "application/json"}, b"{}", 415, "content_type_unsupported"),
        ({}, b"a=1", 415, "content_type_unsupported"),
        (
            {"content-type": "application/x-www-form-urlencoded; charset=klingon"},
            b"a=1",
            415,
            "charset_unsupported",
        ),
        (
            {"content-type": "application/x-www-form-urlencoded; charset=rot13"},
            b"a=1",
            415,
            "charset_unsupported",
        ),
        ({"content-type": "application/x-www-form-urlencoded"}, b"a=%FF%FE", 400, "body_invalid_encoding"),
        ({"content-type": "application/x-www-form-urlencoded"}, b"a=\xff\xfe", 400, "body_invalid_encoding"),
    ],
)
def test_bad_form_bodies_are_4xx(headers: dict[str, str], body: bytes, status: int, reason: str) -> None:
    request = HttpRequest.from_event(http_event("POST", "/install", headers=headers, body=body))
    with pytest.raises(HttpProblem) as caught:
        request.form()
    assert (caught.value.status, caught.value.reason) == (status, reason)


def test_too_many_fields_is_a_413() -> None:
    body = "&".join(f"f{i}=1" for i in range(600)).encode()
    request = HttpRequest.from_event(
        http_event(
            "POST", "/install", headers={"content-type": "application/x-www-form-urlencoded"}, body=body
        )
    )
    with pytest.raises(HttpProblem) as caught:
        request.form()
    assert caught.value.status == 413


def test_huge_body_is_refused_before_decoding() -> None:
    # Given a body near the 10 MB API Gateway limit
    event = http_event(
        "POST",
        "/install",
        headers={"content-type": "application/x-www-form-urlencoded"},
        body=b"a=" + b"x" * 9_000_000,
    )
    with pytest.raises(HttpProblem) as caught:
        HttpRequest.from_event(event)
    assert (caught.value.status, caught.value.reason) == (413, "body_too_large")


def test_body_that_is_not_base64_is_a_400() -> None:
    event = http_event(
        "POST", "/install", headers={"content-type": "application/x-www-form-urlencoded"}, body=b"a=1"
    )
    event["body"] = "!!!not base64!!!"
    with pytest.raises(HttpProblem) as caught:
        HttpRequest.from_event(event)
    assert caught.value.reason == "body_invalid_base64"


def test_nesting_builds_dicts_and_lists() -> None:
    nested = nest_fields([("a[b][c]", "1"), ("a[b][d]", "2"), ("l[]", "x"), ("l[]", "y"), ("plain", "p")])
    assert nested == {"a": {"b": {"c": "1", "d": "2"}}, "l": ["x", "y"], "plain": "p"}


@pytest.mark.parametrize(
    "pairs",
    [
        [("auth", "x"), ("auth[member_id]", "m")],
        [("auth[member_id]", "m"), ("auth", "x")],
        [("auth[member_id]", "m1"), ("auth[member_id]", "m2")],
        [("a[][b]", "1")],
        [("a[b][c][d][e][f]", "1")],
    ],
)
def test_conflicting_or_odd_bracket_keys_are_refused(pairs: list[tuple[str, str]]) -> None:
    with pytest.raises(HttpProblem) as caught:
        nest_fields(pairs)
    assert caught.value.status == 400


def test_malformed_bracket_keys_stay_literal() -> None:
    assert nest_fields([("a[b", "1"), ("[x]", "2")]) == {"a[b": "1", "[x]": "2"}


def test_cookie_attributes() -> None:
    assert (
        set_cookie("__Host-x", "v", max_age=600)
        == "__Host-x=v; Max-Age=600; Path=/; Secure; HttpOnly; SameSite=Lax"
    )
    assert clear_cookie("__Host-x").startswith("__Host-x=; Max-Age=0; Path=/; Secure; HttpOnly")


@pytest.mark.parametrize(
    ("problem", "status"),
    [
        (invalid("state_expired", "m"), 400),
        (forbidden("member_mismatch", "m"), 403),
        (upstream_rejected("bad_answer", "m"), 502),
        (unavailable("oauth_unavailable", "m"), 503),
        (HttpProblem(415, "content_type_unsupported", "m"), 415),
    ],
)
def test_problems_map_to_statuses_with_the_reason_code(problem: Exception, status: int) -> None:
    def handle(request: HttpRequest) -> HttpResponse:
        raise problem

    logger = RecordingLogger()
    answer = serve(
        http_event("GET", "/callback"), handle, logger=logger, cookies_on_problem=("c=; Max-Age=0",)
    )
    assert answer["statusCode"] == status
    assert answer["headers"]["X-Reason-Code"] == problem.reason  # type: ignore[attr-defined]
    assert problem.reason in answer["body"]  # type: ignore[attr-defined]
    assert answer["headers"]["Cache-Control"] == "no-store"
    assert answer["cookies"] == ["c=; Max-Age=0"]


def test_unexpected_errors_are_a_generic_500_without_internals() -> None:
    secret = "s3cr3t-refresh-token-value"

    def handle(request: HttpRequest) -> HttpResponse:
        raise RuntimeError(f"boom with {secret}")

    logger = RecordingLogger()
    answer = serve(http_event("GET", "/x"), handle, logger=logger, answer_as="json")
    assert answer["statusCode"] == 500
    assert json.loads(answer["body"])["error"]["code"] == "internal_error"
    assert secret not in answer["body"]
    assert "Traceback" not in answer["body"]
    # The log names the error type and where it happened, never its message
    assert secret not in repr(logger.records)
    level, _, kwargs = logger.records[-1]
    assert level == "error"
    assert kwargs["extra"]["error_types"] == ["RuntimeError"]
    assert any("handle" in frame for frame in kwargs["extra"]["frames"])


def test_parse_failures_go_through_the_same_mapping() -> None:
    event = http_event("GET", "/x", query="a=%FF")
    answer = serve(event, lambda request: HttpResponse(200), logger=RecordingLogger())
    assert answer["statusCode"] == 400
    assert answer["headers"]["Content-Type"].startswith("text/html")


def test_safe_traceback_follows_the_cause_chain() -> None:
    try:
        try:
            raise KeyError("token-value")
        except KeyError as inner:
            raise ValueError("other") from inner
    except ValueError as exc:
        summary = safe_traceback(exc)
    assert summary["error_types"] == ["ValueError", "KeyError"]
    assert "token-value" not in repr(summary)


def test_response_shape_is_payload_2() -> None:
    answer = HttpResponse(302, "", {"Location": "https://x"}, ["a=b"]).to_event()
    assert answer == {
        "statusCode": 302,
        "headers": {"Location": "https://x"},
        "body": "",
        "isBase64Encoded": False,
        "cookies": ["a=b"],
    }


def test_base64_decoding_matches_what_was_sent() -> None:
    raw = b"x=" + bytes(range(0x30, 0x3A))
    event = http_event("POST", "/x", headers={"content-type": "application/x-www-form-urlencoded"}, body=raw)
    assert base64.b64decode(event["body"]) == raw
    assert HttpRequest.from_event(event).body == raw


def test_install_page_policy_trusts_only_the_nonce_and_the_library_origin() -> None:
    from b24connector.web.pages import install_finish_page

    page = install_finish_page("http://127.0.0.1:8123/bx24.js", "acme.bitrix24.com")
    csp = page.headers["Content-Security-Policy"]
    nonce = csp.split("'nonce-", 1)[1].split("'", 1)[0]
    assert f'<script nonce="{nonce}" src="http://127.0.0.1:8123/bx24.js">' in page.body
    assert "connect-src 'self' https: http://127.0.0.1:8123;" in csp
    assert "object-src 'none'" in csp
    assert "frame-ancestors" not in csp  # Bitrix24 frames this page
    default = install_finish_page("//api.bitrix24.com/api/v1/", "acme.bitrix24.com").headers[
        "Content-Security-Policy"
    ]
    assert "connect-src 'self' https:;" in default
    assert (
        install_finish_page("//x", "p").headers["Content-Security-Policy"] != default
    )  # a fresh nonce each time


def test_pages_escape_what_they_show() -> None:
    from b24connector.web.pages import connected_page, problem_page

    assert "<b>" not in connected_page("<b>x</b>").body
    page = problem_page(400, "r<1>", "m&<script>", request_id="id\"'")
    assert "<script>" not in page.body
    assert "r&lt;1&gt;" in page.body
