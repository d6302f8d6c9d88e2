"""OAuthClient over real loopback sockets: does a failed token request say whether it may have arrived?

`request_sent=False` must mean the request provably never reached the server (the refresh token is
unspent and a retry is safe soon); every failure after the request could have been read is `True`.
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509  # moto's dependency: only used here to mint a throwaway loopback cert
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from b24connector.bitrix24.errors import OAuthTransientError
from b24connector.bitrix24.oauth import OAuthClient
from b24connector.bitrix24.transport import new_session

pytestmark = pytest.mark.integration

SECRET = "client-secret-for-the-test"
REFRESH_TOKEN = "refresh-token-for-the-test"
TIMEOUT = (2.0, 0.5)  # (connect, read): a server that never answers costs half a second


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (cert file, key file)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("tls")
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_file, key_file


class Listener:
    """A loopback TCP server whose every connection is handled by `serve(self, sock)` on its own thread."""

    def __init__(
        self, serve: Callable[[Listener, socket.socket], None], tls: ssl.SSLContext | None = None
    ) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.received = threading.Event()  # set once a request byte arrived at the application level
        self._serve, self._tls = serve, tls
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            try:
                if self._tls is not None:
                    conn = self._tls.wrap_socket(conn, server_side=True)
                self._serve(self, conn)
            except (OSError, ssl.SSLError):
                pass

    def read_request(self, conn: socket.socket) -> None:
        """Read the request's first bytes (the request reached the server)."""
        if conn.recv(65536):
            self.received.set()

    def close(self) -> None:
        self._stop.set()
        self.sock.close()


@pytest.fixture
def listeners() -> Iterator[list[Listener]]:
    opened: list[Listener] = []
    yield opened
    for listener in opened:
        listener.close()


def _failure(base_url: str, *, verify: bool | str = True) -> OAuthTransientError:
    session = new_session()
    session.verify = verify
    client = OAuthClient(
        "local.test.app", lambda: SECRET, [base_url], session=session, timeout=TIMEOUT, local_mode=True
    )
    with pytest.raises(OAuthTransientError) as caught:
        client.refresh(REFRESH_TOKEN)
    return caught.value


def _tls_context(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    return context


# --- never sent --------------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_connection_refused_was_never_sent(scheme: str) -> None:
    # A bound socket that does not listen: the kernel refuses connections (and the port stays ours)
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    try:
        error = _failure(f"{scheme}://127.0.0.1:{closed.getsockname()[1]}")
    finally:
        closed.close()
    assert (error.code, error.request_sent) == ("CONNECTION_ERROR", False)


@pytest.mark.parametrize("behaviour", ["closes_at_once", "speaks_plain_http", "never_answers_the_hello"])
def test_tls_handshake_failures_were_never_sent(listeners: list[Listener], behaviour: str) -> None:
    # A server on an https URL that cannot complete a TLS handshake
    def serve(_: Listener, conn: socket.socket) -> None:
        if behaviour == "speaks_plain_http":
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        elif behaviour == "never_answers_the_hello":
            conn.recv(65536)
            threading.Event().wait(3)

    listener = Listener(serve)
    listeners.append(listener)
    error = _failure(f"https://127.0.0.1:{listener.port}")
    assert error.request_sent is False, error.code


def test_an_untrusted_certificate_was_never_sent(
    listeners: list[Listener], certificate: tuple[Path, Path]
) -> None:
    listener = Listener(Listener.read_request, tls=_tls_context(certificate))
    listeners.append(listener)
    error = _failure(f"https://127.0.0.1:{listener.port}")  # default trust store: self-signed is refused
    assert error.request_sent is False
    assert not listener.received.is_set()


# --- may have been sent ----------------------------------------------------------------------------


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_a_server_that_read_the_request_and_closed_may_have_acted_on_it(
    listeners: list[Listener], certificate: tuple[Path, Path], tls: bool
) -> None:
    # read, then close without answering, as a crashing server would
    listener = Listener(Listener.read_request, tls=_tls_context(certificate) if tls else None)
    listeners.append(listener)
    scheme = "https" if tls else "http"
    error = _failure(f"{scheme}://127.0.0.1:{listener.port}", verify=str(certificate[0]) if tls else True)
    assert listener.received.wait(10)  # the server did read it
    assert (error.code, error.request_sent) == ("CONNECTION_ERROR", True)


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_a_server_that_read_the_request_and_went_silent_may_have_acted_on_it(
    listeners: list[Listener], certificate: tuple[Path, Path], tls: bool
) -> None:
    def serve(listener: Listener, conn: socket.socket) -> None:
        listener.read_request(conn)
        threading.Event().wait(3)

    listener = Listener(serve, tls=_tls_context(certificate) if tls else None)
    listeners.append(listener)
    scheme = "https" if tls else "http"
    error = _failure(f"{scheme}://127.0.0.1:{listener.port}", verify=str(certificate[0]) if tls else True)
    assert listener.received.wait(10)  # the server did read it
    assert (error.code, error.request_sent) == ("TIMEOUT", True)


def test_a_5xx_answer_was_sent(listeners: list[Listener]) -> None:
    def serve(_: Listener, conn: socket.socket) -> None:
        conn.recv(65536)
        conn.sendall(
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/html\r\nContent-Length: 4\r\n"
            b"Connection: close\r\n\r\nbusy"
        )

    listener = Listener(serve)
    listeners.append(listener)
    error = _failure(f"http://127.0.0.1:{listener.port}")
    assert (error.code, error.http_status, error.request_sent) == ("NON_JSON_RESPONSE", 503, True)
