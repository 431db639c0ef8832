"""The second fault matrix, network side (docs/reliability.md, "Second fault matrix:
network and HTTP server"): fetch deadlines against dripping servers, the web config
changed at runtime, the HTTP server's bounds, /probe, /-/reload and the egress policy.

Every attack is real and bounded in time (a dripping server for a few seconds
against a 1-2 s timeout, a few thousand idle sockets for ~12 s), and every test
against a live daemon checks that it stays healthy throughout: ``/-/healthy``
answers within 1 s, the other probes keep their schedule, threads and memory stay
under a stated bound.
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import bcrypt
import pytest
import requests

import exporter.collector
from exporter.httpserver import HttpLimits
from exporter.store import ResultStore
from exporter.web import MAX_CONCURRENT_PROBES, WebApp, WebServer
from probes.context import ProbeContext
from probes.crl import CrlProbe, CrlSettings
from probes.fetch import ANY_NETWORK, FetchError, fetch, refused_address
from probes.ocsp import OcspProbe, OcspSettings
from probes.reasons import Reason
from probes.result import CertObservation, Discovery, ProbeResult
from probes.settings import ProbeDefaults
from tests.exporter.test_collector import FACTS, info
from tests.fixtures import servers
from tests.fixtures.helpers import DaemonProcess, find, parse_metrics, value, wait_for
from tests.fixtures.pki import Pki
from tests.fixtures.servers import CountingListener, FaultServer, TlsFiles, build_tls_pki, write_tls_files

StartDaemon = Callable[..., DaemonProcess]
ROOT = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------- helpers


class HealthWatch:
    """Asks ``/-/healthy`` every 0.2 s in a thread; ``stop()`` returns the slowest
    answer in seconds (a failure counts as infinitely slow)."""

    def __init__(self, url: str, verify: Any = True) -> None:
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, args=(url, verify), daemon=True)
        self._thread.start()

    def _watch(self, url: str, verify: Any) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                status = requests.get(url, timeout=5, verify=verify).status_code
            except requests.RequestException as exc:
                self.failures.append(type(exc).__name__)
            else:
                if status != 200:
                    self.failures.append(str(status))
            self.latencies.append(time.monotonic() - started)
            self._stop.wait(0.2)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join(10)
        assert not self.failures, f"/-/healthy failed: {Counter(self.failures)}"
        assert len(self.latencies) >= 3, "/-/healthy was asked too rarely to mean anything"
        print(f"/-/healthy: {len(self.latencies)} answers, slowest {max(self.latencies):.3f} s")
        return max(self.latencies)


def proc_status(pid: int) -> dict[str, int]:
    """Threads and VmRSS/VmHWM (KiB) of a process."""
    text = Path(f"/proc/{pid}/status").read_text()
    return {key: int(re.search(rf"^{key}:\s+(\d+)", text, re.M).group(1)) for key in ("Threads", "VmRSS", "VmHWM")}  # type: ignore[union-attr]


def http_dripper(head: bytes, filler: bytes, interval: float) -> FaultServer:
    """Reads the request, sends ``head`` at once, then one ``filler`` every ``interval``
    seconds for as long as the client listens."""

    def drip(conn: socket.socket, stopping: threading.Event) -> None:
        conn.settimeout(5)
        conn.recv(65536)
        conn.sendall(head)
        while not stopping.wait(interval):
            conn.sendall(filler)

    return servers.FaultServer("http-dripper", drip)


# Where the answer stops and drips: the status line, a header line, a chunk-size
# line (http.client read all three under a per-recv timeout), the body.
DRIPS = {
    "status_line": (b"", b"H"),
    "header_line": (b"HTTP/1.1 200 OK\r\n", b"X"),
    "chunk_size_line": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"0"),
    "body": (b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n", b"x"),
}


# ------------------------------------------------------------- item 3: fetch deadline


@pytest.mark.parametrize("where", DRIPS)
def test_a_dripping_server_is_cut_at_the_fetch_deadline(where: str) -> None:
    head, filler = DRIPS[where]
    with http_dripper(head, filler, interval=0.1) as server:
        started = time.monotonic()
        with pytest.raises(FetchError) as caught:
            fetch(
                f"http://127.0.0.1:{server.port}/ocsp",
                deadline=started + 1.5,
                max_bytes=1 << 20,
                allow_networks=ANY_NETWORK,
            )
        elapsed = time.monotonic() - started
    assert caught.value.kind == "unavailable" and caught.value.cause == "timeout", caught.value
    assert 1.4 <= elapsed < 2.0, f"cut after {elapsed:.2f} s, not at the 1.5 s deadline"


def test_a_dripping_tls_handshake_is_cut_at_the_fetch_deadline() -> None:
    with servers.dribbler(interval=0.1) as server:
        started = time.monotonic()
        with pytest.raises(FetchError) as caught:
            fetch(
                f"https://127.0.0.1:{server.port}/",
                deadline=started + 1.5,
                max_bytes=1 << 20,
                allow_networks=ANY_NETWORK,
            )
        elapsed = time.monotonic() - started
    assert caught.value.kind == "unavailable", caught.value
    assert 1.4 <= elapsed < 2.0, f"cut after {elapsed:.2f} s"


@pytest.mark.parametrize("where", ["header_line", "chunk_size_line"])
def test_a_dripping_ocsp_responder_leaves_the_daemon_healthy(
    start_daemon: StartDaemon, pki: Pki, tmp_path: Path, where: str
) -> None:
    """The issue's attack, bounded: a responder dripping 2 bytes/s held a probe with a
    3 s timeout for 512 s, kept /-/ready at 503 and SIGTERM from stopping the process."""
    (tmp_path / "leaf.pem").write_bytes(pki.valid.pem)
    (tmp_path / "issuer.pem").write_bytes(pki.intermediate.pem)
    (tmp_path / "watched").mkdir()
    (tmp_path / "watched" / "valid.pem").write_bytes(pki.valid.pem)
    head, filler = DRIPS[where]
    with http_dripper(head, filler, interval=0.5) as responder:
        daemon = start_daemon(
            "probes:\n"
            "  - {name: responder, kind: ocsp, interval: 1s, timeout: 2s,\n"
            f"     certificates: ['{tmp_path / 'leaf.pem'}'], issuer_file: '{tmp_path / 'issuer.pem'}',\n"
            f"     url: 'http://127.0.0.1:{responder.port}/'}}\n"
            f"  - {{name: pki, kind: files, interval: 1s, paths: ['{tmp_path / 'watched'}']}}\n"
        )
        watch = HealthWatch(daemon.base_url + "/-/healthy")
        daemon.wait_ready(timeout=6)  # the first ocsp round ends at its 2 s timeout
        first = daemon.metrics()
        time.sleep(5)
        metrics = daemon.metrics()
        assert watch.stop() < 1.0
        assert value(metrics, "certscope_probe_status", probe="responder", reason="ocsp_unavailable") == 1
        assert value(metrics, "certscope_probe_duration_seconds", probe="responder") < 2.6
        runs = value(metrics, "certscope_probe_runs_total", probe="responder")
        assert runs - value(first, "certscope_probe_runs_total", probe="responder") >= 1, "the ocsp probe stalled"
        files_runs = value(metrics, "certscope_probe_runs_total", probe="pki")
        assert files_runs - value(first, "certscope_probe_runs_total", probe="pki") >= 4, "the files probe lost rounds"
        assert responder.connections >= 2, "the responder was asked every round"

        started = time.monotonic()  # SIGTERM while the responder is still dripping
        daemon.signal(signal.SIGTERM)
        assert daemon.process.wait(10) == 0
        assert time.monotonic() - started < 10


STUCK_DAEMON = """
import sys, threading
from dataclasses import dataclass
from probes.kinds import KINDS, ProbeKind
from probes.result import Discovery

