"""The Grafana dashboards in ``dashboards/``: valid for Grafana, portable, and right about certscope.

Three kinds of checks:

* Schema: each dashboard validates against the JSON Schema generated from Grafana's
  ``@grafana/schema`` npm package (``tests/fixtures/dashboard_schema.py``), and its ``schemaVersion``
  is that package's.  npm missing is a failure, not a skip.
* Portability and contract: plain JSON without ``__inputs``/``__requires`` (sidecar
  provisioning and manual import both work), every panel, target, variable and annotation
  on the ``${datasource}`` variable, ``$__rate_interval`` in every rate, stable uids, and
  only metric names documented in ``docs/metrics.md``.
* End to end: the real daemon probes real endpoints (certificate files, one of them
  expired and one rotated during the test; ``openssl s_server`` with a valid, an expired
  and an mTLS endpoint that rejects our client certificate), with tracing on so the
  histograms carry exemplars; a real Prometheus (exemplar storage on) scrapes it every
  second.  Every expression of every panel, annotation and template variable is run with
  Grafana's variables substituted, and must succeed without warnings; the core panels
  must return data, and the handshake p95 must have exemplars that name traces.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import requests
import yaml

from tests.e2e.test_e2e_prometheus import PrometheusServer, launch_ready_prometheus, require_binary
from tests.fixtures import servers
from tests.fixtures.dashboard_schema import DashboardSchema, SchemaUnavailable, load_dashboard_schema
from tests.fixtures.helpers import DaemonProcess, wait_for
from tests.fixtures.otlp_receiver import OtlpReceiver
from tests.fixtures.pki import DAY, NOW, Pki, issue, write_formats

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = {
    "executive": "certscope-executive",
    "oncall": "certscope-oncall",
    "debug": "certscope-debug",
}
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
METRICS_DOC = ROOT / "docs" / "metrics.md"
METRIC_NAME = re.compile(r"certscope_[a-z0-9_]+")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")
GRAFANA_BUILTINS = {"__interval", "__interval_ms", "__rate_interval", "__range", "__range_s", "__range_ms"}
SCRAPE_INTERVAL = 1  # seconds; Grafana's $__rate_interval is then max($__interval + 1s, 4 * 1s)
# (dashboard, panel title, refId) that must return data against the live stack.
CORE_PANELS = [
    ("executive", "TLS validation success rate (dashboard range)", "A"),
    ("executive", "TLS validation success rate per probe vs SLO", "A"),
    ("oncall", "Failing probes by reason", "A"),
    ("oncall", "What expires next", "A"),
    ("oncall", "What expires next", "B"),
    ("debug", "Handshake p50 / p95 / p99 (exemplars link to traces)", "A"),
    ("debug", "Chain details", "A"),
]


# --------------------------------------------------------------------------- reading dashboards


def load(name: str) -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads((ROOT / "dashboards" / f"{name}.json").read_text())
    return dashboard


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows' nested panels included."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


@dataclass(frozen=True)
class Query:
    dashboard: str
    where: str  # panel title, "annotation <name>" or "variable <name>"
    ref_id: str
    expr: str
    instant: bool
    exemplar: bool = False
    min_interval: str = ""  # the panel's "Min interval" (Grafana's $__interval is at least this)

    def __str__(self) -> str:
        return f"{self.dashboard} / {self.where} / {self.ref_id}: {self.expr}"


def queries(name: str) -> list[Query]:
    """Every PromQL expression of a dashboard: panel targets and annotations."""
    dashboard = load(name)
    found = []
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            instant = bool(target.get("instant")) and not target.get("range")
            found.append(
                Query(
                    name,
                    panel["title"],
                    target["refId"],
                    target["expr"],
                    instant,
                    bool(target.get("exemplar")),
                    panel.get("interval", ""),
                )
            )
    for annotation in dashboard["annotations"]["list"]:
        if "expr" in annotation:
            found.append(Query(name, f"annotation {annotation['name']}", "Anno", annotation["expr"], instant=False))
    return found


def variable_queries(name: str) -> list[tuple[str, str]]:
    """(variable name, label_values(...) query) of the dashboard's query variables."""
    return [(v["name"], v["query"]) for v in load(name)["templating"]["list"] if v["type"] == "query"]


