"""Portal address validation: a table of hostile and valid inputs, plus REST endpoint checks."""

from __future__ import annotations

import pytest

from b24connector.portals import InvalidPortal, PortalPolicy, is_loopback_host
from b24connector.settings import DEFAULT_PORTAL_SUFFIXES, load_settings
from tests.support.servers import REPO_ROOT

SELF_HOSTED = ("crm.example.org", "intranet.example.com:8443")


@pytest.fixture
def policy() -> PortalPolicy:
    return PortalPolicy(DEFAULT_PORTAL_SUFFIXES, SELF_HOSTED)


@pytest.fixture
def local_policy() -> PortalPolicy:
    return PortalPolicy(DEFAULT_PORTAL_SUFFIXES, ("127.0.0.1:18080", "localhost:9000"), local_mode=True)


VALID = [
    ("acme.bitrix24.com", "acme.bitrix24.com"),
    ("ACME.Bitrix24.COM", "acme.bitrix24.com"),
    ("acme-1.bitrix24.de", "acme-1.bitrix24.de"),
    ("a.bitrix24.eu", "a.bitrix24.eu"),
    ("123.bitrix24.com", "123.bitrix24.com"),
    ("acme.bitrix24.com.br", "acme.bitrix24.com.br"),
    ("acme.bitrix24.com.tr", "acme.bitrix24.com.tr"),
    ("acme.bitrix24.co", "acme.bitrix24.co"),
    ("https://acme.bitrix24.com", "acme.bitrix24.com"),
    ("https://acme.bitrix24.com/", "acme.bitrix24.com"),
    ("HTTPS://acme.bitrix24.ru/", "acme.bitrix24.ru"),
    ("acme.bitrix24.com/", "acme.bitrix24.com"),
    ("crm.example.org", "crm.example.org"),
    ("CRM.Example.Org", "crm.example.org"),
    ("intranet.example.com:8443", "intranet.example.com:8443"),
    ("https://intranet.example.com:8443/", "intranet.example.com:8443"),
    ("x" * 63 + ".bitrix24.com", "x" * 63 + ".bitrix24.com"),
]

