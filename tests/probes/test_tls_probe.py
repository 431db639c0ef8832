"""The tls probe against a catalogue of real endpoints on 127.0.0.1.

Each case is judged three ways, which must agree: the probe called directly,
``certscope probe --output json`` as a subprocess, and the running daemon's
``/metrics``.  Whenever the server sent a certificate, its expiry is exported, the
failure notwithstanding.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.config import parse_config
from probes.context import ProbeContext
from probes.result import ProbeResult
from probes.tls import TlsProbe
from tests.fixtures import servers
from tests.fixtures.helpers import DaemonProcess, find
from tests.fixtures.pki import Pki
from tests.fixtures.run_tracer import Recorder

P12_ENV = "CERTSCOPE_TEST_CLIENT_P12"


@dataclass(frozen=True)
class Case:
    target: str
    settings: dict[str, Any]  # the probe's YAML keys besides name/kind/targets
    reason: str
    has_certificate: bool = True
    client_auth: str | None = None
    http_status: int | None = None


@dataclass
class Catalogue:
    files: servers.TlsFiles
    cases: dict[str, Case] = field(default_factory=dict)


@pytest.fixture(scope="module")
def catalogue(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Catalogue]:
    directory = tmp_path_factory.mktemp("tls")
    tls_pki = servers.build_tls_pki(pki)
    files = servers.write_tls_files(tls_pki, directory)
    untrusted_chain = directory / "untrusted-chain-with-root.pem"
    untrusted_chain.write_bytes(tls_pki.untrusted_intermediate.pem + tls_pki.untrusted_root.pem)
    trust = {"trust": {"system": False, "ca_files": [str(files.root_ca)]}}
    client = {"client_cert": {"cert_file": str(files.client.cert), "key_file": str(files.client.key)}}
    wrong_client = {
        "client_cert": {"cert_file": str(files.wrong_ca_client.cert), "key_file": str(files.wrong_ca_client.key)}
    }
    p12_client = {"client_cert": {"pkcs12_file": str(files.client_p12), "password_env": P12_ENV}}
    fast = {"timeout": "1500ms"}

    with ExitStack() as stack:

        def start(server: Any) -> str:
            stack.callback(server.stop)
            return f"localhost:{server.port}"

        def s_server(leaf: servers.LeafFiles, chain: Path | None = None, **kwargs: Any) -> str:
            chain = leaf.chain if chain is None else chain
            return start(servers.openssl_s_server(leaf.cert, leaf.key, chain, **kwargs))

        mtls = {"verify_client": "require", "client_ca": files.client_ca}
        mtls12 = s_server(files.localhost, tls_versions=("TLSv1.2",), **mtls)
        mtls13 = s_server(files.localhost, tls_versions=("TLSv1.3",), **mtls)
        mtls13_no_tickets = s_server(
            files.localhost, tls_versions=("TLSv1.3",), extra_args=("-num_tickets", "0"), **mtls
        )
        valid = s_server(files.localhost)
        leaf = files.localhost
        nginx = start(servers.nginx_server(leaf.cert, leaf.key, leaf.chain, client_ca=files.client_ca))
        haproxy = start(servers.haproxy_server(leaf.cert, leaf.key, leaf.chain, client_ca=files.client_ca))
        cases = {
            "valid": Case(valid, {**trust, "http": {"path": "/"}}, "ok", http_status=200),
            "expired": Case(s_server(files.expired), trust, "cert_expired"),
            "not_yet_valid": Case(s_server(files.not_yet_valid), trust, "cert_not_yet_valid"),
            "wrong_host": Case(s_server(files.wrong_host), trust, "hostname_mismatch"),
            "self_signed": Case(s_server(files.self_signed), trust, "self_signed"),
            "untrusted_root": Case(s_server(files.untrusted, untrusted_chain), trust, "untrusted_root"),
            "incomplete_chain": Case(
                start(servers.openssl_s_server(leaf.cert, leaf.key, None)), trust, "incomplete_chain"
            ),
            "san_expectation": Case(valid, {**trust, "expect": {"names": ["api.example"]}}, "san_mismatch"),
            "mtls12_no_cert": Case(mtls12, trust, "client_cert_required", client_auth="rejected"),
            "mtls13_no_cert": Case(mtls13, trust, "client_cert_required", client_auth="rejected"),
            "mtls13_with_cert": Case(mtls13, {**trust, **client}, "ok", client_auth="accepted"),
            "mtls13_no_tickets": Case(mtls13_no_tickets, {**trust, **client}, "ok", client_auth="accepted"),
            "mtls12_wrong_ca": Case(mtls12, {**trust, **wrong_client}, "client_cert_rejected", client_auth="rejected"),
            "mtls13_wrong_ca": Case(mtls13, {**trust, **wrong_client}, "client_cert_rejected", client_auth="rejected"),
            "nginx_mtls_ok": Case(nginx, {**trust, **client, "http": {"path": "/"}}, "ok", http_status=200),
            "nginx_mtls_forbidden": Case(
                nginx, {**trust, **client, "http": {"path": "/forbidden"}}, "http_forbidden", http_status=403
            ),
            "nginx_no_cert": Case(nginx, {**trust, "http": {"path": "/"}}, "client_cert_required"),
            "haproxy_p12_cert": Case(haproxy, {**trust, **p12_client, "http": {"path": "/"}}, "ok", http_status=200),
            "haproxy_no_cert": Case(haproxy, {**trust, "http": {"path": "/"}}, "client_cert_required"),
            "tls10_only": Case(
                s_server(files.localhost, tls_versions=("TLSv1",)), trust, "protocol_error", has_certificate=False
            ),
            "tarpit": Case(start(servers.tarpit()), {**trust, **fast}, "handshake_timeout", has_certificate=False),
            "dribbler": Case(start(servers.dribbler()), {**trust, **fast}, "handshake_timeout", has_certificate=False),
            "reset": Case(start(servers.reset_server()), trust, "handshake_failed", has_certificate=False),
            "refused": Case(f"localhost:{servers.refused_port()}", trust, "connect_refused", has_certificate=False),
            "unresolvable": Case("does-not-exist.invalid:443", trust, "dns_error", has_certificate=False),
            "postgres": Case(
                start(servers.postgres_server(leaf.cert, leaf.key, leaf.chain)), {**trust, "starttls": "postgres"}, "ok"
            ),
            "imap": Case(
                start(servers.dovecot_imap_server(leaf.cert, leaf.key, leaf.chain)), {**trust, "starttls": "imap"}, "ok"
            ),
            "smtp": Case(
                start(servers.smtp_starttls_server(leaf.cert, leaf.key, leaf.chain)),
                {**trust, "starttls": "smtp"},
                "ok",
            ),
        }
        yield Catalogue(files, cases)


def _entry(name: str, case: Case) -> dict[str, Any]:
    return {"name": name, "kind": "tls", "targets": [case.target], "interval": "1h", "timeout": "3s", **case.settings}


def _probe_directly(name: str, case: Case) -> ProbeResult:
    config = parse_config(yaml.safe_dump({"probes": [_entry(name, case)]}), name)
    probe_config = config.probes[0]
    probe = TlsProbe(probe_config.settings, probe_config.defaults)
    return probe.run(case.target, ProbeContext(deadline=time.monotonic() + probe_config.timeout))


@pytest.mark.parametrize(
    ("name", "evidence"),
    [("mtls13_with_cert", "ticket"), ("mtls13_no_tickets", "silence"), ("mtls13_wrong_ca", None)],
)
def test_a_session_ticket_tells_the_client_certificate_was_accepted(
    name: str, evidence: str | None, catalogue: Catalogue
) -> None:
    """TLS 1.3, a client certificate, no http check: a server sends its session
    tickets only after it has checked the client's certificate (openssl s_server's
    default), so the probe knows one round trip after the handshake instead of
    waiting out its wait.  A server sending none leaves only the end of the wait
    (50 ms at least) to tell; a rejection is an alert.  The span says which."""
    case = catalogue.cases[name]
    config = parse_config(yaml.safe_dump({"probes": [_entry(name, case)]}), name).probes[0]
    recorder = Recorder()
    result = TlsProbe(config.settings, config.defaults).run(
        case.target, ProbeContext(deadline=time.monotonic() + config.timeout, tracer=recorder)
    )
    assert result.facts is not None and result.facts.client_auth == case.client_auth, result.message
    assert recorder.span("client_auth").attributes.get("certscope.client_auth.evidence") == evidence
    if evidence == "silence":
        assert dict(result.phases)["client_auth"] >= 0.05


def _cli_args(case: Case) -> list[str]:
    settings = case.settings
    args = [case.target, "--output", "json", "--timeout", str(settings.get("timeout", "3s"))]
    for ca_file in settings.get("trust", {}).get("ca_files", []):
        args += ["--ca-file", ca_file]
    if "starttls" in settings:
        args += ["--starttls", settings["starttls"]]
    client = settings.get("client_cert", {})
    if "cert_file" in client:
        args += ["--client-cert", client["cert_file"], "--client-key", client["key_file"]]
    if "pkcs12_file" in client:
        args += ["--client-pkcs12", client["pkcs12_file"], "--client-password-env", client["password_env"]]
    for name in settings.get("expect", {}).get("names", []):
        args += ["--expect-name", name]
    if "http" in settings:
        args += ["--http-path", settings["http"]["path"]]
    return args


CASE_NAMES = [
    "valid", "expired", "not_yet_valid", "wrong_host", "self_signed", "untrusted_root", "incomplete_chain",
    "san_expectation", "mtls12_no_cert", "mtls13_no_cert", "mtls13_with_cert", "mtls13_no_tickets", "mtls12_wrong_ca",
    "mtls13_wrong_ca", "nginx_mtls_ok", "nginx_mtls_forbidden", "nginx_no_cert", "haproxy_p12_cert",
    "haproxy_no_cert", "tls10_only", "tarpit", "dribbler", "reset", "refused", "unresolvable",
    "postgres", "imap", "smtp",
]  # fmt: skip


@pytest.mark.parametrize("name", CASE_NAMES)
def test_probe_and_cli_classify_the_endpoint(name: str, catalogue: Catalogue, monkeypatch: pytest.MonkeyPatch) -> None:
    case = catalogue.cases[name]
    monkeypatch.setenv(P12_ENV, catalogue.files.client_p12_password.decode())
    started = time.monotonic()
    result = _probe_directly(name, case)
    assert time.monotonic() - started < 3.5, "the run overran its deadline"
    assert result.reason.value == case.reason, f"{name}: {result.reason.value}: {result.message}"
    assert result.success == (case.reason == "ok")
    served = [o for o in result.certificates if o.role != "client"]
    assert bool(served) == case.has_certificate, result.certificates
    if case.has_certificate:
        assert served[0].index == 0 and served[0].role == "leaf"
    if case.client_auth is not None:
        assert result.facts is not None and result.facts.client_auth == case.client_auth
    if case.http_status is not None:
        assert result.facts is not None and result.facts.http_status == case.http_status
    if "client_cert" in case.settings:
        client = [o for o in result.certificates if o.role == "client"]
        assert client and client[0].cert.subject_cn, "the probe's own client certificate is exported"

    cli = subprocess.run(
        [sys.executable, "-m", "exporter", "probe", *_cli_args(case)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    document = json.loads(cli.stdout)
    assert document["reason"] == case.reason, cli.stdout
    assert cli.returncode == (0 if case.reason == "ok" else 1), cli.stderr
    assert bool([c for c in document["certificates"] if c["role"] != "client"]) == case.has_certificate


def test_daemon_exports_every_verdict_and_every_certificate(
    catalogue: Catalogue, start_daemon: Any, tmp_path: Path
) -> None:
    config = {"global": {"interval": "1h"}, "probes": [_entry(n, catalogue.cases[n]) for n in CASE_NAMES]}
    daemon: DaemonProcess = start_daemon(
        yaml.safe_dump(config), env={P12_ENV: catalogue.files.client_p12_password.decode()}
    )
    daemon.wait_ready(timeout=60)
    metrics = daemon.metrics()
    for name in CASE_NAMES:
        case = catalogue.cases[name]
        status = find(metrics, "certscope_probe_status", probe=name)
        assert [labels["reason"] for labels, _ in status] == [case.reason], (name, status)
        served = [
            labels
            for labels, _ in find(metrics, "certscope_cert_not_after_timestamp_seconds", probe=name)
            if labels["role"] != "client"
        ]
        assert bool(served) == case.has_certificate, (name, served)
        failures = find(metrics, "certscope_probe_failures_total", probe=name)
        assert len(failures) >= 20, "every tls reason starts at 0"
        if case.client_auth is not None:
            assert find(metrics, "certscope_tls_client_auth", probe=name, result=case.client_auth), name
        if case.http_status is not None:
            assert find(metrics, "certscope_http_status_code", probe=name)[0][1] == case.http_status
    valid = {"probe": "valid"}
    assert find(metrics, "certscope_tls_chain_verified", **valid)[0][1] == 1
    assert find(metrics, "certscope_tls_verified_chain_expiry_timestamp_seconds", **valid)
    assert find(metrics, "certscope_tls_version_info", **valid)[0][0]["version"].startswith("TLSv1.")
    assert find(metrics, "certscope_tls_handshake_seconds_count", **valid)[0][1] >= 1
    assert find(metrics, "certscope_tls_chain_complete", probe="incomplete_chain")[0][1] == 0
    # A TLS 1.2 server that refused the handshake over the client certificate had
    # sent a good chain first: that verdict stands on its own.
    assert find(metrics, "certscope_tls_chain_verified", probe="mtls12_no_cert")[0][1] == 1
    assert find(metrics, "certscope_tls_hostname_match", probe="wrong_host")[0][1] == 0
    client_expiry = find(metrics, "certscope_cert_not_after_timestamp_seconds", probe="mtls13_with_cert", role="client")
    assert client_expiry, "the probe's own client certificate expiry is exported"


def test_chain_memo_is_sized_to_the_targets_and_survives_rounds() -> None:
    """Rounds visit targets in the same order: a memo smaller than their certificates
    is emptied before any entry is reused, so its capacity follows the target count,
    and a verdict outlives the default 5-minute interval."""
    from cryptography import x509

    from probes.settings import TrustSettings
    from probes.tls import TlsSettings
    from probes.verify import MEMO_MAX_AGE, MEMO_SIZE, ChainMemo, TrustStore
    from tests.fixtures.pki import build_pki, issue

    no_system = TrustSettings(system=False)
    many = TlsProbe(TlsSettings(targets=tuple(f"h{n}.test:443" for n in range(5000)), trust=no_system))
    assert many._memo.capacity >= 4 * 5000
    few = TlsProbe(TlsSettings(targets=("a.test:443",), trust=no_system))
    assert few._memo.capacity == MEMO_SIZE
    assert MEMO_MAX_AGE > 300

    pki = build_pki()
    leaves = [issue(f"s{n}.test", pki.intermediate, sans=(f"s{n}.test",)) for n in range(6)]
    chains = [[leaf.der, pki.intermediate.der] for leaf in leaves]

    def one_round(memo: ChainMemo) -> list[object]:
        """The facts and verdicts a round got (the same objects when they were memo hits)."""
        got: list[object] = []
        for n, ders in enumerate(chains):
            served = [x509.load_der_x509_certificate(der) for der in ders]
            got += [o.cert for o in memo.observe(ders, served)]
            got.append(memo.verdict(ders, served, f"s{n}.test"))
        return got

    def hits(first: list[object], second: list[object]) -> int:
        return sum(a is b for a, b in zip(first, second, strict=True))

    trust = TrustStore([pki.root.cert])
    roomy = ChainMemo(trust, capacity=16)  # 7 certificates, 6 verdicts
    first = one_round(roomy)
    assert hits(first, one_round(roomy)) == len(first) == 18  # the second round: all memo hits
    cramped = ChainMemo(trust, capacity=4)
    first = one_round(cramped)
    assert hits(first, one_round(cramped)) < len(first) // 2  # cleared before most reuse


def test_the_memo_keeps_no_python_objects_of_a_certificate_it_read() -> None:
    """A certificate that has been read keeps what reading it built in Python (its
    extensions, names, their values), each object tracked by the garbage collector.
    The memo keeps a verdict as long as its chain is served, so the certificates of its
    path are loaded again from their DER: a kept chain costs a few objects, not the
    ~30 per certificate that its facts and verdict read."""
    import gc

    from cryptography import x509

    from probes.verify import ChainMemo, TrustStore
    from tests.fixtures.pki import build_pki, issue

    pki = build_pki()
    chains = [
        [issue(f"k{n}.test", pki.intermediate, sans=(f"k{n}.test",)).der, pki.intermediate.der] for n in range(40)
    ]
    memo = ChainMemo(TrustStore([pki.root.cert]), capacity=1000)
    memo.observe(chains[0], [x509.load_der_x509_certificate(der) for der in chains[0]])  # the shared intermediate
    gc.collect()
    before = len(gc.get_objects())
    for n, ders in enumerate(chains):
        served = [x509.load_der_x509_certificate(der) for der in ders]
        memo.observe(ders, served)
        verdict = memo.verdict(ders, served, f"k{n}.test")
        assert verdict.chain_verified, verdict.message
        assert verdict.verified_path[0] == served[0]
        assert verdict.verified_path[0] is not served[0]  # loaded again
        assert memo.verdict(ders, served, f"k{n}.test") is verdict  # and a memo hit
    del served, verdict
    gc.collect()
    per_chain = (len(gc.get_objects()) - before) / len(chains)
    assert per_chain < 8, f"{per_chain:.1f} objects tracked per kept chain"


def test_a_later_round_leaves_three_new_objects_per_target(catalogue: Catalogue) -> None:
    """What a round leaves behind until the next replaces it is what CPython's full
    collections are paced by (one starts when the objects that survived since the last
    reach a quarter of those held).  A chain seen before gives a run the memo's own
    observations, a target whose certificates did not rotate keeps its rotations, a
    key whose subjects did not change keeps its set: per target, a later round leaves
    its result, its TLS facts and its target state, nothing else (before: two
    observations, a tuple, a dict, a mapping proxy and a set more)."""
    import gc
    from collections import Counter

    from exporter.store import ProbeInfo, ResultStore
    from probes.result import Discovery

    leaf = catalogue.files.localhost
    trust = catalogue.cases["valid"].settings["trust"]

    def left_by_a_later_round(targets: list[str]) -> Counter[str]:
        entry = {"name": "later", "kind": "tls", "targets": targets, "interval": "1h", "timeout": "3s", "trust": trust}
        config = parse_config(yaml.safe_dump({"probes": [entry]}), "later").probes[0]
        probe = TlsProbe(config.settings, config.defaults)
        info = ProbeInfo("later", "tls", 3600.0, 28 * 86400.0, 7 * 86400.0, {}, (), (), True)
        store = ResultStore()
        store.configure([info], "test")

        def one_round() -> None:
            results = {t: probe.run(t, ProbeContext(deadline=time.monotonic() + 3)) for t in targets}
            assert all(r.success for r in results.values()), [r.message for r in results.values()]
            finished = time.time()
            store.publish_round(info, Discovery(tuple(targets)), {t: (r, finished) for t, r in results.items()}, 0.1)

        one_round()
        one_round()  # the second round replaces the first's objects
        gc.collect()
        before = {id(o) for o in gc.get_objects()}
        one_round()
        # Twice: a tuple of phases is untracked once the tuples in it have been.
        gc.collect()
        gc.collect()
        return Counter(type(o).__qualname__ for o in gc.get_objects() if id(o) not in before)

    with ExitStack() as stack:
        targets = []
        for _ in range(12):
            server = servers.openssl_s_server(leaf.cert, leaf.key, leaf.chain)
            stack.callback(server.stop)
            targets.append(f"localhost:{server.port}")
        few, many = left_by_a_later_round(targets[:4]), left_by_a_later_round(targets)
    per_target = ("ProbeResult", "TlsFacts", "TargetState")
    assert {kind: many[kind] for kind in per_target} == dict.fromkeys(per_target, 12), many
    assert {kind: few[kind] for kind in per_target} == dict.fromkeys(per_target, 4), few
    # The rest is the store's own (its snapshot, the probe's state, indexes): the same
    # at 4 targets as at 12.
    for kind in per_target:
        del few[kind], many[kind]
    assert many.total() - few.total() <= 2, (few, many)


# One probe, many targets, the same settings: a scheduled round of these runs in the
# event loops (probes.event_loop), one greenlet per target.
ROUND_CASES = [
    "expired", "not_yet_valid", "wrong_host", "self_signed", "untrusted_root", "incomplete_chain",
    "mtls12_no_cert", "mtls13_no_cert", "tarpit", "dribbler", "reset", "refused", "unresolvable",
]  # fmt: skip
STARTTLS_ROUND_CASES = ["postgres", "refused", "unresolvable"]


@pytest.mark.parametrize(("cases", "extra"), [(ROUND_CASES, {}), (STARTTLS_ROUND_CASES, {"starttls": "postgres"})])
def test_a_scheduled_round_runs_in_the_event_loops_with_the_verdicts_of_a_direct_run(
    cases: list[str], extra: dict[str, Any], catalogue: Catalogue
) -> None:
    """Every target of a round: the reason the same as a run in a thread of its own
    (the cases above), the run in a loop thread, its DNS lookup and STARTTLS dialogue
    on a helper thread; and each run's spans under its own root span."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from exporter.scheduler import Scheduler
    from exporter.store import ResultStore
    from exporter.tracing import Tracing

    targets = [catalogue.cases[name].target for name in cases]
    trust = {"trust": catalogue.cases["expired"].settings["trust"]}
    entry = {
        "name": "round", "kind": "tls", "targets": targets, "interval": "1h", "timeout": "1500ms", **trust, **extra,
    }  # fmt: skip
    config = parse_config(yaml.safe_dump({"global": {"concurrency": 8}, "probes": [entry]}), "round")
    exported = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exported))
    store = ResultStore()
    scheduler = Scheduler(store, tracing=Tracing(provider))
    run_threads: dict[str, str] = {}
    original = TlsProbe._run_target

    def recording(self: TlsProbe, target: str, ctx: ProbeContext) -> ProbeResult:
        run_threads[target] = threading.current_thread().name
        return original(self, target, ctx)

    TlsProbe._run_target = recording  # type: ignore[method-assign]
    try:
        scheduler.apply(config)
        deadline = time.monotonic() + 30
        while not scheduler.ready() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert scheduler.ready(), "the first round did not end"
        published = store.snapshot().probes["round"].targets
    finally:
        TlsProbe._run_target = original  # type: ignore[method-assign]
        scheduler.stop()
    for name in cases:
        target = catalogue.cases[name].target
        result = published[target].result
        assert result.reason.value == catalogue.cases[name].reason, (name, result.reason.value, result.message)
        assert run_threads[target].startswith("loop-"), (name, run_threads[target])
    spans = exported.get_finished_spans()
    roots = {span.context.trace_id: span for span in spans if span.parent is None}
    assert len(roots) == len(set(targets))
    helper_phases = [span for span in spans if span.name in ("dns", "starttls")]
    assert helper_phases, "no phase ran on a helper thread"
    for span in helper_phases:
        assert span.parent is not None and span.parent.span_id == roots[span.context.trace_id].context.span_id