def all_queries() -> list[Query]:
    return [q for name in DASHBOARDS for q in queries(name)]


def documented_metrics() -> set[str]:
    """Metric names in the first column of docs/metrics.md's tables, abbreviations expanded."""
    names: set[str] = set()
    for line in METRICS_DOC.read_text().splitlines():
        if not line.startswith("| `"):
            continue
        first_cell = line.split("|")[1]
        previous = ""
        for token in re.findall(r"`([^`]+)`", first_cell):
            if token.startswith("certscope_"):
                names.add(token)
                previous = token
            elif token.startswith("...") and previous:
                # `certscope_x_this_update_timestamp_seconds`, `..._next_update_...`: the
                # fragment replaces the part of the previous name it stands beside.
                fragment = token.strip(".").strip("_")
                words = len(fragment.split("_"))
                parts = previous.split("_")
                for start in range(len(parts) - words + 1):
                    if parts[start + 1 : start + words] == fragment.split("_")[1:]:
                        names.add("_".join(parts[:start] + fragment.split("_") + parts[start + words :]))
    return names


# --------------------------------------------------------------------------- schema


@pytest.fixture(scope="session")
def grafana_schema() -> DashboardSchema:
    try:
        return load_dashboard_schema()
    except SchemaUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.mark.parametrize("name", DASHBOARDS)
def test_dashboard_validates_against_grafana_schema(name: str, grafana_schema: DashboardSchema) -> None:
    validator = jsonschema.Draft7Validator(grafana_schema.for_validation())
    errors = sorted(validator.iter_errors(load(name)), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message[:300]}" for e in errors)


@pytest.mark.parametrize("name", DASHBOARDS)
def test_schema_version_is_the_packages(name: str, grafana_schema: DashboardSchema) -> None:
    assert load(name)["schemaVersion"] == grafana_schema.schema_version


def test_the_schema_rejects_what_grafana_rejects(grafana_schema: DashboardSchema) -> None:
    """The validator is live: wrong types, enums and unknown keys in a copy are reported."""
    broken = load("oncall")
    broken["graphTooltip"] = 7
    broken["refresh"] = 5
    broken["panels"][1]["gridPos"]["h"] = "8"
    broken["panels"][1]["options_typo"] = {}
    broken["templating"]["list"][0]["type"] = "datasources"
    validator = jsonschema.Draft7Validator(grafana_schema.for_validation())
    paths = {"/".join(map(str, e.absolute_path)) for e in validator.iter_errors(broken)}
    assert {"graphTooltip", "refresh", "panels/1", "templating/list/0/type"} <= paths, paths
    # Only AnnotationQuery is reopened: the strict schema rejects the Prometheus annotation's keys.
    strict = jsonschema.Draft7Validator(grafana_schema.schema)
    assert [list(e.absolute_path) for e in strict.iter_errors(load("oncall"))] == [["annotations", "list", 0]]


# --------------------------------------------------------------------------- portability and contract


@pytest.mark.parametrize("name", DASHBOARDS)
def test_plain_json_on_the_datasource_variable(name: str) -> None:
    dashboard = load(name)
    assert "__inputs" not in dashboard and "__requires" not in dashboard
    assert dashboard["uid"] == DASHBOARDS[name]
    assert dashboard.get("id") is None  # an id is local to one Grafana and breaks provisioning elsewhere
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for variable in variables.values():
        if variable["type"] == "query":
            assert variable["datasource"] == DATASOURCE, variable["name"]
    for annotation in dashboard["annotations"]["list"]:
        assert annotation["datasource"] == DATASOURCE, annotation["name"]
    ids = [panel["id"] for panel in panels(dashboard)]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {ids}"
    for panel in panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, f"{panel['title']} {target['refId']}"
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
    assert "${DS_" not in json.dumps(dashboard), "an exported ${DS_...} input is left over"


@pytest.mark.parametrize("name", DASHBOARDS)
def test_variables_used_are_defined(name: str) -> None:
    defined = {v["name"] for v in load(name)["templating"]["list"]} | GRAFANA_BUILTINS
    texts = [q.expr for q in queries(name)] + [query for _, query in variable_queries(name)]
    texts += [panel["title"] for panel in panels(load(name))]
    used = {next(g for g in m.groups() if g) for text in texts for m in VARIABLE.finditer(text)}
    assert used <= defined, used - defined


