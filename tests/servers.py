"""Real TLS endpoints on 127.0.0.1 for tests: openssl s_server, nginx, haproxy, PostgreSQL,
dovecot IMAP, aiosmtpd SMTP, plus misbehaving TCP servers written here.

Everything binds 127.0.0.1 only, on a port the OS picks: port 0 where the server can
tell us what it got (``openssl s_server``, aiosmtpd, the Python fault servers), otherwise a
port found free by binding port 0 and closing it, with a retry when the server then reports
"Address already in use".

Each launcher returns a started server object with ``.host``, ``.port``, ``.stop()`` and a
readable ``repr``; it is also a context manager (``with nginx_server(...) as srv:``).  A
launcher returns only once the server accepts connections; if it cannot start,
:class:`ServerStartError` carries the server's logs.

Process hygiene: every external server runs in its own session (process group), under
``setpriv --pdeathsig KILL`` so it dies with the test process even on ``kill -9``, and
``stop()`` kills the whole group.  ``stop()`` is idempotent, and anything still running at
interpreter exit is stopped by an ``atexit`` hook.  Note: the death signal follows the
*thread* that started the server, so start servers from the main thread (pytest fixtures do).

The PKI for all this is :func:`build_tls_pki` (built on :mod:`tests.pki`) and
:func:`write_tls_files`.

What a Python 3.11 / OpenSSL 3.0 client sees (checked in ``tests/test_servers.py``;
``_ssl.c:1006`` is raised by the handshake, ``_ssl.c:2580`` by a read):

=====================================  ======================================================
mTLS required, no client cert, TLS 1.3  handshake OK, first read: ``ssl.SSLError [SSL:
                                        TLSV13_ALERT_CERTIFICATE_REQUIRED]`` (s_server, haproxy)
mTLS required, no client cert, TLS 1.2  handshake: ``ssl.SSLError [SSL:
                                        SSLV3_ALERT_HANDSHAKE_FAILURE]`` (s_server, haproxy)
client cert from the wrong CA           ``[SSL: TLSV1_ALERT_UNKNOWN_CA]``: handshake in 1.2,
                                        first read in 1.3 (s_server, haproxy)
nginx ``ssl_verify_client on``          handshake OK in 1.2 and 1.3, then HTTP 400 ("No
                                        required SSL certificate was sent" / "The SSL
                                        certificate error")
TLS 1.0-only server, default client     handshake: ``[SSL: TLSV1_ALERT_PROTOCOL_VERSION]``
reset_server                            handshake: ``ConnectionResetError [Errno 104]``
tarpit, dribbler                        handshake: ``TimeoutError("_ssl.c:989: The handshake
                                        operation timed out")``
=====================================  ======================================================
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import datetime as dt
import ipaddress
import itertools
import os
import pwd
import re
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Self, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.pki import DAY, NOW, Issued, Pki, issue

HOST = "127.0.0.1"
TlsVersion = Literal["TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"]
ClientVerify = Literal["request", "require"] | None
ALL_TLS_VERSIONS: tuple[TlsVersion, ...] = ("TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3")
MODERN_TLS_VERSIONS: tuple[TlsVersion, ...] = ("TLSv1.2", "TLSv1.3")
CLIENT_P12_PASSWORD = b"client p12 password"
POSTGRES_BIN = Path(os.environ.get("CERTSCOPE_POSTGRES_BIN", "/usr/lib/postgresql/15/bin"))
POSTGRES_USER = "postgres"
START_TIMEOUT = 20.0
RUN_ROOT: Path | None = None  # where private run dirs go; None: tempfile's default (/tmp)
_ADDRESS_IN_USE = re.compile(r"address already in use", re.IGNORECASE)
ServerT = TypeVar("ServerT")


# --------------------------------------------------------------------------- PKI


@dataclass(frozen=True)
class TlsPki:
    """The certificates the TLS server catalogue needs, on top of :class:`tests.pki.Pki`.

    Server leaves are for ``localhost`` (SANs DNS:localhost and IP:127.0.0.1) unless named
    otherwise; all but ``self_signed`` and ``untrusted`` chain to ``pki.root`` through
    ``pki.intermediate``.
    """

    pki: Pki
    localhost: Issued
    expired: Issued
    not_yet_valid: Issued
    wrong_host: Issued  # SAN wrong.example only
    self_signed: Issued
    untrusted_root: Issued
    untrusted_intermediate: Issued
    untrusted: Issued  # localhost leaf under untrusted_root -> untrusted_intermediate
    client_ca: Issued
    client: Issued  # EKU clientAuth, issued by client_ca
    wrong_ca: Issued
    wrong_ca_client: Issued  # EKU clientAuth, issued by wrong_ca (a CA the servers do not trust)

    @property
    def root(self) -> Issued:
        return self.pki.root

    @property
    def intermediate(self) -> Issued:
        return self.pki.intermediate


def localhost_sans() -> x509.SubjectAlternativeName:
    """DNS:localhost and IP:127.0.0.1 (``tests.pki.issue`` only makes DNS SANs)."""
    return x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.IPv4Address(HOST))])


def issue_client(common_name: str, issuer: Issued, *, not_after: dt.datetime | None = None) -> Issued:
    """A client leaf with EKU clientAuth only (``tests.pki.issue`` always sets serverAuth)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "certscope tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - DAY)
        .not_valid_after(not_after or NOW + 90 * DAY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(issuer.key, hashes.SHA256())
    )
    return Issued(cert, key)


