"""Bounded HTTP for URLs that certificates point to (OCSP responders, CRLs).

A URL taken from a certificate is untrusted input, so ``fetch`` enforces:

* the egress policy: http and https only; the name is resolved once and every
  address checked (no loopback, link-local, unspecified, multicast or cloud-metadata
  addresses unless ``allow_networks`` lists them); the connection then goes to the
  address that was checked, so a second DNS answer cannot slip past;
* one total deadline over resolve, connect, request and the whole body - a server
  that dribbles bytes is cut off there, not per read;
* a byte cap, checked against ``Content-Length`` before reading and against the
  bytes actually read; a lying ``Content-Length`` changes nothing;
* no redirects: a 3xx is an answer like any other.

Failures raise ``FetchError`` with a ``kind``: ``refused`` (policy), ``unavailable``
(DNS, connect, reset, timeout) or ``too_large``.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

# Beyond loopback, link-local, multicast and unspecified, which ipaddress knows.
METADATA_NETWORKS = (ipaddress.ip_network("169.254.169.254/32"), ipaddress.ip_network("fd00:ec2::254/128"))


class FetchError(Exception):
    def __init__(self, kind: str, message: str, cause: str = "") -> None:
        super().__init__(message)
        self.kind = kind  # refused | unavailable | too_large
        # For unavailable: dns | connect_refused | timeout | tls | other ('' when unknown),
        # so a caller can name the reason without parsing the message.
        self.cause = cause


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: Mapping[str, str]  # lower-case names
    body: bytes
    seconds: float
    address: str


def refused_address(address: str, allow_networks: Sequence[str]) -> bool:
    """True when the egress policy forbids connecting to ``address``."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:169.254.169.254 is the metadata address too
    if any(ip in ipaddress.ip_network(network, strict=False) for network in allow_networks):
        return False
    return (
        ip.is_loopback
        or ip.is_link_local
        or ip.is_unspecified
        or ip.is_multicast
        or any(ip in network for network in METADATA_NETWORKS)
    )


# getaddrinfo() has no timeout.  Each lookup runs in its own daemon thread, so a run
# stops waiting at its deadline, a resolver that never answers holds no shared pool
# (a fixed pool of 8 let 8 hanging names fail every other name), and a lookup still
# hanging never delays the process's exit.  At most MAX_LOOKUPS hang at once.
MAX_LOOKUPS = 256
_lookups = threading.BoundedSemaphore(MAX_LOOKUPS)

AddrInfo = tuple[socket.AddressFamily, socket.SocketKind, int, str, tuple[str, int] | tuple[str, int, int, int]]


def getaddrinfo_by(host: str, port: int, family: int, deadline: float) -> list[AddrInfo]:
    """``socket.getaddrinfo(host, port, family, SOCK_STREAM)`` or TimeoutError once
    ``deadline`` (a ``time.monotonic()`` value) passes; resolver errors as raised."""
    if _is_ip_literal(host):
        # Nothing to ask a resolver: answered at once, without a thread (which cost an
        # uncached OCSP check about a third of its CPU).
        return socket.getaddrinfo(host, port, family, socket.SOCK_STREAM, 0, socket.AI_NUMERICHOST)  # type: ignore[return-value]
    if not _lookups.acquire(timeout=max(0.0, deadline - time.monotonic())):
        raise TimeoutError(f"resolving {host}: {MAX_LOOKUPS} lookups already waiting for the resolver")
    done = threading.Event()
    outcome: list[Any] = []

    def lookup() -> None:
        try:
            outcome.append(socket.getaddrinfo(host, port, family, socket.SOCK_STREAM))
        except Exception as exc:  # noqa: BLE001 - handed to the waiting caller
            outcome.append(exc)
        finally:
            _lookups.release()
            done.set()

    threading.Thread(target=lookup, name="dns", daemon=True).start()
    if not done.wait(max(0.0, deadline - time.monotonic())):
        raise TimeoutError(f"resolving {host} took longer than the deadline")
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    return outcome[0]  # type: ignore[no-any-return]


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def resolve_checked(host: str, port: int, allow_networks: Sequence[str], deadline: float | None = None) -> str:
    """The first address of ``host``, after checking every address it has."""
    try:
        infos = getaddrinfo_by(host, port, 0, time.monotonic() + 30 if deadline is None else deadline)
    except socket.gaierror as exc:
        raise FetchError("unavailable", f"cannot resolve {host}: {exc.strerror}", "dns") from None
    except TimeoutError as exc:
        raise FetchError("unavailable", str(exc), "timeout") from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    for address in addresses:
        if refused_address(address, allow_networks):
            raise FetchError("refused", f"{host} resolves to {address}, which the egress policy refuses")
    return addresses[0]


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Connects to a checked address while sending the URL's host name."""

    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as http.client's own connect()


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, host: str, port: int, address: str, timeout: float, context: ssl.SSLContext) -> None:
        super().__init__(host, port, timeout=timeout, context=context)
        self._address = address

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        # Without it, Nagle holds the request behind the handshake's last flight until the
        # server's delayed ACK: 40 ms more per HTTPS request.  http.client sets it too.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)  # type: ignore[attr-defined]


_TLS_CONTEXT = ssl.create_default_context()


def fetch(
    url: str,
    *,
    deadline: float,
    max_bytes: int,
    allow_networks: Sequence[str] = (),
    method: str = "GET",
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    tls_context: ssl.SSLContext | None = None,
) -> Response:
    """``tls_context`` replaces the system-trust context for https (a CA API whose
    certificate chains to a private root)."""
    started = time.monotonic()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FetchError("refused", f"{url}: only http and https URLs are fetched")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    address = resolve_checked(parts.hostname, port, allow_networks, deadline)

    def remaining() -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise FetchError("unavailable", f"{url}: no complete answer before the deadline", "timeout")
        return left

    connection: http.client.HTTPConnection
    if parts.scheme == "https":
        connection = _PinnedHTTPSConnection(parts.hostname, port, address, remaining(), tls_context or _TLS_CONTEXT)
    else:
        connection = _PinnedHTTPConnection(parts.hostname, port, address, remaining())
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    try:
        connection.request(method, path, body=body, headers={"User-Agent": "certscope", **(headers or {})})
        if connection.sock is not None:
            connection.sock.settimeout(remaining())
        response = connection.getresponse()
        announced = response.getheader("Content-Length")
        if announced is not None and announced.isdigit() and int(announced) > max_bytes:
            raise FetchError("too_large", f"{url}: Content-Length {announced} is over the {max_bytes}-byte cap")
        chunks: list[bytes] = []
        received = 0
        while True:
            if connection.sock is not None:
                connection.sock.settimeout(remaining())
            chunk = response.read1(65536) if hasattr(response, "read1") else response.read(65536)
            if not chunk:
                break
            received += len(chunk)
            if received > max_bytes:
                raise FetchError("too_large", f"{url}: body over the {max_bytes}-byte cap")
            chunks.append(chunk)
        return Response(
            status=response.status,
            headers={name.lower(): value for name, value in response.getheaders()},
            body=b"".join(chunks),
            seconds=time.monotonic() - started,
            address=address,
        )
    except FetchError:
        raise
    except TimeoutError:
        raise FetchError("unavailable", f"{url}: no complete answer before the deadline", "timeout") from None
    except (OSError, http.client.HTTPException) as exc:
        raise FetchError("unavailable", f"{url}: {type(exc).__name__}: {exc}", _cause(exc)) from None
    finally:
        connection.close()


def _cause(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connect_refused"
    if isinstance(exc, ssl.SSLError):
        return "tls"
    return "other"