def test_rates_use_rate_interval() -> None:
    for query in all_queries():
        for match in re.finditer(r"\b(?:i?rate)\(", query.expr):
            window = re.search(r"\[([^\]]+)\]", query.expr[match.end() :])
            assert window is not None, str(query)
            assert window.group(1) == "$__rate_interval", str(query)
        for match in re.finditer(r"\b(?:increase|changes)\(", query.expr):
            window = re.search(r"\[([^\]]+)\]", query.expr[match.end() :])
            assert window is not None, str(query)
            # a fixed SLO or reporting window, the dashboard range, or at least four scrapes
            assert window.group(1) in {"$__rate_interval", "$__range", "30d", "1h"}, str(query)


def windows(expr: str, functions: str) -> list[str]:
    """The range of every call of ``functions`` (a regex alternative) in ``expr``."""
    found = []
    for match in re.finditer(rf"\b(?:{functions})\(", expr):
        window = re.search(r"\[([^\]]+)\]", expr[match.end() :])
        assert window is not None, expr
        found.append(window.group(1))
    return found


def test_counter_windows_hold_two_runs_at_the_default_interval() -> None:
    """A rate over $__rate_interval of a counter that moves once per probe run (every 5m by
    default) is mostly gaps when the window is shorter than two runs; the panel's min
    interval (Grafana's $__interval, hence $__rate_interval, is at least that) prevents it."""
    default_interval = 5 * 60  # docs/configuration.md, global.interval
    for name in DASHBOARDS:
        for panel in panels(load(name)):
            exprs = [t["expr"] for t in panel.get("targets", [])]
            if any("$__rate_interval" in w for e in exprs for w in windows(e, "rate|irate|increase|changes")):
                interval = panel.get("interval", "")
                seconds = sum(
                    int(n) * {"s": 1, "m": 60, "h": 3600}[u] for n, u in re.findall(r"(\d+)([smh])", interval)
                )
                assert seconds >= 2 * default_interval, f"{name} / {panel['title']}: min interval {interval!r}"


@pytest.mark.parametrize("name", DASHBOARDS)
def test_every_panel_says_what_it_shows(name: str) -> None:
    for panel in panels(load(name)):
        if panel["type"] != "row":  # Grafana's row panels have no description
            assert len(panel.get("description", "")) > 20, f"{name} / {panel['title']}"


@pytest.mark.parametrize("name", DASHBOARDS)
def test_job_and_instance_variables_scope_every_series(name: str) -> None:
    variables = {v["name"]: v for v in load(name)["templating"]["list"]}
    assert variables["job"]["query"] == "label_values(certscope_build_info, job)"
    assert variables["instance"]["query"] == 'label_values(certscope_build_info{job=~"$job"}, instance)'
    texts = [(str(q), q.expr) for q in queries(name)]
    texts += [(f"variable {v}", query) for v, query in variable_queries(name) if v not in ("job",)]
    for where, text in texts:
        for match in re.finditer(r"\b(certscope_[a-z0-9_]+)(\{[^}]*\})?", text):
            if match.group(1) == "certscope_build_info" and "variable instance" in where:
                continue
            selector = match.group(2) or ""
            assert 'job=~"$job"' in selector and 'instance=~"$instance"' in selector, f"{where}: {match.group(0)}"


def test_joins_hold_with_several_instances_and_addresses() -> None:
    """A join of per-target or per-certificate series names (job, instance): several
    instances export the same probe names and paths; and `address`, which `resolve: all` adds."""
    join = re.compile(r"\b(?:on|ignoring)\s*\(([^)]*)\)\s*(?:group_(?:left|right)\s*(?:\([^)]*\))?\s*)?")
    checked = 0
    for query in all_queries():
        for match in join.finditer(query.expr):
            labels = {label.strip() for label in match.group(1).split(",")}
            # Against raw series (not an aggregation that already dropped the instances):
            if "target" in labels and query.expr[match.end() :].lstrip("( ").startswith("certscope_"):
                assert {"job", "instance", "address"} <= labels, f"{query}: {match.group(0)}"
                checked += 1
    assert checked >= 10


