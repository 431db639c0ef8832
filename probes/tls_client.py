"""The TLS client the ``tls`` probe handshakes with.

``TlsClient`` is built once per probe configuration (building its context costs as
much as twenty handshakes) and shared by every run and thread; ``connect()`` makes
one handshake on an already connected socket against one deadline and returns a
``TlsConnection``, the only thing the probe reads the session through.  Nothing is
verified here: the probe records what the server sent and ``probes.verify`` judges it.

It is pyOpenSSL over the OpenSSL that ``cryptography`` ships, not Python's ``ssl`` over
the system's, because on the 2-core benchmark machine (OpenSSL 3.0 in Debian 12, 4.x
in ``cryptography``) a handshake costs the client about 0.7x the CPU (see
docs/performance.md), and every OpenSSL call runs without the GIL.  The context is
set up as Python's ``ssl.PROTOCOL_TLS_CLIENT`` sets up its own (TLS 1.2 at least,
its cipher string and security level 2, no compression, the same key-share groups),
so a server is offered what it was offered before.

That the server asked for a client certificate is noticed by OpenSSL's certificate
callback, which OpenSSL calls only then, so a handshake re-enters Python only for a
server that asks, instead of once per TLS message as Python's message callback does.
"""

from __future__ import annotations

import functools
import os
import socket
import threading
from collections.abc import Callable, Sequence
from typing import TypeVar, overload

from cryptography import x509
from cryptography.hazmat.bindings.openssl.binding import Binding
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from OpenSSL import SSL

from probes import cpu_slots
from probes.der import elements

# What Python's ssl sets on a PROTOCOL_TLS_CLIENT context (3.10+).
PYTHON_DEFAULT_CIPHERS = b"@SECLEVEL=2:ECDH+AESGCM:ECDH+CHACHA20:ECDH+AES:DHE+AES:!aNULL:!eNULL:!aDSS:!SHA1:!AESCCM"
# OpenSSL 3.0's default groups: newer releases lead with a hybrid post-quantum key
# share that the servers probed here mostly ignore, at a cost per handshake.
DEFAULT_GROUPS = b"x25519:secp256r1:x448:secp521r1:secp384r1:ffdhe2048:ffdhe3072:ffdhe4096:ffdhe6144:ffdhe8192"

# The keys a client certificate's key can be (what OpenSSL signs a handshake with).
ClientKey = (
    rsa.RSAPrivateKey
    | ec.EllipticCurvePrivateKey
    | ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey
    | dsa.DSAPrivateKey
)
CLIENT_KEY_TYPES = (
    rsa.RSAPrivateKey,
    ec.EllipticCurvePrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
    dsa.DSAPrivateKey,
)

_ffi = Binding.ffi
T = TypeVar("T")
_lib = Binding.lib


class HandshakeError(Exception):
    """The TLS layer refused.  ``code`` is OpenSSL's reason as the upper-case token
    ``ssl.SSLError.reason`` gives (``TLSV13_ALERT_CERTIFICATE_REQUIRED``), or ''."""

    def __init__(self, code: str, text: str) -> None:
        super().__init__(text)
        self.code = code


class ConnectionClosed(OSError):
    """The server closed the TCP connection in the middle of the TLS exchange."""


def _handshake_error(exc: SSL.Error) -> HandshakeError | ConnectionClosed:
    """The exception Python's ssl raised for the same event: an alert or a refusal
    is a HandshakeError with OpenSSL's reason, a reset connection an OSError, and
    an EOF without close_notify a HandshakeError (ssl's SSLEOFError)."""
    if isinstance(exc, SSL.SysCallError):
        errno = exc.args[0] if exc.args and isinstance(exc.args[0], int) else -1
        if errno > 0:
            return ConnectionClosed(errno, os.strerror(errno))
        return HandshakeError("UNEXPECTED_EOF_WHILE_READING", "EOF occurred in violation of protocol")
    reasons = [entry[2] for entry in (exc.args[0] if exc.args and isinstance(exc.args[0], list) else [])]
    text = next((str(r) for r in reasons if r), "") or str(exc) or type(exc).__name__
    return HandshakeError(text.upper().replace(" ", "_"), text)


class _CertificateRequests:
    """The SSL objects whose server asked for a certificate, filled by OpenSSL's
    certificate callback (which runs on the handshaking thread)."""

    def __init__(self) -> None:
        self._asked: set[int] = set()
        self._lock = threading.Lock()
        # Kept referenced: OpenSSL holds only the C pointer.
        self.callback = _ffi.callback("int(SSL *, void *)", self._on_request, onerror=self._on_error)

    def _on_request(self, ssl_pointer: object, argument: object) -> int:
        with self._lock:
            self._asked.add(int(_ffi.cast("uintptr_t", ssl_pointer)))
        return 1  # carry on with whatever certificate is configured (or none)

    @staticmethod
    def _on_error(exception: object, value: object, traceback: object) -> int:
        return 1

    def take(self, connection: SSL.Connection) -> bool:
        """Whether the server asked; forgets the connection (its SSL object is
        about to be freed, and the address may be reused)."""
        key = int(_ffi.cast("uintptr_t", connection._ssl))
        with self._lock:
            if key in self._asked:
                self._asked.discard(key)
                return True
        return False


