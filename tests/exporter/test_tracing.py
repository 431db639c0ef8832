"""Traces of probe runs, received by a real OTLP receiver (gRPC and HTTP/protobuf).

Probes run against real local TLS servers (openssl s_server); the receiver is built on
the official ``opentelemetry-proto`` stubs (tests/fixtures/otlp_receiver.py).  In-process tests
drive ``scheduler.run_target`` exactly as the daemon does; the daemon tests check the
same through ``python -m exporter run``: OTEL_* variables, exemplars on ``/metrics``,
and probing at full rate with a collector that is down or hangs.
"""

from __future__ import annotations

import itertools
import logging
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics

from exporter.config import ProbeConfig, TracingSettings, parse_config
from exporter.scheduler import run_target
from exporter.tracing import TRACING_OFF, redact_url, setup_tracing, tracing_wanted
from probes.context import ProbeContext
from probes.kinds import KINDS
from probes.reasons import Reason
from probes.result import ProbeResult
from probes.settings import Seconds
from tests.fixtures import servers
from tests.fixtures.helpers import DaemonProcess, find, value, wait_for
from tests.fixtures.otlp_receiver import STATUS_ERROR, STATUS_UNSET, OtlpReceiver, ReceivedSpan, span_tree
from tests.fixtures.pki import Pki
from tests.fixtures.revocation_servers import revocation_stack

PROTOCOLS = {"http/protobuf": "http_endpoint", "grpc": "grpc_endpoint"}


@pytest.fixture(scope="module")
def tls_files(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> servers.TlsFiles:
    return servers.write_tls_files(servers.build_tls_pki(pki), tmp_path_factory.mktemp("tracing"))


@pytest.fixture(scope="module")
def valid_server(tls_files: servers.TlsFiles) -> Iterator[servers.ServerProcess]:
    leaf = tls_files.localhost
    server = servers.openssl_s_server(leaf.cert, leaf.key, leaf.chain)
    yield server
    server.stop()


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as started:
        yield started


def tls_probe(target: str, files: servers.TlsFiles, extra: str = "", tracing: str = "") -> ProbeConfig:
    config = parse_config(
        f"""
{tracing}
probes:
  - name: web
    kind: tls
    targets: ["{target}"]
    timeout: 3s
    trust: {{system: false, ca_files: ["{files.root_ca}"]}}
{extra}
""",
        "test",
    )
    return config.probes[0]


def traced_run(config: ProbeConfig, settings: TracingSettings) -> ProbeResult:
    """One run as the scheduler does it, then a flush of the spans."""
    tracing = setup_tracing(settings, environ={})
    assert tracing.enabled
    probe = KINDS[config.kind].build(config.settings, config.defaults)
    try:
        result, _ = run_target(probe, config.settings.targets[0], config, tracing)
    finally:
        tracing.shutdown()
    return result


def one_trace(receiver: OtlpReceiver, trace_id: str, spans: int) -> list[ReceivedSpan]:
    received: list[ReceivedSpan] = receiver.wait_for(
        lambda all_spans: (found := [s for s in all_spans if s.trace_id == trace_id]) and len(found) >= spans and found
    )
    return received


def by_name(spans: list[ReceivedSpan]) -> dict[str, ReceivedSpan]:
    named = {s.name: s for s in spans}
    assert len(named) == len(spans), f"duplicate span names: {[s.name for s in spans]}"
    return named


def iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# -- the span tree of a real TLS probe, over both protocols ---------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_tls_probe_span_tree(
    protocol: str, receiver: OtlpReceiver, valid_server: servers.ServerProcess, tls_files: servers.TlsFiles
) -> None:
    config = tls_probe(f"localhost:{valid_server.port}", tls_files, "    http: {path: /}")
    endpoint = getattr(receiver, PROTOCOLS[protocol])
    result = traced_run(config, TracingSettings(endpoint=endpoint, protocol=protocol))
    assert result.success, result.message
    assert len(result.trace_id) == 32

    spans = one_trace(receiver, result.trace_id, 6)
    tree = [(depth, span.name) for depth, span in span_tree(spans)]
    assert tree == [
        (0, "probe tls"),
        (1, "dns"),
        (1, "connect"),
        (1, "tls.handshake"),
        (1, "http"),
        (1, "verify"),
    ], tree
    named = by_name(spans)
    root = named["probe tls"]
    assert {s.via for s in spans} == {protocol.split("/")[0]}
    assert root.parent_span_id == ""
    children = [s for s in spans if s is not root]
    assert all(s.parent_span_id == root.span_id for s in children)

    # Durations add up: every phase inside the run, in order, never overlapping, and
    # each exactly as long as the phase timing the result reports.
    assert root.start_ns <= children[0].start_ns
    ordered = sorted(children, key=lambda s: s.start_ns)
    for before, after in itertools.pairwise(ordered):
        assert before.end_ns <= after.start_ns, (before.name, after.name)
    assert ordered[-1].end_ns <= root.end_ns
    assert sum(s.duration_ns for s in children) <= root.duration_ns
    phases = dict(result.phases)
    assert set(phases) == {s.name for s in children}
    for span in children:
        assert span.duration_ns / 1e9 == pytest.approx(phases[span.name], abs=1e-6), span.name
    # The root lasts the run (plus the scheduler's bookkeeping, well under a second).
    assert result.duration_seconds <= root.duration_ns / 1e9 < result.duration_seconds + 0.5

    # Semantic-convention attributes, from what the handshake showed.
    assert result.facts is not None
    leaf = next(o.cert for o in result.certificates if o.role == "leaf" and o.index == 0)
    attributes = root.attributes
    assert attributes["certscope.probe.name"] == "web"
    assert attributes["certscope.probe.kind"] == "tls"
    assert attributes["certscope.probe.target"] == f"localhost:{valid_server.port}"
    assert attributes["server.address"] == "localhost"
    assert attributes["server.port"] == valid_server.port
    assert attributes["network.peer.address"] == "127.0.0.1"
    assert attributes["tls.protocol.name"] == "tls"
    assert attributes["tls.protocol.version"] == result.facts.version.removeprefix("TLSv")
    assert attributes["tls.cipher"] == result.facts.cipher
    assert attributes["tls.established"] is True
    assert attributes["tls.server.not_after"] == iso(leaf.not_after)
    assert attributes["tls.server.not_before"] == iso(leaf.not_before)
    assert attributes["tls.server.hash.sha256"] == leaf.fingerprint_sha256.upper()
    assert attributes["tls.server.subject"] == leaf.subject
    assert attributes["tls.server.issuer"] == leaf.issuer
    assert attributes["http.response.status_code"] == 200
    assert not any(key.startswith("tls.client.") for key in attributes)
    assert "error.type" not in attributes
    assert all(s.status_code == STATUS_UNSET for s in spans)
    assert named["connect"].attributes["network.peer.address"] == "127.0.0.1"
    assert root.resource["service.name"] == "certscope"
    assert root.scope == "certscope.probes"


