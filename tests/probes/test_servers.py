"""Prove every launcher in :mod:`tests.fixtures.servers` gives a real, working endpoint.

Only Python's ``ssl`` and ``socket`` (and ``openssl s_client`` once) talk to the servers
here, never certscope code: these servers are the ground truth for the TLS probe's tests.
The asserted exception types and messages are the ones observed on this machine (Python
3.11 with OpenSSL 3.0); a probe can rely on them to classify failures.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import ssl
import struct
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import pkcs12

from tests.fixtures import servers
from tests.fixtures.pki import Pki
from tests.fixtures.servers import (
    POSTGRES_SSL_REQUEST,
    AddressInUseError,
    FaultServer,
    LeafFiles,
    ServerProcess,
    ServerStartError,
    SmtpServer,
    TlsFiles,
    build_tls_pki,
    dovecot_imap_server,
    dribbler,
    haproxy_server,
    nginx_server,
    openssl_s_server,
    postgres_server,
    refused_port,
    reset_server,
    smtp_starttls_server,
    tarpit,
    write_tls_files,
)

Address = tuple[str, int]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def tls_files(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return write_tls_files(build_tls_pki(pki), tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def server_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("servers")


@pytest.fixture(scope="module")
def nginx(tls_files: TlsFiles, server_dir: Path) -> Iterator[ServerProcess]:
    leaf = tls_files.localhost
    with nginx_server(leaf.cert, leaf.key, leaf.chain, client_ca=tls_files.client_ca, workdir=server_dir) as server:
        yield server


@pytest.fixture(scope="module")
def haproxy(tls_files: TlsFiles, server_dir: Path) -> Iterator[ServerProcess]:
    leaf = tls_files.localhost
    with haproxy_server(leaf.cert, leaf.key, leaf.chain, client_ca=tls_files.client_ca, workdir=server_dir) as server:
        yield server


@pytest.fixture(scope="module")
def postgres(tls_files: TlsFiles, server_dir: Path) -> Iterator[ServerProcess]:
    leaf = tls_files.localhost
    with postgres_server(leaf.cert, leaf.key, leaf.chain, workdir=server_dir) as server:
        yield server


@pytest.fixture(scope="module")
def dovecot(tls_files: TlsFiles, server_dir: Path) -> Iterator[ServerProcess]:
    leaf = tls_files.localhost
    with dovecot_imap_server(leaf.cert, leaf.key, leaf.chain, workdir=server_dir) as server:
        yield server


@pytest.fixture(scope="module")
def smtp(tls_files: TlsFiles) -> Iterator[SmtpServer]:
    leaf = tls_files.localhost
    with smtp_starttls_server(leaf.cert, leaf.key, leaf.chain) as server:
        yield server


# --------------------------------------------------------------------------- client helpers


def client_context(
    ca: Path | None,
    cert: LeafFiles | None = None,
    *,
    tls_version: ssl.TLSVersion | None = None,
) -> ssl.SSLContext:
    """A default (verifying) client context trusting ``ca``, optionally with a client cert
    and pinned to one TLS version."""
    context = ssl.create_default_context(cafile=str(ca) if ca else None)
    if cert is not None:
        context.load_cert_chain(str(cert.fullchain), str(cert.key))
    if tls_version is not None:
        context.minimum_version = context.maximum_version = tls_version
    return context


@contextlib.contextmanager
def tls_connect(
    address: Address, context: ssl.SSLContext, server_hostname: str = "localhost", timeout: float = 5.0
) -> Iterator[ssl.SSLSocket]:
    with socket.create_connection(address, timeout=timeout) as raw:
        with context.wrap_socket(raw, server_hostname=server_hostname) as sock:
            yield sock


def served_chain_length(sock: ssl.SSLSocket) -> int:
    """How many certificates the server sent (Python 3.11: only the private API has it)."""
    return len(sock._sslobj.get_unverified_chain())  # type: ignore[attr-defined]


def http_get(sock: ssl.SSLSocket, path: str = "/") -> tuple[int, str, bytes]:
    """One HTTP/1.0 request; returns (status, raw headers, body)."""
    sock.sendall(f"GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n".encode())
    response = b""
    with contextlib.suppress(ssl.SSLEOFError):  # servers that skip close_notify
        while chunk := sock.recv(65536):
            response += chunk
    head, _, body = response.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, head.decode(errors="replace"), body


def assert_ssl_error(error: BaseException, reason: str) -> None:
    """An ``ssl.SSLError`` with this OpenSSL reason, which its message also spells out:
    e.g. TLSV13_ALERT_CERTIFICATE_REQUIRED -> "[SSL: TLSV13_ALERT_CERTIFICATE_REQUIRED]
    tlsv13 alert certificate required (_ssl.c:2580)"."""
    assert type(error) is ssl.SSLError, repr(error)
    assert error.reason == reason, repr(error)
    assert f"[SSL: {reason}] {reason.lower().replace('_', ' ')} (_ssl.c:" in str(error), str(error)