def build_tls_pki(pki: Pki) -> TlsPki:
    """The extra certificates of :class:`TlsPki`, issued with ``tests.pki.issue`` (EC P-256,
    so a few milliseconds) under ``pki``'s root and intermediate where they chain there."""
    sans = (localhost_sans(),)
    untrusted_root = issue("certscope untrusted root", ca=True, not_after=NOW + 3650 * DAY)
    untrusted_intermediate = issue("certscope untrusted intermediate", untrusted_root, ca=True)
    client_ca = issue("certscope client CA", ca=True, not_after=NOW + 3650 * DAY)
    wrong_ca = issue("certscope wrong client CA", ca=True, not_after=NOW + 3650 * DAY)
    return TlsPki(
        pki=pki,
        localhost=issue("localhost", pki.intermediate, extra_extensions=sans),
        expired=issue(
            "localhost", pki.intermediate, not_before=NOW - 100 * DAY, not_after=NOW - 10 * DAY, extra_extensions=sans
        ),
        not_yet_valid=issue(
            "localhost", pki.intermediate, not_before=NOW + 10 * DAY, not_after=NOW + 100 * DAY, extra_extensions=sans
        ),
        wrong_host=issue("wrong.example", pki.intermediate, sans=("wrong.example",)),
        self_signed=issue("localhost", extra_extensions=sans),
        untrusted_root=untrusted_root,
        untrusted_intermediate=untrusted_intermediate,
        untrusted=issue("localhost", untrusted_intermediate, extra_extensions=sans),
        client_ca=client_ca,
        client=issue_client("client.localhost", client_ca),
        wrong_ca=wrong_ca,
        wrong_ca_client=issue_client("wrong-ca-client.localhost", wrong_ca),
    )


@dataclass(frozen=True)
class LeafFiles:
    """PEM files of one leaf: ``cert`` (leaf only), ``key`` (PKCS#8, mode 0600),
    ``chain`` (the intermediates only; None when there are none) and ``fullchain``
    (leaf followed by the intermediates)."""

    cert: Path
    key: Path
    chain: Path | None
    fullchain: Path


@dataclass(frozen=True)
class TlsFiles:
    """Paths written by :func:`write_tls_files`.  ``*_ca`` files hold one CA cert each:
    ``root_ca`` is what a client trusts to verify the servers, ``client_ca`` is what the
    mTLS servers trust to verify clients."""

    directory: Path
    root_ca: Path
    intermediate_ca: Path
    untrusted_root_ca: Path
    client_ca: Path
    wrong_ca: Path
    localhost: LeafFiles
    expired: LeafFiles
    not_yet_valid: LeafFiles
    wrong_host: LeafFiles
    self_signed: LeafFiles
    untrusted: LeafFiles
    client: LeafFiles
    wrong_ca_client: LeafFiles
    client_p12: Path  # client cert + key (no chain: client_ca is a root), encrypted
    client_p12_password: bytes


def write_tls_files(tls_pki: TlsPki, directory: Path, password: bytes = CLIENT_P12_PASSWORD) -> TlsFiles:
    directory.mkdir(parents=True, exist_ok=True)

    def write(name: str, data: bytes, mode: int = 0o644) -> Path:
        path = directory / name
        path.write_bytes(data)
        path.chmod(mode)
        return path

    def leaf(name: str, issued: Issued, *intermediates: Issued) -> LeafFiles:
        chain_pem = b"".join(i.pem for i in intermediates)
        return LeafFiles(
            cert=write(f"{name}.crt", issued.pem),
            key=write(f"{name}.key", issued.key_pem, 0o600),
            chain=write(f"{name}-chain.crt", chain_pem) if intermediates else None,
            fullchain=write(f"{name}-fullchain.crt", issued.pem + chain_pem),
        )

    t = tls_pki
    return TlsFiles(
        directory=directory,
        root_ca=write("root-ca.crt", t.root.pem),
        intermediate_ca=write("intermediate-ca.crt", t.intermediate.pem),
        untrusted_root_ca=write("untrusted-root-ca.crt", t.untrusted_root.pem),
        client_ca=write("client-ca.crt", t.client_ca.pem),
        wrong_ca=write("wrong-ca.crt", t.wrong_ca.pem),
        localhost=leaf("localhost", t.localhost, t.intermediate),
        expired=leaf("expired", t.expired, t.intermediate),
        not_yet_valid=leaf("not-yet-valid", t.not_yet_valid, t.intermediate),
        wrong_host=leaf("wrong-host", t.wrong_host, t.intermediate),
        self_signed=leaf("self-signed", t.self_signed),
        untrusted=leaf("untrusted", t.untrusted, t.untrusted_intermediate),
        client=leaf("client", t.client),
        wrong_ca_client=leaf("wrong-ca-client", t.wrong_ca_client),
        client_p12=write(
            "client.p12",
            pkcs12.serialize_key_and_certificates(
                b"client", t.client.key, t.client.cert, None, serialization.BestAvailableEncryption(password)
            ),
            0o600,
        ),
        client_p12_password=password,
    )