def test_refused_connection_is_an_error_span(receiver: OtlpReceiver, tls_files: servers.TlsFiles) -> None:
    config = tls_probe(f"127.0.0.1:{servers.refused_port()}", tls_files)
    result = traced_run(config, TracingSettings(endpoint=receiver.http_endpoint))
    assert result.reason is Reason.CONNECT_REFUSED
    named = by_name(one_trace(receiver, result.trace_id, 2))
    assert set(named) == {"probe tls", "connect"}  # an IP target: no dns phase
    for name in ("probe tls", "connect"):
        assert named[name].status_code == STATUS_ERROR, name
        assert named[name].attributes["error.type"] == "connect_refused", name
    assert "refused" in named["probe tls"].status_message
    assert "tls.established" not in named["probe tls"].attributes


def test_expired_certificate_fails_verify_with_an_event(
    receiver: OtlpReceiver, tls_files: servers.TlsFiles, tmp_path: Path
) -> None:
    leaf = tls_files.expired
    with servers.openssl_s_server(leaf.cert, leaf.key, leaf.chain) as server:
        config = tls_probe(f"localhost:{server.port}", tls_files)
        result = traced_run(config, TracingSettings(endpoint=receiver.grpc_endpoint, protocol="grpc"))
    assert result.reason is Reason.CERT_EXPIRED
    named = by_name(one_trace(receiver, result.trace_id, 5))
    root, verify, handshake = named["probe tls"], named["verify"], named["tls.handshake"]
    assert root.status_code == STATUS_ERROR and root.attributes["error.type"] == "cert_expired"
    assert verify.status_code == STATUS_ERROR and verify.attributes["error.type"] == "cert_expired"
    assert [name for name, _ in verify.events] == ["certscope.verification_error"]
    assert verify.events[0][1]["error.type"] == "cert_expired"
    # The handshake itself worked: only the phase that failed is an error.
    assert handshake.status_code == STATUS_UNSET
    # The chain is recorded first: the expired leaf's dates are on the span.
    assert root.attributes["tls.server.not_after"] < iso(time.time())


