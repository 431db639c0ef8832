"""The second fault matrix, parsing side (docs/reliability.md): what anyone who can
write a file into a watched directory, or a Secret into a watched namespace, can
make the daemon do.

Each attack runs against the real daemon while ``HealthWatch`` asks ``/-/healthy``
ten times a second: every answer must come within 1 s, a second probe must keep its
1 s schedule, and the process stays under a stated memory bound.  The attacks are
bounded versions of the reported ones (2^26 iterations where the report used
2^31-1), with the unbounded ones priced and refused before anything runs.
"""

from __future__ import annotations

import json
import logging
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs12 as pkcs12_library

from exporter.logs import JsonFormatter, LogfmtFormatter
from probes import pkcs12
from probes.certparse import _pem_blocks, parse_container
from probes.reasons import Reason
from tests import pkcs12_forge as forge
from tests.helpers import DaemonProcess, find, value, wait_for
from tests.kube_apiserver import FakeApiServer
from tests.kube_objects import b64, write_kubeconfig
from tests.pki import Pki, issue
from tests.test_kubernetes import TOKEN, tls_secret

P12_PASSWORD = "untrusted-input-p12-password-3c9a"


class HealthWatch:
    """Asks ``/-/healthy`` every 0.1 s in a thread and samples the daemon's RSS,
    threads and child processes, until stopped."""

    def __init__(self, daemon: DaemonProcess) -> None:
        self.daemon = daemon
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self.rss_mib: list[float] = []
        self.threads: list[int] = []
        self.children: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> HealthWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        pid = self.daemon.process.pid
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                response = requests.get(self.daemon.base_url + "/-/healthy", timeout=5)
                if response.status_code != 200:
                    self.failures.append(f"status {response.status_code}")
            except requests.RequestException as exc:
                self.failures.append(type(exc).__name__)
            self.latencies.append(time.monotonic() - started)
            status = process_status(pid)
            if status:
                self.rss_mib.append(status["VmRSS"] / 1024)
                self.threads.append(status["Threads"])
            self.children.append(len(child_pids(pid)))
            self._stop.wait(0.1)

    def assert_healthy(self, rss_bound_mib: float) -> None:
        assert self.latencies, "no health check ran"
        assert not self.failures, self.failures[:5]
        assert max(self.latencies) < 1.0, f"/-/healthy took {max(self.latencies):.2f} s"
        assert max(self.rss_mib) < rss_bound_mib, f"RSS reached {max(self.rss_mib):.0f} MiB"


def process_status(pid: int) -> dict[str, int]:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    return {"VmRSS": int(fields["VmRSS"].split()[0]), "Threads": int(fields["Threads"])}


def child_pids(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False).stdout
    return [int(p) for p in found.split()]


def runs(daemon: DaemonProcess, target: Path) -> float:
    return value(daemon.metrics(), "certscope_probe_runs_total", target=str(target))


def status_of(daemon: DaemonProcess, target: Path) -> str:
    found = find(daemon.metrics(), "certscope_probe_status", target=str(target))
    return found[0][0]["reason"] if found else ""


def steady_probe(directory: Path, pki: Pki) -> tuple[str, Path]:
    """A second probe with one good file on a 1 s interval: its runs are the schedule."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "steady.pem"
    path.write_bytes(pki.valid.pem)
    return f'  - {{name: steady, kind: files, paths: ["{directory}"]}}\n', path


# ------------------------------------------------------------------ PKCS#12: priced


def test_pkcs12_asking_for_absurd_key_derivations_is_refused_unopened(
    start_daemon: Any, pki: Pki, tmp_path: Path
) -> None:
    watched = tmp_path / "watched"
    watched.mkdir()
    good = watched / "good.pem"
    good.write_bytes(pki.valid.pem)
    # The reported attack: a MAC of 2^31-1 iterations (about 230 s in load_pkcs12),
    # and a key bag of 2^27 (the Secret that stopped /-/healthy for 14 s).
    mac = watched / "mac.p12"
    mac.write_bytes(forge.expensive_mac([pki.valid.der], 2**31 - 1))
    key_bag = watched / "key-bag.p12"
    key_bag.write_bytes(forge.expensive_key_bag([pki.valid.der], 2**27))
    real = watched / "real.p12"
    real.write_bytes(
        pkcs12_library.serialize_key_and_certificates(
            b"real",
            pki.valid.key,
            pki.valid.cert,
            [pki.intermediate.cert],
            serialization.BestAvailableEncryption(P12_PASSWORD.encode()),
        )
    )
    steady, steady_file = steady_probe(tmp_path / "steady", pki)
    config = f"""