# --------------------------------------------------------------------------- process plumbing


class ServerStartError(RuntimeError):
    """A server did not come up; the message ends with its logs."""


class AddressInUseError(ServerStartError):
    """The port picked for a server was taken before the server could bind it."""


_running: set[Any] = set()  # every started server, until it is stopped
_reserved_ports: list[socket.socket] = []  # see refused_port()
_sequence = itertools.count(1)


@atexit.register
def _stop_leftovers() -> None:
    for server in list(_running):
        with contextlib.suppress(Exception):
            server.stop()


def free_port() -> int:
    """A port that was free a moment ago (bind port 0, read it, close)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def with_free_port(start: Callable[[int], ServerT], attempts: int = 5) -> ServerT:
    """``start(port)`` on a free port; retried on a new port when it raises AddressInUseError."""
    for attempt in range(attempts):
        try:
            return start(free_port())
        except AddressInUseError:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def can_connect(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def listening(pid: int, port: int) -> bool:
    """Whether process ``pid`` itself holds a TCP socket listening on ``port``.  Unlike a
    connect, this cannot be fooled by another process that took the port first."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[len("socket:[") : -1])
    if not inodes:
        return False
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in inodes and int(local.rsplit(":", 1)[1], 16) == port:
                return True
    return False


def _tail(path: Path, offset: int = 0, limit: int = 6000) -> str:
    """The text of ``path`` from byte ``offset`` on, cut to its last ``limit`` characters."""
    try:
        with open(path, "rb") as file:
            file.seek(offset)
            text = file.read().decode(errors="replace")
    except OSError as exc:
        return f"(cannot read: {exc})"
    return text if len(text) <= limit else "...\n" + text[-limit:]


def _workdir(kind: str, parent: Path | None) -> tuple[Path, list[Path]]:
    """A fresh directory for one server's config and logs, inside ``parent`` (kept) or, for
    None, under /tmp; returns it and what to delete on stop (the latter case only)."""
    if parent is None:
        path = Path(tempfile.mkdtemp(prefix=f"certscope-{kind}-"))
        return path, [path]
    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{kind}-{next(_sequence)}-", dir=parent)), []


class ServerProcess:
    """An external server running in its own process group on ``host:port``."""

    def __init__(
        self,
        kind: str,
        args: list[str],
        *,
        workdir: Path,
        port: int = 0,
        logs: Iterable[Path] = (),
        stop_signal: signal.Signals = signal.SIGTERM,
        signal_group: bool = False,
        stop_timeout: float = 10.0,
        run_as: str | None = None,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        scheme: str = "tls",
    ) -> None:
        self.kind = kind
        self.host = HOST
        self.port = port
        self.workdir = workdir
        self.scheme = scheme
        self.output_log = workdir / f"{kind}.out"
        self.log_paths = [self.output_log, *logs]
        # Logs may be shared with an earlier attempt (port retry): read only what is new.
        self._log_offsets = {path: path.stat().st_size if path.exists() else 0 for path in self.log_paths}
        self.cleanup_paths: list[Path] = []  # removed by stop()
        self._stop_signal = stop_signal
        self._signal_group = signal_group
        self._stop_timeout = stop_timeout
        self._stopped = False
        user = ["--reuid", run_as, "--regid", run_as, "--init-groups"] if run_as else []
        self.args = args
        with open(self.output_log, "ab") as out:
            self.process = subprocess.Popen(
                ["setpriv", *user, "--pdeathsig", "KILL", "--", *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=cwd or workdir,
                env={**os.environ, **(env or {})},
                start_new_session=True,
            )
        self.pid = self.process.pid
        _running.add(self)

    def __repr__(self) -> str:
        state = "stopped" if self._stopped else f"pid={self.pid}"
        return f"<{self.kind} {self.scheme}://{self.host}:{self.port} {state} workdir={self.workdir}>"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def running(self) -> bool:
        return self.process.poll() is None

    def accepting(self) -> bool:
        """The server process itself listens on ``port`` and a TCP connect succeeds."""
        return listening(self.pid, self.port) and can_connect(self.host, self.port)

    def logs(self) -> str:
        return "\n".join(
            f"--- {path}:\n{_tail(path, self._log_offsets[path])}" for path in self.log_paths if path.exists()
        )

    def wait_ready(
        self,
        ready: Callable[[], bool],
        *,
        timeout: float = START_TIMEOUT,
        failed: re.Pattern[str] | None = None,
    ) -> None:
        """Return once ``ready()``; raise ServerStartError (stopping the server) if the
        process exits, a log matches ``failed`` or address-in-use, or on timeout."""
        deadline = time.monotonic() + timeout
        problem = f"not ready after {timeout:.0f}s"
        while time.monotonic() < deadline:
            logs = self.logs()
            if _ADDRESS_IN_USE.search(logs):
                self.stop()
                raise AddressInUseError(f"{self!r}: port {self.port} already in use\n{logs}")
            if failed is not None and failed.search(logs):
                problem = "reported a failure"
                break
            if not self.running():
                problem = f"exited with status {self.process.returncode}"
                break
            try:
                if ready():
                    return
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise ServerStartError(f"{self.kind} {problem}: {' '.join(self.args)}\n{self.logs()}")

    def stop(self) -> None:
        """Send the stop signal (to the leader, or the whole group if ``signal_group``), wait
        up to ``stop_timeout`` for the leader to exit, then SIGKILL whatever is left of the
        process group.  Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        _running.discard(self)
        pid = self.process.pid
        with contextlib.suppress(ProcessLookupError):
            (os.killpg if self._signal_group else os.kill)(pid, self._stop_signal)
        if not _wait_exit_unreaped(pid, self._stop_timeout):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        # The leader is a zombie now (or killed), so its pid, hence the group id, cannot
        # have been reused: kill whatever is left of the group, then reap the leader.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        self.process.wait()
        _remove(self.cleanup_paths)


def _wait_exit_unreaped(pid: int, timeout: float) -> bool:
    """Wait for ``pid`` to exit without reaping it (so its process group id stays reserved)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT | os.WNOHANG)
        except ChildProcessError:
            return True
        if info is not None:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


def _remove(paths: Iterable[Path]) -> None:
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)