def test_oncall_rows_open_the_debug_dashboard_on_their_target() -> None:
    debug_variables = {v["name"] for v in load("debug")["templating"]["list"]}
    linked = 0
    for panel in panels(load("oncall")):
        exprs = " ".join(t["expr"] for t in panel.get("targets", []))
        per_target = panel["type"] in ("table", "timeseries") and re.search(r"by \([^)]*\btarget\b", exprs)
        if not per_target:
            continue
        (link,) = panel["fieldConfig"]["defaults"]["links"]
        assert link["url"].startswith("/d/certscope-debug/"), panel["title"]
        for variable in ("datasource", "job", "instance"):
            assert f"${{{variable}:queryparam}}" in link["url"], (panel["title"], variable)
        passed = set(re.findall(r"var-(\w+)=", link["url"]))
        assert {"probe", "target"} <= passed <= debug_variables, (panel["title"], passed)
        linked += 1
    assert linked >= 6


def test_time_left_is_coloured_by_each_certificates_own_thresholds() -> None:
    (panel,) = [p for p in panels(load("oncall")) if p["title"] == "What expires next"]
    state = target_expr(panel, "C")
    assert 'severity="critical"' in state and 'severity="warning"' in state
    assert "certscope_cert_expiry_threshold_seconds" in state
    (override,) = [o for o in panel["fieldConfig"]["overrides"] if o["matcher"]["options"] == "state"]
    properties = {p["id"]: p["value"] for p in override["properties"]}
    assert properties["custom.cellOptions"] == {"type": "color-background", "applyToRow": True}
    (time_left,) = [o for o in panel["fieldConfig"]["overrides"] if o["matcher"]["options"] == "time left"]
    assert [p["id"] for p in time_left["properties"]] == ["unit"]  # no fixed thresholds of its own


def target_expr(panel: dict[str, Any], ref_id: str) -> str:
    (expr,) = [t["expr"] for t in panel["targets"] if t["refId"] == ref_id]
    return str(expr)


def test_executive_dashboard_does_not_rerun_30_day_increases_every_minute() -> None:
    dashboard = load("executive")
    assert dashboard["refresh"] == "1h"
    assert all(i not in ("5s", "10s", "30s", "1m", "5m") for i in dashboard["timepicker"]["refresh_intervals"])
    assert dashboard["time"] == {"from": "now-7d", "to": "now"}


def test_slo_panels_judge_what_the_slo_alerts_judge() -> None:
    """The SLI of the burn-rate alerts: kind="tls", failures over runs."""
    rules = yaml.safe_load((ROOT / "alerts" / "certscope.rules.yml").read_text())["groups"]
    recorded = " ".join(
        r["expr"] for g in rules for r in g["rules"] if r.get("record", "").startswith("certscope:validation")
    )
    assert 'certscope_probe_failures_total{kind="tls"}' in recorded
    dashboard = load("executive")
    row = ""
    slo_panels = []
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            row = panel["title"]
        elif row == "Validation SLO" and "probe_failures_total" in json.dumps(panel["targets"]):
            slo_panels.append(panel)
    assert len(slo_panels) == 4
    for panel in slo_panels:
        for match in re.finditer(r"certscope_probe_(?:failures|runs)_total\{([^}]*)\}", json.dumps(panel["targets"])):
            assert 'kind=\\"tls\\"' in match.group(1) and "$kind" not in match.group(1), panel["title"]


def test_the_handshake_failure_panel_counts_handshake_failures() -> None:
    (panel,) = [p for p in panels(load("oncall")) if p["title"] == "Handshake failure rate per target (tls)"]
    failures = re.search(r"certscope_probe_failures_total\{([^}]*)\}", target_expr(panel, "A"))
    assert failures is not None
    reasons = re.search(r'reason=~"([^"]+)"', failures.group(1))
    assert reasons is not None
    assert set(reasons.group(1).split("|")) == {
        "handshake_failed", "handshake_timeout", "protocol_error", "starttls_failed",
        "client_cert_required", "client_cert_rejected",
    }  # fmt: skip


def test_handshake_and_run_percentiles_ask_for_exemplars() -> None:
    with_exemplars = {q.expr for q in queries("debug") if q.exemplar}
    assert any("certscope_tls_handshake_seconds_bucket" in e and "0.95" in e for e in with_exemplars)
    assert any("certscope_probe_seconds_bucket" in e for e in with_exemplars)