HOSTILE = [
    ("", "empty"),
    ("bitrix24.com", "bare_suffix"),
    ("bitrix24.com.br", "bare_suffix"),
    (".bitrix24.com", "empty_label"),
    ("acme.bitrix24.com.", "trailing_dot"),
    ("acme..bitrix24.com", "empty_label"),
    ("bitrix24.com.evil.com", "not_allowed"),
    ("acmebitrix24.com", "not_allowed"),
    ("evil.com", "not_allowed"),
    ("evil.com/.bitrix24.com", "path"),
    ("evil.com?.bitrix24.com", "query"),
    ("evil.com#.bitrix24.com", "fragment"),
    ("evil.com\\.bitrix24.com", "backslash"),
    ("acme.bitrix24.com@evil.com", "userinfo"),
    ("user:pass@acme.bitrix24.com", "userinfo"),
    ("a@b", "userinfo"),
    ("acme.bitrix24.com:443", "port"),
    ("acme.bitrix24.com:8080", "port"),
    ("crm.example.org:8080", "port"),
    ("intranet.example.com", "not_allowed"),  # listed only with its port
    ("intranet.example.com:08443", "port"),
    ("acme.bitrix24.com:", "port"),
    ("acme.bitrix24.com:99999", "port"),
    ("127.0.0.1", "ip_literal"),
    ("127.0.0.1:18080", "ip_literal"),  # loopback needs local mode
    ("2130706433", "ip_literal"),
    ("0x7f.1", "ip_literal"),
    ("0177.0.0.1", "ip_literal"),
    ("127.1", "ip_literal"),
    ("10.0.0.1.bitrix24.com.0x1", "ip_literal"),
    ("[::1]", "ip_literal"),
    ("::1", "ip_literal"),
    ("[::ffff:127.0.0.1]:80", "ip_literal"),
    ("acme%2ebitrix24.com", "percent_encoding"),
    ("acme.bitrix24.com%00", "percent_encoding"),
    ("%61cme.bitrix24.com", "percent_encoding"),
    ("acme.bitrix24.com\r\nX-Injected: 1", "control_char"),
    ("acme.bitrix24.com\n", "control_char"),
    (" acme.bitrix24.com", "control_char"),
    ("acme .bitrix24.com", "control_char"),
    ("acme.bitrix24.com\t", "control_char"),
    ("acme.bitrix24.com\x00", "control_char"),
    ("acme.bitrix24.com\x7f", "control_char"),
    ("\u0430cme.bitrix24.com", "non_ascii"),  # Cyrillic a
    ("acme.bitrix24.c\u043em", "non_ascii"),  # Cyrillic o in the suffix
    ("acme.bitrix24.com\u200b", "non_ascii"),
    ("acme\uff0ebitrix24.com", "non_ascii"),  # fullwidth full stop
    ("xn--80ak6aa92e.bitrix24.com", "punycode"),
    ("xn--acme-xyz.bitrix24.com", "punycode"),
    ("-acme.bitrix24.com", "bad_label"),
    ("acme-.bitrix24.com", "bad_label"),
    ("ac_me.bitrix24.com", "bad_label"),
    ("a.b.bitrix24.com", "not_allowed"),
    ("x" * 64 + ".bitrix24.com", "label_too_long"),
    (".".join(["a" * 60] * 5) + ".bitrix24.com", "too_long"),
    ("a" * 400, "too_long"),
    ("http://acme.bitrix24.com", "scheme"),
    ("ftp://acme.bitrix24.com", "scheme"),
    ("javascript://acme.bitrix24.com", "scheme"),
    ("//acme.bitrix24.com", "path"),
    ("https://acme.bitrix24.com/rest/", "path"),
    ("https://acme.bitrix24.com//", "path"),
    ("https://https://acme.bitrix24.com", "path"),
]


@pytest.mark.parametrize(("raw", "expected"), VALID)
def test_valid_portals_normalize_to_a_canonical_host(policy: PortalPolicy, raw: str, expected: str) -> None:
    # Given an allowed portal address in one of the accepted spellings
    # When it is normalized
    # Then the canonical lowercase host[:port] comes back
    assert policy.normalize(raw) == expected


@pytest.mark.parametrize(("raw", "reason"), HOSTILE)
def test_hostile_portals_are_rejected_with_a_reason(policy: PortalPolicy, raw: str, reason: str) -> None:
    with pytest.raises(InvalidPortal) as caught:
        policy.normalize(raw)
    assert caught.value.reason == reason


def test_the_table_is_large_enough() -> None:
    assert len(VALID) + len(HOSTILE) >= 40


@pytest.mark.parametrize("raw", [r for r, _ in HOSTILE if r])
def test_rejections_never_echo_the_input(policy: PortalPolicy, raw: str) -> None:
    with pytest.raises(InvalidPortal) as caught:
        policy.normalize(raw)
    assert raw not in str(caught.value)


def test_non_string_input_is_rejected(policy: PortalPolicy) -> None:
    with pytest.raises(InvalidPortal):
        policy.normalize(None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("127.0.0.1:18080", "127.0.0.1:18080"),
        ("http://127.0.0.1:18080/", "127.0.0.1:18080"),
        ("localhost:9000", "localhost:9000"),
        ("acme.bitrix24.com", "acme.bitrix24.com"),
    ],
)
def test_local_mode_allows_listed_loopback_hosts(local_policy: PortalPolicy, raw: str, expected: str) -> None:
    assert local_policy.normalize(raw) == expected


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("127.0.0.1:18081", "ip_literal"),  # not the listed port
        ("127.0.0.1", "ip_literal"),
        ("127.0.0.2:18080", "ip_literal"),
        ("localhost:9001", "port"),
        ("localhost", "not_allowed"),
        ("2130706433:18080", "ip_literal"),
    ],
)
def test_local_mode_allows_nothing_else(local_policy: PortalPolicy, raw: str, reason: str) -> None:
    with pytest.raises(InvalidPortal) as caught:
        local_policy.normalize(raw)
    assert caught.value.reason == reason