def _launch(start: Callable[[int], ServerProcess], cleanup: list[Path], *, pick_port: bool = True) -> ServerProcess:
    """``start(port)`` (on a free port, retried if taken, or with 0 when ``pick_port`` is
    False); the ``cleanup`` paths go when the server stops, or at once if it cannot start."""
    try:
        server = with_free_port(start) if pick_port else start(0)
    except BaseException:
        _remove(cleanup)
        raise
    server.cleanup_paths.extend(cleanup)
    return server


def _bundle(workdir: Path, name: str, *parts: Path | None) -> Path:
    path = workdir / name
    path.write_bytes(b"".join(p.read_bytes().rstrip(b"\n") + b"\n" for p in parts if p is not None))
    path.chmod(0o600)
    return path


def _tls_versions(tls_versions: Iterable[TlsVersion]) -> list[TlsVersion]:
    """The versions asked for, checked and in protocol order."""
    wanted = set(tls_versions)
    if not wanted or not wanted <= set(ALL_TLS_VERSIONS):
        raise ValueError(f"bad tls_versions {sorted(wanted)!r}; choose from {ALL_TLS_VERSIONS}")
    return [v for v in ALL_TLS_VERSIONS if v in wanted]


def _legacy(versions: Iterable[TlsVersion]) -> bool:
    """TLS 1.0/1.1 are refused by OpenSSL 3 unless the security level is 0."""
    return bool({"TLSv1", "TLSv1.1"} & set(versions))


def _check_verify(verify_client: ClientVerify, client_ca: Path | None) -> None:
    if verify_client not in (None, "request", "require"):
        raise ValueError(f"verify_client must be None, 'request' or 'require', not {verify_client!r}")
    if verify_client and client_ca is None:
        raise ValueError("verify_client needs client_ca")


# --------------------------------------------------------------------------- openssl s_server

_S_SERVER_FLAG = {"TLSv1": "tls1", "TLSv1.1": "tls1_1", "TLSv1.2": "tls1_2", "TLSv1.3": "tls1_3"}
_ACCEPT = re.compile(r"^ACCEPT \S+:(\d+)$", re.MULTILINE)


def s_server_version_args(tls_versions: Iterable[TlsVersion]) -> list[str]:
    """``-tls1_2`` for one version, ``-no_tls1 -no_tls1_1`` for several.  TLS 1.0/1.1 also
    get ``-cipher DEFAULT@SECLEVEL=0``: OpenSSL 3 refuses them at the default level."""
    versions = _tls_versions(tls_versions)
    if len(versions) == 1:
        args = [f"-{_S_SERVER_FLAG[versions[0]]}"]
    else:
        args = [f"-no_{_S_SERVER_FLAG[v]}" for v in ALL_TLS_VERSIONS if v not in versions]
    if _legacy(versions):
        args += ["-cipher", "DEFAULT@SECLEVEL=0"]
    return args


