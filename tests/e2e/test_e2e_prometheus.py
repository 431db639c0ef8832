"""End to end against a real Prometheus: the daemon's exposition as Prometheus sees it.

A real ``prometheus`` scrapes the daemon every second and we read the result back
through its HTTP API; ``promtool check metrics`` lints the plain-text exposition.
Both binaries come from the Debian package ``prometheus``.  When they are missing
the tests fail (never skip): an e2e run that silently skips proves nothing.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.fixtures.helpers import DaemonProcess, find, wait_for
from tests.fixtures.pki import Pki, write_formats

pytestmark = pytest.mark.e2e

JOB = "certscope"
INSTALL_HINT = "run the install step: `apt-get install -y prometheus` (provides prometheus and promtool)"
NOT_AFTER = "certscope_cert_not_after_timestamp_seconds"

StartDaemon = Callable[..., DaemonProcess]


def require_binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"`{name}` is not on PATH; {INSTALL_HINT}", pytrace=False)
    return path


def files_config(directory: Path) -> str:
    return f'global: {{interval: 1s}}\nprobes:\n  - name: pki\n    kind: files\n    paths: ["{directory}"]\n'


def free_port() -> int:
    """A port the OS considers free right now (another process may take it before us)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class PrometheusServer:
    process: subprocess.Popen[bytes]
    base_url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def api(self, endpoint: str, **params: str) -> Any:
        """``data`` of a successful ``/api/v1/<endpoint>`` answer."""
        response = requests.get(f"{self.base_url}/api/v1/{endpoint}", params=params, timeout=10)
        response.raise_for_status()
        body = response.json()
        assert body["status"] == "success", body
        return body["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        data = self.api("query", query=promql)
        assert data["resultType"] == "vector", data
        return list(data["result"])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def launch_ready_prometheus(binary: str, directory: Path, config: Path, *flags: str) -> PrometheusServer:
    """A Prometheus on ``config`` (its data and logs in ``directory``), once ``/-/ready``
    answers.  The port free_port() found can be taken before Prometheus binds it, so a
    start that ends in "address already in use" is retried on another port (3 tries);
    any other exit fails the test with Prometheus' log.  A Prometheus that never gets
    ready is stopped before the failure propagates."""
    for attempt in range(3):
        port = free_port()
        log_path = directory / f"prometheus{attempt}.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={directory / f'data{attempt}'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    *flags,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        server = PrometheusServer(process, f"http://127.0.0.1:{port}", log_path)

        def ready_or_exited(server: PrometheusServer = server) -> bool:
            if server.process.poll() is not None:
                return True
            return requests.get(server.base_url + "/-/ready", timeout=2).status_code == 200

        try:
            wait_for(ready_or_exited, 20, "Prometheus /-/ready")
        except BaseException:
            server.stop()
            raise
        if server.process.poll() is None:
            return server
        if "address already in use" not in server.log():
            break
    pytest.fail(f"Prometheus exited with {server.process.returncode}:\n{server.log()}", pytrace=False)


@pytest.fixture
def start_prometheus(tmp_path: Path) -> Iterator[Callable[[str], PrometheusServer]]:
    """start_prometheus("host:port") -> a ready Prometheus scraping it every second; always stopped."""
    started: list[PrometheusServer] = []

    def start(scrape_target: str) -> PrometheusServer:
        binary = require_binary("prometheus")  # here, not at setup: a missing binary is a test failure
        directory = tmp_path / "prometheus"
        directory.mkdir(exist_ok=True)
        config = directory / "prometheus.yml"
        config.write_text(
            "global:\n"
            "  scrape_interval: 1s\n"
            "  scrape_timeout: 1s\n"
            "  evaluation_interval: 1s\n"
            "scrape_configs:\n"
            f"  - job_name: {JOB}\n"
            "    static_configs:\n"
            f'      - targets: ["{scrape_target}"]\n'
        )
        server = launch_ready_prometheus(binary, directory, config, "--log.level=info")
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            server.stop()


def test_prometheus_scrapes_the_expired_certificate(
    pki: Pki, tmp_path: Path, start_daemon: StartDaemon, start_prometheus: Callable[[str], PrometheusServer]
) -> None:
    files = write_formats(pki, tmp_path / "pki")
    daemon = start_daemon(files_config(tmp_path / "pki"))
    daemon.wait_ready()
    daemon_address = daemon.base_url.removeprefix("http://")

    prometheus = start_prometheus(daemon_address)

    promql = f'{NOT_AFTER}{{target="{files["expired.pem"]}"}}'
    try:
        result = wait_for(lambda: prometheus.query(promql), 20, f"Prometheus to have scraped {promql}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nPrometheus log:\n{prometheus.log()}\ndaemon log:\n{daemon.log()}") from None
    assert len(result) == 1, result
    labels = result[0]["metric"]
    assert labels["job"] == JOB
    assert labels["instance"] == daemon_address
    assert (labels["probe"], labels["kind"], labels["index"], labels["role"]) == ("pki", "files", "0", "leaf")
    assert float(result[0]["value"][1]) == pki.expired.not_after

    up = prometheus.query(f'up{{job="{JOB}"}}')
    assert [(series["metric"]["instance"], series["value"][1]) for series in up] == [(daemon_address, "1")]

    targets = [t for t in prometheus.api("targets", state="active")["activeTargets"] if t["labels"]["job"] == JOB]
    assert len(targets) == 1, targets
    assert targets[0]["scrapeUrl"] == f"{daemon.base_url}/metrics"
    assert targets[0]["health"] == "up", targets[0]
    assert targets[0]["lastError"] == "", targets[0]


def test_promtool_check_metrics_is_clean(pki: Pki, tmp_path: Path, start_daemon: StartDaemon) -> None:
    promtool = require_binary("promtool")
    write_formats(pki, tmp_path / "pki")
    (tmp_path / "pki" / "empty.pem").write_bytes(b"")  # failure series are part of the exposition too
    daemon = start_daemon(files_config(tmp_path / "pki"))
    daemon.wait_ready()
    daemon.wait_metrics(lambda samples: find(samples, NOT_AFTER), what="certificate series")

    response = daemon.get("/metrics", headers={"Accept": "text/plain"})
    response.raise_for_status()
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4"), response.headers
    lint = subprocess.run(
        [promtool, "check", "metrics"], input=response.text, capture_output=True, text=True, timeout=30
    )
    problems = (lint.stdout + lint.stderr).strip()
    assert lint.returncode == 0 and not problems, f"promtool check metrics exited {lint.returncode}:\n{problems}"
