"""Bounded HTTP for URLs that certificates point to (OCSP responders, CRLs).

A URL taken from a certificate is untrusted input, so ``fetch`` enforces:

* the egress policy: http and https only; the name is resolved once and every
  address checked (no loopback, link-local, unspecified, ``0.0.0.0/8``, multicast or
  cloud-metadata address, nor an IPv6 address that leads to one: IPv4-mapped or
  -compatible, SIIT, NAT64, 6to4, Teredo - unless ``allow_networks`` lists it); the
  connection then goes to the address that was checked, so a second DNS answer
  cannot slip past.  A URL the operator configured is fetched with ``ANY_NETWORK``:
  the policy is for URLs taken from certificates and /probe callers;
* one total deadline over resolve, connect, TLS handshake, request, status line,
  headers, chunk-size lines and body: every read from the socket is given only the
  time left, so a server that dribbles bytes (even two a second into a header line)
  is cut off at the deadline, not per read;
* a byte cap, checked against ``Content-Length`` before reading and against the
  bytes actually read; a lying ``Content-Length`` changes nothing;
* no redirects: a 3xx is an answer like any other.

Failures raise ``FetchError`` with a ``kind``: ``refused`` (policy), ``unavailable``
(DNS, connect, reset, timeout) or ``too_large``.
"""

from __future__ import annotations

import functools
import http.client
import io
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

# Beyond loopback, link-local, multicast and unspecified, which ipaddress knows:
# cloud metadata services (AWS/GCP/Azure/OpenStack: 169.254.169.254, AWS over IPv6,
# Alibaba Cloud, Oracle Cloud's older address) and 0.0.0.0/8, which Linux connects
# to the host itself.
METADATA_NETWORKS = tuple(
    ipaddress.ip_network(network)
    for network in ("169.254.169.254/32", "fd00:ec2::254/128", "100.100.100.200/32", "192.0.0.192/32")
)
THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")
# IPv6 prefixes whose addresses carry an IPv4 address in their last 32 bits and reach
# it: IPv4-compatible (::a.b.c.d, deprecated but still routed by some stacks), SIIT
# (::ffff:0:a.b.c.d), NAT64's well-known and local-use prefixes.  IPv4-mapped
# (ipv4_mapped), 6to4 (sixtofour) and Teredo (teredo) are decoded by ipaddress.
_LAST_32_BITS_PREFIXES = tuple(
    ipaddress.IPv6Network(network) for network in ("::/96", "::ffff:0:0:0/96", "64:ff9b::/96", "64:ff9b:1::/48")
)
# For URLs the operator configured (a ``crl`` or ``ocsp`` probe's ``url``, a ``ca``
# probe's URLs): trusted like a configured TLS target, wherever they point.  The
# policy is for URLs that come from certificates and from /probe callers.
ANY_NETWORK: tuple[str, ...] = ("0.0.0.0/0", "::/0")


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
    """True when the egress policy forbids connecting to ``address``: it, or an IPv4
    address it embeds (``::ffff:127.0.0.1``, ``64:ff9b::7f00:1``, ``2002:7f00:1::``),
    is refused and not in ``allow_networks``."""
    return _refused_address(address, tuple(allow_networks))


# A pure function of its arguments, asked before every fetch (each uncached OCSP
# check) with the same few responder addresses: parsing the address and the allowed
# networks and testing a dozen ranges took 9-20 µs a call, a look-up here 0.3 µs.
@functools.lru_cache(maxsize=4096)
def _refused_address(address: str, allow_networks: tuple[str, ...]) -> bool:
    ip = ipaddress.ip_address(address)
    allowed = [ipaddress.ip_network(network, strict=False) for network in allow_networks]
    return any(
        _refused(candidate) and not any(candidate in network for network in allowed)
        for candidate in (ip, *embedded_ipv4(ip))
    )