global: {{interval: 1s, timeout: 5s}}
probes:
  - {{name: watched, kind: files, paths: ["{watched}"], pkcs12: {{password_env: UNTRUSTED_P12}}}}
{steady}"""
    daemon: DaemonProcess = start_daemon(config, env={"UNTRUSTED_P12": P12_PASSWORD})
    with HealthWatch(daemon) as watch:
        daemon.wait_ready(timeout=10)
        first = runs(daemon, steady_file)
        time.sleep(4)
        assert runs(daemon, steady_file) - first >= 3, "the other probe fell off its 1 s schedule"
    watch.assert_healthy(rss_bound_mib=120)

    metrics = daemon.metrics()
    assert status_of(daemon, mac) == "kdf_too_expensive"
    assert status_of(daemon, key_bag) == "kdf_too_expensive"
    assert status_of(daemon, good) == "ok"
    assert len(find(metrics, "certscope_cert_info", target=str(real))) == 2
    assert value(metrics, "certscope_source_errors_total", probe="watched", reason="kdf_too_expensive") >= 2
    log = daemon.log()
    # A password is configured: the MAC is computed once.
    assert f"{mac}: PKCS#12 asks for 2,147,483,647 key derivation iterations in all" in log
    assert "(the dearest: a MAC of 2147483647 iterations)" in log
    assert P12_PASSWORD not in log + daemon.get("/metrics").text


def test_a_tenant_secret_holding_an_expensive_pkcs12_is_refused(pki: Pki, tmp_path: Path, start_daemon: Any) -> None:
    api = FakeApiServer(bookmark_interval=0.5).start()
    try:
        api.allow(token=TOKEN)
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", api.url, {"token": TOKEN})
        hostile = tls_secret("tenant", "hostile-tls", pki.valid)
        hostile["data"]["tls.crt"] = b64(forge.expensive_key_bag([pki.valid.der], 2**27))
        api.put("secrets", hostile)
        api.put("secrets", tls_secret("web", "site-tls", pki.valid, pki.intermediate))
        steady, steady_file = steady_probe(tmp_path / "steady", pki)
        config = f"""
global: {{interval: 1s}}
probes:
  - {{name: cluster, kind: kubernetes, kubeconfig: {kubeconfig}}}
{steady}"""
        daemon: DaemonProcess = start_daemon(config)
        with HealthWatch(daemon) as watch:
            daemon.wait_ready(timeout=15)  # both probes' first rounds, so the steady one has runs to count
            metrics = daemon.wait_metrics(
                lambda m: find(m, "certscope_probe_status", target="tenant/hostile-tls/tls.crt"), 15, "the Secret"
            )
            first = runs(daemon, steady_file)
            time.sleep(3)
            assert runs(daemon, steady_file) - first >= 2
        watch.assert_healthy(rss_bound_mib=120)
        [(labels, _)] = find(metrics, "certscope_probe_status", target="tenant/hostile-tls/tls.crt")
        assert labels["reason"] == "kdf_too_expensive"
        assert find(metrics, "certscope_cert_info", target="web/site-tls/tls.crt")
        assert value(metrics, "certscope_source_errors_total", probe="cluster", reason="kdf_too_expensive") >= 1
    finally:
        api.stop()


# ------------------------------------------------------------- PKCS#12: isolated


def test_a_pkcs12_hiding_its_cost_costs_only_its_own_deadline(start_daemon: Any, pki: Pki, tmp_path: Path) -> None:
    """A key bag of 2^26 PBKDF2 iterations (about 15 s of CPU here) inside an
    encrypted SafeContents: nothing can price it before decrypting, so only the
    worker's deadline stops it.  Before, it held the GIL for all of it."""
    watched = tmp_path / "watched"
    watched.mkdir()
    hidden = watched / "hidden.p12"
    hidden.write_bytes(forge.hidden_expensive_key_bag([pki.valid.der], 2**26))
    assert pkcs12.price(hidden.read_bytes(), password_given=False).iterations < pkcs12.MAX_KDF_ITERATIONS
    good = watched / "good.pem"
    good.write_bytes(pki.valid.pem)
    steady, steady_file = steady_probe(tmp_path / "steady", pki)
    config = f"""
global: {{interval: 1s, timeout: 2s}}
probes:
  - {{name: watched, kind: files, paths: ["{watched}"]}}
{steady}"""
    daemon: DaemonProcess = start_daemon(config)
    started = time.monotonic()
    with HealthWatch(daemon) as watch:
        wait_for(lambda: status_of(daemon, hidden) == "deadline_exceeded", 10, "the hidden file to be stopped")
        stopped_after = time.monotonic() - started
        first = runs(daemon, steady_file)
        time.sleep(4)
        assert runs(daemon, steady_file) - first >= 3, "the other probe fell off its 1 s schedule"
        # The file is unchanged: its result is reused, nothing runs again.
        assert status_of(daemon, hidden) == "deadline_exceeded"
    watch.assert_healthy(rss_bound_mib=120)
    assert stopped_after < 6, f"stopped after {stopped_after:.1f} s (timeout 2 s)"
    assert max(watch.children) <= pkcs12.MAX_WORKERS
    assert status_of(daemon, good) == "ok"
    assert "hidden.p12: PKCS#12 took longer than" in daemon.log()
    # No worker is left computing: the one that ran over was killed.
    for pid in child_pids(daemon.process.pid):
        assert process_status(pid) and Path(f"/proc/{pid}/stat").read_text().split()[2] != "R"