def openssl_s_server(
    cert: Path,
    key: Path,
    chain: Path | None,
    *,
    tls_versions: Iterable[TlsVersion] = MODERN_TLS_VERSIONS,
    verify_client: ClientVerify = None,
    client_ca: Path | None = None,
    extra_args: Iterable[str] = (),
    workdir: Path | None = None,
) -> ServerProcess:
    """``openssl s_server -www`` on 127.0.0.1 (port 0; it prints the port it got).

    ``chain`` holds the intermediates sent after the leaf; None sends the leaf alone (an
    incomplete chain).  ``verify_client="request"`` asks for a client cert
    (``-verify``), ``"require"`` fails without a valid one (``-Verify -verify_return_error``),
    both verified against ``client_ca`` only.  s_server serves one connection at a time: close
    each connection before opening the next.
    """
    _check_verify(verify_client, client_ca)
    directory, cleanup = _workdir("s_server", workdir)
    args = ["openssl", "s_server", "-accept", f"{HOST}:0", "-www", "-cert", str(cert), "-key", str(key)]
    if chain is not None:
        args += ["-cert_chain", str(chain)]
    args += s_server_version_args(tls_versions)
    if verify_client is None:
        args += ["-no-CAfile", "-no-CApath", "-no-CAstore"]
    else:
        depth_flag = "-Verify" if verify_client == "require" else "-verify"
        args += [depth_flag, "4", "-CAfile", str(client_ca), "-no-CApath", "-no-CAstore"]
        if verify_client == "require":
            args.append("-verify_return_error")
    args += list(extra_args)

    def start(_: int) -> ServerProcess:
        server = ServerProcess("s_server", args, workdir=directory)

        def ready() -> bool:
            match = _ACCEPT.search(_tail(server.output_log))
            if match:
                server.port = int(match.group(1))
            return match is not None

        server.wait_ready(ready)
        return server

    return _launch(start, cleanup, pick_port=False)


# --------------------------------------------------------------------------- nginx


def write_nginx_conf(directory: Path, server_blocks: str) -> Path:
    """Writes ``directory/nginx.conf`` for one foreground nginx (``daemon off; master_process
    off``) whose pid, logs and temp paths all stay in ``directory`` (so it runs unprivileged
    and leaves nothing behind), serving ``server_blocks`` inside its ``http`` block."""
    config = directory / "nginx.conf"
    config.write_text(
        f"""daemon off;
master_process off;
worker_processes 1;
pid {directory}/nginx.pid;
error_log {directory}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log {directory}/access.log;
    client_body_temp_path {directory}/client_body;
    proxy_temp_path {directory}/proxy;
    fastcgi_temp_path {directory}/fastcgi;
    uwsgi_temp_path {directory}/uwsgi;
    scgi_temp_path {directory}/scgi;
    default_type text/plain;{server_blocks}
}}
"""
    )
    return config


def nginx_process(directory: Path, config: Path, port: int) -> ServerProcess:
    """Starts nginx on ``config`` (from :func:`write_nginx_conf`); ``port`` is the one
    the caller reports and waits on.  The caller waits for readiness."""
    return ServerProcess(
        "nginx",
        ["nginx", "-p", str(directory), "-c", str(config), "-e", str(directory / "error.log")],
        workdir=directory,
        port=port,
        logs=[directory / "error.log"],
        scheme="https",
    )


def nginx_server(
    cert: Path,
    key: Path,
    chain: Path | None,
    *,
    client_ca: Path | None = None,
    verify_client: ClientVerify = "require",
    tls_versions: Iterable[TlsVersion] = MODERN_TLS_VERSIONS,
    workdir: Path | None = None,
) -> ServerProcess:
    """nginx in the foreground (``daemon off; master_process off``), one HTTPS server.

    ``/`` answers 200 "ok", ``/forbidden`` 403, ``/secret`` 401; every answer carries
    ``X-Client-Verify`` and ``X-Client-DN``.  ``verify_client="require"`` is
    ``ssl_verify_client on``: nginx completes the handshake without a (valid) client cert
    and answers HTTP 400 instead.
    """
    _check_verify(verify_client, client_ca)
    directory, cleanup = _workdir("nginx", workdir)
    fullchain = _bundle(directory, "server-fullchain.crt", cert, chain)
    versions = _tls_versions(tls_versions)
    protocols = " ".join(versions) + (";\n        ssl_ciphers DEFAULT@SECLEVEL=0" if _legacy(versions) else "")
    verify = ""
    if verify_client:
        mode = "on" if verify_client == "require" else "optional"
        verify = f"ssl_client_certificate {client_ca}; ssl_verify_client {mode}; ssl_verify_depth 4;"

    def start(port: int) -> ServerProcess:
        config = write_nginx_conf(
            directory,
            f"""
    server {{
        listen {HOST}:{port} ssl;
        server_name localhost;
        ssl_certificate {fullchain};
        ssl_certificate_key {key};
        ssl_protocols {protocols};
        {verify}
        add_header X-Client-Verify $ssl_client_verify always;
        add_header X-Client-DN $ssl_client_s_dn always;
        location = /forbidden {{ return 403 "forbidden\\n"; }}
        location = /secret {{ return 401 "unauthorized\\n"; }}
        location / {{ return 200 "ok\\n"; }}
    }}""",
        )
        server = nginx_process(directory, config, port)
        server.wait_ready(lambda: server.accepting(), failed=re.compile(r"\[emerg\]"))
        return server

    return _launch(start, cleanup)


# --------------------------------------------------------------------------- haproxy

_HAPROXY_VERSION = {"TLSv1": "TLSv1.0", "TLSv1.1": "TLSv1.1", "TLSv1.2": "TLSv1.2", "TLSv1.3": "TLSv1.3"}