def test_revocation_phases_nest_under_revocation(receiver: OtlpReceiver, tmp_path: Path) -> None:
    """A revoked leaf, checked by OCSP (a real ``openssl ocsp`` responder) and CRL:
    the ocsp and crl spans are children of the revocation span, fail with an event,
    and only the top-level phases are in the result's timings."""
    with revocation_stack(tmp_path / "revocation", big_entries=None) as stack:
        leaf = stack.pki.revoked
        name = leaf.cert.subject.rfc4514_string().split("CN=")[1].split(",")[0]
        with servers.openssl_s_server(leaf.cert_path, leaf.key_path, None) as server:
            config = parse_config(
                f"""
global: {{egress: {{allow_networks: ["127.0.0.0/8"]}}}}
probes:
  - name: revocation
    kind: tls
    targets: ["127.0.0.1:{server.port}"]
    server_name: "{name}"
    trust: {{system: false, ca_files: ["{stack.pki.ca.cert_path}"]}}
    revocation: {{ocsp: true, crl: true}}
""",
                "test",
            ).probes[0]
            result = traced_run(config, TracingSettings(endpoint=receiver.http_endpoint))
    assert result.reason is Reason.REVOKED, result.message
    spans = one_trace(receiver, result.trace_id, 7)
    tree = [(depth, span.name) for depth, span in span_tree(spans)]
    assert tree == [
        (0, "probe tls"),
        (1, "connect"),
        (1, "tls.handshake"),
        (1, "verify"),
        (1, "revocation"),
        (2, "ocsp"),
        (2, "crl"),
    ], tree
    named = by_name(spans)
    assert named["ocsp"].parent_span_id == named["crl"].parent_span_id == named["revocation"].span_id
    assert named["ocsp"].start_ns >= named["revocation"].start_ns
    assert named["crl"].end_ns <= named["revocation"].end_ns
    for method in ("ocsp", "crl"):
        span = named[method]
        assert span.status_code == STATUS_ERROR and span.attributes["error.type"] == "revoked", method
        assert span.attributes["certscope.revocation.state"] == "revoked"
        assert span.attributes["certscope.revocation.method"] == method
        assert span.attributes["server.address"] == "127.0.0.1"
        assert [event for event, _ in span.events] == ["certscope.revoked"]
    assert named["probe tls"].attributes["error.type"] == "revoked"
    assert [phase for phase, _ in result.phases] == ["connect", "tls.handshake", "verify", "revocation"]


def test_starttls_phase(receiver: OtlpReceiver, tls_files: servers.TlsFiles) -> None:
    leaf = tls_files.localhost
    with servers.smtp_starttls_server(leaf.cert, leaf.key, leaf.chain) as server:
        config = tls_probe(f"localhost:{server.port}", tls_files, "    starttls: smtp")
        result = traced_run(config, TracingSettings(endpoint=receiver.http_endpoint))
    assert result.success, result.message
    spans = one_trace(receiver, result.trace_id, 6)
    assert [span.name for _, span in span_tree(spans)] == [
        "probe tls",
        "dns",
        "connect",
        "starttls",
        "tls.handshake",
        "verify",
    ]
    assert by_name(spans)["starttls"].attributes["certscope.starttls.protocol"] == "smtp"


def test_mtls_client_certificate_attributes(receiver: OtlpReceiver, tls_files: servers.TlsFiles) -> None:
    leaf = tls_files.localhost
    client = tls_files.client
    with servers.openssl_s_server(
        leaf.cert, leaf.key, leaf.chain, verify_client="require", client_ca=tls_files.client_ca
    ) as server:
        extra = f'    client_cert: {{cert_file: "{client.cert}", key_file: "{client.key}"}}'
        config = tls_probe(f"localhost:{server.port}", tls_files, extra)
        result = traced_run(config, TracingSettings(endpoint=receiver.http_endpoint))
    assert result.success, result.message
    spans = one_trace(receiver, result.trace_id, 5)
    root = by_name(spans)["probe tls"]
    mine = next(o.cert for o in result.certificates if o.role == "client")
    assert root.attributes["tls.client.subject"] == mine.subject
    assert root.attributes["tls.client.issuer"] == mine.issuer
    assert root.attributes["tls.client.not_after"] == iso(mine.not_after)
    assert root.attributes["tls.client.hash.sha256"] == mine.fingerprint_sha256.upper()
    assert root.attributes["certscope.tls.client_auth"] == "accepted"
    # The key is never anywhere in the trace.
    key_text = client.key.read_text()
    body = key_text.split("-----")[2].strip().splitlines()[0]
    assert all(body not in repr(s) for s in spans)