def test_the_worker_cpu_limit_stops_a_runaway_even_without_the_parent() -> None:
    """The second stop: the worker's own RLIMIT_CPU, for a parent that would not
    kill it in time."""
    data = forge.hidden_expensive_key_bag([], 2**28)
    worker = pkcs12._Worker()
    try:
        request = pkcs12.struct.pack(">IBII", 1, 0, 0, len(data)) + data
        started = time.monotonic()
        with pytest.raises(OSError):
            worker.ask(request, time.monotonic() + 30)
        assert time.monotonic() - started < 5
        assert worker.process.wait(timeout=5) == -signal.SIGXCPU
    finally:
        worker.close()


def test_real_pkcs12_files_are_priced_as_written(pki: Pki) -> None:
    legacy = serialization.PrivateFormat.PKCS12.encryption_builder()
    legacy = legacy.kdf_rounds(50_000).key_cert_algorithm(pkcs12_library.PBES.PBESv1SHA1And3KeyTripleDESCBC)
    written = pkcs12_library.serialize_key_and_certificates(
        b"x", pki.valid.key, pki.valid.cert, [pki.intermediate.cert], legacy.hmac_hash(hashes.SHA1()).build(b"pw")
    )
    # What `openssl pkcs12 -info` shows: certificates and key each under a PKCS#12 PBE
    # of 50,000 iterations, and a MAC of 2,048.
    assert pkcs12.price(written, password_given=True) == pkcs12.Price(102_048, "PBE of 50000 iterations", True)
    assert pkcs12.price(written, password_given=False).iterations == 104_096  # the MAC tried twice
    modern = pkcs12_library.serialize_key_and_certificates(
        b"x", pki.valid.key, pki.valid.cert, None, serialization.BestAvailableEncryption(b"pw")
    )
    price = pkcs12.price(modern, password_given=True)
    assert price.readable and price.password_based and price.largest.startswith("PBKDF2 of ")
    assert parse_container(modern, "modern.p12", pkcs12_password=lambda: b"pw").certificates

    # scrypt (PBES2 allows it) is weighted by N*r*p; BER is not read, so it goes to a worker.
    scrypt = forge.seq(forge.oid(forge.SCRYPT), forge.seq(forge.octets(b"s"), *map(forge.integer, (2**20, 8, 4))))
    key_bag = forge.seq(
        forge.oid(forge.SHROUDED_KEY_BAG),
        forge.explicit(0, forge.seq(forge.seq(forge.oid(forge.PBES2), forge.seq(scrypt)), forge.octets(b"k"))),
    )
    priced = pkcs12.price(forge.pfx([forge._data(forge.seq(key_bag))], None), password_given=True)
    assert priced.iterations == 4 * 2**20 * 8 * 4 and priced.largest == "scrypt with N=1048576 r=8 p=4"
    ber = b"\x30\x80" + modern[4:] + b"\x00\x00"
    assert pkcs12.price(ber, password_given=True) == pkcs12.Price(0, "", password_based=True, readable=False)
    # No MAC and nothing encrypted: nothing to derive, read in process.
    plain = forge.pfx([forge._data(forge.seq())], None)
    assert pkcs12.price(plain, password_given=False) == pkcs12.Price(0, "", password_based=False)
    refused = parse_container(forge.expensive_mac([pki.valid.der], 2**24), "mac.p12")
    assert [e.reason for e in refused.errors] == [Reason.KDF_TOO_EXPENSIVE]