@dataclass(frozen=True)
class NoSettings:
    pass

class StuckProbe:
    kind = "stuck"
    target_reasons = ()
    source_reasons = ()
    concurrent_targets = False
    keeps_last_good = False
    def __init__(self, settings, defaults):
        pass
    def targets(self):
        return Discovery(("forever",))
    def run(self, target, ctx):
        threading.Event().wait()  # a call without any deadline

KINDS["stuck"] = ProbeKind("stuck", NoSettings, StuckProbe)
from exporter.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_sigterm_ends_the_process_even_with_a_probe_stuck_forever(tmp_path: Path) -> None:
    """Python joins the probe threads at exit; a thread stuck in a call without a
    deadline kept the process alive after SIGTERM.  The stop path now exits after
    STOP_GRACE_SECONDS (8 s) whatever is stuck."""
    config = tmp_path / "config.yaml"
    config.write_text("probes: [{name: stuck, kind: stuck, interval: 1s}]\n")
    log_path = tmp_path / "daemon.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-c", STUCK_DAEMON, "run", "--web.listen-address=127.0.0.1:0", f"--config.file={config}"],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: "listening on" in log_path.read_text(), 20, "the daemon to listen")
        time.sleep(1.5)  # the stuck run has started
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0, log_path.read_text()
        assert time.monotonic() - started < 10
        assert "exiting now" in log_path.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