def test_every_metric_is_documented() -> None:
    documented = documented_metrics()
    assert "certscope_cert_revocation_next_update_timestamp_seconds" in documented  # the `..._next_update_...` form
    texts = [(str(q), q.expr) for q in all_queries()]
    texts += [(f"{name} variable {var}", query) for name in DASHBOARDS for var, query in variable_queries(name)]
    undocumented = set()
    for where, text in texts:
        for metric in METRIC_NAME.findall(text):
            base = next((metric.removesuffix(s) for s in HISTOGRAM_SUFFIXES if metric.endswith(s)), metric)
            if metric not in documented and base not in documented:
                undocumented.add(f"{metric} in {where}")
    assert not undocumented, "\n".join(sorted(undocumented))


# --------------------------------------------------------------------------- end to end


def launch_prometheus(directory: Path, scrape_target: str) -> PrometheusServer:
    """A Prometheus with exemplar storage, scraping ``scrape_target`` every second."""
    binary = require_binary("prometheus")
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "prometheus.yml"
    config.write_text(
        f"global: {{scrape_interval: {SCRAPE_INTERVAL}s, scrape_timeout: {SCRAPE_INTERVAL}s}}\n"
        f"scrape_configs:\n  - job_name: certscope\n    static_configs: [{{targets: ['{scrape_target}']}}]\n"
    )
    return launch_ready_prometheus(binary, directory, config, "--enable-feature=exemplar-storage")


@dataclass
class Stack:
    prometheus: PrometheusServer
    daemon: DaemonProcess
    receiver: OtlpReceiver
    files: dict[str, Path]
    started: float  # when Prometheus started: the dashboard range begins here

    def diagnostics(self) -> str:
        return f"\nPrometheus log:\n{self.prometheus.log()[-3000:]}\ndaemon log:\n{self.daemon.log()[-5000:]}"

    def grafana_variables(self, end: float) -> dict[str, str]:
        """What Grafana would substitute for a dashboard over [started, end] at a 1 s step."""
        interval = SCRAPE_INTERVAL
        return {
            "__interval": f"{interval}s",
            "__interval_ms": str(interval * 1000),
            "__rate_interval": f"{max(interval + SCRAPE_INTERVAL, 4 * SCRAPE_INTERVAL)}s",
            "__range": f"{math.ceil(end - self.started)}s",
            "__range_s": str(math.ceil(end - self.started)),
            "__range_ms": str(math.ceil(end - self.started) * 1000),
            "job": ".*",  # the variables' "All" (allValue)
            "instance": ".*",
            "probe": ".*",
            "kind": ".*",
            "target": ".*",
            "slo": "0.999",
        }

    def run(self, query: Query, end: float) -> dict[str, Any]:
        """The answer of Prometheus to the query as Grafana would send it; asserts success without warnings."""
        expr = substitute(query.expr, self.grafana_variables(end))
        if query.instant:
            endpoint, params = "query", {"query": expr, "time": f"{end:.3f}"}
        else:
            endpoint = "query_range"
            params = {"query": expr, "start": f"{self.started:.3f}", "end": f"{end:.3f}", "step": f"{SCRAPE_INTERVAL}s"}
        response = requests.get(f"{self.prometheus.base_url}/api/v1/{endpoint}", params=params, timeout=30)
        body = response.json()
        assert response.status_code == 200 and body.get("status") == "success", f"{query}\n{expr}\n{body}"
        assert not body.get("warnings"), f"{query}\n{body['warnings']}"
        return dict(body["data"])