def test_loopback_hosts_in_the_allow_list_need_local_mode() -> None:
    with pytest.raises(ValueError, match="local mode"):
        PortalPolicy(DEFAULT_PORTAL_SUFFIXES, ("127.0.0.1:18080",))


@pytest.mark.parametrize("entry", ["10.0.0.1", "0x7f.1", "bad host", "a@b.example", "xn--80ak6aa92e.com"])
def test_bad_allow_list_entries_fail_at_construction(entry: str) -> None:
    with pytest.raises(ValueError, match="invalid allowed portal host"):
        PortalPolicy((), (entry,))


@pytest.mark.parametrize("suffix", ["bitrix24.com", ".com", ".bitrix24..com", ".xn--p1ai.bitrix24"])
def test_bad_suffixes_fail_at_construction(suffix: str) -> None:
    with pytest.raises(ValueError, match="suffix"):
        PortalPolicy((suffix,))


def test_a_policy_needs_something_to_allow() -> None:
    with pytest.raises(ValueError, match="at least one"):
        PortalPolicy((), ())


def test_more_specific_suffix_wins() -> None:
    # Given both ".bitrix24.co" style suffixes and a nested one
    policy = PortalPolicy((".example.com", ".crm.example.com"))
    # Then one label under the longer suffix is accepted, deeper nesting is not
    assert policy.normalize("acme.crm.example.com") == "acme.crm.example.com"
    with pytest.raises(InvalidPortal):
        policy.normalize("a.b.crm.example.com")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://acme.bitrix24.com/rest/", "https://acme.bitrix24.com/rest/"),
        ("HTTPS://ACME.bitrix24.com/rest/", "https://acme.bitrix24.com/rest/"),
        ("https://intranet.example.com:8443/rest/", "https://intranet.example.com:8443/rest/"),
    ],
)
def test_client_endpoints_on_allowed_portals_pass(policy: PortalPolicy, url: str, expected: str) -> None:
    assert policy.check_client_endpoint(url) == expected


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://acme.bitrix24.com/rest/", "scheme"),
        ("ftp://acme.bitrix24.com/rest/", "scheme"),
        ("acme.bitrix24.com/rest/", "scheme"),
        ("https://acme.bitrix24.com/", "path"),
        ("https://acme.bitrix24.com/rest", "path"),
        ("https://acme.bitrix24.com/api/rest/", "path"),
        ("https://acme.bitrix24.com/rest/?x=/rest/", "path"),
        ("https://evil.com/rest/", "not_allowed"),
        ("https://evil.com#@acme.bitrix24.com/rest/", "userinfo"),
        ("https://acme.bitrix24.com@evil.com/rest/", "userinfo"),
        ("https://https://acme.bitrix24.com/rest/", "path"),
        ("https://acme.bitrix24.com%2f@evil.com/rest/", "percent_encoding"),
        ("https://127.0.0.1/rest/", "ip_literal"),
        ("https://acme.bitrix24.com\\@evil.com/rest/", "backslash"),
    ],
)
def test_bad_client_endpoints_are_rejected(policy: PortalPolicy, url: str, reason: str) -> None:
    with pytest.raises(InvalidPortal) as caught:
        policy.check_client_endpoint(url)
    assert caught.value.reason == reason


def test_client_endpoint_must_be_on_the_expected_portal(policy: PortalPolicy) -> None:
    assert (
        policy.check_client_endpoint("https://acme.bitrix24.com/rest/", "ACME.bitrix24.com")
        == "https://acme.bitrix24.com/rest/"
    )
    with pytest.raises(InvalidPortal) as caught:
        policy.check_client_endpoint("https://other.bitrix24.com/rest/", "acme.bitrix24.com")
    assert caught.value.reason == "host_mismatch"


