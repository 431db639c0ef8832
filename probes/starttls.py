"""STARTTLS: the plaintext exchange that upgrades a connection before the handshake.

``upgrade(protocol, sock, server_name, deadline)`` runs the protocol's exchange on a
connected socket and returns when the server has agreed to start TLS; any refusal,
garbage, oversize answer or missed deadline raises ``StartTlsError`` with what the
server said.  Every read is bounded in bytes and by the run's deadline.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

PROTOCOLS = ("smtp", "imap", "pop3", "ftp", "postgres", "ldap", "xmpp")
MAX_REPLY = 16 * 1024


class StartTlsError(Exception):
    pass


class _Reader:
    """Line and chunk reads against a deadline, never past MAX_REPLY bytes."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline
        self.buffer = b""
        self.total = 0

    def _fill(self) -> None:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("deadline reached during STARTTLS")
        self.sock.settimeout(remaining)
        chunk = self.sock.recv(4096)
        if not chunk:
            raise StartTlsError(f"server closed the connection (after {self.buffer[-200:]!r})")
        self.total += len(chunk)
        if self.total > MAX_REPLY:
            raise StartTlsError(f"server sent more than {MAX_REPLY} bytes without agreeing to STARTTLS")
        self.buffer += chunk

    def line(self) -> str:
        while b"\n" not in self.buffer:
            self._fill()
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.rstrip(b"\r").decode("utf-8", "replace")

    def exactly(self, count: int) -> bytes:
        while len(self.buffer) < count:
            self._fill()
        data, self.buffer = self.buffer[:count], self.buffer[count:]
        return data

    def until(self, *markers: bytes) -> bytes:
        while not any(marker in self.buffer for marker in markers):
            self._fill()
        data, self.buffer = self.buffer, b""
        return data

    def leftover(self) -> None:
        # Bytes after the go-ahead would be read as TLS records: a protocol violation.
        if self.buffer:
            raise StartTlsError(f"server sent data after agreeing to STARTTLS: {self.buffer[:80]!r}")


def _reply(reader: _Reader) -> tuple[int, list[str]]:
    """A multi-line SMTP/FTP reply: '250-...' lines then '250 ...'."""
    lines = []
    while True:
        line = reader.line()
        lines.append(line)
        if len(line) < 3 or not line[:3].isdigit():
            raise StartTlsError(f"not a reply: {line[:120]!r}")
        if len(line) == 3 or line[3] == " ":
            return int(line[:3]), lines


def _expect(reader: _Reader, code: int, what: str) -> list[str]:
    got, lines = _reply(reader)
    if got != code:
        raise StartTlsError(f"{what}: expected {code}, server said {lines[-1][:120]!r}")
    return lines


def _smtp(sock: socket.socket, reader: _Reader, server_name: str) -> None:
    _expect(reader, 220, "greeting")
    sock.sendall(b"EHLO certscope.invalid\r\n")
    capabilities = _expect(reader, 250, "EHLO")
    if not any(line[4:].upper().startswith("STARTTLS") for line in capabilities):
        raise StartTlsError("server does not offer STARTTLS in its EHLO reply")
    sock.sendall(b"STARTTLS\r\n")
    _expect(reader, 220, "STARTTLS")


def _ftp(sock: socket.socket, reader: _Reader, server_name: str) -> None:
    _expect(reader, 220, "greeting")
    sock.sendall(b"AUTH TLS\r\n")
    _expect(reader, 234, "AUTH TLS")


def _imap(sock: socket.socket, reader: _Reader, server_name: str) -> None:
    greeting = reader.line()
    if not greeting.upper().startswith("* OK"):
        raise StartTlsError(f"greeting: {greeting[:120]!r}")
    sock.sendall(b"cs1 STARTTLS\r\n")
    while True:
        line = reader.line()
        if line.startswith("cs1 "):
            if not line.upper().startswith("CS1 OK"):
                raise StartTlsError(f"STARTTLS refused: {line[:120]!r}")
            return


def _pop3(sock: socket.socket, reader: _Reader, server_name: str) -> None:
    greeting = reader.line()
    if not greeting.startswith("+OK"):
        raise StartTlsError(f"greeting: {greeting[:120]!r}")
    sock.sendall(b"STLS\r\n")
    answer = reader.line()
    if not answer.startswith("+OK"):
        raise StartTlsError(f"STLS refused: {answer[:120]!r}")


def _postgres(sock: socket.socket, reader: _Reader, server_name: str) -> None:
    # SSLRequest: Int32 length 8, Int32 80877103.
    sock.sendall((8).to_bytes(4, "big") + (80877103).to_bytes(4, "big"))
    answer = reader.exactly(1)
    if answer != b"S":
        raise StartTlsError(f"server refused SSL (answered {answer!r})")


_LDAP_STARTTLS_OID = b"1.3.6.1.4.1.1466.20037"


def _ldap(sock: socket.socket, reader: _Reader, server_name: str) -> None:
    # LDAPMessage { messageID 1, extendedReq [APPLICATION 23] { requestName [0] OID } }
    request_name = b"\x80" + bytes([len(_LDAP_STARTTLS_OID)]) + _LDAP_STARTTLS_OID
    extended = b"\x77" + bytes([len(request_name)]) + request_name
    body = b"\x02\x01\x01" + extended
    sock.sendall(b"\x30" + bytes([len(body)]) + body)
    header = reader.exactly(2)
    if header[0] != 0x30:
        raise StartTlsError(f"not an LDAP message: {header!r}")
    length = header[1]
    if length & 0x80:
        length = int.from_bytes(reader.exactly(length & 0x7F), "big")
    message = reader.exactly(length)
    # messageID (02 01 01), then ExtendedResponse (0x78) whose first element is the
    # resultCode ENUMERATED (0a 01 NN).
    marker = message.find(b"\x0a\x01")
    if b"\x78" not in message[:8] or marker < 0:
        raise StartTlsError(f"unexpected LDAP response: {message[:40].hex()}")
    result_code = message[marker + 2]
    if result_code != 0:
        raise StartTlsError(f"StartTLS refused with LDAP result code {result_code}")


def _xmpp(sock: socket.socket, reader: _Reader, server_name: str) -> None:
    sock.sendall(
        (
            "<?xml version='1.0'?><stream:stream to='" + server_name + "' xmlns='jabber:client' "
            "xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>"
        ).encode()
    )
    features = reader.until(b"</stream:features>", b"<stream:error")
    if b"<starttls" not in features:
        raise StartTlsError("server does not offer STARTTLS in its stream features")
    sock.sendall(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    answer = reader.until(b"<proceed", b"<failure")
    if b"<proceed" not in answer:
        raise StartTlsError(f"STARTTLS refused: {answer[:120]!r}")
    if not answer.rstrip().endswith(b"/>") and b"</proceed>" not in answer:
        reader.until(b">")


_EXCHANGES: dict[str, Callable[[socket.socket, _Reader, str], None]] = {
    "smtp": _smtp,
    "imap": _imap,
    "pop3": _pop3,
    "ftp": _ftp,
    "postgres": _postgres,
    "ldap": _ldap,
    "xmpp": _xmpp,
}


def upgrade(protocol: str, sock: socket.socket, server_name: str, deadline: float) -> None:
    reader = _Reader(sock, deadline)
    _EXCHANGES[protocol](sock, reader, server_name)
    reader.leftover()
