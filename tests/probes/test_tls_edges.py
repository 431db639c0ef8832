"""tls probe edges: IPv6 literals, resolve: all, the /probe endpoint's allowlist and
egress policy, and no socket left behind by any failure."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from probes.context import ProbeContext
from probes.settings import TrustSettings
from probes.tls import TlsProbe, TlsSettings
from tests.fixtures import servers
from tests.fixtures.helpers import DaemonProcess, find, parse_metrics
from tests.fixtures.pki import Pki


@pytest.fixture(scope="module")
def tls_files(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> servers.TlsFiles:
    return servers.write_tls_files(servers.build_tls_pki(pki), tmp_path_factory.mktemp("tls-edges"))


@pytest.fixture(scope="module")
def valid_server(tls_files: servers.TlsFiles) -> Iterator[servers.ServerProcess]:
    leaf = tls_files.localhost
    server = servers.openssl_s_server(leaf.cert, leaf.key, leaf.chain)
    yield server
    server.stop()


class Ipv6TlsServer:
    """Python's ssl on [::1], port chosen by the OS: completes handshakes, then closes."""

    def __init__(self, leaf: servers.LeafFiles) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(leaf.fullchain, leaf.key)
        self.listener = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        self.listener.bind(("::1", 0))
        self.listener.listen(8)
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            try:
                with self.context.wrap_socket(conn, server_side=True) as tls:
                    tls.settimeout(1)
                    tls.recv(1)
            except OSError:
                pass

    def stop(self) -> None:
        self.listener.close()


def trust(files: servers.TlsFiles) -> TrustSettings:
    return TrustSettings(system=False, ca_files=(str(files.root_ca),))


def test_ipv6_literal_with_server_name(tls_files: servers.TlsFiles) -> None:
    server = Ipv6TlsServer(tls_files.localhost)
    try:
        target = f"[::1]:{server.port}"
        probe = TlsProbe(TlsSettings(targets=(target,), server_name="localhost", trust=trust(tls_files)))
        result = probe.run(target, ProbeContext(deadline=time.monotonic() + 5))
        assert result.success, result.message
        assert result.facts is not None and (result.facts.address, result.facts.server_name) == ("::1", "localhost")
        # Without server_name an IP target sends no SNI and is checked against IP SANs.
        bare = TlsProbe(TlsSettings(targets=(target,), trust=trust(tls_files)))
        unnamed = bare.run(target, ProbeContext(deadline=time.monotonic() + 5))
        assert unnamed.facts is not None and unnamed.facts.server_name == ""
        assert unnamed.reason.value == "hostname_mismatch"  # the leaf has IP SAN 127.0.0.1, not ::1
    finally:
        server.stop()


def test_resolve_all_labels_each_address(tls_files: servers.TlsFiles, valid_server: servers.ServerProcess) -> None:
    target = f"localhost:{valid_server.port}"
    probe = TlsProbe(TlsSettings(targets=(target,), resolve="all", trust=trust(tls_files)))
    discovery = probe.targets()
    addresses = {socket.getaddrinfo("localhost", 0, type=socket.SOCK_STREAM)[i][4][0] for i in range(1)}
    assert set(discovery.targets) >= {f"{target}@{address}" for address in addresses}
    for key in discovery.targets:
        result = probe.run(key, ProbeContext(deadline=time.monotonic() + 5))
        labels = dict(result.target_labels)
        assert labels["target"] == target and labels["address"] == key.split("@")[1]
        if labels["address"] == "127.0.0.1":
            assert result.success, result.message


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_no_socket_survives_a_failure(tls_files: servers.TlsFiles, valid_server: servers.ServerProcess) -> None:
    tarpit, reset = servers.tarpit(), servers.reset_server()
    try:
        targets = {
            "valid": f"localhost:{valid_server.port}",
            "tarpit": f"localhost:{tarpit.port}",
            "reset": f"localhost:{reset.port}",
            "refused": f"localhost:{servers.refused_port()}",
        }
        probes = {
            name: TlsProbe(TlsSettings(targets=(target,), trust=trust(tls_files), http=None))
            for name, target in targets.items()
        }
        for name, probe in probes.items():  # warm up lazily opened descriptors
            probe.run(targets[name], ProbeContext(deadline=time.monotonic() + 0.2))
        before, tarpit_held = _fd_count(), tarpit.connections
        for _ in range(10):
            for name, probe in probes.items():
                probe.run(targets[name], ProbeContext(deadline=time.monotonic() + 0.2))
        # The tarpit (in this process) keeps its end of every connection open.
        assert _fd_count() == before + (tarpit.connections - tarpit_held)
    finally:
        tarpit.stop()
        reset.stop()


def _probe_config(target: str, files: servers.TlsFiles, allow_networks: list[str]) -> str:
    return f"""
web: {{probe_endpoint: true}}
global: {{interval: 1h, egress: {{allow_networks: {allow_networks}}}}}
probes:
  - name: web
    kind: tls
    targets: ["{target}"]
    allow_targets: ["169.254.*:443", "[::ffff:169.254.169.254]:443", "localhost:*"]
    trust: {{system: false, ca_files: ["{files.root_ca}"]}}
"""