# --------------------------------------------------------- item 4: web config at runtime


@pytest.fixture(scope="module")
def tls(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return write_tls_files(build_tls_pki(pki), tmp_path_factory.mktemp("web-tls"))


PASSWORD = "scrape-secret-3f9a"
HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
LAUGHS = "l0: &l0 [a, a, a, a, a, a, a, a, a]\n" + "".join(
    f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 9)
)
BAD_WEB_CONFIGS: dict[str, bytes] = {
    "type_error": b"min_version: [TLS12]",  # in tls_server_config, below
    "not_utf8": b"min_version: TLS12\n# caf\xe9",
    "deep_nesting": b"min_version: " + b"[" * 100_000,
    "billion_laughs": LAUGHS.encode() + b"min_version: *l8",
    "huge_integer": b"min_version: " + b"9" * 400,
}


def replace_file(path: Path, data: bytes) -> None:
    partial = path.with_suffix(".partial")
    partial.write_bytes(data)
    os.replace(partial, path)  # a new inode: the daemon sees a change at once


def test_a_web_config_broken_at_runtime_keeps_the_old_settings(
    start_daemon: StartDaemon, tls: TlsFiles, pki: Pki, tmp_path: Path
) -> None:
    """Editing --web.config.file to ``min_version: [TLS12]`` killed the HTTP server
    thread for good.  Now every broken edit (and a FIFO in its place) keeps the old
    TLS and basic auth, is logged and sets certscope_web_config_last_reload_successful 0."""
    (tmp_path / "watched").mkdir()
    (tmp_path / "watched" / "valid.pem").write_bytes(pki.valid.pem)
    good = (
        f"tls_server_config:\n  cert_file: {tls.localhost.fullchain}\n  key_file: {tls.localhost.key}\n"
        f"  min_version: TLS12\nbasic_auth_users:\n  prometheus: '{HASH}'\n"
    ).encode()
    web = tmp_path / "web.yml"
    replace_file(web, good)
    daemon = start_daemon(
        f"probes: [{{name: pki, kind: files, interval: 1s, paths: ['{tmp_path / 'watched'}']}}]\n",
        f"--web.config.file={web}",
    )
    https = daemon.base_url.replace("http://", "https://")
    watch = HealthWatch(https + "/-/healthy", verify=tls.root_ca)

    def scrape() -> requests.Response:
        return requests.get(https + "/metrics", verify=tls.root_ca, auth=("prometheus", PASSWORD), timeout=5)

    def reload_state() -> float:
        return value(parse_metrics(scrape().text), "certscope_web_config_last_reload_successful")

    assert reload_state() == 1
    for name, bad in BAD_WEB_CONFIGS.items():
        before = daemon.log().count("web config not reloaded")
        replace_file(web, good.replace(b"min_version: TLS12", bad.replace(b"\n", b"\n  ")))
        wait_for(lambda b=before: daemon.log().count("web config not reloaded") > b, 10, f"{name} rejected")  # type: ignore[misc]
        assert reload_state() == 0, name
        assert requests.get(https + "/metrics", verify=tls.root_ca, timeout=5).status_code == 401, name
        replace_file(web, good)
        wait_for(lambda: reload_state() == 1, 10, f"the good file back after {name}")
    fifo = tmp_path / "fifo.yml"
    os.mkfifo(fifo)
    os.replace(fifo, web)  # a FIFO must not block the server waiting for a writer
    wait_for(lambda: reload_state() == 0, 10, "the FIFO rejected")
    replace_file(web, good)
    wait_for(lambda: reload_state() == 1, 10, "the good file back after the FIFO")
    assert watch.stop() < 1.0
    log = daemon.log()
    assert "Exception in thread" not in log and "Traceback" not in log
    assert "not a regular file" in log and "must be one of TLS10" in log
    assert len(log) < 200_000, "no error message renders the expanded aliases"
    assert PASSWORD not in log and HASH not in log