def haproxy_server(
    cert: Path,
    key: Path,
    chain: Path | None,
    *,
    client_ca: Path | None = None,
    verify_client: ClientVerify = "require",
    tls_versions: Iterable[TlsVersion] = MODERN_TLS_VERSIONS,
    workdir: Path | None = None,
) -> ServerProcess:
    """haproxy TLS termination (``haproxy -db``) answering fixed responses itself:
    200 "ok" (403 "forbidden" for ``/forbidden``).  ``verify_client="require"`` is
    ``verify required``: without a valid client cert the TLS handshake fails (TLS 1.2) or
    the first read does (TLS 1.3)."""
    _check_verify(verify_client, client_ca)
    directory, cleanup = _workdir("haproxy", workdir)
    pem = _bundle(directory, "server.pem", cert, chain, key)
    order = _tls_versions(tls_versions)
    versions = f"ssl-min-ver {_HAPROXY_VERSION[order[0]]} ssl-max-ver {_HAPROXY_VERSION[order[-1]]}"
    if _legacy(order):
        versions += " ciphers DEFAULT@SECLEVEL=0"
    verify = ""
    if verify_client:
        verify = f" ca-file {client_ca} verify {'required' if verify_client == 'require' else 'optional'}"

    def start(port: int) -> ServerProcess:
        config = directory / "haproxy.cfg"
        config.write_text(
            f"""global
    maxconn 100
    log stdout format raw local0 info

defaults
    mode http
    log global
    option httplog
    timeout connect 5s
    timeout client 30s
    timeout server 30s

frontend tls
    bind {HOST}:{port} ssl crt {pem} {versions}{verify}
    http-request return status 403 content-type text/plain string forbidden if {{ path /forbidden }}
    http-request return status 200 content-type text/plain string ok
"""
        )
        server = ServerProcess(
            "haproxy",
            ["haproxy", "-db", "-f", str(config)],
            workdir=directory,
            port=port,
            scheme="https",
        )
        server.wait_ready(lambda: server.accepting(), failed=re.compile(r"\[ALERT\]"))
        return server

    return _launch(start, cleanup)


# --------------------------------------------------------------------------- PostgreSQL

POSTGRES_SSL_REQUEST = struct.pack("!II", 8, 80877103)


def _private_rundir(kind: str, owner: str | None = None, mode: int = 0o700) -> Path:
    """A short directory under /tmp that non-root server users can reach (pytest's own tmp
    dirs sit under a 0700 directory, and unix socket paths must stay short)."""
    path = Path(tempfile.mkdtemp(prefix=f"certscope-{kind}-", dir=RUN_ROOT))
    path.chmod(mode)
    if owner is not None:
        entry = pwd.getpwnam(owner)
        os.chown(path, entry.pw_uid, entry.pw_gid)
    return path


def _run_as(user: str, args: list[str], log: Path, cwd: Path, timeout: float = 60) -> None:
    with open(log, "ab") as out:
        result = subprocess.run(
            ["setpriv", "--reuid", user, "--regid", user, "--init-groups", "--pdeathsig", "KILL", "--", *args],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            timeout=timeout,
            check=False,
        )
    if result.returncode != 0:
        raise ServerStartError(f"{' '.join(args)} failed with status {result.returncode}:\n{_tail(log)}")


def postgres_server(
    cert: Path,
    key: Path,
    chain: Path | None,
    *,
    settings: Mapping[str, str] | None = None,
    workdir: Path | None = None,
) -> ServerProcess:
    """PostgreSQL 15 with ``ssl=on`` on 127.0.0.1 (TCP) and a private unix socket directory.

    The cluster (initdb as the ``postgres`` OS user, trust auth, user ``postgres``), the
    server cert and key (owned by postgres, key 0600) and the socket live in a private
    ``/tmp/certscope-postgres-*`` directory, removed on stop; the logs are in ``workdir``.
    ``settings`` are extra ``-c name=value`` options.  Stopped with a fast shutdown (SIGINT).
    """
    directory, cleanup = _workdir("postgres", workdir)
    rundir = _private_rundir("postgres", owner=POSTGRES_USER)
    cleanup.append(rundir)
    entry = pwd.getpwnam(POSTGRES_USER)
    server_cert = _bundle(rundir, "server.crt", cert, chain)
    server_key = rundir / "server.key"
    shutil.copyfile(key, server_key)
    for path in (server_cert, server_key):
        os.chown(path, entry.pw_uid, entry.pw_gid)
        path.chmod(0o600)
    data = rundir / "data"
    try:
        _run_as(
            POSTGRES_USER,
            [
                str(POSTGRES_BIN / "initdb"),
                "-D",
                str(data),
                "-A",
                "trust",
                "-U",
                POSTGRES_USER,
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            ],
            directory / "initdb.log",
            cwd=rundir,
        )
    except BaseException:
        _remove(cleanup)
        raise
    options = {
        "listen_addresses": HOST,
        "unix_socket_directories": str(rundir),
        "ssl": "on",
        "ssl_cert_file": str(server_cert),
        "ssl_key_file": str(server_key),
        "logging_collector": "off",
        "fsync": "off",
        "max_connections": "20",
        "shared_buffers": "16MB",
        **(settings or {}),
    }
    ready_line = re.compile(r"database system is ready to accept connections")

    def start(port: int) -> ServerProcess:
        args = [str(POSTGRES_BIN / "postgres"), "-D", str(data), "-p", str(port)]
        for name, value in options.items():
            args += ["-c", f"{name}={value}"]
        server = ServerProcess(
            "postgres",
            args,
            workdir=directory,
            port=port,
            stop_signal=signal.SIGINT,
            run_as=POSTGRES_USER,
            cwd=rundir,
        )
        server.wait_ready(lambda: bool(ready_line.search(server.logs())) and server.accepting())
        return server

    return _launch(start, cleanup)