def _refused(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return (
        ip.is_loopback
        or ip.is_link_local
        or ip.is_unspecified
        or ip.is_multicast
        or ip in THIS_NETWORK
        or any(ip in network for network in METADATA_NETWORKS)
    )


def embedded_ipv4(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address leads to (mapped, compatible, SIIT, NAT64,
    6to4, Teredo's client and server)."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return []
    found = [v4 for v4 in (ip.ipv4_mapped, ip.sixtofour) if v4 is not None]
    if ip.teredo is not None:
        found.extend(ip.teredo)
    if any(ip in prefix for prefix in _LAST_32_BITS_PREFIXES):
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return found


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
    if is_ip(host):
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


def is_ip(host: str) -> bool:
    """``host`` is an IP address literal (IPv4 dotted quad or IPv6), not a name."""
    if ":" not in host and not host[-1:].isdigit():
        # A name (an IPv4 literal ends in a digit, an IPv6 one has a colon), told
        # without the exception: every run of a TLS target by name asks twice.
        return False
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


class _DeadlineReader(io.RawIOBase):
    """The socket as a raw stream whose every read gets only the time left before
    ``deadline``: http.client's own reads (status line, headers, chunk sizes) wait
    per ``recv``, so a byte every few seconds would otherwise never time out."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        super().__init__()
        self._sock = sock
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no complete answer before the deadline")
        self._sock.settimeout(left)
        return self._sock.recv_into(buffer)


class _DeadlineResponse(http.client.HTTPResponse):
    def __init__(self, sock: socket.socket, *args: Any, deadline: float, **kwargs: Any) -> None:
        super().__init__(sock, *args, **kwargs)
        self.fp.close()  # the socket's own file, with per-read timeouts
        self.fp = io.BufferedReader(_DeadlineReader(sock, deadline))


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Connects to a checked address while sending the URL's host name; its
    response reads under the fetch's deadline."""

    def __init__(self, host: str, port: int, address: str, deadline: float) -> None:
        super().__init__(host, port)
        self._address = address
        self._deadline = deadline
        self.response_class = functools.partial(_DeadlineResponse, deadline=deadline)  # type: ignore[assignment]

    def connect(self) -> None:
        # Sending the request runs under this timeout too: sendall's timeout is the
        # total for the whole buffer.
        self.sock = socket.create_connection((self._address, self.port), _left(self._deadline))
        # Without it, Nagle holds a request behind the handshake's last flight until the
        # server's delayed ACK: 40 ms more per HTTPS request.  http.client sets it too.
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _PinnedHTTPSConnection(_PinnedHTTPConnection):
    default_port = 443

    def __init__(self, host: str, port: int, address: str, deadline: float, context: ssl.SSLContext) -> None:
        super().__init__(host, port, address, deadline)
        self._context = context

    def connect(self) -> None:
        super().connect()
        # The handshake's timeout is one total for the whole handshake (CPython's
        # _ssl keeps a deadline across its reads), here the time left.
        self.sock.settimeout(_left(self._deadline))
        self.sock = self._context.wrap_socket(self.sock, server_hostname=self.host)


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("no complete answer before the deadline")
    return left


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

    if deadline <= time.monotonic():
        raise FetchError("unavailable", f"{url}: no complete answer before the deadline", "timeout")
    connection: _PinnedHTTPConnection
    if parts.scheme == "https":
        connection = _PinnedHTTPSConnection(parts.hostname, port, address, deadline, tls_context or _TLS_CONTEXT)
    else:
        connection = _PinnedHTTPConnection(parts.hostname, port, address, deadline)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    try:
        connection.request(method, path, body=body, headers={"User-Agent": "certscope", **(headers or {})})
        response = connection.getresponse()
        announced = response.getheader("Content-Length")
        if announced is not None and announced.isdigit() and int(announced) > max_bytes:
            raise FetchError("too_large", f"{url}: Content-Length {announced} is over the {max_bytes}-byte cap")
        chunks: list[bytes] = []
        received = 0
        while True:
            chunk = response.read1(65536)
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