class TlsConnection:
    """One handshaken session on a socket this object now owns (``close()``)."""

    def __init__(self, client: TlsClient, connection: SSL.Connection, sock: socket.socket) -> None:
        self._client = client
        self._connection = connection
        self._sock = sock
        self.established = False  # the handshake finished
        self.certificate_requested = False
        self.staple: bytes | None = None

    @property
    def version(self) -> str:
        return self._connection.get_protocol_version_name() if self.established else ""

    @property
    def cipher(self) -> str:
        return (self._connection.get_cipher_name() or "") if self.established else ""

    @property
    def alpn(self) -> str:
        return self._connection.get_alpn_proto_negotiated().decode("ascii", "replace") if self.established else ""

    def peer_chain(self, limit: int) -> tuple[list[bytes], PeerChain]:
        """Every certificate the server sent, in order, up to ``limit``, as DER and
        as certificates loaded when first read (none when the handshake broke
        before the server's Certificate)."""
        ders = _peer_ders(self._connection, limit)
        return ders, PeerChain(ders)

    def sendall(self, data: bytes, deadline: float) -> None:
        view = memoryview(data)
        while view:
            sent = self._retrying(functools.partial(self._connection.send, view), deadline)
            view = view[sent:]

    def recv(self, size: int, deadline: float) -> bytes:
        """Up to ``size`` bytes; b'' when the server closed the session.  Raises
        TimeoutError at the deadline, HandshakeError for a TLS alert."""
        try:
            return self._retrying(lambda: self._connection.recv(size), deadline)
        except SSL.ZeroReturnError:
            return b""

    def client_verdict(self, deadline: float) -> str:
        """After a TLS 1.3 handshake in which the server asked for a client
        certificate, what the server did with it, by ``deadline``:

        - ``"ticket"``: it sent a session ticket.  An OpenSSL server (nginx,
          haproxy, s_server) writes one only after it has read the client's
          Certificate, CertificateVerify and Finished, and an alert instead when it
          refuses the certificate: an acceptance, one round trip after the handshake;
        - ``"data"`` or ``"closed"``: it answered or closed the session cleanly;
        - ``"silence"``: nothing came (a server that sends no tickets, or a slow one).

        A rejection is an alert: HandshakeError.  Without this, an accepting server
        that sends tickets looked like silence, and every such probe waited out its
        whole wait."""
        ssl_object = self._connection._ssl
        # A TLS 1.3 client replaces its session object with each ticket it receives.
        # The reference taken here keeps the first one alive, so that a later one
        # cannot be allocated at its address (two tickets read at once would
        # otherwise often look like none: measured, 7-45 % of runs against nginx).
        session = _ffi.gc(_lib.SSL_get1_session(ssl_object), _lib.SSL_SESSION_free)
        while True:
            try:
                self._connection.recv(1)
                return "data"
            except SSL.ZeroReturnError:
                return "closed"
            except (SSL.WantReadError, SSL.WantWriteError) as want:
                if _lib.SSL_get_session(ssl_object) != session:
                    return "ticket"
                try:
                    cpu_slots.wait_ready(self._sock, deadline, write=isinstance(want, SSL.WantWriteError))
                except TimeoutError:
                    return "silence"
            except SSL.Error as exc:
                raise _handshake_error(exc) from None

    def _retrying(self, operation: Callable[[], T], deadline: float) -> T:
        """``operation()`` on the non-blocking socket, waiting for it whenever
        OpenSSL wants to read or write, until the deadline."""
        try:
            return _retrying(operation, self._sock, deadline)
        except SSL.ZeroReturnError:
            raise
        except SSL.Error as exc:
            raise _handshake_error(exc) from None

    def close(self) -> None:
        self._client._requests.take(self._connection)  # forget it, whatever happened
        self._sock.close()


class PeerChain(Sequence[x509.Certificate]):
    """The served certificates, each loaded from its DER only when the chain is
    first read: a chain the probe's memo has seen before is never loaded."""

    def __init__(self, ders: list[bytes]) -> None:
        self._ders = ders
        self._loaded: list[x509.Certificate] | None = None

    def _certificates(self) -> list[x509.Certificate]:
        if self._loaded is None:
            self._loaded = [x509.load_der_x509_certificate(der) for der in self._ders]
        return self._loaded

    @overload
    def __getitem__(self, index: int) -> x509.Certificate: ...
    @overload
    def __getitem__(self, index: slice) -> list[x509.Certificate]: ...
    def __getitem__(self, index: int | slice) -> x509.Certificate | list[x509.Certificate]:
        return self._certificates()[index]

    def __len__(self) -> int:
        return len(self._ders)


