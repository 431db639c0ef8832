"""Rows of the reliability fault matrix (docs/reliability.md) not covered elsewhere.

Each test injects one fault for real and checks the expected reason, metric and log
line, and that nothing else is lost: a good target beside the faulty one is still
exported.

DNS: the daemon runs in its own mount namespace (``unshare(CLONE_NEWNS)``, root
only, as the rest of the suite) where ``/etc/resolv.conf`` names a DNS responder of
this test on 127.53.0.1:53, which answers NXDOMAIN for ``nx-*`` names and never
answers anything else, and ``/etc/hosts`` maps ``v6only.test`` to ``::1`` only.  The
host's resolver configuration is never touched.
"""

from __future__ import annotations

import contextlib
import ctypes
import http.server
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest
import requests
from cryptography import x509
from cryptography.x509.oid import AuthorityInformationAccessOID
from prometheus_client import CollectorRegistry, generate_latest

from exporter.collector import SnapshotCollector
from exporter.config import parse_config
from exporter.scheduler import Scheduler
from exporter.store import ResultStore
from exporter.web import WebApp, WebServer
from probes.context import ProbeContext
from probes.files import FilesProbe, FilesSettings
from probes.kinds import KINDS, ProbeKind
from probes.ocsp import OcspProbe, OcspSettings
from probes.reasons import Reason
from probes.result import Discovery, ProbeResult
from probes.settings import ProbeDefaults, TrustSettings
from probes.tls import RevocationSettings, TlsProbe, TlsSettings
from tests.fixtures import servers
from tests.fixtures.helpers import DaemonProcess, find, parse_metrics, value, wait_for
from tests.fixtures.pki import DAY, NOW, Issued, Pki, issue
from tests.probes.test_tls_edges import Ipv6TlsServer

# ---------------------------------------------------------------- a private resolver

RESOLVER_ADDRESS = "127.53.0.1"
CLONE_NEWNS = 0x00020000
MS_BIND, MS_REC, MS_PRIVATE = 4096, 16384, 1 << 18


class SilentDns:
    """UDP DNS on 127.53.0.1:53: NXDOMAIN for names starting with ``nx-``; silence
    for every other question.  Counts the questions it saw."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((RESOLVER_ADDRESS, 53))
        self.sock.settimeout(0.2)
        self.questions: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                query, peer = self.sock.recvfrom(512)
            except OSError:
                continue
            if len(query) < 13:
                continue
            name = _question_name(query)
            self.questions.append(name)
            if name.startswith("nx-"):
                end = 12 + query[12:].index(b"\x00") + 5  # the question: name, type, class
                flags = 0x8183  # response, recursion desired and available, NXDOMAIN
                self.sock.sendto(query[:2] + struct.pack(">HHHHH", flags, 1, 0, 0, 0) + query[12:end], peer)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


def _question_name(query: bytes) -> str:
    labels, position = [], 12
    while position < len(query) and query[position]:
        length = query[position]
        labels.append(query[position + 1 : position + 1 + length].decode("ascii", "replace"))
        position += 1 + length
    return ".".join(labels)


def private_resolver(resolv_conf: Path, hosts: Path) -> Callable[[], None]:
    """A preexec_fn: a new mount namespace where the two files are bind-mounted over
    /etc/resolv.conf and /etc/hosts.  Raises (and Popen fails) when not permitted."""
    libc = ctypes.CDLL(None, use_errno=True)

    def check(result: int, what: str) -> None:
        if result != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"{what}: {os.strerror(error)} (the DNS rows need root)")

    def enter() -> None:
        check(libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
        check(libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "mount --make-rprivate /")
        for source, target in ((resolv_conf, b"/etc/resolv.conf"), (hosts, b"/etc/hosts")):
            check(libc.mount(os.fsencode(source), target, None, MS_BIND, None), f"bind {source}")

    return enter


def long_chain(pki: Pki, length: int) -> tuple[Issued, list[Issued]]:
    """A leaf for localhost under ``length`` intermediates below the test root."""
    chain: list[Issued] = []
    parent = pki.root
    for number in range(length):
        parent = issue(f"intermediate {number}", parent, ca=True, not_after=NOW + 1000 * DAY)
        chain.append(parent)
    return issue("localhost", parent, sans=("localhost",)), chain


SLOW_NAMES = [f"slow-{letter}.test" for letter in "abcdefghij"]  # more than the 8 resolver threads


def test_dns_failure_dns_timeout_ipv6_only_and_a_long_chain(
    pki: Pki, tmp_path: Path, start_daemon: Any, tmp_path_factory: pytest.TempPathFactory
) -> None:
    tls = servers.write_tls_files(servers.build_tls_pki(pki), tmp_path / "tls")
    resolv_conf = tmp_path / "resolv.conf"
    resolv_conf.write_text(f"nameserver {RESOLVER_ADDRESS}\noptions timeout:30 attempts:1\n")
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n::1 v6only.test\n")
    leaf, chain = long_chain(pki, 100)
    (tmp_path / "long.crt").write_bytes(leaf.pem)
    (tmp_path / "long.key").write_bytes(leaf.key_pem)
    (tmp_path / "long-chain.pem").write_bytes(b"".join(c.pem for c in reversed(chain)))
    root_ca = tmp_path / "root.pem"
    root_ca.write_bytes(tls.root_ca.read_bytes() + pki.root.pem)

    dns = SilentDns()
    v6 = Ipv6TlsServer(tls.localhost)
    good = servers.openssl_s_server(tls.localhost.cert, tls.localhost.key, tls.localhost.chain)
    long = servers.openssl_s_server(tmp_path / "long.crt", tmp_path / "long.key", tmp_path / "long-chain.pem")
    try:
        config = f"""
