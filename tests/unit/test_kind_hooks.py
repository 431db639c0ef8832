"""A kind owns its facts and their mapping (probes/metrics.py, docs/architecture.md).

A kind the daemon has never heard of, with facts of its own, is registered with one
line in ``KINDS``; its families, rows, tally, histogram, span attributes and
cross-probe role then show through the store, the renderer, the cross-probe index
and the tracer, none of which is changed for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from exporter.collector import render
from exporter.store import ProbeInfo, ResultStore
from exporter.tracing import Tracing
from probes.context import AttributeValue, ProbeContext
from probes.files import FilesProbe
from probes.kinds import KINDS, ProbeKind, kind_families
from probes.metrics import (
    TARGET_LABELS,
    CrossProbeRole,
    HistogramFamily,
    KindHooks,
    Rows,
    Tally,
    TargetView,
    counter,
    gauge,
)
from probes.reasons import Reason
from probes.result import CertFacts, CertObservation, Discovery, ProbeResult
from probes.tls_facts import TLS_FAMILIES

LEAF = CertFacts(
    fingerprint_sha256="cd" * 32,
    not_before=1_700_000_000.0,
    not_after=1_800_000_000.0,
    subject="CN=ldap.test",
    subject_cn="ldap.test",
    issuer="CN=ca",
    issuer_cn="ca",
    serial="2a",
    sans=("ldap.test",),
    key_type="ec",
    key_bits=256,
    signature_algorithm="ecdsa-with-SHA256",
    is_ca=False,
    self_issued=False,
)


@dataclass(frozen=True, slots=True)
class LdapFacts:
    bind_seconds: float
    server_vendor: str
    search_ok: bool


BIND = gauge("certscope_ldap_bind_duration_seconds", "Duration of the last bind.", TARGET_LABELS)
VENDOR = gauge("certscope_ldap_server_info", "The server's vendor; always 1.", (*TARGET_LABELS, "vendor"))
SEARCHES = counter("certscope_ldap_searches", "Searches by result.", (*TARGET_LABELS, "result"))


def _searches(previous: Any, result: ProbeResult, finished: float) -> Any:
    if not isinstance(result.facts, LdapFacts):
        return previous
    counts = dict(previous or {})
    outcome = "ok" if result.facts.search_ok else "failed"
    counts[outcome] = counts.get(outcome, 0) + 1
    return counts


SEARCH_TALLY = Tally("searches", _searches)


def _render(view: TargetView, rows: Rows) -> None:
    facts = view.facts
    if isinstance(facts, LdapFacts):
        rows.add(BIND, view.key, facts.bind_seconds, view.extra)
        rows.add(VENDOR, (*view.key, facts.server_vendor), 1, view.extra)
        for outcome, count in sorted(view.tallies.get(SEARCH_TALLY.name, {}).items()):
            rows.add(SEARCHES, (*view.key, outcome), count, view.extra)


def _spans(result: ProbeResult, attributes: dict[str, AttributeValue]) -> None:
    if isinstance(result.facts, LdapFacts):
        attributes["certscope.ldap.vendor"] = result.facts.server_vendor


LDAP_HOOKS = KindHooks(
    families=(BIND, VENDOR, SEARCHES),
    render=_render,
    histograms=(
        HistogramFamily(
            "certscope_ldap_bind_seconds",
            "Bind durations of every run.",
            (0.01, 0.1, 1.0),
            lambda result: result.facts.bind_seconds if isinstance(result.facts, LdapFacts) else None,
        ),
    ),
    tallies=(SEARCH_TALLY,),
    span_attributes=_spans,
    cross_probe=CrossProbeRole.SERVED,
)


class LdapProbe:
    kind: ClassVar[str] = "ldap"
    target_reasons: ClassVar[tuple[Reason, ...]] = ()
    source_reasons: ClassVar[tuple[Reason, ...]] = ()
    concurrent_targets: ClassVar[bool] = True
    keeps_last_good: ClassVar[bool] = True

    def __init__(self, settings: object, defaults: object) -> None:
        pass

    def targets(self) -> Discovery:
        return Discovery(("ldap.test:636",))

    def run(self, target: str, ctx: ProbeContext) -> ProbeResult:
        return ProbeResult(
            True, Reason.OK, 0.02, (CertObservation(0, "leaf", LEAF),), facts=LdapFacts(0.05, "389ds", True)
        )


def _info(name: str, kind: str, probe: Any) -> ProbeInfo:
    return ProbeInfo(name, kind, 60.0, 28 * 86400.0, 7 * 86400.0, {}, (), probe.source_reasons, probe.keeps_last_good)


@pytest.fixture
def ldap_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    # The one registry line of a new kind.
    monkeypatch.setitem(KINDS, "ldap", ProbeKind("ldap", object, LdapProbe, LDAP_HOOKS))


def _samples(snapshot_metrics: list[Any]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in snapshot_metrics
        for sample in family.samples
    }


def test_a_new_kind_shows_its_facts_through_its_hooks_alone(ldap_kind: None) -> None:
    store = ResultStore()
    ldap, files = _info("directory", "ldap", LdapProbe), _info("disk", "files", FilesProbe)
    store.configure([ldap, files], "kinds.yaml")
    stored = ProbeResult(True, Reason.OK, 0.001, (CertObservation(0, "leaf", LEAF),))
    probe = LdapProbe(None, None)
    for round_no in range(2):
        result = probe.run("ldap.test:636", ProbeContext(deadline=0.0))
        store.publish_round(ldap, probe.targets(), {"ldap.test:636": (result, 1_750_000_000.0 + round_no)}, 0.1)
        store.publish_round(files, Discovery(("/etc/ldap.pem",)), {"/etc/ldap.pem": (stored, 1_750_000_000.0)}, 0.1)

    metrics = render(store.snapshot())
    names = [family.name for family in metrics]
    assert len(names) == len(set(names))  # a kind's families never collide with the shared ones
    assert names.index("certscope_ldap_bind_duration_seconds") > names.index("certscope_key_reuse_subjects")
    samples = _samples(metrics)
    target = (("kind", "ldap"), ("probe", "directory"), ("target", "ldap.test:636"))
    assert samples[("certscope_ldap_bind_duration_seconds", target)] == 0.05
    assert samples[("certscope_ldap_server_info", tuple(sorted((*target, ("vendor", "389ds")))))] == 1
    # The tally is carried from run to run by the store: two rounds, two searches.
    assert samples[("certscope_ldap_searches_total", tuple(sorted((*target, ("result", "ok")))))] == 2
    assert samples[("certscope_ldap_bind_seconds_count", (("kind", "ldap"), ("probe", "directory")))] == 2
    # Its cross-probe role: the leaf it serves is the one stored on disk.
    mismatch = tuple(
        sorted(
            (
                *target,
                ("source_kind", "files"),
                ("source_probe", "disk"),
                ("source_target", "/etc/ldap.pem"),
            )
        )
    )
    assert samples[("certscope_cert_served_mismatch", mismatch)] == 0

    # Its span attributes join the generic ones on the run's root span.
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    run = Tracing(provider).start_run("directory", "ldap", "ldap.test:636")
    assert run is not None
    run.finish(probe.run("ldap.test:636", ProbeContext(deadline=0.0)))
    (root,) = spans.get_finished_spans()
    assert root.attributes is not None
    assert root.attributes["certscope.ldap.vendor"] == "389ds" and root.attributes["certscope.probe.success"]
    provider.shutdown()


def test_two_kinds_may_share_a_family_only_as_the_same_family(monkeypatch: pytest.MonkeyPatch) -> None:
    assert [f.name for f in kind_families()].count("certscope_cert_revoked") == 1  # tls, ocsp and crl share it
    clash = gauge(TLS_FAMILIES[0].name, "Another meaning.", TARGET_LABELS)
    monkeypatch.setitem(KINDS, "ldap", ProbeKind("ldap", object, LdapProbe, KindHooks(families=(clash,))))
    with pytest.raises(ValueError, match="declared twice"):
        kind_families()