def test_files_probe_phases_and_source_errors(
    receiver: OtlpReceiver, tmp_path: Path, tls_files: servers.TlsFiles
) -> None:
    broken = tmp_path / "broken.pem"
    broken.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    config = parse_config(f'probes: [{{name: disk, kind: files, paths: ["{broken}"]}}]', "test").probes[0]
    tracing = setup_tracing(TracingSettings(endpoint=receiver.http_endpoint), environ={})
    probe = KINDS["files"].build(config.settings, config.defaults)
    result, _ = run_target(probe, str(broken), config, tracing)
    tracing.shutdown()
    assert not result.success
    named = by_name(one_trace(receiver, result.trace_id, 3))
    assert set(named) == {"probe files", "file.read", "parse"}
    root = named["probe files"]
    assert root.status_code == STATUS_ERROR
    assert root.attributes["error.type"] == result.reason.value
    assert [name for name, _ in root.events] == ["certscope.source_error"] * len(result.errors)


def test_export_failure_and_recovery_are_logged_once_each(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tls_files: servers.TlsFiles
) -> None:
    """A collector that goes away and comes back on the same port: one warning when
    exports start failing, one message when they work again, nothing in between."""
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
    caplog.set_level(logging.INFO, logger="exporter.tracing")
    with OtlpReceiver() as first:
        port = first.http_port
    certificate = tmp_path / "leaf.pem"
    certificate.write_bytes(tls_files.localhost.cert.read_bytes())
    config = parse_config(f'probes: [{{name: disk, kind: files, paths: ["{certificate}"]}}]', "test").probes[0]
    probe = KINDS["files"].build(config.settings, config.defaults)
    settings = TracingSettings(endpoint=f"http://127.0.0.1:{port}", export_timeout=Seconds(0.5))
    tracing = setup_tracing(settings, environ={})

    def messages(word: str) -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "exporter.tracing" and word in r.getMessage()]

    def run_some() -> None:
        for _ in range(20):
            run_target(probe, str(certificate), config, tracing)
        time.sleep(0.1)

    try:
        wait_for(lambda: run_some() or messages("fails"), 20, "the failure to be logged")
        for _ in range(10):
            run_some()
        assert len(messages("fails")) == 1, messages("fails")
        with OtlpReceiver(http_port=port) as second:
            wait_for(lambda: run_some() or messages("works again"), 20, "the recovery to be logged")
            second.wait_for(lambda spans: len(spans) > 0)
            # Flushed while the collector is up: a flush after it closed would be a
            # new failure, rightly logged, and not what this test is about.
            tracing.shutdown()
    finally:
        tracing.shutdown()
    # The first failure and the recovery, in that order, nothing between. A later
    # export may still time out on a loaded host (0.5 s); that is a new episode.
    changes = [m for m in messages("") if "fails" in m or "works again" in m]
    assert ["fails" in m for m in changes[:2]] == [True, False], changes
    recovered = changes[1]
    assert re.search(r"; \d+ spans were lost meanwhile", recovered), recovered
    assert tracing.health is not None and tracing.health.failed_spans > 0


# -- the switch and the no-op path ----------------------------------------------------