def test_a_password_over_72_bytes_is_refused_cleanly(
    start_daemon: StartDaemon, tls: TlsFiles, pki: Pki, tmp_path: Path
) -> None:
    """bcrypt reads 72 bytes: a longer password was a 500 with a traceback; it is now a
    401, and never cut to 72 bytes (which would let any suffix in)."""
    (tmp_path / "watched").mkdir()
    long_password = "p" * 72
    web = tmp_path / "web.yml"
    web.write_text(
        f"basic_auth_users:\n  prometheus: '{bcrypt.hashpw(long_password.encode(), bcrypt.gensalt(4)).decode()}'\n"
    )
    daemon = start_daemon(
        f"probes: [{{name: pki, kind: files, paths: ['{tmp_path / 'watched'}']}}]\n", f"--web.config.file={web}"
    )
    assert daemon.get("/metrics", auth=("prometheus", long_password)).status_code == 200
    for password in (long_password + "x", long_password + "y" * 1000):
        assert daemon.get("/metrics", auth=("prometheus", password)).status_code == 401
    assert "Traceback" not in daemon.log()


# --------------------------------------------------------------- item 6: server bounds


def files_daemon(start_daemon: StartDaemon, pki: Pki, directory: Path, *extra: str) -> DaemonProcess:
    directory.mkdir(exist_ok=True)
    (directory / "valid.pem").write_bytes(pki.valid.pem)
    daemon = start_daemon(f"probes: [{{name: pki, kind: files, interval: 1s, paths: ['{directory}']}}]\n", *extra)
    daemon.wait_ready()
    return daemon


def test_idle_and_dripping_connections_cost_no_thread_and_are_closed(
    start_daemon: StartDaemon, pki: Pki, tmp_path: Path
) -> None:
    """3,000 idle connections were 3,004 threads, never closed, behind a backlog of 5."""
    daemon = files_daemon(start_daemon, pki, tmp_path / "watched")
    port = int(daemon.base_url.rsplit(":", 1)[1])
    listen = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, check=True).stdout
    assert listen.split()[2] == "1024", f"listen backlog: {listen}"
    before = proc_status(daemon.process.pid)
    watch = HealthWatch(daemon.base_url + "/-/healthy")
    idle: list[socket.socket] = []
    waits: list[float] = []

    def connect(_: int) -> None:
        started = time.monotonic()
        idle.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        waits.append(time.monotonic() - started)

    with ThreadPoolExecutor(50) as pool:
        list(pool.map(connect, range(2000)))
    dripping = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(20)]
    started = time.monotonic()
    for index in range(30):  # 'GET /metrics HTTP/1.1\r\n...' at 3 bytes/s: never a complete head
        for sock in dripping:
            with contextlib.suppress(OSError):
                sock.send(b"GET /metrics HTTP/1.1\r\nX: "[index : index + 1] or b"a")
        time.sleep(0.33)
        if index == 10:
            during = proc_status(daemon.process.pid)
    assert during["Threads"] <= before["Threads"] + 2, (before, during)
    assert during["VmRSS"] - before["VmRSS"] < 20 * 1024, (before, during)
    # With a backlog of 5 the median connection waited 1 s for a SYN retransmit.
    assert sorted(waits)[len(waits) // 2] < 0.2, "connections waited for the backlog"
    # head_timeout (10 s) after accept, every one of them is closed by the daemon.
    wait_for(lambda: time.monotonic() - started > 10.5, 15)
    for sock in idle + dripping:
        sock.settimeout(2)
        try:
            assert sock.recv(1) == b"", "the daemon closed it"
        except ConnectionResetError:
            pass
        sock.close()
    assert watch.stop() < 1.0
    assert daemon.get("/metrics").status_code == 200


def test_out_of_file_descriptors_the_server_makes_room(start_daemon: StartDaemon, pki: Pki, tmp_path: Path) -> None:
    """With RLIMIT_NOFILE at 64, 200 idle connections exhaust the descriptors before
    max_connections: accept() fails (EMFILE), the oldest idle connection is closed to
    make room, and a health check still gets in; the loop does not spin."""
    directory = tmp_path / "watched"
    directory.mkdir()
    (directory / "valid.pem").write_bytes(pki.valid.pem)

    def low_fd_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))

    daemon = start_daemon(
        f"probes: [{{name: pki, kind: files, interval: 1s, paths: ['{directory}']}}]\n", preexec=low_fd_limit
    )
    daemon.wait_ready()
    port = int(daemon.base_url.rsplit(":", 1)[1])
    idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(200)]
    try:
        watch = HealthWatch(daemon.base_url + "/-/healthy")
        cpu_before = sum(int(field) for field in Path(f"/proc/{daemon.process.pid}/stat").read_text().split()[13:15])
        time.sleep(3)
        cpu_after = sum(int(field) for field in Path(f"/proc/{daemon.process.pid}/stat").read_text().split()[13:15])
        assert watch.stop() < 1.0
        assert (cpu_after - cpu_before) / os.sysconf("SC_CLK_TCK") < 1.5, "the accept loop spins"
        assert "cannot accept a connection" in daemon.log()
        assert daemon.get("/metrics").status_code == 200
    finally:
        for sock in idle:
            sock.close()


