"""Many tenants on one emulated OAuth server: a loopback facade for the refresh-at-scale bench.

The emulator models one portal, so every token chain it issues carries that portal's member_id, and
our refresh rightly refuses a pair whose member_id differs from the record's. The bench stores each
chain under its own member_id; this facade forwards token requests to the emulator's OAuth server
(after the configured latency, the "50 ms OAuth latency") and writes the tenant's member_id into the
answer, following each chain as its refresh token rotates. It also counts refreshes per tenant, so
"every due portal refreshed exactly once" is checked per portal, not only in total.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qs

from werkzeug.wrappers import Request, Response

from tests.bench.loopback import LoopbackForwarder


class OAuthFacade(LoopbackForwarder):
    """Forwards /oauth/token/ and /rest/app.info to `upstream`, mapping refresh tokens to tenants."""

    def __init__(self, latency_seconds: float = 0.05) -> None:
        self.upstream: str | None = None
        self.latency_seconds = latency_seconds
        self._tenants: dict[str, str] = {}  # refresh token -> member_id
        self._lock = threading.Lock()
        self.refreshes: Counter[str] = Counter()  # member_id -> successful refreshes
        self.failures: Counter[str] = Counter()
        super().__init__("oauth-facade", pool_connections=2)

    def adopt(self, refresh_token: str, member_id: str) -> None:
        """Say which tenant a chain (by its current refresh token) belongs to."""
        with self._lock:
            self._tenants[refresh_token] = member_id

    def _app(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        request = Request(environ)
        body = request.get_data()
        if self.latency_seconds > 0:
            time.sleep(self.latency_seconds)
        form = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
        form.update({k: v for k, v in request.args.items() if k not in form})
        headers = {
            k: v for k, v in request.headers.items() if k.lower() in {"content-type", "accept", "user-agent"}
        }
        upstream = self._http.request(
            request.method,
            f"{self.upstream}{request.full_path.rstrip('?')}",
            data=body,
            headers=headers,
            timeout=30,
        )
        content = upstream.content
        sent = form.get("refresh_token")
        if request.path.rstrip("/") == "/oauth/token" and sent:
            with self._lock:
                tenant = self._tenants.pop(sent, None)
            if tenant is not None:
                content = self._rewrite(content, tenant, sent, upstream.status_code)
        return Response(
            content, status=upstream.status_code, content_type=upstream.headers.get("Content-Type")
        )(environ, start_response)

    def _rewrite(self, content: bytes, tenant: str, sent: str, status: int) -> bytes:
        try:
            answer = json.loads(content)
        except ValueError:
            answer = None
        if status != 200 or not isinstance(answer, dict) or "refresh_token" not in answer:
            with self._lock:
                self.failures[tenant] += 1
                self._tenants[sent] = tenant  # a failed attempt may not have spent the token
            return content
        answer["member_id"] = tenant
        # The pair names its OAuth server; ours is this facade (the functions' allow-list has only it).
        answer["server_endpoint"] = f"{self.url}/rest/"
        with self._lock:
            self._tenants[str(answer["refresh_token"])] = tenant
            self.refreshes[tenant] += 1
        return json.dumps(answer).encode()