def test_http_endpoints_only_for_loopback_in_local_mode(local_policy: PortalPolicy) -> None:
    assert (
        local_policy.check_client_endpoint("http://127.0.0.1:18080/rest/") == "http://127.0.0.1:18080/rest/"
    )
    with pytest.raises(InvalidPortal) as caught:
        local_policy.check_client_endpoint("http://acme.bitrix24.com/rest/")
    assert caught.value.reason == "scheme"


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.1:80", True),
        ("127.255.0.9", True),
        ("localhost:1", True),
        ("128.0.0.1", False),
        ("0177.0.0.1", False),
        ("127.0.0.256", False),
        ("example.com", False),
    ],
)
def test_loopback_detection(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


def test_policy_from_settings() -> None:
    env = {
        "BITRIX24_CLIENT_ID": "local.x.y",
        "CLIENT_SECRET_ID": "s",
        "CURSOR_SECRET_ID": "c",
        "PORTALS_TABLE": "p",
        "STATES_TABLE": "s",
        "RATE_LIMIT_TABLE": "r",
        "TOKEN_KEY_ID": "k",
        "REFRESH_QUEUE_URL": "q",
        "RESCUE_QUEUE_URL": "r",
        "LIFECYCLE_QUEUE_URL": "l",
        "ALLOWED_PORTAL_HOSTS": "crm.example.org,127.0.0.1:5000",
        "LOCAL_MODE": "true",
    }
    policy = PortalPolicy.from_settings(load_settings(env))
    assert policy.local_mode is True
    assert policy.normalize("acme.bitrix24.kz") == "acme.bitrix24.kz"
    assert policy.normalize("127.0.0.1:5000") == "127.0.0.1:5000"
    assert "crm.example.org" in repr(policy)


def _documented_zones() -> set[str]:
    """The account zones docs/bitrix24-facts.md#f-host-7 lists (the `.bitrix24.xx` of its zone table)."""
    import re

    facts = (REPO_ROOT / "docs" / "bitrix24-facts.md").read_text(encoding="utf-8")
    entry = facts.partition("### F-HOST-7")[2].partition("\n### ")[0]
    return set(re.findall(r"`(\.bitrix24\.[a-z.]+)`", entry))


def test_every_default_suffix_is_a_documented_account_zone() -> None:
    # Issue 12 point 7: a suffix nobody checked let `.bitrix24.site` (published landing pages) in.
    zones = _documented_zones()
    assert zones, "docs/bitrix24-facts.md has no F-HOST-7 zone list"
    assert set(DEFAULT_PORTAL_SUFFIXES) <= zones, set(DEFAULT_PORTAL_SUFFIXES) - zones
    assert ".bitrix24.site" not in zones


@pytest.mark.parametrize(
    "raw", ["anything.bitrix24.site", "https://vilka.bitrix24.site/", "cdn.bitrix24.site"]
)
def test_published_bitrix24_sites_are_not_portals(raw: str) -> None:
    policy = PortalPolicy.from_settings(load_settings(_ENV_FOR_DEFAULTS))
    with pytest.raises(InvalidPortal):
        policy.normalize(raw)


_ENV_FOR_DEFAULTS = {
    "BITRIX24_CLIENT_ID": "local.x",
    "CLIENT_SECRET_ID": "s",
    "CURSOR_SECRET_ID": "c",
    "PORTALS_TABLE": "p",
    "STATES_TABLE": "st",
    "RATE_LIMIT_TABLE": "r",
    "TOKEN_KEY_ID": "k",
    "REFRESH_QUEUE_URL": "q",
    "RESCUE_QUEUE_URL": "rq",
    "LIFECYCLE_QUEUE_URL": "lq",
}