def test_server_limits_in_process() -> None:
    """The limits themselves, small: max_connections evicts the oldest idle
    connection (a fresh request is still served), a head over the cap is refused."""
    store = ResultStore()
    app = WebApp(store, lambda: True, None)
    server = WebServer(
        app, "127.0.0.1", 0, limits=HttpLimits(max_connections=20, head_timeout=2.0, max_head_bytes=4096)
    )
    server.start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        idle = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(30)]
        time.sleep(0.3)
        assert requests.get(base + "/-/healthy", timeout=2).status_code == 200
        for sock in idle[:10]:  # the ten oldest made room for the newer ones
            sock.settimeout(1)
            with contextlib.suppress(ConnectionResetError):
                assert sock.recv(1) == b""
        pending, in_service = server.server.open_connections()
        assert pending + in_service <= 20
        huge = requests.get(base + "/metrics", headers={"X-Big": "a" * 8000}, timeout=5)
        assert huge.status_code == 431
        for sock in idle:
            sock.close()
    finally:
        server.stop()


def test_concurrent_scrapes_share_one_body_and_query_strings_hit_the_cache(
    start_daemon: StartDaemon, pki: Pki, tmp_path: Path
) -> None:
    """50 concurrent scrapes of a 13.6 MB exposition took RSS from 113 to 426 MB; ten
    /metrics?x=N to 754 MB.  Every scrape now sends the one cached body."""
    directory = tmp_path / "many"
    directory.mkdir()
    blobs = [pki.valid.pem, pki.expired.pem, pki.not_yet_valid.pem, pki.intermediate.pem]
    for number in range(1500):
        (directory / f"{number:05d}.pem").write_bytes(blobs[number % len(blobs)])
    daemon = start_daemon(f"probes: [{{name: pki, kind: files, interval: 1m, paths: ['{directory}']}}]\n")
    daemon.wait_ready(timeout=60)
    size = len(daemon.get("/metrics", headers={"Accept-Encoding": "identity"}).content)
    assert size > 3_000_000
    before = proc_status(daemon.process.pid)
    watch = HealthWatch(daemon.base_url + "/-/healthy")

    def slow_scrape(number: int) -> int:
        query = f"?x={number}" if number % 2 else ""  # half of them with a query string
        with requests.get(
            daemon.base_url + "/metrics" + query, headers={"Accept-Encoding": "identity"}, stream=True, timeout=60
        ) as response:
            time.sleep(1.0)  # a slow reader holds its response
            return len(response.content)

    with ThreadPoolExecutor(40) as pool:
        sizes = list(pool.map(slow_scrape, range(40)))
    after = proc_status(daemon.process.pid)
    assert min(sizes) > size * 0.99
    grown = after["VmHWM"] - before["VmRSS"]
    assert grown * 1024 < 3 * size, f"RSS grew {grown} KiB for 40 concurrent scrapes of {size} bytes"
    assert watch.stop() < 1.0
    head = requests.head(daemon.base_url + "/metrics", headers={"Accept-Encoding": "identity"}, timeout=10)
    assert head.status_code == 200 and int(head.headers["Content-Length"]) > size * 0.99 and head.content == b""