global: {{interval: 1h, timeout: 2s, trust: {{system: false, ca_files: ["{root_ca}"]}}}}
probes:
  - {{name: good, kind: tls, targets: ["localhost:{good.port}"]}}
  - {{name: nxdomain, kind: tls, targets: ["nx-missing.test:443"]}}
  - {{name: dns-timeout, kind: tls, targets: {[f"{n}:443" for n in SLOW_NAMES]}}}
  - {{name: v6only, kind: tls, targets: ["v6only.test:{v6.port}"], server_name: localhost}}
  - {{name: long-chain, kind: tls, targets: ["localhost:{long.port}"]}}
"""
        daemon: DaemonProcess = start_daemon(config, preexec=private_resolver(resolv_conf, hosts))
        daemon.wait_ready(timeout=20)
        metrics = daemon.metrics()

        def status(probe: str) -> list[str]:
            return [labels["reason"] for labels, _ in find(metrics, "certscope_probe_status", probe=probe)]

        assert status("good") == ["ok"], "the good target is exported beside every fault"
        assert find(metrics, "certscope_cert_not_after_timestamp_seconds", probe="good", index="0")
        assert status("nxdomain") == ["dns_error"]
        assert status("dns-timeout") == ["dns_error"] * len(SLOW_NAMES)
        for labels, seconds in find(metrics, "certscope_probe_duration_seconds", probe="dns-timeout"):
            assert 1.9 <= seconds <= 2.5, (labels, seconds)  # the deadline, not the resolver's 30 s
        assert status("v6only") == ["ok"]
        assert find(metrics, "certscope_tls_connection_info", probe="v6only")[0][0]["address"] == "::1"
        # 101 certificates served: the first max_chain_length (16) are exported, the
        # verdict comes in bounded time and is a failure, not a hang.
        assert status("long-chain") != ["ok"] and len(status("long-chain")) == 1
        assert value(metrics, "certscope_probe_duration_seconds", probe="long-chain") < 2.5
        exported = find(metrics, "certscope_cert_not_after_timestamp_seconds", probe="long-chain")
        assert len(exported) == 16, len(exported)
        log = daemon.log()
        assert "probe=nxdomain target=nx-missing.test:443 failing reason=dns_error" in log
        assert "took longer than the deadline" in log
        assert {"nx-missing.test", *SLOW_NAMES} <= set(dns.questions), dns.questions
        started = time.monotonic()
        daemon.stop()
        assert time.monotonic() - started < 10, "SIGTERM with DNS lookups still hanging"
    finally:
        for server in (good, long):
            server.stop()
        v6.stop()
        dns.stop()


# ------------------------------------------------------------ revocation egress policy


def test_revocation_urls_from_a_certificate_obey_the_egress_policy(pki: Pki, tmp_path: Path) -> None:
    listener = servers.CountingListener()
    local = f"http://127.0.0.1:{listener.port}"
    leaf = issue(
        "localhost",
        pki.intermediate,
        sans=("localhost",),
        extra_extensions=(
            x509.CRLDistributionPoints(
                [
                    x509.DistributionPoint([x509.UniformResourceIdentifier(url)], None, None, None)
                    for url in ("http://169.254.169.254/latest/meta-data/crl", f"{local}/crl")
                ]
            ),
            x509.AuthorityInformationAccess(
                [
                    x509.AccessDescription(AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(url))
                    for url in (f"{local}/ocsp", "http://[::ffff:169.254.169.254]/ocsp")
                ]
            ),
        ),
    )
    (tmp_path / "leaf.crt").write_bytes(leaf.pem)
    (tmp_path / "leaf.key").write_bytes(leaf.key_pem)
    (tmp_path / "chain.pem").write_bytes(pki.intermediate.pem)
    (tmp_path / "root.pem").write_bytes(pki.root.pem)
    server = servers.openssl_s_server(tmp_path / "leaf.crt", tmp_path / "leaf.key", tmp_path / "chain.pem")
    try:
        target = f"localhost:{server.port}"
        trust = TrustSettings(system=False, ca_files=(str(tmp_path / "root.pem"),))
        probe = TlsProbe(
            TlsSettings(targets=(target,), trust=trust, revocation=RevocationSettings(ocsp=True, crl=True)),
            ProbeDefaults(),  # no allow_networks: loopback, link-local and metadata are refused
        )
        started = time.monotonic()
        result = probe.run(target, ProbeContext(deadline=time.monotonic() + 5))
        assert time.monotonic() - started < 2, "refused before connecting, not timed out"
        assert result.success, result.message  # soft-fail: unknown revocation is not an endpoint failure
        assert result.certificates and result.certificates[0].cert.fingerprint_sha256 == leaf.fingerprint
        leaf_checks = {r.method: r for r in result.revocation if r.index == 0}
        assert set(leaf_checks) == {"ocsp", "crl"}
        assert leaf_checks["ocsp"].state == "unknown" and leaf_checks["ocsp"].reason is Reason.OCSP_UNAVAILABLE
        assert leaf_checks["crl"].state == "unknown" and leaf_checks["crl"].reason is Reason.CRL_UNAVAILABLE
        for check in leaf_checks.values():
            assert "egress policy" in check.message, check
        assert listener.accepted == 0, "nothing connected to the loopback URL"
    finally:
        server.stop()
        listener.stop()


# --------------------------------------------------------------------------- files


def test_file_replaced_atomically_and_data_swapped_mid_scan(pki: Pki, tmp_path: Path) -> None:
    versions = (pki.valid, pki.expired)
    fingerprints = {v.fingerprint for v in versions}
    plain = tmp_path / "site.pem"
    plain.write_bytes(versions[0].pem)
    # The Kubernetes Secret volume layout, as the kubelet's AtomicWriter makes it.
    volume = tmp_path / "secret"
    volume.mkdir()

    def publish(number: int) -> None:
        data = volume / f"..2026_01_01_00_00_{number:02d}.{number}"
        data.mkdir()
        (data / "tls.crt").write_bytes(versions[number % 2].pem)
        os.symlink(data.name, volume / "..data_tmp")
        os.rename(volume / "..data_tmp", volume / "..data")  # the atomic swap

    publish(0)
    os.symlink("..data/tls.crt", volume / "tls.crt")
    stop = threading.Event()

    def writer() -> None:
        number = 1
        while not stop.is_set():
            staged = tmp_path / f".site.pem.{number}"
            staged.write_bytes(versions[number % 2].pem)
            os.rename(staged, plain)
            previous = [p for p in volume.iterdir() if p.name.startswith("..2026")]
            publish(number % 100 if number >= 100 else number)
            for old in previous:  # the kubelet removes the old directory after the swap
                if (volume / "..data").resolve() != old.resolve():
                    for child in old.iterdir():
                        child.unlink()
                    old.rmdir()
            number += 1
            if number >= 100:
                number = 1
                for leftover in volume.iterdir():
                    if leftover.name.startswith("..2026") and (volume / "..data").resolve() != leftover.resolve():
                        for child in leftover.iterdir():
                            child.unlink()
                        leftover.rmdir()

    thread = threading.Thread(target=writer, daemon=True)
    probe = FilesProbe(FilesSettings(paths=(str(tmp_path),), exclude=("**/.site.pem.*",)))
    thread.start()
    seen: set[str] = set()
    try:
        for _ in range(150):
            discovery = probe.targets()
            names = sorted(os.path.relpath(t, tmp_path) for t in discovery.targets)
            assert names == ["secret/tls.crt", "site.pem"], names  # the ..data layout counted once
            for target in discovery.targets:
                result = probe.run(target, ProbeContext(deadline=time.monotonic() + 5))
                assert result.success, result.message
                [observation] = result.certificates
                assert observation.cert.fingerprint_sha256 in fingerprints
                seen.add(observation.cert.fingerprint_sha256)
    finally:
        stop.set()
        thread.join(5)
    assert seen == fingerprints, "both versions were read while the files changed"


# ---------------------------------------------------------------------- kubernetes


def test_kubernetes_api_unreachable_at_start_and_a_list_that_hangs(pki: Pki, tmp_path: Path, start_daemon: Any) -> None:
    (tmp_path / "good.pem").write_bytes(pki.valid.pem)
    tarpit = servers.tarpit()
    refused = servers.refused_port()
    try:
        for name, port in (("refused", refused), ("hanging", tarpit.port)):
            (tmp_path / f"{name}.kubeconfig").write_text(
                "apiVersion: v1\nkind: Config\ncurrent-context: t\n"
                "contexts: [{name: t, context: {cluster: c, user: u}}]\n"
                f"clusters: [{{name: c, cluster: {{server: 'http://127.0.0.1:{port}'}}}}]\n"
                "users: [{name: u, user: {token: t}}]\n"
            )
        config = f"""