# --------------------------------------------------------------------------- dovecot IMAP


def dovecot_imap_server(
    cert: Path,
    key: Path,
    chain: Path | None,
    *,
    tls_versions: Iterable[TlsVersion] = MODERN_TLS_VERSIONS,
    workdir: Path | None = None,
) -> ServerProcess:
    """dovecot IMAP on 127.0.0.1 offering STARTTLS (``ssl = yes``, so not required),
    in the foreground (``dovecot -F -c conf``).  Its base and state dirs are in a private
    ``/tmp/certscope-dovecot-*`` directory (short socket paths), removed on stop; the
    config and log are in ``workdir``.  Any user logs in with password "secret" (after
    STARTTLS: plaintext auth is disabled before) and gets an empty Maildir INBOX."""
    directory, cleanup = _workdir("dovecot", workdir)
    rundir = _private_rundir("dovecot", mode=0o755)
    cleanup.append(rundir)
    (rundir / "home").mkdir(mode=0o1777)  # mail homes, created by the (nobody) mail process
    (rundir / "home").chmod(0o1777)
    fullchain = _bundle(directory, "server-fullchain.crt", cert, chain)
    server_key = _bundle(directory, "server.key", key)
    order = _tls_versions(tls_versions)
    legacy_ciphers = "ssl_cipher_list = DEFAULT@SECLEVEL=0" if _legacy(order) else ""
    dh = Path("/usr/share/dovecot/dh.pem")
    log = directory / "dovecot.log"

    def start(port: int) -> ServerProcess:
        config = directory / "dovecot.conf"
        config.write_text(
            f"""base_dir = {rundir}/run
state_dir = {rundir}/state
log_path = {log}
info_log_path = {log}
protocols = imap
listen = {HOST}
ssl = yes
ssl_cert = <{fullchain}
ssl_key = <{server_key}
ssl_min_protocol = {order[0]}
{legacy_ciphers}
{f"ssl_dh = <{dh}" if dh.exists() else ""}
disable_plaintext_auth = yes
auth_mechanisms = plain
mail_location = maildir:~/Maildir
passdb {{
  driver = static
  args = password=secret
}}
userdb {{
  driver = static
  args = uid=nobody gid=nogroup home={rundir}/home/%u
}}
service imap-login {{
  inet_listener imap {{
    address = {HOST}
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
"""
        )
        server = ServerProcess(
            "dovecot",
            ["dovecot", "-F", "-c", str(config)],
            workdir=directory,
            port=port,
            logs=[log],
            scheme="imap",
            # SIGTERM to the master alone, or to the group while it is still forking its
            # services, can leave it waiting for seconds; nothing here needs a clean exit.
            signal_group=True,
            stop_timeout=1.0,
        )
        server.wait_ready(lambda: server.accepting(), failed=re.compile(r"Fatal:"))
        return server

    return _launch(start, cleanup)


# --------------------------------------------------------------------------- aiosmtpd SMTP


class SmtpServer:
    """aiosmtpd's threaded ``Controller`` on 127.0.0.1, port chosen by the OS, offering
    STARTTLS (not required).  Mail is accepted and dropped (``Sink``)."""

    def __init__(self, cert: Path, key: Path, chain: Path | None, *, server_hostname: str = "localhost") -> None:
        from aiosmtpd.controller import Controller
        from aiosmtpd.handlers import Sink

        class OsPortController(Controller):
            """Bind port 0 and remember the port the OS gave (stock Controller cannot)."""

            def _create_server(self) -> Coroutine[Any, Any, asyncio.AbstractServer]:
                async def create() -> asyncio.AbstractServer:
                    server = await Controller._create_server(self)
                    assert isinstance(server, asyncio.Server)
                    self.port = server.sockets[0].getsockname()[1]
                    return server

                return create()

        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        with tempfile.TemporaryDirectory(prefix="certscope-smtp-") as tmp:
            context.load_cert_chain(_bundle(Path(tmp), "fullchain.crt", cert, chain), key)
        self.tls_context = context
        self.controller = OsPortController(
            Sink(),
            hostname=HOST,
            port=0,
            server_hostname=server_hostname,
            tls_context=context,
            require_starttls=False,
        )
        self.host = HOST
        try:
            self.controller.start()
        except Exception as exc:
            raise ServerStartError(f"aiosmtpd did not start: {exc!r}") from exc
        self.port: int = self.controller.port
        self._stopped = False
        _running.add(self)

    def __repr__(self) -> str:
        return f"<aiosmtpd smtp://{self.host}:{self.port}{' stopped' if self._stopped else ''}>"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        _running.discard(self)
        self.controller.stop()


def smtp_starttls_server(
    cert: Path, key: Path, chain: Path | None, *, server_hostname: str = "localhost"
) -> SmtpServer:
    return SmtpServer(cert, key, chain, server_hostname=server_hostname)