def test_query_strings_do_not_bypass_the_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    store = ResultStore()
    probe = info()
    store.configure([probe], "test")
    result = ProbeResult(True, Reason.OK, 0.01, (CertObservation(0, "leaf", FACTS),))
    store.publish_round(probe, Discovery(("/a.pem",)), {"/a.pem": (result, 1.0)}, 0.1)
    server = WebServer(WebApp(store, lambda: True, None), "127.0.0.1", 0)
    server.start()
    renders: list[object] = []
    real_render = exporter.collector.render
    monkeypatch.setattr(
        exporter.collector, "render", lambda snapshot: renders.append(snapshot) or real_render(snapshot)
    )
    try:
        url = f"http://127.0.0.1:{server.port}/metrics"
        with ThreadPoolExecutor(10) as pool:
            bodies = list(pool.map(lambda n: requests.get(f"{url}?x={n}", timeout=10).text, range(10)))
        assert len(renders) == 1, "one render for ten scrapes with ten query strings"
        assert all("certscope_cert_not_after_timestamp_seconds" in body for body in bodies)
        filtered = requests.get(url + "?name[]=certscope_build_info", timeout=10).text
        assert "certscope_build_info" in filtered and "certscope_cert_not_after" not in filtered
    finally:
        server.stop()


def test_probe_requests_are_capped_and_reload_needs_the_lifecycle_flag(
    start_daemon: StartDaemon, pki: Pki, tmp_path: Path
) -> None:
    """100 parallel /probe were 104 threads; POST /-/reload needed no credentials (40
    of them kept /-/ready at 503); HEAD /metrics was 405; a target holding '@'
    answered 'bad X-Prometheus-Scrape-Timeout-Seconds'."""
    directory = tmp_path / "watched"
    directory.mkdir()
    (directory / "valid.pem").write_bytes(pki.valid.pem)
    with servers.tarpit() as tarpit:
        config = (
            "web: {probe_endpoint: true}\n"
            "global: {egress: {allow_networks: ['127.0.0.0/8']}}\n"
            "probes:\n"
            f"  - {{name: web, kind: tls, interval: 1h, timeout: 2s, targets: ['127.0.0.1:{tarpit.port}'],\n"
            "     allow_targets: ['127.0.0.1:*']}\n"
            f"  - {{name: pki, kind: files, interval: 1s, paths: ['{directory}']}}\n"
        )
        daemon = start_daemon(config)
        daemon.wait_ready(timeout=10)
        before = proc_status(daemon.process.pid)
        watch = HealthWatch(daemon.base_url + "/-/healthy")
        peak = [0]
        sampling = threading.Event()

        def sample() -> None:
            while not sampling.is_set():
                peak[0] = max(peak[0], proc_status(daemon.process.pid)["Threads"])
                time.sleep(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        url = f"{daemon.base_url}/probe?module=web&target=127.0.0.1:{tarpit.port}"
        with ThreadPoolExecutor(40) as pool:
            statuses = Counter(pool.map(lambda _: requests.get(url, timeout=20).status_code, range(40)))
        sampling.set()
        sampler.join()
        assert statuses == {200: MAX_CONCURRENT_PROBES, 503: 40 - MAX_CONCURRENT_PROBES}, statuses
        assert peak[0] <= before["Threads"] + 16 + MAX_CONCURRENT_PROBES, (before, peak)
        assert watch.stop() < 1.0

        at = daemon.get("/probe?module=web&target=a@localhost:443")
        assert at.status_code == 400 and "'@' is not allowed" in at.text, at.text
        for header in ("abc", "nan", "-1", "inf"):
            bad = requests.get(url, headers={"X-Prometheus-Scrape-Timeout-Seconds": header}, timeout=5)
            assert bad.status_code == 400 and "X-Prometheus-Scrape-Timeout-Seconds" in bad.text, header

        assert requests.post(daemon.base_url + "/-/reload", timeout=5).status_code == 403
        assert daemon.get("/-/ready").status_code == 200
        head = requests.head(daemon.base_url + "/metrics", timeout=5)
        assert head.status_code == 200 and head.content == b"" and int(head.headers["Content-Length"]) > 0
        assert requests.head(daemon.base_url + "/-/healthy", timeout=5).status_code == 200
        # SIGHUP keeps working without the flag.
        config_path = Path(daemon.process.args[-1].split("=", 1)[1])  # type: ignore[index, union-attr]
        config_path.write_text(config.replace("name: pki", "name: pki2"))
        daemon.signal(signal.SIGHUP)
        daemon.wait_metrics(lambda m: find(m, "certscope_probe_success", probe="pki2"), what="the SIGHUP reload")


# ------------------------------------------------------------ item 7: egress policy


@pytest.mark.parametrize(
    ("address", "refused"),
    [
        ("64:ff9b::127.0.0.1", True),  # NAT64 well-known prefix -> 127.0.0.1
        ("64:ff9b::a9fe:a9fe", True),  # NAT64 -> 169.254.169.254
        ("64:ff9b:1::7f00:1", True),  # NAT64 local-use prefix
        ("::127.0.0.1", True),  # IPv4-compatible
        ("::ffff:127.0.0.1", True),  # IPv4-mapped
        ("::ffff:0:7f00:1", True),  # SIIT
        ("2002:7f00:1::", True),  # 6to4 -> 127.0.0.1
        ("2001:0:4136:e378:8000:63bf:80ff:fffe", True),  # Teredo, client 127.0.0.1
        ("100.100.100.200", True),  # Alibaba Cloud metadata
        ("192.0.0.192", True),  # Oracle Cloud metadata
        ("fd00:ec2::254", True),  # AWS metadata over IPv6
        ("0.0.0.0", True),
        ("0.1.2.3", True),
        ("64:ff9b::8.8.8.8", False),
        ("2002:808:808::1", False),
        ("10.1.2.3", False),
        ("2001:db8::1", False),
    ],
)
def test_egress_policy_address_forms(address: str, refused: bool) -> None:
    assert refused_address(address, ()) is refused
    assert refused_address(address, ANY_NETWORK) is False
    embedded_loopback = address in ("64:ff9b::127.0.0.1", "::127.0.0.1", "2002:7f00:1::", "::ffff:127.0.0.1")
    if embedded_loopback:  # allowing the IPv4 network allows every form that leads there
        assert refused_address(address, ("127.0.0.0/8",)) is False


def test_certificate_urls_in_every_form_are_refused_before_connecting() -> None:
    listener = CountingListener()
    try:
        for host in ("[::ffff:127.0.0.1]", "[::127.0.0.1]", "[64:ff9b::7f00:1]", "[2002:7f00:1::1]", "100.100.100.200"):
            started = time.monotonic()
            with pytest.raises(FetchError) as caught:
                fetch(f"http://{host}:{listener.port}/crl", deadline=started + 3, max_bytes=1024)
            assert caught.value.kind == "refused" and "egress policy" in str(caught.value), host
            assert time.monotonic() - started < 0.5
        assert listener.accepted == 0
    finally:
        listener.stop()


def test_urls_the_operator_configured_are_trusted_like_configured_targets(pki: Pki, tmp_path: Path) -> None:
    """A configured CA/OCSP/CRL URL on loopback was refused by the policy meant for
    URLs from certificates, while a configured TLS target on loopback was probed."""
    listener = CountingListener()
    (tmp_path / "leaf.pem").write_bytes(pki.valid.pem)
    (tmp_path / "issuer.pem").write_bytes(pki.intermediate.pem)
    try:
        url = f"http://127.0.0.1:{listener.port}/"
        ocsp = OcspProbe(
            OcspSettings(certificates=(str(tmp_path / "leaf.pem"),), issuer_file=str(tmp_path / "issuer.pem"), url=url),
            ProbeDefaults(),  # no allow_networks
        )
        checked = ocsp.run(str(tmp_path / "leaf.pem"), ProbeContext(deadline=time.monotonic() + 3))
        assert "egress policy" not in checked.message, checked.message
        crl = CrlProbe(CrlSettings(urls=(url + "ca.crl",), issuer_file=str(tmp_path / "issuer.pem")), ProbeDefaults())
        fetched = crl.run(url + "ca.crl", ProbeContext(deadline=time.monotonic() + 3))
        assert "egress policy" not in fetched.message, fetched.message
        assert listener.accepted == 2, "both configured URLs were fetched"
    finally:
        listener.stop()