# ------------------------------------------------------------------------------ PEM


def test_pem_block_scanning_is_linear() -> None:
    """Repeated BEGIN lines: 0.6/2.6/10.3/42.5 s of CPU for 0.25/0.5/1/2 MiB
    before (quadratic); now about 0.05 s per MiB."""
    line = b"-----BEGIN CERTIFICATE-----\n"
    timings = {}
    for mib in (1, 2, 4):
        data = line * (mib * 1024 * 1024 // len(line))
        started = time.process_time()
        blocks, truncated = _pem_blocks(data)
        timings[mib] = time.process_time() - started
        assert blocks == [] and truncated == len(data) // len(line)
    assert timings[2] < 1.0, timings
    assert timings[4] < 4 * timings[1] + 0.5, f"not linear: {timings}"
    # Every shape of block costs a bounded number of problems, not one each.
    empty_blocks = b"-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n" * 20_000
    parsed = parse_container(empty_blocks, "empty-blocks.pem")
    assert len(parsed.errors) == 21
    assert parsed.errors[-1].message == "empty-blocks.pem: 19980 more parse_error problem(s) not listed"


def test_a_16_mib_file_of_begin_lines_in_a_watched_directory(start_daemon: Any, pki: Pki, tmp_path: Path) -> None:
    watched = tmp_path / "watched"
    watched.mkdir()
    hostile = watched / "begin-lines.pem"
    line = b"-----BEGIN CERTIFICATE-----\n"
    hostile.write_bytes(line * (16 * 1024 * 1024 // len(line)))  # the max_file_size cap
    good = watched / "good.pem"
    good.write_bytes(pki.valid.pem)
    steady, steady_file = steady_probe(tmp_path / "steady", pki)
    config = f"""
global: {{interval: 1s, timeout: 10s}}
probes:
  - {{name: watched, kind: files, paths: ["{watched}"]}}
{steady}"""
    daemon: DaemonProcess = start_daemon(config)
    with HealthWatch(daemon) as watch:
        wait_for(lambda: status_of(daemon, hostile) == "parse_error", 15, "the 16 MiB file's verdict")
        first = runs(daemon, steady_file)
        time.sleep(3)
        assert runs(daemon, steady_file) - first >= 2
    watch.assert_healthy(rss_bound_mib=160)
    metrics = daemon.metrics()
    assert value(metrics, "certscope_probe_duration_seconds", target=str(hostile)) < 5
    assert status_of(daemon, good) == "ok"
    assert "599186 PEM block(s) truncated" in daemon.log()


# ----------------------------------------------------- a tree of non-certificates


def test_fifty_thousand_files_that_are_no_certificates(start_daemon: Any, pki: Pki, tmp_path: Path) -> None:
    """Before: 100,001 log lines at start and RSS 210-309 MB once scraped, over the
    chart's DaemonSet limit of 192Mi.  Now: 44 lines, the high-water mark under it."""
    tree = tmp_path / "tree"
    tree.mkdir()
    for number in range(50_000):
        (tree / f"notes-{number:05d}.txt").write_bytes(b"just some text, not a certificate %d\n" % number)
    (tree / "good.pem").write_bytes(pki.valid.pem)
    _steady, steady_file = steady_probe(tmp_path / "steady", pki)
    config = f"""
global: {{interval: 1m, timeout: 5s}}
probes:
  - {{name: tree, kind: files, paths: ["{tree}"]}}
  - {{name: steady, kind: files, interval: 1s, paths: ["{steady_file.parent}"]}}
"""
    daemon: DaemonProcess = start_daemon(config, "--log.level=info")
    with HealthWatch(daemon) as watch:
        daemon.wait_ready(timeout=90)
        first = runs(daemon, steady_file)
        for _ in range(3):  # scrapes, each rendering 300,000 series
            body = requests.get(daemon.base_url + "/metrics", timeout=60).content
            assert len(body) > 30_000_000
        assert runs(daemon, steady_file) > first, "the other probe stopped during the scrapes"
    watch.assert_healthy(rss_bound_mib=192)
    high_water = int(Path(f"/proc/{daemon.process.pid}/status").read_text().split("VmHWM:")[1].split()[0]) / 1024
    assert high_water < 192, f"VmHWM {high_water:.0f} MiB is over the chart's 192Mi"
    metrics = daemon.metrics()
    assert value(metrics, "certscope_source_objects", probe="tree") == 50_001
    assert value(metrics, "certscope_source_errors_total", probe="tree", reason="parse_error") == 50_000
    assert find(metrics, "certscope_cert_info", target=str(tree / "good.pem"))
    lines = daemon.log().splitlines()
    assert len([line for line in lines if "probe=tree" in line]) <= 2 * 20 + 2, len(lines)
    assert any("49980 more new source errors this round not logged (parse_error=49980)" in line for line in lines)
    assert any("49980 more targets failing this round not logged (parse_error=49980)" in line for line in lines)


# ------------------------------------------------------------ control characters


def test_control_characters_from_names_never_reach_a_terminal_raw(start_daemon: Any, pki: Pki, tmp_path: Path) -> None:
    """File names and certificate names are written by others: a CR forges a log
    line, ESC drives the terminal that tails the log or runs `certscope scan`."""
    watched = tmp_path / "watched"
    watched.mkdir()
    evil_name = "evil\r level=error msg=forged \x1b[2J\u202e.pem"
    (watched / evil_name).write_bytes(b"no certificate here\n")
    hostile = issue("esc\x1b[31m\r\nred\u202e.test", pki.intermediate)
    (watched / "hostile-cn.pem").write_bytes(hostile.pem)
    (watched / b"latin1-\xe9.pem".decode("utf-8", "surrogateescape")).write_bytes(pki.valid.pem)
    daemon: DaemonProcess = start_daemon(f'probes: [{{name: w, kind: files, paths: ["{watched}"]}}]')
    daemon.wait_ready()
    raw = daemon.log_path.read_bytes()
    assert b"\r" not in raw and b"\x1b" not in raw and "\u202e".encode() not in raw
    assert "evil\\r level=error msg=forged \\u001b[2J" in raw.decode()
    assert all(line.startswith("ts=") for line in raw.decode().splitlines())

    for output in ("table", "json"):
        done = subprocess.run(
            [sys.executable, "-m", "exporter", "scan", str(watched), "--output", output],
            capture_output=True,
            timeout=60,
        )
        assert done.returncode == 2, done.stderr  # the non-certificate file
        assert b"Traceback" not in done.stderr
        for forbidden in (b"\r", b"\x1b", "\u202e".encode()):
            assert forbidden not in done.stdout, (output, forbidden)
    table = subprocess.run(
        [sys.executable, "-m", "exporter", "scan", str(watched)], capture_output=True, text=True, timeout=60
    ).stdout
    assert "CN=esc\\x1b[31m\\x0d\\x0ared\\u202e.test" in table
    assert "latin1-\\xe9.pem" in table


def test_log_formats_escape_every_control_character() -> None:
    record = logging.LogRecord("t", logging.WARNING, "", 0, "a\rb\x1bc\x00d\x7fe\x9bf\u2028g\nh\ti", None, None)
    logfmt = LogfmtFormatter().format(record)
    assert 'msg="a\\rb\\u001bc\\u0000d\\u007fe\\u009bf\\u2028g\\nh\\ti"' in logfmt
    as_json = JsonFormatter().format(record)
    assert json.loads(as_json)["msg"] == record.getMessage()
    for text in (logfmt, as_json):
        assert not re.search("[\x00-\x1f\x7f-\x9f\u2028\u2029]", text), text
