"""Which portal hosts we talk to: strict validation of user-supplied portal addresses and REST endpoints.

Accepted input forms (documented choice): a bare host (``acme.bitrix24.com``), optionally prefixed by
``https://`` (``http://`` too in local mode) and optionally followed by one ``/``. Everything else that
could make two parsers disagree about the host is rejected: userinfo, paths, queries, fragments,
backslashes, percent-encoding, whitespace and control characters, non-ASCII and punycode labels, IP
literals in any notation, trailing dots and ports that were not allow-listed explicitly.

Cloud portals match one allow-listed suffix with exactly one label in front (``acme`` + ``.bitrix24.com``);
self-hosted portals are allowed only by explicit ``host`` or ``host:port`` entries.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from b24connector.settings import Settings

MAX_HOST_LENGTH = 253
MAX_LABEL_LENGTH = 63
_MAX_INPUT_LENGTH = 300  # host + port + scheme + slash, with headroom; longer input is rejected unread

_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\Z")
_PORT = re.compile(r"[1-9][0-9]{0,4}\Z")
# inet_aton accepts decimal, octal (leading 0) and hex (0x) parts, so any such label looks like an IP part.
_NUMERIC_PART = re.compile(r"(?:0x[0-9a-f]*|[0-9]+)\Z")
_DOTTED_QUAD = re.compile(r"(?:0|[1-9][0-9]{0,2})(?:\.(?:0|[1-9][0-9]{0,2})){3}\Z")
_LOOPBACK_NAMES = frozenset({"localhost"})
_REST_PATH = "/rest/"


class InvalidPortal(ValueError):
    """A portal address failed validation; `reason` is a short machine code, the input is never echoed."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"invalid portal address ({reason})")


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and canonical dotted-quad addresses in 127.0.0.0/8 (port stripped)."""
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    if name in _LOOPBACK_NAMES:
        return True
    if not _DOTTED_QUAD.match(name):
        return False
    parts = [int(p) for p in name.split(".")]
    return parts[0] == 127 and all(p <= 255 for p in parts)


def _looks_like_ip(labels: list[str]) -> bool:
    # WHATWG URL parsers treat a host whose last label is numeric as IPv4 (2130706433, 0x7f.1, 127.1).
    return bool(_NUMERIC_PART.match(labels[-1]))


def _split_scheme(raw: str, *, local_mode: bool) -> str:
    if "://" not in raw:
        return raw
    scheme, _, rest = raw.partition("://")
    allowed = {"https", "http"} if local_mode else {"https"}
    if scheme.lower() not in allowed:
        raise InvalidPortal("scheme")
    return rest


def _check_characters(raw: str) -> None:
    if not raw:
        raise InvalidPortal("empty")
    if len(raw) > _MAX_INPUT_LENGTH:
        raise InvalidPortal("too_long")
    if not raw.isascii():
        raise InvalidPortal("non_ascii")
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in raw):
        raise InvalidPortal("control_char")
    if "\\" in raw:
        raise InvalidPortal("backslash")
    if "%" in raw:
        raise InvalidPortal("percent_encoding")


def _split_host_port(authority: str) -> tuple[str, str | None]:
    for char, reason in (("@", "userinfo"), ("/", "path"), ("?", "query"), ("#", "fragment")):
        if char in authority:
            raise InvalidPortal(reason)
    if "[" in authority or "]" in authority or authority.count(":") > 1:
        raise InvalidPortal("ip_literal")  # IPv6 in brackets or bare
    if ":" not in authority:
        return authority, None
    host, _, port = authority.partition(":")
    if not _PORT.match(port) or int(port) > 65535:
        raise InvalidPortal("port")
    return host, port


def _check_host_syntax(host: str) -> list[str]:
    if not host:
        raise InvalidPortal("empty")
    if len(host) > MAX_HOST_LENGTH:
        raise InvalidPortal("too_long")
    if host.endswith("."):
        raise InvalidPortal("trailing_dot")
    labels = host.split(".")
    for label in labels:
        if not label:
            raise InvalidPortal("empty_label")
        if len(label) > MAX_LABEL_LENGTH:
            raise InvalidPortal("label_too_long")
        if not _LABEL.match(label):
            raise InvalidPortal("bad_label")
        if label.startswith("xn--"):
            raise InvalidPortal("punycode")
    return labels


class PortalPolicy:
    """The allow-list of portal hosts: cloud suffixes plus explicit self-hosted ``host[:port]`` entries."""

    def __init__(
        self, suffixes: Iterable[str] = (), hosts: Iterable[str] = (), *, local_mode: bool = False
    ) -> None:
        self.local_mode = local_mode
        # Longest first, so a more specific suffix (".bitrix24.com.br") wins over a shorter one.
        self.suffixes = tuple(
            sorted({self._canonical_suffix(s) for s in suffixes}, key=lambda s: (-len(s), s))
        )
        self.hosts = frozenset(self._canonical_host(h) for h in hosts)
        if not self.suffixes and not self.hosts:
            raise ValueError("a portal policy needs at least one suffix or host")

    @classmethod
    def from_settings(cls, settings: Settings) -> PortalPolicy:
        """The policy configured by ALLOWED_PORTAL_SUFFIXES, ALLOWED_PORTAL_HOSTS and LOCAL_MODE."""
        return cls(
            settings.allowed_portal_suffixes, settings.allowed_portal_hosts, local_mode=settings.local_mode
        )

    def __repr__(self) -> str:
        return (
            f"PortalPolicy(suffixes={len(self.suffixes)}, hosts={sorted(self.hosts)!r}, "
            f"local_mode={self.local_mode})"
        )

    @staticmethod
    def _canonical_suffix(suffix: str) -> str:
        lowered = suffix.strip().lower()
        if not lowered.startswith(".") or lowered.count(".") < 2:
            raise ValueError("portal suffixes look like '.bitrix24.com'")
        try:
            _check_host_syntax(lowered[1:])
        except InvalidPortal as exc:
            raise ValueError(f"invalid portal suffix ({exc.reason})") from None
        return lowered

    def _canonical_host(self, entry: str) -> str:
        lowered = entry.strip().lower()
        try:
            _check_characters(lowered)
            host, port = _split_host_port(lowered)
            if is_loopback_host(host):
                if not self.local_mode:
                    raise ValueError("loopback portal hosts are allowed in local mode only")
            else:
                labels = _check_host_syntax(host)
                if _looks_like_ip(labels):
                    raise InvalidPortal("ip_literal")
        except InvalidPortal as exc:
            raise ValueError(f"invalid allowed portal host ({exc.reason})") from None
        return host if port is None else f"{host}:{port}"

    def normalize(self, raw: str) -> str:
        """Canonical lowercase ``host`` or ``host:port`` of an allowed portal, else raise InvalidPortal."""
        if not isinstance(raw, str):
            raise InvalidPortal("empty")
        _check_characters(raw)
        authority = _split_scheme(raw, local_mode=self.local_mode)
        if authority.endswith("/"):
            authority = authority[:-1]
        return self._normalize_authority(authority)

    def _normalize_authority(self, authority: str) -> str:
        host, port = _split_host_port(authority)
        host = host.lower()
        candidate = host if port is None else f"{host}:{port}"
        if self.local_mode and candidate in self.hosts and is_loopback_host(host):
            return candidate
        labels = _check_host_syntax(host)
        if _looks_like_ip(labels):
            raise InvalidPortal("ip_literal")
        if candidate in self.hosts:
            return candidate
        if port is not None:
            raise InvalidPortal("port")
        for suffix in self.suffixes:
            if host == suffix[1:]:
                raise InvalidPortal("bare_suffix")
            if host.endswith(suffix):
                if "." in host[: -len(suffix)]:
                    raise InvalidPortal("not_allowed")  # nested names under a cloud suffix are not portals
                return host
        raise InvalidPortal("not_allowed")

    def check_client_endpoint(self, url: str, expected_host: str | None = None) -> str:
        """Canonical ``{scheme}://{host}/rest/`` when `url` is a REST base on an allowed portal, else raise.

        https only; http only for a loopback host in local mode. When `expected_host` is given, the
        endpoint's host must be exactly that portal.
        """
        if not isinstance(url, str):
            raise InvalidPortal("empty")
        _check_characters(url)
        if "://" not in url:
            raise InvalidPortal("scheme")
        scheme, _, rest = url.partition("://")
        scheme = scheme.lower()
        if not rest.endswith(_REST_PATH):
            raise InvalidPortal("path")
        # The authority check rejects "/", so anything but exactly "/rest/" after the host fails here.
        host = self._normalize_authority(rest[: -len(_REST_PATH)])
        if scheme == "http":
            if not (self.local_mode and is_loopback_host(host)):
                raise InvalidPortal("scheme")
        elif scheme != "https":
            raise InvalidPortal("scheme")
        if expected_host is not None and host != self.normalize(expected_host):
            raise InvalidPortal("host_mismatch")
        return f"{scheme}://{host}{_REST_PATH}"