global: {{interval: 1h}}
probes:
  - {{name: disk, kind: files, paths: ["{tmp_path / "good.pem"}"]}}
  - {{name: refused, kind: kubernetes, kubeconfig: "{tmp_path / "refused.kubeconfig"}"}}
  - {{name: hanging, kind: kubernetes, kubeconfig: "{tmp_path / "hanging.kubeconfig"}", list_timeout: 2s}}
"""
        daemon: DaemonProcess = start_daemon(config)
        started = time.monotonic()
        daemon.wait_ready(timeout=20)
        assert time.monotonic() - started < 10, "a hanging LIST holds the first round for list_timeout at most"
        metrics = daemon.metrics()
        assert value(metrics, "certscope_source_up", probe="refused") == 0
        assert value(metrics, "certscope_source_errors_total", probe="refused", reason="connect_refused") >= 1
        assert value(metrics, "certscope_source_up", probe="hanging") == 0
        assert value(metrics, "certscope_source_errors_total", probe="hanging", reason="deadline_exceeded") >= 1
        assert tarpit.connections >= 1, "the LIST did reach the hanging server"
        assert value(metrics, "certscope_probe_success", probe="disk") == 1, "the files source is not held up"
        log = daemon.log()
        assert "kubernetes scope" in log and "down reason=connect_refused" in log
        assert "down reason=deadline_exceeded" in log
    finally:
        tarpit.stop()


# -------------------------------------------------------------- in-process scheduler


@dataclass(frozen=True)
class NoSettings:
    pass


class _TestKind:
    target_reasons: ClassVar[tuple[Reason, ...]] = ()
    source_reasons: ClassVar[tuple[Reason, ...]] = ()
    concurrent_targets: ClassVar[bool] = False
    keeps_last_good: ClassVar[bool] = False

    def __init__(self, settings: NoSettings, defaults: ProbeDefaults) -> None:
        pass


class BuggyProbe(_TestKind):
    """One target whose probe raises something no one expected, one that works."""

    kind: ClassVar[str] = "buggy"

    def targets(self) -> Discovery:
        return Discovery(("boom", "fine"))

    def run(self, target: str, ctx: ProbeContext) -> ProbeResult:
        if target == "boom":
            raise KeyError("an unexpected bug")
        return ProbeResult(True, Reason.OK, 0.001)


class SteppingClockProbe(_TestKind):
    """Each run takes 50 ms during which the wall clock steps by ``step`` seconds."""

    kind: ClassVar[str] = "stepping"
    step = -3600.0
    real_time: Callable[[], float] = time.time
    offset = 0.0

    def targets(self) -> Discovery:
        return Discovery(("t",))

    def run(self, target: str, ctx: ProbeContext) -> ProbeResult:
        started = time.monotonic()
        type(self).offset += type(self).step  # an NTP step in the middle of the run
        time.sleep(0.05)
        return ProbeResult(True, Reason.OK, time.monotonic() - started)


class SlowDiscoveryProbe(_TestKind):
    kind: ClassVar[str] = "slow-discovery"
    discoveries = 0
    release = threading.Event()

    def targets(self) -> Discovery:
        type(self).discoveries += 1
        type(self).release.wait(10)
        return Discovery(("a",))

    def run(self, target: str, ctx: ProbeContext) -> ProbeResult:
        return ProbeResult(True, Reason.OK, 0.001)


@pytest.fixture
def kinds(monkeypatch: pytest.MonkeyPatch) -> None:
    for kind in (BuggyProbe, SteppingClockProbe, SlowDiscoveryProbe):
        monkeypatch.setitem(KINDS, kind.kind, ProbeKind(kind.kind, NoSettings, kind))


@pytest.fixture
def scheduler() -> Iterator[tuple[Scheduler, ResultStore]]:
    store = ResultStore()
    running = Scheduler(store)
    yield running, store
    running.stop()


def _exposition(store: ResultStore) -> dict[str, list[tuple[dict[str, str], float]]]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(store))
    return parse_metrics(generate_latest(registry).decode())


def test_an_unexpected_exception_in_one_probe_costs_only_its_target(
    kinds: None, scheduler: tuple[Scheduler, ResultStore], pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    running, store = scheduler
    (tmp_path / "good.pem").write_bytes(pki.valid.pem)
    config = (
        f'probes: [{{name: bug, kind: buggy, interval: 100ms}}, {{name: disk, kind: files, paths: ["{tmp_path}"]}}]'
    )
    running.apply(parse_config(config, "test"))
    wait_for(lambda: store.snapshot().probes["bug"].targets.get("boom", None) is not None, 5, "a round")
    wait_for(lambda: store.snapshot().probes["bug"].targets["boom"].runs_total >= 3, 5, "three rounds")
    wait_for(running.ready, 5, "the files round")
    metrics = _exposition(store)
    assert value(metrics, "certscope_probe_failures_total", probe="bug", target="boom", reason="internal_error") >= 3
    assert value(metrics, "certscope_probe_status", probe="bug", target="boom", reason="internal_error") == 1
    assert value(metrics, "certscope_probe_success", probe="bug", target="fine") == 1
    assert value(metrics, "certscope_cert_not_after_timestamp_seconds", probe="disk", index="0") == pki.valid.not_after
    assert value(metrics, "certscope_render_errors") == 0
    tracebacks = [r for r in caplog.records if "probe=bug target=boom internal error" in r.getMessage()]
    assert tracebacks and tracebacks[0].exc_info is not None, "the bug is logged with its stack"


def test_a_clock_step_does_not_bend_durations(
    kinds: None, scheduler: tuple[Scheduler, ResultStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    running, store = scheduler
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + SteppingClockProbe.offset)
    for name, step in (("back", -3600.0), ("forward", 7200.0)):
        SteppingClockProbe.step = step
        SteppingClockProbe.offset = 0.0
        running.apply(parse_config(f"probes: [{{name: {name}, kind: stepping, interval: 200ms}}]", "test"))
        wait_for(lambda n=name: store.snapshot().probes[n].rounds >= 3, 10, "three rounds")
        state = store.snapshot().probes[name]
        target = state.targets["t"]
        assert 0.05 <= target.result.duration_seconds < 1, target.result.duration_seconds
        assert state.source is not None and 0.05 <= state.source.round_duration_seconds < 1
        assert abs(target.last_run - (real_time() + SteppingClockProbe.offset)) < 5, "last_run is wall-clock time"
        metrics = _exposition(store)
        assert 0.05 <= value(metrics, "certscope_probe_duration_seconds", probe=name) < 1
        running.stop()


def test_twenty_scrapes_during_a_slow_discovery(kinds: None, scheduler: tuple[Scheduler, ResultStore]) -> None:
    running, store = scheduler
    SlowDiscoveryProbe.discoveries = 0
    SlowDiscoveryProbe.release.clear()
    app = WebApp(store, running.ready, lambda: None)
    web = WebServer(app, "127.0.0.1", 0)
    web.start()
    try:
        running.apply(parse_config("probes: [{name: slow, kind: slow-discovery, interval: 100ms}]", "test"))
        wait_for(lambda: SlowDiscoveryProbe.discoveries == 1, 5, "the discovery to start")

        def scrape(_: int) -> tuple[int, float, str]:
            started = time.monotonic()
            response = requests.get(f"http://127.0.0.1:{web.port}/metrics", timeout=5)
            return response.status_code, time.monotonic() - started, response.text

        with ThreadPoolExecutor(20) as pool:
            answers = list(pool.map(scrape, range(20)))
        assert [status for status, _, _ in answers] == [200] * 20
        assert max(seconds for _, seconds, _ in answers) < 2, "snapshots are served; nobody waits for discovery"
        for _, _, text in answers:
            assert find(parse_metrics(text), "certscope_build_info")
        assert SlowDiscoveryProbe.discoveries == 1, "scrapes never start a discovery"
        SlowDiscoveryProbe.release.set()
        wait_for(lambda: store.snapshot().probes["slow"].rounds >= 1, 5, "the round to finish")
        metrics = parse_metrics(requests.get(f"http://127.0.0.1:{web.port}/metrics", timeout=5).text)
        assert value(metrics, "certscope_probe_success", probe="slow", target="a") == 1
    finally:
        SlowDiscoveryProbe.release.set()
        web.stop()


# ------------------------------------------------------------------- OCSP oversize


class _OversizeOcsp(http.server.BaseHTTPRequestHandler):
    """Answers every request with 2 MiB of OCSP-typed zeros (honest Content-Length)."""

    def do_GET(self) -> None:
        body = b"\x30" + b"\x00" * (2 * 1024 * 1024)
        self.send_response(200)
        self.send_header("Content-Type", "application/ocsp-response")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        with contextlib.suppress(OSError):
            self.wfile.write(body)

    do_POST = do_GET

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass


def test_an_oversize_ocsp_answer_is_refused_at_the_cap(pki: Pki, tmp_path: Path) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _OversizeOcsp)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        (tmp_path / "leaf.pem").write_bytes(pki.valid.pem)
        (tmp_path / "issuer.pem").write_bytes(pki.intermediate.pem)
        probe = OcspProbe(
            OcspSettings(
                certificates=(str(tmp_path / "leaf.pem"),),
                issuer_file=str(tmp_path / "issuer.pem"),
                url=f"http://127.0.0.1:{server.server_address[1]}/",
            ),
            ProbeDefaults(allow_networks=("127.0.0.0/8",)),
        )
        started = time.monotonic()
        result = probe.run(str(tmp_path / "leaf.pem"), ProbeContext(deadline=time.monotonic() + 5))
        assert time.monotonic() - started < 2
        assert result.reason is Reason.OCSP_UNAVAILABLE, result.message
        [check] = [r for r in result.revocation if r.method == "ocsp"]
        assert check.state == "unknown", check
        assert "over the 65536-byte cap" in check.message, check
        assert result.certificates, "the certificate is still exported"
    finally:
        server.shutdown()
        server.server_close()