def _peer_ders(connection: SSL.Connection, limit: int) -> list[bytes]:
    """The DER of each certificate the server sent, up to ``limit``: all written to
    one memory BIO and split there, five OpenSSL calls and one per certificate."""
    stack = _lib.SSL_get_peer_cert_chain(connection._ssl)
    if stack == _ffi.NULL:
        return []
    count = min(_lib.sk_X509_num(stack), limit)
    if count <= 0:
        return []
    bio = _ffi.gc(_lib.BIO_new(_lib.BIO_s_mem()), _lib.BIO_free)
    for index in range(count):
        if _lib.i2d_X509_bio(bio, _lib.sk_X509_value(stack, index)) != 1:
            raise HandshakeError("", "OpenSSL could not encode a served certificate")
    data = _ffi.new("char **")
    size = _lib.BIO_get_mem_data(bio, data)
    written = _ffi.buffer(data[0], size)[:]
    ders = []
    start = 0
    for _, _, end in elements(written, 0, len(written)):  # one DER Certificate each
        ders.append(written[start:end])
        start = end
    return ders


class TlsClient:
    """The TLS settings one probe configuration connects with."""

    def __init__(self, alpn: Sequence[str] = (), request_staple: bool = False) -> None:
        context = SSL.Context(SSL.TLS_CLIENT_METHOD)
        context.set_min_proto_version(SSL.TLS1_2_VERSION)
        context.set_options(SSL.OP_ALL | SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE)
        context.set_cipher_list(PYTHON_DEFAULT_CIPHERS)
        if _lib.SSL_CTX_set1_curves_list(context._context, DEFAULT_GROUPS) != 1:
            raise ValueError("OpenSSL refused the key-share groups")
        context.set_verify(SSL.VERIFY_NONE)  # recorded here, judged by probes.verify
        context.set_session_cache_mode(SSL.SESS_CACHE_OFF)  # every run a full handshake
        if alpn:
            context.set_alpn_protos([name.encode("ascii") for name in alpn])
        self._requests = _CertificateRequests()
        _lib.SSL_CTX_set_cert_cb(context._context, self._requests.callback, _ffi.NULL)
        self.request_staple = request_staple
        if request_staple:
            context.set_ocsp_client_callback(_note_staple)
        self._context = context

    def use_client_certificate(self, chain: Sequence[x509.Certificate], key: ClientKey) -> None:
        """Send ``chain`` (leaf first) and prove ``key`` when a server asks."""
        self._context.use_certificate(chain[0])
        for extra in chain[1:]:
            self._context.add_extra_chain_cert(extra)
        self._context.use_privatekey(key)
        self._context.check_privatekey()

    def connect(self, sock: socket.socket, server_name: str, deadline: float) -> TlsConnection:
        """The handshake on ``sock`` (connected; owned by the result from now on).
        Raises TimeoutError at the deadline, ``ConnectionClosed`` when the server
        drops the connection, and ``HandshakeFailed`` (carrying the connection, to
        read what the server sent before it refused) for a TLS failure."""
        sock.setblocking(False)
        connection = SSL.Connection(self._context, sock)
        if server_name:
            connection.set_tlsext_host_name(server_name.encode("idna"))
        if self.request_staple:
            connection.request_ocsp()
            connection.set_app_data([])
        connection.set_connect_state()
        session = TlsConnection(self, connection, sock)
        try:
            _retrying(connection.do_handshake, sock, deadline)
        except BaseException as exc:
            session.certificate_requested = self._requests.take(connection)
            session.staple = _staple_of(connection)
            sock.close()
            if not isinstance(exc, SSL.Error):
                raise  # TimeoutError at the deadline, or an interruption
            error = _handshake_error(exc)
            if isinstance(error, HandshakeError):
                raise HandshakeFailed(error, session) from None
            raise error from None
        session.established = True
        session.certificate_requested = self._requests.take(connection)
        session.staple = _staple_of(connection)
        return session


class HandshakeFailed(HandshakeError):
    """A refused handshake, with what is known of it (``session``: the peer chain
    that arrived, whether a certificate was asked for).  Its socket is closed."""

    def __init__(self, error: HandshakeError, session: TlsConnection) -> None:
        super().__init__(error.code, str(error))
        self.session = session


def _note_staple(connection: SSL.Connection, response: bytes, data: object) -> bool:
    if response:
        connection.get_app_data().append(response)
    return True  # judged by probes.revocation, not here


def _staple_of(connection: SSL.Connection) -> bytes | None:
    found = connection.get_app_data()
    return found[0] if isinstance(found, list) and found else None


def _retrying(operation: Callable[[], T], sock: socket.socket, deadline: float) -> T:
    """``operation()``, again each time OpenSSL wants the socket readable or
    writable first, until the deadline (TimeoutError)."""
    while True:
        try:
            return operation()
        except SSL.WantReadError:
            cpu_slots.wait_ready(sock, deadline, write=False)
        except SSL.WantWriteError:
            cpu_slots.wait_ready(sock, deadline, write=True)