@pytest.mark.parametrize(
    ("section", "environ", "wanted"),
    [
        (None, {}, False),
        (None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, True),
        (None, {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, True),
        (None, {"OTEL_TRACES_EXPORTER": "otlp"}, True),
        (None, {"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, False),
        (None, {"OTEL_TRACES_EXPORTER": "zipkin"}, False),
        (TracingSettings(), {}, True),
        (TracingSettings(enabled=False), {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, False),
        (TracingSettings(), {"OTEL_SDK_DISABLED": "true"}, False),
        (None, {"OTEL_SDK_DISABLED": "TRUE", "OTEL_TRACES_EXPORTER": "otlp"}, False),
    ],
)
def test_tracing_is_off_unless_configured(
    section: TracingSettings | None, environ: dict[str, str], wanted: bool
) -> None:
    assert tracing_wanted(section, environ)[0] is wanted


def test_tracing_section_is_validated() -> None:
    with pytest.raises(Exception) as raised:
        parse_config("tracing: {protocol: http/json, endpoint: collector:4317, sample_ratio: 1.5, headers: x}", "t")
    messages = str(raised.value)
    for expected in (
        "tracing.protocol: must be one of http/protobuf, grpc",
        "tracing.endpoint: must be an http:// or https:// URL",
        "tracing.sample_ratio: must be between 0 and 1",
        "tracing.headers: unknown key",
    ):
        assert expected in messages
    assert parse_config("tracing:", "t").tracing == TracingSettings()
    assert parse_config("probes: []", "t").tracing is None


def test_no_secrets_in_urls() -> None:
    assert redact_url("http://user:secret@crl.example/ca.crl") == "http://crl.example/ca.crl"
    assert redact_url("/etc/ssl/cert.pem") == "/etc/ssl/cert.pem"


def test_untraced_phases_still_time_the_run() -> None:
    """Off, ``phase`` only times: top-level phases in order, nested ones not counted
    twice, and a phase left by an exception is still timed."""
    assert TRACING_OFF.start_run("p", "tls", "t") is None
    ctx = ProbeContext(deadline=time.monotonic() + 5)
    with ctx.phase("revocation"):
        with ctx.phase("ocsp"):
            pass
    with pytest.raises(RuntimeError), ctx.phase("connect"):
        raise RuntimeError("boom")
    assert [name for name, _ in ctx.phases] == ["revocation", "connect"]
    assert all(seconds >= 0 for _, seconds in ctx.phases)


# -- through the daemon ---------------------------------------------------------------


def daemon_config(target: str, files: servers.TlsFiles, interval: str, tracing: str = "") -> str:
    return f"""
{tracing}
probes:
  - name: web
    kind: tls
    interval: {interval}
    timeout: 2s
    targets: ["{target}"]
    trust: {{system: false, ca_files: ["{files.root_ca}"]}}
"""


def test_daemon_traces_from_otel_variables_and_exposes_exemplars(
    start_daemon: Any, receiver: OtlpReceiver, valid_server: servers.ServerProcess, tls_files: servers.TlsFiles
) -> None:
    daemon: DaemonProcess = start_daemon(
        daemon_config(f"localhost:{valid_server.port}", tls_files, "1s"),
        env={
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.http_endpoint,
            "OTEL_SERVICE_NAME": "certscope-under-test",
            "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment.name=test",
            "OTEL_EXPORTER_OTLP_HEADERS": "x-collector-token=token-from-env",
            "OTEL_BSP_SCHEDULE_DELAY": "200",
        },
    )
    daemon.wait_ready()
    roots = receiver.wait_for(lambda spans: [s for s in spans if s.name == "probe tls"])
    assert roots[0].resource["service.name"] == "certscope-under-test"
    assert roots[0].resource["deployment.environment.name"] == "test"
    assert receiver.headers[0].get("x-collector-token") == "token-from-env"

    def exemplars() -> dict[str, list[str]]:
        response = daemon.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
        assert response.headers["Content-Type"].startswith("application/openmetrics-text")
        found: dict[str, list[str]] = {}
        for family in parse_openmetrics(response.text):
            for sample in family.samples:
                if sample.exemplar is not None:
                    found.setdefault(family.name, []).append(sample.exemplar.labels["trace_id"])
        return found

    found = wait_for(
        lambda: (e := exemplars()) and {"certscope_tls_handshake_seconds", "certscope_probe_seconds"} <= set(e) and e,
        20,
        "exemplars on both histograms",
    )
    # Every exemplar names a trace the receiver got.
    receiver.wait_for(lambda spans: {t for ids in found.values() for t in ids} <= {s.trace_id for s in spans})
    # The classic text format has no exemplars, and still parses.
    plain = daemon.get("/metrics")
    assert plain.headers["Content-Type"].startswith("text/plain")
    assert "trace_id" not in plain.text
    assert "tracing on (OTEL_EXPORTER_OTLP_ENDPOINT is set)" in daemon.log()
    samples = daemon.metrics()
    assert value(samples, "certscope_trace_spans_total", outcome="exported") > 0
    assert value(samples, "certscope_trace_export_up") == 1


@pytest.mark.parametrize("collector", ["down", "hanging"])
def test_probing_keeps_its_rate_when_the_collector_fails(
    collector: str, start_daemon: Any, tls_files: servers.TlsFiles, tmp_path: Path
) -> None:
    """A collector that refuses (http/protobuf) or accepts and never answers (grpc):
    probes keep their interval, memory stays flat while spans are dropped, the
    failure is logged once, and shutdown still ends promptly."""
    many = tmp_path / "many"
    many.mkdir()
    leaf_pem = tls_files.localhost.cert.read_bytes()
    for number in range(300):
        (many / f"{number:03}.pem").write_bytes(leaf_pem)
    if collector == "down":
        fault = None
        endpoint, protocol = f"http://127.0.0.1:{servers.refused_port()}", "http/protobuf"
    else:
        fault = servers.tarpit()
        endpoint, protocol = f"http://127.0.0.1:{fault.port}", "grpc"
    interval = 0.25
    config = f"""
tracing:
  endpoint: "{endpoint}"
  protocol: {protocol}
  max_queue_size: 256
  export_timeout: 1s
  shutdown_timeout: 1s
probes:
  - name: disk
    kind: files
    interval: {interval}s
    paths: ["{many}/*.pem"]
"""
    try:
        daemon: DaemonProcess = start_daemon(config)
        daemon.wait_ready()
        # The first seconds warm up allocator arenas and connections (+5 MiB).
        wait_for(lambda: _runs(daemon) >= 300 * 20, 40, "20 rounds")
        runs_before, started = _runs(daemon), time.monotonic()
        rss_early = _rss_peak_kib(daemon)
        time.sleep(10)
        rss_late = _rss_peak_kib(daemon)
        runs_after, elapsed = _runs(daemon), time.monotonic() - started
        samples = daemon.metrics()
        log = daemon.log()
        stop_started = time.monotonic()
        assert daemon.stop() == 0
        stop_seconds = time.monotonic() - stop_started
    finally:
        if fault is not None:
            fault.stop()
    rounds = (runs_after - runs_before) / 300
    expected = elapsed / interval
    # Rounds start every interval (5 % jitter); each takes ~30 ms here.  Half the
    # ideal rate leaves room for a loaded machine, and a blocked exporter would
    # fall far below it.
    assert rounds >= 0.5 * expected, f"{rounds:.0f} rounds in {elapsed:.1f}s, expected about {expected:.0f}"
    spans_offered = (runs_after - runs_before) * 1  # cached files: one root span per run
    assert spans_offered > 10 * 256, "far more spans than the queue holds"
    # A queue that kept every span would grow by about 2 KiB a span (25 MiB here);
    # the process's RSS swings by a few MiB either way, hence peaks and 10 MiB.
    growth = rss_late - rss_early
    assert growth < 10 * 1024, f"VmRSS grew by {growth} KiB while {spans_offered} spans were offered"
    failing = [line for line in log.splitlines() if "trace export to" in line and "fails" in line]
    assert len(failing) == 1, failing
    # The SDK's own per-batch warnings (retrying, failed, queue full) are held back.
    assert [line for line in log.splitlines() if "logger=opentelemetry" in line] == []
    assert stop_seconds < 8, f"shutdown took {stop_seconds:.1f}s"
    lost = value(samples, "certscope_trace_spans_total", outcome="dropped") + value(
        samples, "certscope_trace_spans_total", outcome="failed"
    )
    assert lost > 10 * 256
    assert value(samples, "certscope_trace_spans_total", outcome="exported") == 0
    assert value(samples, "certscope_trace_export_up") == 0
    print(
        f"{collector}: {rounds:.0f} rounds in {elapsed:.1f}s (ideal {expected:.0f}), VmRSS {growth:+} KiB, "
        f"{spans_offered} spans offered, stop {stop_seconds:.2f}s"
    )


def _runs(daemon: DaemonProcess) -> float:
    return sum(v for _, v in find(daemon.metrics(), "certscope_probe_runs_total", probe="disk"))


def _rss_peak_kib(daemon: DaemonProcess, samples: int = 5) -> int:
    """The highest VmRSS over ``samples`` readings 0.4 s apart."""
    peak = 0
    for _ in range(samples):
        for line in Path(f"/proc/{daemon.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                peak = max(peak, int(line.split()[1]))
        time.sleep(0.4)
    return peak


def test_exemplar_buckets_hold_the_latest_traced_run() -> None:
    from exporter.store import Histogram

    histogram = Histogram.empty((0.1, 1.0)).observe_all([0.05, 0.5])
    assert histogram.exemplars == ()  # untraced: no exemplars at all
    histogram = histogram.observe_all([0.06, 0.07, 5.0], [("a" * 32, 10.0), ("", 11.0), ("b" * 32, 12.0)])
    first, second, overflow = histogram.exemplars
    assert first is not None and first.trace_id == "a" * 32 and first.value == 0.06
    assert second is None
    assert overflow is not None and overflow.trace_id == "b" * 32
    assert histogram.counts == (3, 1, 1)
