"""Portal addresses an attacker might type, paste or forge; none of them may pass the allow-list.

Each entry is (value, family). The allow-list in the tests is the production default (cloud suffixes
such as `.bitrix24.com`) plus, in local mode, the emulated portal's `127.0.0.1:<port>`.
"""

from __future__ import annotations

HOSTILE_DOMAINS: list[tuple[str, str]] = [
    # userinfo: the part before "@" is not the host
    ("evil.com@acme.bitrix24.com", "userinfo"),
    ("acme.bitrix24.com@evil.com", "userinfo"),
    ("user:pass@acme.bitrix24.com", "userinfo"),
    ("https://acme.bitrix24.com@evil.com", "userinfo"),
    ("https://evil.com#@acme.bitrix24.com", "userinfo"),
    ("acme.bitrix24.com:@evil.com", "userinfo"),
    ("acme.bitrix24.com:443@evil.com", "userinfo"),
    # backslashes: browsers read "\" as "/" in special URLs
    ("evil.com\\acme.bitrix24.com", "backslash"),
    ("acme.bitrix24.com\\@evil.com", "backslash"),
    ("https:\\\\evil.com\\.bitrix24.com", "backslash"),
    ("evil.com\\.bitrix24.com", "backslash"),
    ("acme.bitrix24.com\\", "backslash"),
    # percent-encoding inside the value (the query layer already decoded once)
    ("evil.com%2F.bitrix24.com", "encoded"),
    ("acme%2ebitrix24.com", "encoded"),
    ("evil%2ecom", "encoded"),
    ("acme.bitrix24.com%2F%2Fevil.com", "encoded"),
    ("acme.bitrix24.com%00.evil.com", "encoded"),
    ("%65vil.bitrix24.com", "encoded"),
    ("acme.bitrix24.com%252F.evil.com", "encoded"),
    # IDN / punycode look-alikes
    ("xn--acme-9na.bitrix24.com", "idn"),
    ("\u0430cme.bitrix24.com", "idn"),  # Cyrillic a
    ("acme.bitr\u0456x24.com", "idn"),  # Ukrainian i
    ("acme.xn--bitrx24-7ya.com", "idn"),
    ("xn--80ak6aa92e.com", "idn"),
    ("acme.bitrix24.com\u200b", "idn"),  # zero-width space
    ("acme.bitrix24.co\u1d0d", "idn"),  # small capital M
    # trailing and empty labels
    ("acme.bitrix24.com.", "dots"),
    ("acme.bitrix24.com..", "dots"),
    (".acme.bitrix24.com", "dots"),
    ("acme..bitrix24.com", "dots"),
    ("bitrix24.com", "dots"),
    (".bitrix24.com", "dots"),
    # ports nobody allow-listed
    ("acme.bitrix24.com:443", "port"),
    ("acme.bitrix24.com:8080", "port"),
    ("acme.bitrix24.com:0", "port"),
    ("acme.bitrix24.com:99999", "port"),
    ("acme.bitrix24.com:", "port"),
    ("https://acme.bitrix24.com:443/", "port"),
    # IP literals in every notation
    ("127.0.0.1", "ip"),
    ("169.254.169.254", "ip"),
    ("2130706433", "ip"),
    ("0x7f000001", "ip"),
    ("0x7f.0.0.1", "ip"),
    ("0177.0.0.1", "ip"),
    ("127.1", "ip"),
    ("0.0.0.0", "ip"),  # noqa: S104 - a hostile input, nothing binds to it
    ("0", "ip"),
    ("[::1]", "ip"),
    ("::1", "ip"),
    ("[::]", "ip"),
    ("[::ffff:127.0.0.1]", "ip"),
    ("[fe80::1%25eth0]", "ip"),
    ("localhost", "ip"),
    ("10.0.0.1.bitrix24.com", "ip"),
    # the allow-listed suffix somewhere else than at the end, or a path pretending to be a host
    ("evil.com/.bitrix24.com", "path"),
    ("bitrix24.com.evil.com", "path"),
    ("acme.bitrix24.com.evil.com", "path"),
    ("acme.bitrix24.com.br.evil.com", "path"),
    ("ACME.BITRIX24.COM.EVIL.COM", "path"),
    ("evilbitrix24.com", "path"),
    ("acme.bitrix24.com/evil", "path"),
    ("acme.bitrix24.com/../evil.com", "path"),
    ("acme.bitrix24.com?x=evil.com", "path"),
    ("acme.bitrix24.com#evil.com", "path"),
    ("//evil.com", "path"),
    ("https://evil.com/acme.bitrix24.com", "path"),
    ("nested.acme.bitrix24.com", "path"),
    ("*.bitrix24.com", "path"),
    # schemes
    ("http://acme.bitrix24.com", "scheme"),
    ("ftp://acme.bitrix24.com", "scheme"),
    ("javascript:alert(1)//acme.bitrix24.com", "scheme"),
    ("HTTPS://evil.com", "scheme"),
    ("data:text/html,<script>alert(1)</script>", "scheme"),
    # CR/LF, whitespace and other separators (header injection, splitting)
    ("acme.bitrix24.com\r\nLocation: https://evil.com", "crlf"),
    ("acme.bitrix24.com\nSet-Cookie: x=1", "crlf"),
    ("acme.bitrix24.com\t", "crlf"),
    (" acme.bitrix24.com", "crlf"),
    ("acme.bitrix24.com ", "crlf"),
    ("acme.bitrix24.com\u0085", "crlf"),
    ("acme.bitrix24.com\u2028", "crlf"),
    ("acme.bitrix24.com;evil.com", "crlf"),
    ("acme.bitrix24.com,evil.com", "crlf"),
    ("acme.bitrix24.com evil.com", "crlf"),
    ("<script>alert(1)</script>.bitrix24.com", "crlf"),
    # label syntax
    ("acme_.bitrix24.com", "label"),
    ("-acme.bitrix24.com", "label"),
    ("acme-.bitrix24.com", "label"),
    # overlong (below the 8 KB query limit, so the portal check itself refuses them)
    ("a" * 64 + ".bitrix24.com", "overlong"),
    (("a" * 60 + ".") * 5 + "bitrix24.com", "overlong"),
    ("a" * 4000 + ".bitrix24.com", "overlong"),
    # unicode dots and fullwidth characters
    ("acme\u3002bitrix24\u3002com", "unicode"),
    ("acme\uff0ebitrix24\uff0ecom", "unicode"),
    ("acme\uff61bitrix24\uff61com", "unicode"),
    ("\uff41\uff43\uff4d\uff45.bitrix24.com", "unicode"),
    ("acme.bitrix24.\uff43\uff4f\uff4d", "unicode"),
    ("evil.com\uff0fbitrix24.com", "unicode"),
    # null bytes
    ("acme.bitrix24.com\x00.evil.com", "null"),
    ("\x00", "null"),
    ("acme.bitrix24.com\x00", "null"),
]

# What the allow-list accepts; the tests prove they pass, so a refusal above is not a blanket refusal.
GOOD_DOMAINS = ["acme.bitrix24.com", "https://acme.bitrix24.com/", "ACME.Bitrix24.de", "acme.bitrix24.com.br"]
