"""HTML and JavaScript the emulated portal serves: consent, error page, app frame, BX24 stand-in."""

from __future__ import annotations

import json
from html import escape
from urllib.parse import urlencode

_STYLE = "body{font-family:sans-serif;max-width:40em;margin:3em auto;line-height:1.4}"


def consent_page(*, app_name: str, client_id: str, state: str | None, portal_domain: str, scope: str) -> str:
    """The authorization page: exactly one form; submitting it approves the app."""
    state_input = f'<input type="hidden" name="state" value="{escape(state)}">' if state is not None else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Bitrix24: allow access</title><style>{_STYLE}</style></head>
<body>
<h1>Allow access to your Bitrix24</h1>
<p>The application <b>{escape(app_name)}</b> asks for access to <b>{escape(portal_domain)}</b>
with the scope <code>{escape(scope)}</code>.</p>
<form method="post" action="/oauth/authorize/">
<input type="hidden" name="client_id" value="{escape(client_id)}">
{state_input}
<button type="submit" id="allow">Allow</button>
</form>
</body></html>
"""


def error_page(title: str, message: str) -> str:
    """A Bitrix24-side error page: no form, no redirect."""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Bitrix24: {escape(title)}</title><style>{_STYLE}</style></head>
<body><h1>{escape(title)}</h1><p class="error">{escape(message)}</p></body></html>
"""


def code_page(code: str) -> str:
    """For apps without a redirect_uri the portal shows the code for the user to paste."""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Bitrix24: authorization code</title><style>{_STYLE}</style></head>
<body><h1>Authorization code</h1><p>Paste this code into the application:</p>
<p><code id="code">{escape(code)}</code></p></body></html>
"""


def simple_page(title: str, body_html: str) -> str:
    """A minimal page (index)."""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title><style>{_STYLE}</style></head>
<body><h1>{escape(title)}</h1>{body_html}</body></html>
"""


def frame_page(*, action_url: str, query: dict[str, str], fields: list[tuple[str, str]]) -> str:
    """A portal page that opens the app's install URL in an iframe with the install POST, like Bitrix24."""
    joiner = "&" if "?" in action_url else "?"
    action = f"{action_url}{joiner}{urlencode(query)}"
    inputs = "\n".join(f'<input type="hidden" name="{escape(k)}" value="{escape(v)}">' for k, v in fields)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Bitrix24: application</title>
<style>body{{font-family:sans-serif;margin:1em}}iframe{{width:100%;height:80vh;border:1px solid #ccc}}</style>
</head><body>
<p>Install status: <span id="install-status">pending</span></p>
<form id="install-form" method="post" action="{escape(action)}" target="app-frame">
{inputs}
</form>
<iframe name="app-frame" id="app-frame" title="application"></iframe>
<script>
window.addEventListener("message", function (event) {{
  if (event.data && event.data.bx24 === "installFinish") {{
    document.getElementById("install-status").textContent = "finished";
  }}
}});
document.getElementById("install-form").submit();
</script>
</body></html>
"""


def bx24_script(*, portal_domain: str, member_id: str, language: str) -> str:
    """A stand-in for the BX24 JS library: init, installFinish (reported back), a few getters."""
    facts = json.dumps({"domain": portal_domain, "member_id": member_id, "lang": language})
    return f"""/* Bitrix24 emulator: stand-in for //api.bitrix24.com/api/v1/ (BX24). */
(function () {{
  "use strict";
  var facts = {facts};
  var script = document.currentScript;
  var base = script && script.src ? script.src.replace(/\\/bx24\\.js(\\?.*)?$/, "") : "";
  var initialized = false;
  var waiting = [];
  function report(kind) {{
    var url = base + "/install-finish";
    var sent = false;
    try {{
      if (navigator.sendBeacon) {{ sent = navigator.sendBeacon(url, kind); }}
    }} catch (e) {{ sent = false; }}
    if (!sent && window.fetch) {{
      fetch(url, {{method: "POST", body: kind, mode: "no-cors", keepalive: true}});
    }}
  }}
  var BX24 = {{
    init: function (callback) {{
      if (callback) {{ waiting.push(callback); }}
      setTimeout(function () {{
        initialized = true;
        var queue = waiting; waiting = [];
        queue.forEach(function (cb) {{ cb(); }});
      }}, 0);
    }},
    installFinish: function () {{
      report("installFinish");
      try {{ window.parent.postMessage({{bx24: "installFinish"}}, "*"); }} catch (e) {{ /* detached */ }}
    }},
    isInitialized: function () {{ return initialized; }},
    getDomain: function () {{ return facts.domain; }},
    getLang: function () {{ return facts.lang; }},
    isAdmin: function () {{ return true; }}
  }};
  window.BX24 = BX24;
}})();
"""
