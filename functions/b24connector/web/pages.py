"""The few HTML pages a person sees: errors with a reason code, connected, and the install finish."""

from __future__ import annotations

import secrets
from html import escape

from b24connector.web.http import NO_STORE, HttpResponse

_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:36rem;margin:3rem auto;padding:0 1rem;color:#222}"
    "code{background:#f2f2f2;padding:.1rem .3rem;border-radius:3px}"
)

# Pages we own are never framed and load nothing; the install page is the exception (see below).
_STRICT_CSP = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
_BASE_HEADERS = {
    "Content-Type": "text/html; charset=utf-8",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    **NO_STORE,
}


def _document(title: str, body: str) -> str:
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head><body>{body}</body></html>"
    )


def problem_page(status: int, reason: str, message: str, *, request_id: str = "") -> HttpResponse:
    """An error page naming the reason code a person can quote to support."""
    reference = f"<p>Reference: <code>{escape(request_id)}</code></p>" if request_id else ""
    body = (
        f"<h1>{escape(_title(status))}</h1><p>{escape(message)}</p>"
        f"<p>Reason: <code>{escape(reason)}</code></p>{reference}"
    )
    return HttpResponse(
        status,
        _document(_title(status), body),
        {**_BASE_HEADERS, "Content-Security-Policy": _STRICT_CSP, "X-Reason-Code": reason},
    )


def _title(status: int) -> str:
    if status == 403:
        return "Not allowed"
    if status == 404:
        return "Not found"
    if status < 500:
        return "This request could not be accepted"
    if status == 503:
        return "Bitrix24 is not reachable right now"
    if status == 502:
        return "Bitrix24 gave an unexpected answer"
    return "Something went wrong on our side"


def connected_page(portal: str, *, cookies: list[str] | None = None) -> HttpResponse:
    """The page shown after a portal was connected."""
    body = (
        f"<h1>Connected</h1><p>The Bitrix24 portal <strong>{escape(portal)}</strong> is connected. "
        "You can close this window.</p>"
    )
    return HttpResponse(
        200,
        _document("Connected", body),
        {**_BASE_HEADERS, "Content-Security-Policy": _STRICT_CSP},
        list(cookies or []),
    )


def _origin(url: str) -> str | None:
    """scheme://host[:port] of an absolute http(s) URL, else None."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in {"http", "https"}:
        return None
    host = rest.split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
    if not host or any(ch in host for ch in " '\";,"):
        return None
    return f"{scheme.lower()}://{host}"


def install_finish_page(script_url: str, portal: str, *, admin_required: bool = False) -> HttpResponse:
    """The install page Bitrix24 frames: loads the BX24 library and calls installFinish().

    `admin_required`: the opening user may not replace the portal's administrator grant; nothing was
    changed, and the page says so (installFinish is still called: the app itself is installed).
    """
    # Framed by the portal and running Bitrix24's own library, so it gets its own policy: scripts only
    # with this response's nonce (and what that trusted loader pulls in); the library may fetch from
    # https origins and from its own origin (the local stack serves a stand-in over http).
    nonce = secrets.token_urlsafe(16)
    heading = (
        f"<h1>Connected by an administrator</h1><p><strong>{escape(portal)}</strong> is connected by its "
        "administrator. Only an administrator can connect it again; nothing was changed.</p>"
        if admin_required
        else f"<h1>Installing</h1><p>Finishing the installation on <strong>{escape(portal)}</strong>&hellip;</p>"
    )
    body = (
        heading + f'<script nonce="{nonce}" src="{escape(script_url)}"></script>'
        f'<script nonce="{nonce}">BX24.init(function(){{ BX24.installFinish(); }});</script>'
    )
    sources = " ".join(filter(None, ("'self'", "https:", _origin(script_url))))
    csp = (
        f"default-src {sources}; style-src 'unsafe-inline' {sources}; connect-src {sources}; "
        f"script-src 'nonce-{nonce}' 'strict-dynamic'; base-uri 'none'; form-action 'none'; object-src 'none'"
    )
    return HttpResponse(200, _document("Installing", body), {**_BASE_HEADERS, "Content-Security-Policy": csp})