def test_probe_endpoint_is_no_open_proxy(
    tls_files: servers.TlsFiles, valid_server: servers.ServerProcess, start_daemon: Any
) -> None:
    target = f"localhost:{valid_server.port}"
    refusing: DaemonProcess = start_daemon(_probe_config(target, tls_files, []))

    def probe(daemon: DaemonProcess, **params: str) -> requests.Response:
        return requests.get(daemon.base_url + "/probe", params=params, timeout=10)

    loopback = probe(refusing, module="web", target=target)
    assert loopback.status_code == 403 and "egress policy" in loopback.text
    for metadata in ("169.254.169.254:443", "[::ffff:169.254.169.254]:443"):
        answer = probe(refusing, module="web", target=metadata)
        assert answer.status_code == 403 and "egress policy" in answer.text, metadata
    assert probe(refusing, module="web", target="example.com:443").status_code == 403  # not allowed
    assert probe(refusing, module="nope", target=target).status_code == 400
    assert probe(refusing, module="web", target="no-port").status_code == 400

    allowing: DaemonProcess = start_daemon(_probe_config(target, tls_files, ["127.0.0.0/8"]))
    answer = requests.get(
        allowing.base_url + "/probe",
        params={"module": "web", "target": target},
        headers={"X-Prometheus-Scrape-Timeout-Seconds": "5"},
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    metrics = parse_metrics(answer.text)
    assert find(metrics, "certscope_probe_success", probe="web", target=target)[0][1] == 1
    assert find(metrics, "certscope_cert_not_after_timestamp_seconds", target=target, index="0")


def test_probe_endpoint_is_off_by_default(
    tls_files: servers.TlsFiles, valid_server: servers.ServerProcess, start_daemon: Any, tmp_path: Path
) -> None:
    config = _probe_config(f"localhost:{valid_server.port}", tls_files, ["127.0.0.0/8"])
    daemon: DaemonProcess = start_daemon(config.replace("web: {probe_endpoint: true}", ""))
    answer = requests.get(daemon.base_url + "/probe", params={"module": "web", "target": "x:1"}, timeout=10)
    assert answer.status_code == 404


def test_a_stalled_endpoint_does_not_hold_the_cpu_slot(
    tls_files: servers.TlsFiles, valid_server: servers.ServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a single CPU slot, one probe waiting on a connect that never completes and
    one waiting on a handshake that never comes leave the slot to a third probe."""
    from probes import cpu_slots

    one = cpu_slots.CpuSlots(1)
    monkeypatch.setattr(cpu_slots, "held", one.held)
    monkeypatch.setattr(cpu_slots, "waiting", one.waiting)
    full = socket.socket()  # a listener whose backlog is full: the kernel drops further SYNs
    full.bind(("127.0.0.1", 0))
    full.listen(0)
    queued = socket.create_connection(full.getsockname(), timeout=2)
    tarpit = servers.tarpit()
    results: dict[str, Any] = {}

    def stalled(name: str, target: str) -> None:
        probe = TlsProbe(TlsSettings(targets=(target,), trust=trust(tls_files)))
        results[name] = probe.run(target, ProbeContext(deadline=time.monotonic() + 3))

    threads = [
        threading.Thread(target=stalled, args=("connect", f"127.0.0.1:{full.getsockname()[1]}")),
        threading.Thread(target=stalled, args=("handshake", f"localhost:{tarpit.port}")),
    ]
    try:
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 2
        while tarpit.connections < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)  # both stalled probes are in their waits now
        target = f"localhost:{valid_server.port}"
        started = time.monotonic()
        result = TlsProbe(TlsSettings(targets=(target,), trust=trust(tls_files))).run(
            target, ProbeContext(deadline=time.monotonic() + 5)
        )
        assert result.success, result.message
        assert time.monotonic() - started < 1.5
        assert all(thread.is_alive() for thread in threads), "the stalled probes ended too soon to prove anything"
        for thread in threads:
            thread.join(5)
        assert results["connect"].reason.value == "connect_timeout", results["connect"].message
        assert results["handshake"].reason.value == "handshake_timeout", results["handshake"].message
    finally:
        queued.close()
        full.close()
        tarpit.stop()


def test_the_served_chain_is_read_as_openssl_holds_it(
    tls_files: servers.TlsFiles, valid_server: servers.ServerProcess
) -> None:
    """``TlsConnection.peer_chain`` splits OpenSSL's encoding of the chain itself:
    the same DER, in the same order, as pyOpenSSL's own reading and as
    ``openssl s_client -showcerts`` prints it; loaded only when read."""
    from cryptography.hazmat.primitives.serialization import Encoding

    from probes.tls_client import TlsClient

    sock = socket.create_connection(("127.0.0.1", valid_server.port), timeout=5)
    session = TlsClient().connect(sock, "localhost", time.monotonic() + 5)
    try:
        reference = session._connection.get_peer_cert_chain(as_cryptography=True) or []
        ders, chain = session.peer_chain(16)
        assert len(reference) >= 2
        assert ders == [cert.public_bytes(Encoding.DER) for cert in reference]
        assert chain._loaded is None  # nothing loaded until read
        assert [cert.fingerprint(hashes.SHA256()) for cert in chain] == [
            cert.fingerprint(hashes.SHA256()) for cert in reference
        ]
        assert session.peer_chain(1)[0] == ders[:1]
    finally:
        session.close()  # s_server answers one connection at a time
    address = f"127.0.0.1:{valid_server.port}"
    shown = subprocess.run(
        ["openssl", "s_client", "-showcerts", "-servername", "localhost", "-connect", address],
        input=b"",
        capture_output=True,
        timeout=20,
        check=True,
    ).stdout
    assert ders == [cert.public_bytes(Encoding.DER) for cert in x509.load_pem_x509_certificates(shown)]