def substitute(text: str, variables: dict[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        name = next(g for g in match.groups() if g)
        return variables[name]

    return VARIABLE.sub(replace, text)


def variable_values(prometheus: PrometheusServer, query: str, variables: dict[str, str]) -> list[str]:
    """What Grafana lists for a ``label_values(<selector>, <label>)`` variable query, asked
    of Prometheus' label values API with ``variables`` substituted."""
    match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", substitute(query, variables))
    assert match is not None, query
    return list(prometheus.api(f"label/{match.group(2)}/values", **{"match[]": match.group(1)}))


def write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` by a rename from outside its directory, so the files probe never sees half a file."""
    partial = path.parent.parent / f"{path.name}.partial"
    partial.write_bytes(data)
    partial.replace(path)


@pytest.fixture(scope="module")
def stack(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """certscope probing files and three s_server endpoints, traced, scraped by Prometheus."""
    work = tmp_path_factory.mktemp("dashboards")
    files = write_formats(pki, work / "files")
    (work / "files" / "empty.pem").write_bytes(b"")  # a failing file: reason empty_file
    files["rotated.pem"] = work / "files" / "rotated.pem"
    files["rotated.pem"].write_bytes(issue("rotated.test", pki.intermediate, sans=("rotated.test",)).pem)
    tls = servers.write_tls_files(servers.build_tls_pki(pki), work / "tls")
    started_servers: list[servers.ServerProcess] = []
    receiver = OtlpReceiver().start()
    daemon: DaemonProcess | None = None
    prometheus: PrometheusServer | None = None
    try:
        started_servers.append(servers.openssl_s_server(tls.localhost.cert, tls.localhost.key, tls.localhost.chain))
        started_servers.append(servers.openssl_s_server(tls.expired.cert, tls.expired.key, tls.expired.chain))
        started_servers.append(  # requires a client certificate from client_ca; the probe sends one from wrong_ca
            servers.openssl_s_server(
                tls.localhost.cert,
                tls.localhost.key,
                tls.localhost.chain,
                verify_client="require",
                client_ca=tls.client_ca,
            )
        )
        valid, expired, mtls = (f"localhost:{server.port}" for server in started_servers)
        config = work / "certscope.yaml"
        config.write_text(
            f"""
global: {{interval: 1s}}
probes:
  - name: pki
    kind: files
    paths: ["{work / "files"}"]
  - name: web
    kind: tls
    timeout: 2s
    targets: ["{valid}", "{expired}"]
    trust: {{system: false, ca_files: ["{tls.root_ca}"]}}
  - name: partner-mtls
    kind: tls
    timeout: 2s
    targets: ["{mtls}"]
    trust: {{system: false, ca_files: ["{tls.root_ca}"]}}
    client_cert: {{cert_file: "{tls.wrong_ca_client.cert}", key_file: "{tls.wrong_ca_client.key}"}}
"""
        )
        daemon = DaemonProcess(
            config,
            work / "daemon.log",
            env={
                "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.http_endpoint,
                "OTEL_SERVICE_NAME": "certscope-dashboards",
                "OTEL_BSP_SCHEDULE_DELAY": "200",
            },
        )
        daemon.wait_ready()
        started = time.time()
        prometheus = launch_prometheus(work / "prometheus", daemon.base_url.removeprefix("http://"))
        yield Stack(prometheus, daemon, receiver, files, started)
    finally:
        if prometheus is not None:
            prometheus.stop()
        if daemon is not None:
            daemon.stop()
        for server in started_servers:
            server.stop()
        receiver.stop()


@pytest.fixture(scope="module")
def warmed(stack: Stack, pki: Pki) -> float:
    """Prometheus holds failures, handshakes, and a rotation; returns the evaluation time."""

    def has(promql: str) -> bool:
        return bool(stack.prometheus.query(promql))

    try:
        wait_for(lambda: has('certscope_probe_status{reason="cert_expired"}'), 20, "the expired endpoint's failure")
        wait_for(lambda: has('certscope_probe_status{reason="client_cert_rejected"}'), 20, "the mTLS rejection")
        wait_for(lambda: has("rate(certscope_tls_handshake_seconds_count[4s]) > 0"), 20, "handshakes")
        renewed = issue("rotated.test", pki.intermediate, sans=("rotated.test",), not_after=NOW + 60 * DAY)
        write_atomically(stack.files["rotated.pem"], renewed.pem)
        wait_for(lambda: has("certscope_cert_last_rotation_timestamp_seconds"), 20, "the rotation")
        wait_for(lambda: has("changes(certscope_cert_rotations_total[4s]) > 0"), 20, "the rotation's counter")
        wait_for(lambda: has("increase(certscope_probe_runs_total[4s]) > 0"), 20, "runs counted")
    except AssertionError as exc:
        raise AssertionError(f"{exc}{stack.diagnostics()}") from None
    # Range queries are evaluated on a grid of steps from the range's start: let a step or two
    # pass after the last condition so the grid covers it, as a refreshing dashboard would.
    time.sleep(2.5 * SCRAPE_INTERVAL)
    return time.time()


@pytest.mark.e2e
def test_every_panel_query_succeeds(stack: Stack, warmed: float) -> None:
    failures = []
    for query in all_queries():
        try:
            stack.run(query, warmed)
        except AssertionError as exc:
            failures.append(str(exc))
    assert not failures, "\n\n".join(failures) + stack.diagnostics()


@pytest.mark.e2e
@pytest.mark.parametrize(("dashboard", "title", "ref_id"), CORE_PANELS)
def test_core_panels_return_data(stack: Stack, warmed: float, dashboard: str, title: str, ref_id: str) -> None:
    (query,) = [q for q in queries(dashboard) if q.where == title and q.ref_id == ref_id]
    data = stack.run(query, warmed)
    assert data["result"], f"no data for {query}{stack.diagnostics()}"


@pytest.mark.e2e
def test_core_panels_say_the_right_things(stack: Stack, warmed: float) -> None:
    def result(dashboard: str, title: str, ref_id: str = "A") -> list[dict[str, Any]]:
        (query,) = [q for q in queries(dashboard) if q.where == title and q.ref_id == ref_id]
        return list(stack.run(query, warmed)["result"])

    # Failing probes by reason: the expired endpoint, the rejected client and the empty file.
    reasons = {r["metric"]["reason"] for r in result("oncall", "Failing probes by reason")}
    assert {"cert_expired", "client_cert_rejected", "empty_file"} <= reasons, reasons
    assert "ok" not in reasons
    # Validation success: some runs fail, most succeed.
    (rate,) = result("executive", "TLS validation success rate (dashboard range)")
    assert 0 < float(rate["value"][1]) < 1, rate
    # What expires next: the expired file first, with its identity joined in.
    rows = result("oncall", "What expires next", "B")
    by_target = {r["metric"]["target"]: r for r in rows}
    expired = by_target[str(stack.files["expired.pem"])]
    assert expired["metric"]["subject_cn"] == "expired.test"
    assert float(expired["value"][1]) < 0
    assert min(rows, key=lambda r: float(r["value"][1]))["metric"]["subject_cn"] in {"expired.test", "localhost"}
    # Distinct expired certificates: expired.test (file) and the expired localhost leaf (endpoint).
    (count,) = result("executive", "Expired")
    assert float(count["value"][1]) == 2, count
    # The rotation shows as an annotation, with the new certificate's identity.
    (annotation,) = [q for q in queries("oncall") if q.where.startswith("annotation")]
    series = stack.run(annotation, warmed)["result"]
    assert [s["metric"]["subject_cn"] for s in series] == ["rotated.test"], series


@pytest.mark.e2e
def test_template_variables_list_values(stack: Stack, warmed: float) -> None:
    variables = stack.grafana_variables(warmed)
    for name in DASHBOARDS:
        for variable, query in variable_queries(name):
            values = variable_values(stack.prometheus, query, variables)
            assert values, f"{name} variable {variable}: {query}"
            if variable == "probe":
                assert set(values) == {"pki", "web", "partner-mtls"}, values


@pytest.mark.e2e
def test_handshake_p95_exemplars_name_traces(stack: Stack, warmed: float) -> None:
    (query,) = [q for q in queries("debug") if q.exemplar and "tls_handshake_seconds" in q.expr]
    expr = substitute(query.expr, stack.grafana_variables(warmed))

    def exemplars() -> list[dict[str, Any]]:
        data = stack.prometheus.api(
            "query_exemplars", query=expr, start=f"{stack.started:.3f}", end=f"{time.time():.3f}"
        )
        return [e for series in data for e in series["exemplars"]]

    found = wait_for(exemplars, 20, "exemplars on the handshake histogram")
    trace_ids = {e["labels"]["trace_id"] for e in found}
    assert all(re.fullmatch(r"[0-9a-f]{32}", t) for t in trace_ids), trace_ids
    stack.receiver.wait_for(lambda spans: trace_ids & {s.trace_id for s in spans})