# --------------------------------------------------------------------------- fault servers


class FaultServer:
    """A plain-socket TCP server on 127.0.0.1 (port 0) whose accept loop and connections run
    in daemon threads; ``handle(conn, stopping)`` decides how it misbehaves.
    ``connections`` counts accepted connections."""

    def __init__(self, kind: str, handle: Callable[[socket.socket, threading.Event], None]) -> None:
        self.kind = kind
        self.host = HOST
        self.connections = 0
        self._handle = handle
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._listener = socket.socket()
        self._listener.bind((HOST, 0))
        self._listener.listen(64)
        self._listener.settimeout(0.1)
        self.port: int = self._listener.getsockname()[1]
        self._acceptor = threading.Thread(target=self._accept_loop, name=f"{kind}-accept", daemon=True)
        self._acceptor.start()
        _running.add(self)

    def __repr__(self) -> str:
        state = "stopped" if self._stopping.is_set() else f"{self.connections} connections"
        return f"<{self.kind} tcp://{self.host}:{self.port} {state}>"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.connections += 1
                self._conns.append(conn)
                thread = threading.Thread(target=self._serve, args=(conn,), name=f"{self.kind}-conn", daemon=True)
                self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            self._handle(conn, self._stopping)

    def stop(self) -> None:
        if self._stopping.is_set():
            return
        self._stopping.set()
        _running.discard(self)
        self._acceptor.join(5)
        self._listener.close()
        with self._lock:
            conns, threads = list(self._conns), list(self._threads)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
        for thread in threads:
            thread.join(5)


def tarpit() -> FaultServer:
    """Accepts TCP connections and never sends or reads anything."""

    def hold(conn: socket.socket, stopping: threading.Event) -> None:
        stopping.wait()

    return FaultServer("tarpit", hold)


# A TLS record header announcing a 16 KiB handshake record: a TLS client then waits for the
# body, which arrives one zero byte per interval.
TLS_RECORD_HEADER = b"\x16\x03\x03\x40\x00"


def dribbler(interval: float = 0.3, prefix: bytes = TLS_RECORD_HEADER, filler: bytes = b"\x00") -> FaultServer:
    """Accepts and sends one byte every ``interval`` seconds forever: first ``prefix``,
    then ``filler`` repeated.  Data keeps coming, so only an overall deadline stops a client."""

    def drip(conn: socket.socket, stopping: threading.Event) -> None:
        for byte in itertools.chain(prefix, itertools.repeat(filler[0])):
            conn.sendall(bytes([byte]))
            if stopping.wait(interval):
                return

    return FaultServer("dribbler", drip)


def reset_server(read_timeout: float = 5.0) -> FaultServer:
    """Accepts, reads what the client sends first (the ClientHello), then closes with a TCP
    RST (SO_LINGER on, 0 s)."""

    def reset(conn: socket.socket, stopping: threading.Event) -> None:
        conn.settimeout(read_timeout)
        with contextlib.suppress(OSError):
            conn.recv(65536)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()

    return FaultServer("reset", reset)


def refused_port() -> int:
    """A port on 127.0.0.1 where connections are refused.  The port stays bound (without
    listening) until the process exits, so nothing else can take it meanwhile."""
    sock = socket.socket()
    sock.bind((HOST, 0))
    _reserved_ports.append(sock)
    port: int = sock.getsockname()[1]
    return port


class CountingListener:
    """A TCP port on 127.0.0.1 that counts the connections it accepts (and closes them):
    proof that something did, or did not, connect where it should not."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind((HOST, 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


# --------------------------------------------------------------------------- an ingress controller stand-in


def nginx_sni_server(
    default: tuple[Path, Path],
    hosts: Mapping[str, tuple[Path, Path]],
    *,
    workdir: Path | None = None,
) -> ServerProcess:
    """nginx on one port routing by SNI, as an ingress controller does: one server block
    per host in ``hosts`` (name -> (fullchain, key)), and a ``default_server`` with the
    ``default`` certificate for every other name (ingress-nginx's "Kubernetes Ingress
    Controller Fake Certificate").  Every server answers ``/`` with 200 and its name."""
    directory, cleanup = _workdir("nginx-sni", workdir)
    servers = "".join(
        f"""
    server {{
        listen {HOST}:{{port}} ssl;
        server_name {name};
        ssl_certificate {fullchain};
        ssl_certificate_key {key};
        location / {{ return 200 "{name}\\n"; }}
    }}"""
        for name, (fullchain, key) in hosts.items()
    )

    def start(port: int) -> ServerProcess:
        config = write_nginx_conf(
            directory,
            f"""
    server {{
        listen {HOST}:{port} ssl default_server;
        server_name _;
        ssl_certificate {default[0]};
        ssl_certificate_key {default[1]};
        location / {{ return 404 "default backend\\n"; }}
    }}{servers.replace("{port}", str(port))}""",
        )
        server = nginx_process(directory, config, port)
        server.wait_ready(lambda: server.accepting(), failed=re.compile(r"\[emerg\]"))
        return server

    return _launch(start, cleanup)
