"""The alert rules, proven by running them.

- ``promtool check rules`` and ``promtool test rules`` (every alert has a case where it
  fires and one where it stays quiet at its boundary);
- every alert's conventions (name, severity, summary, description, a runbook that
  exists), every metric it names documented in ``docs/metrics.md`` and emitted by
  certscope;
- ``amtool check-config`` and routing of ``alerts/alertmanager.example.yml``;
- end to end: the real daemon probes an expired certificate, a revoked one (a real
  ``openssl ocsp`` responder) and an mTLS endpoint that rejects its client certificate;
  a real Prometheus evaluates ``alerts/`` (``for:`` shortened to 0s, the only change)
  and a real Alertmanager, configured from the example, delivers to a webhook here.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from exporter.collector import render
from exporter.store import Snapshot
from tests.e2e.test_e2e_prometheus import free_port
from tests.fixtures.helpers import wait_for
from tests.fixtures.pki import Pki
from tests.fixtures.revocation_servers import revocation_stack
from tests.fixtures.servers import build_tls_pki, openssl_s_server, write_tls_files

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "alerts" / "certscope.rules.yml"
TESTS = sorted((ROOT / "alerts" / "tests").glob("*.test.yml"))
ALERTMANAGER_EXAMPLE = ROOT / "alerts" / "alertmanager.example.yml"
RUNBOOKS = ROOT / "docs" / "runbooks"
METRIC_NAME = re.compile(r"\bcertscope_[a-z0-9_]+")
# Rendered by exporter/tracing.py's TracingCollector, only while tracing is on.
TRACE_SELF_METRICS = {"certscope_trace_spans_total", "certscope_trace_export_up"}


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is missing: run ./scripts/test, which installs it from Debian", pytrace=False)
    return path


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def test_promtool_checks_and_unit_tests_pass() -> None:
    check = subprocess.run([tool("promtool"), "check", "rules", str(RULES)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert TESTS, "alerts/tests/*.test.yml"
    unit = subprocess.run(
        [tool("promtool"), "test", "rules", *(t.name for t in TESTS)],
        cwd=TESTS[0].parent,
        capture_output=True,
        text=True,
    )
    assert unit.returncode == 0, unit.stdout[-5000:] + unit.stderr[-2000:]
    assert unit.stdout.count("SUCCESS") == len(TESTS)


def test_every_alert_fires_and_stays_quiet_in_a_unit_test() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for path in TESTS:
        for test in yaml.safe_load(path.read_text())["tests"]:
            for case in test.get("alert_rule_test", []):
                (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert names - firing == set(), "alerts without a firing case"
    assert names - quiet == set(), "alerts without a quiet case"


def test_unit_test_series_carry_the_labels_a_real_prometheus_adds() -> None:
    """A real Prometheus puts ``job`` and ``instance`` on every scraped series; a rule
    whose join drops them passes a unit test whose input lacks them and then never
    fires.  So every input series names both, and every file has two instances."""
    for path in TESTS:
        instances: set[str] = set()
        for test in yaml.safe_load(path.read_text())["tests"]:
            for entry in test.get("input_series", []):
                series = entry["series"]
                assert 'job="' in series and 'instance="' in series, f"{path.name}: {series}"
                instances.add(series.split('instance="', 1)[1].split('"', 1)[0])
        assert len(instances) >= 2, f"{path.name}: no case with two instances"


def test_every_alert_follows_the_conventions() -> None:
    for rule in alert_rules():
        name = rule["alert"]
        assert re.fullmatch(r"Certscope[A-Z][A-Za-z0-9]+", name), name
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        annotations = rule["annotations"]
        assert annotations["summary"] and annotations["description"], name
        assert annotations["runbook_url"].endswith(f"/docs/runbooks/{name}.md"), name
        runbook = RUNBOOKS / f"{name}.md"
        assert runbook.is_file(), f"{runbook} is missing"
        text = runbook.read_text()
        assert "## Diagnose" in text or "## Diagnosis" in text, f"{runbook}: no diagnosis section"


def emitted_metric_names() -> set[str]:
    """Every family certscope renders (an empty snapshot still declares them all)."""
    names = set()
    for family in render(Snapshot()):
        names.add(family.name)
        if family.type == "counter":
            names.add(family.name + "_total")
        if family.type == "histogram":
            names.update({family.name + "_bucket", family.name + "_sum", family.name + "_count"})
    return names


@pytest.mark.parametrize("source", ["alerts/certscope.rules.yml", "dashboards"])
def test_every_metric_in_alerts_and_dashboards_is_documented_and_emitted(source: str) -> None:
    documented = set(METRIC_NAME.findall((ROOT / "docs" / "metrics.md").read_text()))
    emitted = emitted_metric_names() | TRACE_SELF_METRICS
    path = ROOT / source
    files = sorted(path.glob("*.json")) if path.is_dir() else [path]
    used = {name for file in files for name in METRIC_NAME.findall(file.read_text())}
    assert used, f"no metric found in {source}"
    assert used - documented == set(), f"metrics used in {source} but not in docs/metrics.md"
    assert used - emitted == set(), f"metrics used in {source} that certscope does not emit"


def test_alertmanager_example_checks_and_routes() -> None:
    check = subprocess.run([tool("amtool"), "check-config", str(ALERTMANAGER_EXAMPLE)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr

    def route(*labels: str) -> str:
        done = subprocess.run(
            [tool("amtool"), "config", "routes", "test", f"--config.file={ALERTMANAGER_EXAMPLE}", *labels],
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout.strip()

    assert route("alertname=CertscopeCertificateExpired", "severity=critical") == "pager"
    assert route("alertname=CertscopeCertificateExpiring", "severity=warning") == "tickets"
    assert route("alertname=CertscopeCertificateExpiringSoon", "severity=critical", "team=payments") == "team-pager"
    assert route("alertname=CertscopeCertificateExpiring", "severity=warning", "team=payments") == "team-tickets"


# --------------------------------------------------------------------------- end to end


class Webhook:
    """Alertmanager's webhook receiver: every notification POSTed, by path."""

    def __init__(self) -> None:
        self.notifications: list[tuple[str, dict[str, Any]]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                owner.notifications.append((self.path, json.loads(body)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def alerts(self, name: str) -> list[tuple[str, dict[str, Any]]]:
        return [
            (path, alert)
            for path, message in self.notifications
            for alert in message["alerts"]
            if alert["labels"]["alertname"] == name and alert["status"] == "firing"
        ]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Process:
    def __init__(self, args: list[str], log: Path) -> None:
        self.log_path = log
        self._log = open(log, "wb")
        self.process = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


def start_ready(args_for_port: Any, log: Path, what: str) -> tuple[Process, str]:
    """Start a server on a free port (retried if the port is taken first); wait for /-/ready."""
    for attempt in range(3):
        port = free_port()
        process = Process(args_for_port(port), log.with_suffix(f".{attempt}.log"))
        url = f"http://127.0.0.1:{port}"

        def ready(process: Process = process, url: str = url) -> bool:
            if process.process.poll() is not None:
                return True
            return requests.get(url + "/-/ready", timeout=2).status_code == 200

        wait_for(ready, 30, f"{what} /-/ready")
        if process.process.poll() is None:
            return process, url
        if "address already in use" not in process.log():
            break
    pytest.fail(f"{what} did not start:\n{process.log()}", pytrace=False)


@pytest.fixture
def stack() -> Iterator[list[Any]]:
    started: list[Any] = []
    yield started
    for thing in reversed(started):
        thing.stop()


def test_alerts_reach_alertmanager_end_to_end(pki: Pki, tmp_path: Path, start_daemon: Any, stack: list[Any]) -> None:
    prometheus_binary, alertmanager_binary = tool("prometheus"), tool("prometheus-alertmanager")
    # Endpoints: an expired certificate on disk, a revoked one, an mTLS server that
    # rejects certscope's client certificate (issued by a CA it does not trust).
    certs = tmp_path / "certs"
    certs.mkdir()
    (certs / "expired.pem").write_bytes(pki.expired.pem)
    revocation = revocation_stack(tmp_path / "revocation", big_entries=None)
    stack.append(revocation)
    tls = write_tls_files(build_tls_pki(pki), tmp_path / "tls")
    mtls = openssl_s_server(
        tls.localhost.cert, tls.localhost.key, tls.localhost.chain, verify_client="require", client_ca=tls.client_ca
    )
    stack.append(mtls)
    config = {
        "global": {"interval": "1s", "egress": {"allow_networks": ["127.0.0.0/8"]}},
        "probes": [
            {"name": "disk", "kind": "files", "paths": [str(certs)]},
            {
                "name": "ocsp",
                "kind": "ocsp",
                "certificates": [str(revocation.pki.revoked.cert_path)],
                "issuer_file": str(revocation.pki.ca.cert_path),
            },
            {
                "name": "mtls",
                "kind": "tls",
                "targets": [f"localhost:{mtls.address[1]}"],
                "trust": {"system": False, "ca_files": [str(tls.root_ca)]},
                "client_cert": {"cert_file": str(tls.wrong_ca_client.cert), "key_file": str(tls.wrong_ca_client.key)},
            },
        ],
    }
    daemon = start_daemon(yaml.safe_dump(config))
    daemon.wait_ready()

    # Alertmanager: the example config, receivers pointed at this test, no waiting.
    webhook = Webhook()
    stack.append(webhook)
    alertmanager_config = yaml.safe_load(ALERTMANAGER_EXAMPLE.read_text())
    for receiver in alertmanager_config["receivers"]:
        for hook in receiver["webhook_configs"]:
            hook["url"] = hook["url"].replace("http://127.0.0.1:5001", webhook.url)
    alertmanager_config["route"].update(group_wait="1s", group_interval="1s", repeat_interval="1m")
    am_dir = tmp_path / "alertmanager"
    am_dir.mkdir()
    (am_dir / "alertmanager.yml").write_text(yaml.safe_dump(alertmanager_config))
    alertmanager, alertmanager_url = start_ready(
        lambda port: [
            alertmanager_binary,
            f"--config.file={am_dir / 'alertmanager.yml'}",
            f"--storage.path={am_dir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
        ],
        am_dir / "alertmanager",
        "Alertmanager",
    )
    stack.append(alertmanager)

    # Prometheus: the rules as shipped, with every `for:` at 0s so the test takes seconds.
    prom_dir = tmp_path / "prometheus"
    prom_dir.mkdir()
    fast_rules = re.sub(r"(?m)^(\s+for:) \S+$", r"\1 0s", RULES.read_text())
    (prom_dir / "rules.yml").write_text(fast_rules)
    (prom_dir / "prometheus.yml").write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(prom_dir / "rules.yml")],
                "alerting": {
                    "alertmanagers": [{"static_configs": [{"targets": [alertmanager_url.removeprefix("http://")]}]}]
                },
                "scrape_configs": [
                    {
                        "job_name": "certscope",
                        "static_configs": [{"targets": [daemon.base_url.removeprefix("http://")]}],
                    }
                ],
            }
        )
    )
    prometheus, _ = start_ready(
        lambda port: [
            prometheus_binary,
            f"--config.file={prom_dir / 'prometheus.yml'}",
            f"--storage.tsdb.path={prom_dir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        prom_dir / "prometheus",
        "Prometheus",
    )
    stack.append(prometheus)

    wanted = ("CertscopeCertificateExpired", "CertscopeCertificateRevoked", "CertscopeClientCertificateRejected")
    wait_for(lambda: all(webhook.alerts(name) for name in wanted), 60, f"{wanted} at the webhook")

    [(path, expired)] = webhook.alerts("CertscopeCertificateExpired")[:1]
    assert path == "/pager"  # critical, no owner: the pager
    assert expired["labels"]["subject_cn"] == "expired.test"  # identity joined from certscope_cert_info
    assert expired["labels"]["target"] == str(certs / "expired.pem")
    assert expired["annotations"]["summary"] == f"Certificate expired.test at {certs / 'expired.pem'} has expired"
    assert expired["annotations"]["runbook_url"].endswith("/docs/runbooks/CertscopeCertificateExpired.md")

    revoked = webhook.alerts("CertscopeCertificateRevoked")[0][1]
    assert revoked["labels"]["serial"] == format(revocation.pki.revoked.serial, "x")
    serial = revoked["labels"]["serial"]
    assert revoked["annotations"]["summary"] == f"Certificate revoked.test (serial {serial}) is revoked"
    # The evidence (method, probe, where), from a query in the alert's template.
    assert revoked["annotations"]["evidence"] == f"ocsp by probe ocsp at {revocation.pki.revoked.cert_path}"

    rejected = webhook.alerts("CertscopeClientCertificateRejected")[0][1]
    assert rejected["labels"]["target"] == f"localhost:{mtls.address[1]}"
    assert rejected["labels"]["severity"] == "critical"
    # What should not page: certscope is up, so nothing says it is absent.
    assert not webhook.alerts("CertscopeAbsent")
