"""One portal as the REST client sees it: endpoint, access token, renewal hooks, deadline, pacing key.

Parallel list windows of one read share a context, so this is where threads of one container meet
an expired or revoked access token: renew_token and reload_token run under one lock, and only the
first thread to see the rejected token asks the coordinator; the others take its answer
(docs/token-refresh.md, "threads in one container").
"""

from __future__ import annotations

import threading
from collections.abc import Callable


class PortalContext:
    """One portal as the REST client sees it: endpoint, current access token, renewal hooks and budget.

    `renew(rejected)` returns a fresh access token (it may call the token endpoint); `reload(rejected)`
    returns the stored access token if it differs from the rejected one, else None; it may wait for a
    refresh in flight elsewhere to land but never calls the token endpoint itself.

    Thread-safe: parallel list windows share one context, and a single renewal serves them all.
    """

    def __init__(
        self,
        client_endpoint: str,
        access_token: str,
        *,
        renew: Callable[[str], str] | None = None,
        reload: Callable[[str], str | None] | None = None,
        deadline: float | None = None,
        on_moved: Callable[[str, str], None] | None = None,
        domain: str | None = None,
        pacing_key: str | None = None,
    ) -> None:
        self._client_endpoint = client_endpoint
        self._access_token = access_token
        self._renew = renew
        self._reload = reload
        self.deadline = deadline  # time.monotonic() value after which no request is started
        self._on_moved = on_moved
        self.domain = domain  # when set, client_endpoint must be on exactly this host
        self._pacing_key = pacing_key
        self.moved_to: str | None = None  # new host after a followed 302 rename
        self._lock = threading.Lock()
        self._move_lock = threading.Lock()  # one thread reports a rename; the others wait and follow

    def __repr__(self) -> str:
        return f"PortalContext(host={self.host!r}, deadline={self.deadline!r}, moved_to={self.moved_to!r})"

    @property
    def client_endpoint(self) -> str:
        """The REST base URL, e.g. https://acme.bitrix24.com/rest/."""
        return self._client_endpoint

    @property
    def access_token(self) -> str:
        """The access token currently in use."""
        return self._access_token

    @property
    def host(self) -> str:
        """host[:port] of the client endpoint."""
        return _host_of(self._client_endpoint)

    @property
    def pacing_key(self) -> str:
        """The key the pacer buckets this portal's requests under."""
        return self._pacing_key or self.host

    @property
    def can_renew(self) -> bool:
        """True when an expired access token can be replaced."""
        return self._renew is not None

    def renew_token(self, rejected: str) -> None:
        """Replace `rejected` with a fresh access token, unless another thread already did."""
        if self._renew is None:
            return
        with self._lock:
            if self._access_token != rejected:
                return
            self._access_token = self._renew(rejected)

    @property
    def can_reload(self) -> bool:
        """True when a newer stored access token can be looked up."""
        return self._reload is not None

    def reload_token(self, rejected: str) -> bool:
        """Adopt a newer stored access token in place of `rejected`; False when there is none."""
        if self._reload is None:
            return False
        with self._lock:
            if self._access_token != rejected:
                return True  # another thread already replaced it
            newer = self._reload(rejected)
            if newer is None or newer == rejected:
                return False
            self._access_token = newer
            return True

    def move_to(self, client_endpoint: str) -> None:
        """Switch to the endpoint of a renamed portal once its owner was told (once per new endpoint).

        `on_moved(host, client_endpoint)` runs first and may raise to refuse the move: then nothing
        switches and the error ends the call. Parallel requests that hit the same 302 report it once.
        """
        with self._move_lock:
            if client_endpoint == self._client_endpoint:
                return  # another thread already moved this context
            host = _host_of(client_endpoint)
            if self._on_moved is not None:
                self._on_moved(host, client_endpoint)
            with self._lock:
                self._client_endpoint = client_endpoint
                self.moved_to = host
                self.domain = host


def _host_of(client_endpoint: str) -> str:
    return client_endpoint.partition("://")[2].partition("/")[0].lower()
