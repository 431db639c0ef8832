"""``global.workers``: tls rounds run in worker processes (exporter/probe_workers.py).

Real servers (openssl s_server) on 127.0.0.1.  The verdicts of a round in workers
are the verdicts of the same round in the daemon; a worker that dies fails only the
targets it held, and is started again; no worker outlives the daemon, however the
daemon ends.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from exporter.config import ConfigError, parse_config
from exporter.probe_workers import TlsInWorkers
from exporter.scheduler import Scheduler
from exporter.store import ResultStore
from exporter.tracing import Tracing
from probes.reasons import Reason
from tests.fixtures import servers
from tests.fixtures.helpers import DaemonProcess, children, find, wait_for
from tests.fixtures.pki import Pki


@pytest.fixture(scope="module")
def tls_files(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> servers.TlsFiles:
    return servers.write_tls_files(servers.build_tls_pki(pki), tmp_path_factory.mktemp("workers"))


@pytest.fixture(scope="module")
def fleet(tls_files: servers.TlsFiles) -> Iterator[dict[str, str]]:
    """A target per verdict: name -> 'localhost:port'."""
    started: dict[str, servers.ServerProcess] = {}
    try:
        for name in ("localhost", "expired", "wrong_host", "self_signed", "untrusted"):
            leaf: servers.LeafFiles = getattr(tls_files, name)
            started[name] = servers.openssl_s_server(leaf.cert, leaf.key, leaf.chain)
        targets = {name: f"localhost:{server.port}" for name, server in started.items()}
        targets["closed"] = f"localhost:{servers.free_port()}"
        yield targets
    finally:
        for server in started.values():
            server.stop()


def config_text(targets: list[str], tls_files: servers.TlsFiles, workers: int, timeout: str = "3s") -> str:
    return f"""
global:
  concurrency: 4
  workers: {workers}
  timeout: {timeout}
  trust: {{system: false, ca_files: ["{tls_files.root_ca}"]}}
probes:
  - name: web
    kind: tls
    interval: 1h
    targets: {targets}
"""


class Rounds(ResultStore):
    """The daemon's store, counting published rounds."""

    def __init__(self) -> None:
        super().__init__()
        self.published = 0
        self.changed = threading.Condition()

    def publish_round(self, *args: Any) -> Any:
        answer = super().publish_round(*args)
        with self.changed:
            self.published += 1
            self.changed.notify_all()
        return answer

    def wait(self, count: int, timeout: float = 30.0) -> dict[str, Any]:
        with self.changed:
            assert self.changed.wait_for(lambda: self.published >= count, timeout), f"round {count} not published"
        return {target: state.result for target, state in self.snapshot().probes["web"].targets.items()}


def run_round(text: str, *, again: int = 0) -> tuple[dict[str, Any], Scheduler, Rounds]:
    store = Rounds()
    scheduler = Scheduler(store)
    config = parse_config(text, "test.yaml")
    scheduler.start_workers(config.global_settings)
    scheduler.apply(config)
    return store.wait(1), scheduler, store


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_round_in_workers_gives_the_daemons_verdicts(fleet: dict[str, str], tls_files: servers.TlsFiles) -> None:
    targets = list(fleet.values())
    in_daemon, scheduler, _ = run_round(config_text(targets, tls_files, workers=1))
    scheduler.stop()
    in_workers, scheduler, _ = run_round(config_text(targets, tls_files, workers=2))
    try:
        pids = scheduler.worker_pids()
        assert len(pids) == 2 and all(alive(pid) for pid in pids)
        probe = scheduler.probe("web")
        assert probe is not None and isinstance(probe[1], TlsInWorkers)
        assert not probe[1].local._memo._facts, "the daemon's own probe ran a target"
        reasons = {name: in_workers[target].reason for name, target in fleet.items()}
        assert reasons == {
            "localhost": Reason.OK,
            "expired": Reason.CERT_EXPIRED,
            "wrong_host": Reason.HOSTNAME_MISMATCH,
            "self_signed": Reason.SELF_SIGNED,
            "untrusted": Reason.INCOMPLETE_CHAIN,
            "closed": Reason.CONNECT_REFUSED,
        }, reasons
        for target in targets:
            ours, theirs = in_daemon[target], in_workers[target]
            assert (ours.reason, ours.message) == (theirs.reason, theirs.message), target
            assert [o.cert for o in ours.certificates] == [o.cert for o in theirs.certificates], target
    finally:
        scheduler.stop()
    wait_for(lambda: not any(alive(pid) for pid in pids), 5, "the workers to exit after stop()")