def recv_line(sock: socket.socket) -> bytes:
    """One CRLF-terminated line, read byte by byte so nothing past it is consumed
    before a STARTTLS upgrade."""
    line = b""
    while not line.endswith(b"\n"):
        byte = sock.recv(1)
        if not byte:
            raise ConnectionError(f"connection closed after {line!r}")
        line += byte
    return line


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def group_pids(pgid: int) -> set[int]:
    """Live (non-zombie) processes in process group ``pgid``."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.add(int(entry.name))
    return pids


# --------------------------------------------------------------------------- PKI files


def test_tls_files_are_written_with_the_right_properties(tls_files: TlsFiles) -> None:
    root = ssl.create_default_context(cafile=str(tls_files.root_ca))
    assert root.cert_store_stats()["x509_ca"] == 1
    assert tls_files.localhost.chain is not None and tls_files.self_signed.chain is None
    assert tls_files.localhost.fullchain.read_bytes().count(b"BEGIN CERTIFICATE") == 2
    assert os.stat(tls_files.localhost.key).st_mode & 0o777 == 0o600
    key, cert, extra = pkcs12.load_key_and_certificates(
        tls_files.client_p12.read_bytes(), tls_files.client_p12_password
    )
    assert key is not None and cert is not None and not extra
    assert "client.localhost" in cert.subject.rfc4514_string()
    with pytest.raises(ValueError):
        pkcs12.load_key_and_certificates(tls_files.client_p12.read_bytes(), b"wrong")


# --------------------------------------------------------------------------- openssl s_server


def test_s_server_valid_chain(tls_files: TlsFiles, server_dir: Path) -> None:
    leaf = tls_files.localhost
    with openssl_s_server(leaf.cert, leaf.key, leaf.chain, workdir=server_dir) as server:
        assert re.fullmatch(r"<s_server tls://127\.0\.0\.1:\d+ pid=\d+ workdir=.*>", repr(server))
        for hostname in ("localhost", "127.0.0.1"):  # both SANs are there
            with tls_connect(server.address, client_context(tls_files.root_ca), hostname) as sock:
                assert served_chain_length(sock) == 2
                assert sock.version() == "TLSv1.3"
                status, _, body = http_get(sock)
        assert status == 200 and b"<HTML>" in body
    assert "stopped" in repr(server)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(server.address, timeout=2)


@pytest.mark.parametrize(
    ("leaf_name", "verify_code", "message"),
    [
        ("expired", 10, "certificate has expired"),
        ("not_yet_valid", 9, "certificate is not yet valid"),
        ("wrong_host", 62, "Hostname mismatch, certificate is not valid for 'localhost'."),
        ("self_signed", 18, "self-signed certificate"),
        ("untrusted", 20, "unable to get local issuer certificate"),
    ],
)
def test_s_server_bad_certificates(
    tls_files: TlsFiles, server_dir: Path, leaf_name: str, verify_code: int, message: str
) -> None:
    leaf: LeafFiles = getattr(tls_files, leaf_name)
    with openssl_s_server(leaf.cert, leaf.key, leaf.chain, workdir=server_dir) as server:
        with pytest.raises(ssl.SSLCertVerificationError) as caught:
            with tls_connect(server.address, client_context(tls_files.root_ca)):
                pass
        assert caught.value.verify_code == verify_code
        assert caught.value.verify_message == message
        # Without verification the same server hands over its certificate.
        unverified = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        unverified.check_hostname, unverified.verify_mode = False, ssl.CERT_NONE
        with tls_connect(server.address, unverified) as sock:
            assert served_chain_length(sock) == (1 if leaf.chain is None else 2)


def test_s_server_untrusted_root_verifies_against_its_own_root(tls_files: TlsFiles, server_dir: Path) -> None:
    leaf = tls_files.untrusted
    with openssl_s_server(leaf.cert, leaf.key, leaf.chain, workdir=server_dir) as server:
        with tls_connect(server.address, client_context(tls_files.untrusted_root_ca)) as sock:
            assert served_chain_length(sock) == 2


def test_s_server_incomplete_chain_sends_the_leaf_only(tls_files: TlsFiles, server_dir: Path) -> None:
    leaf = tls_files.localhost
    with openssl_s_server(leaf.cert, leaf.key, None, workdir=server_dir) as server:
        with pytest.raises(ssl.SSLCertVerificationError) as caught:
            with tls_connect(server.address, client_context(tls_files.root_ca)):
                pass
        assert caught.value.verify_code == 20  # unable to get local issuer certificate
        unverified = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        unverified.check_hostname, unverified.verify_mode = False, ssl.CERT_NONE
        with tls_connect(server.address, unverified) as sock:
            assert served_chain_length(sock) == 1


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1 is deprecated:DeprecationWarning")
def test_s_server_tls10_only(tls_files: TlsFiles, server_dir: Path) -> None:
    leaf = tls_files.localhost
    with openssl_s_server(leaf.cert, leaf.key, leaf.chain, tls_versions=("TLSv1",), workdir=server_dir) as server:
        assert "-tls1" in server.args and "DEFAULT@SECLEVEL=0" in server.args
        # A default Python client (TLS 1.2 minimum) is refused by the server.
        with pytest.raises(ssl.SSLError) as caught:
            with tls_connect(server.address, client_context(tls_files.root_ca)):
                pass
        assert_ssl_error(caught.value, "TLSV1_ALERT_PROTOCOL_VERSION")
        # openssl s_client speaking TLS 1.0 at security level 0 gets through.
        result = subprocess.run(
            [
                *("openssl", "s_client", "-connect", f"{server.host}:{server.port}", "-tls1"),
                *("-cipher", "DEFAULT@SECLEVEL=0", "-CAfile", str(tls_files.root_ca), "-verify_return_error"),
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert re.search(r"Protocol\s*: TLSv1\n", result.stdout), result.stdout
        assert "Verify return code: 0 (ok)" in result.stdout
        # So does Python, once told to allow TLS 1.0 at security level 0.
        legacy = client_context(tls_files.root_ca, tls_version=ssl.TLSVersion.TLSv1)
        legacy.set_ciphers("DEFAULT@SECLEVEL=0")
        with tls_connect(server.address, legacy) as sock:
            assert sock.version() == "TLSv1"


@pytest.fixture(scope="module", params=["TLSv1.2", "TLSv1.3"])
def mtls_s_server(request: pytest.FixtureRequest, tls_files: TlsFiles, server_dir: Path) -> Iterator[ServerProcess]:
    leaf = tls_files.localhost
    with openssl_s_server(
        leaf.cert,
        leaf.key,
        leaf.chain,
        tls_versions=(request.param,),
        verify_client="require",
        client_ca=tls_files.client_ca,
        workdir=server_dir,
    ) as server:
        yield server


def is_tls13(server: ServerProcess) -> bool:
    return "-tls1_3" in server.args


def test_s_server_mtls_with_client_cert(mtls_s_server: ServerProcess, tls_files: TlsFiles) -> None:
    with tls_connect(mtls_s_server.address, client_context(tls_files.root_ca, tls_files.client)) as sock:
        assert sock.version() == ("TLSv1.3" if is_tls13(mtls_s_server) else "TLSv1.2")
        status, _, body = http_get(sock)
    assert status == 200 and b"client.localhost" in body  # s_server -www shows the client cert


@pytest.mark.parametrize(
    ("client", "tls12_reason", "tls13_reason"),
    [
        (None, "SSLV3_ALERT_HANDSHAKE_FAILURE", "TLSV13_ALERT_CERTIFICATE_REQUIRED"),
        ("wrong_ca_client", "TLSV1_ALERT_UNKNOWN_CA", "TLSV1_ALERT_UNKNOWN_CA"),
    ],
)
def test_s_server_mtls_rejects(
    mtls_s_server: ServerProcess, tls_files: TlsFiles, client: str | None, tls12_reason: str, tls13_reason: str
) -> None:
    """TLS 1.2: the handshake itself fails.  TLS 1.3: the client's handshake completes
    and the rejection only shows on the first read."""
    context = client_context(tls_files.root_ca, getattr(tls_files, client) if client else None)
    if is_tls13(mtls_s_server):
        with tls_connect(mtls_s_server.address, context) as sock:
            assert sock.version() == "TLSv1.3"
            with pytest.raises(ssl.SSLError) as caught:
                sock.recv(1)
        assert_ssl_error(caught.value, tls13_reason)
    else:
        with pytest.raises(ssl.SSLError) as caught:
            with tls_connect(mtls_s_server.address, context):
                pass
        assert_ssl_error(caught.value, tls12_reason)


def test_s_server_request_mode_accepts_no_client_cert(tls_files: TlsFiles, server_dir: Path) -> None:
    leaf = tls_files.localhost
    with openssl_s_server(
        leaf.cert, leaf.key, leaf.chain, verify_client="request", client_ca=tls_files.client_ca, workdir=server_dir
    ) as server:
        with tls_connect(server.address, client_context(tls_files.root_ca)) as sock:
            assert http_get(sock)[0] == 200


# --------------------------------------------------------------------------- nginx and haproxy


def test_nginx_client_cert_accepted_then_http_status(nginx: ServerProcess, tls_files: TlsFiles) -> None:
    context = client_context(tls_files.root_ca, tls_files.client)
    for path, expected in (("/", 200), ("/forbidden", 403), ("/secret", 401)):
        with tls_connect(nginx.address, context) as sock:
            assert served_chain_length(sock) == 2
            status, headers, body = http_get(sock, path)
        assert status == expected, (path, headers)
        assert "X-Client-Verify: SUCCESS" in headers
    assert body == b"unauthorized\n"


@pytest.mark.parametrize(
    ("client", "verify", "message"),
    [
        (None, "NONE", b"No required SSL certificate was sent"),
        ("wrong_ca_client", "FAILED:", b"The SSL certificate error"),
    ],
)
def test_nginx_without_valid_client_cert_answers_400(
    nginx: ServerProcess, tls_files: TlsFiles, client: str | None, verify: str, message: bytes
) -> None:
    """nginx completes the handshake (TLS 1.2 and 1.3) and refuses at the HTTP level."""
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        context = client_context(tls_files.root_ca, getattr(tls_files, client) if client else None, tls_version=version)
        with tls_connect(nginx.address, context) as sock:
            status, headers, body = http_get(sock)
        assert status == 400 and message in body
        assert f"X-Client-Verify: {verify}" in headers


def test_haproxy_client_cert_accepted_then_http_status(haproxy: ServerProcess, tls_files: TlsFiles) -> None:
    context = client_context(tls_files.root_ca, tls_files.client)
    for path, expected, body_expected in (("/", 200, b"ok"), ("/forbidden", 403, b"forbidden")):
        with tls_connect(haproxy.address, context) as sock:
            assert served_chain_length(sock) == 2
            status, _, body = http_get(sock, path)
        assert (status, body) == (expected, body_expected)


@pytest.mark.parametrize(
    ("client", "tls12_reason", "tls13_reason"),
    [
        (None, "SSLV3_ALERT_HANDSHAKE_FAILURE", "TLSV13_ALERT_CERTIFICATE_REQUIRED"),
        ("wrong_ca_client", "TLSV1_ALERT_UNKNOWN_CA", "TLSV1_ALERT_UNKNOWN_CA"),
    ],
)
def test_haproxy_without_valid_client_cert_fails_tls(
    haproxy: ServerProcess, tls_files: TlsFiles, client: str | None, tls12_reason: str, tls13_reason: str
) -> None:
    cert = getattr(tls_files, client) if client else None
    with pytest.raises(ssl.SSLError) as caught:
        with tls_connect(haproxy.address, client_context(tls_files.root_ca, cert, tls_version=ssl.TLSVersion.TLSv1_2)):
            pass
    assert_ssl_error(caught.value, tls12_reason)
    with tls_connect(haproxy.address, client_context(tls_files.root_ca, cert)) as sock:
        assert sock.version() == "TLSv1.3"
        with pytest.raises(ssl.SSLError) as caught:
            sock.recv(1)
    assert_ssl_error(caught.value, tls13_reason)


# --------------------------------------------------------------------------- STARTTLS servers


def test_postgres_ssl_request_then_tls(postgres: ServerProcess, tls_files: TlsFiles) -> None:
    with socket.create_connection(postgres.address, timeout=5) as raw:
        raw.sendall(POSTGRES_SSL_REQUEST)
        assert raw.recv(1) == b"S"
        with client_context(tls_files.root_ca).wrap_socket(raw, server_hostname="localhost") as sock:
            assert served_chain_length(sock) == 2
            assert sock.version() == "TLSv1.3"
            # The protocol goes on inside TLS: trust auth answers AuthenticationOk.
            params = b"user\0postgres\0database\0postgres\0\0"
            sock.sendall(struct.pack("!II", 8 + len(params), 196608) + params)
            assert sock.recv(9) == b"R" + struct.pack("!II", 8, 0)
            sock.sendall(b"X" + struct.pack("!I", 4))


def test_imap_starttls(dovecot: ServerProcess, tls_files: TlsFiles) -> None:
    with socket.create_connection(dovecot.address, timeout=5) as raw:
        greeting = recv_line(raw)
        assert greeting.startswith(b"* OK") and b"STARTTLS" in greeting
        raw.sendall(b"a STARTTLS\r\n")
        assert recv_line(raw).startswith(b"a OK")
        with client_context(tls_files.root_ca).wrap_socket(raw, server_hostname="localhost") as sock:
            assert served_chain_length(sock) == 2
            sock.sendall(b"b CAPABILITY\r\n")
            capability, done = recv_line(sock), recv_line(sock)
            sock.sendall(b"c LOGIN alice secret\r\n")
            login = recv_line(sock)
    assert capability.startswith(b"* CAPABILITY") and b"AUTH=PLAIN" in capability
    assert done.startswith(b"b OK")
    assert login.startswith(b"c OK") and b"Logged in" in login


def smtp_reply(sock: socket.socket) -> list[bytes]:
    lines = [recv_line(sock)]
    while lines[-1][3:4] == b"-":
        lines.append(recv_line(sock))
    return lines


def test_smtp_starttls(smtp: SmtpServer, tls_files: TlsFiles) -> None:
    assert re.fullmatch(r"<aiosmtpd smtp://127\.0\.0\.1:\d+>", repr(smtp))
    with socket.create_connection((smtp.host, smtp.port), timeout=5) as raw:
        assert smtp_reply(raw)[0].startswith(b"220 ")
        raw.sendall(b"EHLO client.localhost\r\n")
        assert b"250-STARTTLS\r\n" in smtp_reply(raw)
        raw.sendall(b"STARTTLS\r\n")
        assert smtp_reply(raw)[0].startswith(b"220 ")
        with client_context(tls_files.root_ca).wrap_socket(raw, server_hostname="localhost") as sock:
            assert served_chain_length(sock) == 2
            sock.sendall(b"EHLO client.localhost\r\n")
            reply = smtp_reply(sock)
            sock.sendall(b"QUIT\r\n")
    assert reply[-1].startswith(b"250 ") and not any(b"STARTTLS" in line for line in reply)


# --------------------------------------------------------------------------- fault servers


def test_tarpit_handshake_times_out(tls_files: TlsFiles) -> None:
    with tarpit() as server:
        start = time.monotonic()
        with pytest.raises(TimeoutError, match="The handshake operation timed out"):
            with tls_connect(server.address, client_context(tls_files.root_ca), timeout=0.5):
                pass
        assert 0.4 < time.monotonic() - start < 3
        assert server.connections == 1
    assert "stopped" in repr(server)


def test_dribbler_keeps_sending_but_handshake_deadline_holds(tls_files: TlsFiles) -> None:
    with dribbler(interval=0.1) as server:
        with socket.create_connection(server.address, timeout=2) as raw:
            received = b""
            while len(received) < 7:
                received += raw.recv(1)
        assert received == servers.TLS_RECORD_HEADER + b"\0\0"
        start = time.monotonic()
        with pytest.raises(TimeoutError, match="The handshake operation timed out"):
            with tls_connect(server.address, client_context(tls_files.root_ca), timeout=1.0):
                pass
        assert 0.9 < time.monotonic() - start < 3  # one overall deadline, not per byte


def test_reset_server_resets_during_handshake(tls_files: TlsFiles) -> None:
    with reset_server() as server:
        with pytest.raises(ConnectionResetError, match=r"\[Errno 104\] Connection reset by peer"):
            with tls_connect(server.address, client_context(tls_files.root_ca)):
                pass
        assert server.connections == 1


def test_refused_port_refuses() -> None:
    port = refused_port()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2)


def test_fault_server_stop_closes_open_connections() -> None:
    server: FaultServer = tarpit()
    with socket.create_connection(server.address, timeout=2) as raw:
        wait_until(lambda: server.connections == 1)
        server.stop()
        assert raw.recv(1) == b""  # the tarpit hung up
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(server.address, timeout=2)


# --------------------------------------------------------------------------- lifecycle


def test_stop_kills_the_whole_process_group(tls_files: TlsFiles, server_dir: Path) -> None:
    leaf = tls_files.localhost
    server = dovecot_imap_server(leaf.cert, leaf.key, leaf.chain, workdir=server_dir)
    base_dir = re.search(r"base_dir = (\S+)/run", (server.workdir / "dovecot.conf").read_text())
    assert base_dir is not None
    rundir = Path(base_dir[1])
    try:
        wait_until(lambda: len(group_pids(server.pid)) >= 3)  # master, config, log, anvil, ...
    finally:
        server.stop()
    assert group_pids(server.pid) == set()
    assert not rundir.exists()


def test_start_failure_reports_the_logs(tls_files: TlsFiles, server_dir: Path) -> None:
    leaf = tls_files.localhost
    garbage = server_dir / "garbage.crt"
    garbage.write_text("not a certificate\n")
    with pytest.raises(ServerStartError, match=r"(?s)nginx reported a failure.*\[emerg\].*cannot load certificate"):
        nginx_server(garbage, leaf.key, None, client_ca=tls_files.client_ca, workdir=server_dir)
    with pytest.raises(ServerStartError, match=r"(?s)s_server exited with status 1.*Unable to load server certificate"):
        openssl_s_server(garbage, leaf.key, None, workdir=server_dir)


def launchers(tls_files: TlsFiles, workdir: Path) -> dict[str, Callable[[], ServerProcess]]:
    """The launchers that pick a port themselves (the others bind port 0)."""
    leaf, client_ca = tls_files.localhost, tls_files.client_ca
    return {
        "nginx": lambda: nginx_server(leaf.cert, leaf.key, leaf.chain, client_ca=client_ca, workdir=workdir),
        "haproxy": lambda: haproxy_server(leaf.cert, leaf.key, leaf.chain, client_ca=client_ca, workdir=workdir),
        "dovecot": lambda: dovecot_imap_server(leaf.cert, leaf.key, leaf.chain, workdir=workdir),
        "postgres": lambda: postgres_server(leaf.cert, leaf.key, leaf.chain, workdir=workdir),
    }


@pytest.fixture
def squatter() -> Iterator[socket.socket]:
    """A listening socket holding a port, standing for a process that grabbed it first."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock


@pytest.mark.parametrize("launcher", ["nginx", "haproxy", "dovecot", "postgres"])
def test_port_taken_between_pick_and_bind_is_retried(
    monkeypatch: pytest.MonkeyPatch, tls_files: TlsFiles, server_dir: Path, squatter: socket.socket, launcher: str
) -> None:
    taken = squatter.getsockname()[1]
    picked: list[int] = []
    real_free_port = servers.free_port

    def pick() -> int:
        picked.append(real_free_port() if picked else taken)
        return picked[-1]

    monkeypatch.setattr(servers, "free_port", pick)
    with launchers(tls_files, server_dir)[launcher]() as server:
        assert picked[0] == taken and server.port == picked[1] and len(picked) == 2
        assert servers.listening(server.pid, server.port)


@pytest.mark.parametrize("launcher", ["nginx", "dovecot"])
def test_port_always_taken_gives_up(
    monkeypatch: pytest.MonkeyPatch, tls_files: TlsFiles, tmp_path: Path, squatter: socket.socket, launcher: str
) -> None:
    taken = squatter.getsockname()[1]
    monkeypatch.setattr(servers, "free_port", lambda: taken)
    run_root = Path(tempfile.mkdtemp(prefix="certscope-test-"))
    run_root.chmod(0o755)
    monkeypatch.setattr(servers, "RUN_ROOT", run_root)
    try:
        with pytest.raises(AddressInUseError, match=f"port {taken} already in use"):
            launchers(tls_files, tmp_path)[launcher]()
        assert list(run_root.iterdir()) == []  # private run dirs are removed
    finally:
        shutil.rmtree(run_root)


def test_stop_is_idempotent_and_leaves_no_process(tls_files: TlsFiles, server_dir: Path) -> None:
    leaf = tls_files.localhost
    server = openssl_s_server(leaf.cert, leaf.key, leaf.chain, workdir=server_dir)
    server.stop()
    server.stop()
    with pytest.raises(ProcessLookupError):
        os.killpg(server.pid, 0)