def test_a_worker_that_dies_fails_only_its_targets_and_starts_again(
    fleet: dict[str, str], tls_files: servers.TlsFiles
) -> None:
    # A server that accepts and never answers holds its worker's share of the round
    # until the timeout (10 s), so that worker can be killed with the round in flight.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    silent.settimeout(20)
    hanging = f"localhost:{silent.getsockname()[1]}"
    victim = zlib.crc32(hanging.encode()) % 2
    others = [t for t in fleet.values() if zlib.crc32(t.encode()) % 2 != victim]
    assert others, "every fleet target hashes to the victim: pick another port"
    store = Rounds()
    scheduler = Scheduler(store)
    try:
        config = parse_config(config_text([hanging, *fleet.values()], tls_files, workers=2, timeout="10s"), "t.yaml")
        scheduler.start_workers(config.global_settings)
        before = scheduler.worker_pids()
        scheduler.apply(config)
        connection, _ = silent.accept()  # the hanging target's run is in its handshake now
        killed_at = time.monotonic()
        os.kill(before[victim], signal.SIGKILL)
        results = store.wait(1, timeout=8)
        assert time.monotonic() - killed_at < 5, "the round waited for the dead worker's deadline"
        assert results[hanging].reason is Reason.INTERNAL_ERROR
        assert results[hanging].message == f"worker process {victim} exited"
        for target in others:  # the other worker's targets keep their verdicts
            assert results[target].reason is not Reason.INTERNAL_ERROR, (target, results[target].message)
        assert results[fleet["expired"]].reason in (Reason.CERT_EXPIRED, Reason.INTERNAL_ERROR)
        connection.close()

        # The next round starts the worker again; every target is judged.
        scheduler.apply(parse_config(config_text(list(fleet.values()), tls_files, workers=2), "t.yaml"))
        results = store.wait(2)
        assert results[fleet["localhost"]].reason is Reason.OK
        assert results[fleet["expired"]].reason is Reason.CERT_EXPIRED
        after = scheduler.worker_pids()
        assert len(after) == 2 and before[victim] not in after and before[1 - victim] in after
    finally:
        scheduler.stop()
        silent.close()


def test_workers_exit_when_the_daemon_is_killed(
    fleet: dict[str, str], tls_files: servers.TlsFiles, tmp_path: Path
) -> None:
    config = tmp_path / "certscope.yaml"
    config.write_text(config_text([fleet["localhost"]], tls_files, workers=2))
    daemon = DaemonProcess(config, tmp_path / "daemon.log")
    try:
        daemon.wait_ready(30)
        samples = daemon.metrics()
        assert [labels["reason"] for labels, _ in find(samples, "certscope_probe_status", probe="web")] == ["ok"]
        workers = wait_for(lambda: children(daemon.process.pid) if len(children(daemon.process.pid)) >= 2 else None)
        assert "probe worker 1 started" in daemon.log()
        daemon.process.send_signal(signal.SIGKILL)
        daemon.process.wait(10)
        wait_for(lambda: not any(alive(pid) for pid in workers), 10, "the workers to exit with the daemon")
    finally:
        daemon.stop()


def test_sigterm_stops_the_daemon_and_its_workers_in_time(
    fleet: dict[str, str], tls_files: servers.TlsFiles, tmp_path: Path
) -> None:
    config = tmp_path / "certscope.yaml"
    config.write_text(config_text([fleet["localhost"], fleet["expired"]], tls_files, workers=2))
    daemon = DaemonProcess(config, tmp_path / "daemon.log")
    daemon.wait_ready(30)
    workers = children(daemon.process.pid)
    assert len(workers) >= 2
    started = time.monotonic()
    assert daemon.stop() == 0
    assert time.monotonic() - started < 10
    assert not any(alive(pid) for pid in workers)


def test_a_reload_keeps_the_workers_unless_their_number_changes(
    fleet: dict[str, str], tls_files: servers.TlsFiles
) -> None:
    targets = [fleet["localhost"], fleet["expired"]]
    _, scheduler, store = run_round(config_text(targets, tls_files, workers=2))
    try:
        first = scheduler.worker_pids()
        scheduler.apply(parse_config(config_text(targets[:1], tls_files, workers=2), "test.yaml"))
        assert store.wait(2)[targets[0]].reason is Reason.OK
        assert scheduler.worker_pids() == first, "a reload with the same workers started new ones"
        scheduler.apply(parse_config(config_text(targets, tls_files, workers=3), "test.yaml"))
        results = store.wait(3)
        assert results[targets[1]].reason is Reason.CERT_EXPIRED
        now = scheduler.worker_pids()
        assert len(now) == 3 and not set(now) & set(first)
        wait_for(lambda: not any(alive(pid) for pid in first), 5, "the replaced workers to exit")
    finally:
        scheduler.stop()


def test_with_tracing_on_runs_stay_in_the_daemon(
    fleet: dict[str, str], tls_files: servers.TlsFiles, caplog: pytest.LogCaptureFixture
) -> None:
    from opentelemetry.sdk.trace import TracerProvider

    store = Rounds()
    scheduler = Scheduler(store, tracing=Tracing(TracerProvider()))
    try:
        config = parse_config(config_text([fleet["localhost"]], tls_files, workers=2), "test.yaml")
        scheduler.start_workers(config.global_settings)
        scheduler.apply(config)
        assert store.wait(1)[fleet["localhost"]].reason is Reason.OK
        assert scheduler.worker_pids() == []
        assert "tls runs stay in the daemon while tracing is on" in caplog.text
    finally:
        scheduler.stop()


@pytest.mark.parametrize("workers", [0, 65, -1])
def test_workers_out_of_range_is_a_config_error(workers: int) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config(f"global: {{workers: {workers}}}\nprobes: []\n", "bad.yaml")
    assert any("global.workers" in m and "between 1 and 64" in m for m in raised.value.messages), raised.value.messages
