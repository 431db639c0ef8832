"""render(snapshot): the metric contract, and a scrape that no record can break."""

from __future__ import annotations

from types import MappingProxyType

from prometheus_client import CollectorRegistry, generate_latest

from exporter.collector import SnapshotCollector, render
from exporter.store import (
    ProbeInfo,
    ProbeState,
    ResultStore,
    Rotation,
    Snapshot,
    SourceState,
    TargetState,
    snapshot_of,
)
from probes.files import FilesProbe
from probes.reasons import Reason
from probes.result import CertFacts, CertObservation, Discovery, ProbeResult, SourceError
from tests.helpers import find, parse_metrics, value

FACTS = CertFacts(
    fingerprint_sha256="ab" * 32,
    not_before=1_700_000_000.0,
    not_after=1_800_000_000.0,
    subject="CN=a.test",
    subject_cn="a.test",
    issuer="CN=ca",
    issuer_cn="ca",
    serial="1f",
    sans=("a.test", "b.test"),
    key_type="ec",
    key_bits=256,
    signature_algorithm="ecdsa-with-SHA256",
    is_ca=False,
    self_issued=False,
)


def info(name: str = "pki", labels: dict[str, str] | None = None) -> ProbeInfo:
    return ProbeInfo(
        name=name,
        kind="files",
        interval=60.0,
        warning_seconds=28 * 86400.0,
        critical_seconds=7 * 86400.0,
        labels=labels or {},
        target_reasons=(Reason.PARSE_ERROR, Reason.NOT_FOUND),
        source_reasons=FilesProbe.source_reasons,
        keeps_last_good=False,
    )


def target_state(*observations: CertObservation, reason: Reason = Reason.OK) -> TargetState:
    return TargetState(
        result=ProbeResult(success=reason is Reason.OK, reason=reason, duration_seconds=0.01),
        last_run=1_750_000_000.0,
        last_success=1_750_000_000.0 if reason is Reason.OK else None,
        runs_total=3,
        failures_total=MappingProxyType({} if reason is Reason.OK else {reason.value: 3}),
        certificates=observations,
        certificates_from_last_good=False,
        rotations=MappingProxyType({(0, "leaf"): Rotation(FACTS.fingerprint_sha256, 2, 1_749_000_000.0)}),
    )


def scrape(snapshot: Snapshot) -> str:
    store = ResultStore()
    store._snapshot = snapshot  # the collector only reads snapshot()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(store))
    return generate_latest(registry).decode()


def test_series_follow_the_contract() -> None:
    state = ProbeState(
        info=info(labels={"team": "platform"}),
        targets={"/etc/a.pem": target_state(CertObservation(0, "leaf", FACTS))},
        source=SourceState(True, 1, MappingProxyType({"parse_error": 2}), frozenset(), 0.5),
        rounds=3,
    )
    metrics = parse_metrics(scrape(Snapshot(probes={"pki": state})))
    cert = {"probe": "pki", "kind": "files", "target": "/etc/a.pem", "index": "0", "role": "leaf"}
    assert value(metrics, "certscope_cert_not_after_timestamp_seconds", **cert) == 1_800_000_000
    assert value(metrics, "certscope_cert_rotations_total", **cert) == 2
    assert value(metrics, "certscope_cert_last_rotation_timestamp_seconds", **cert) == 1_749_000_000
    assert value(metrics, "certscope_cert_expiry_threshold_seconds", severity="critical", **cert) == 7 * 86400
    ((identity, _),) = find(metrics, "certscope_cert_info", **cert)
    assert identity["team"] == "platform" and identity["sans"] == "a.test,b.test" and identity["key_bits"] == "256"
    target = {"probe": "pki", "kind": "files", "target": "/etc/a.pem"}
    assert value(metrics, "certscope_probe_runs_total", **target) == 3
    failures = find(metrics, "certscope_probe_failures_total", **target)
    assert {labels["reason"] for labels, _ in failures} == {"parse_error", "not_found"}
    assert all(v == 0 for _, v in failures)
    assert value(metrics, "certscope_probe_status", reason="ok", **target) == 1
    assert value(metrics, "certscope_source_errors_total", probe="pki", reason="parse_error") == 2
    assert value(metrics, "certscope_source_errors_total", probe="pki", reason="too_many_files") == 0
    assert value(metrics, "certscope_render_errors") == 0


def test_a_broken_record_costs_its_probe_not_the_scrape() -> None:
    good = ProbeState(
        info=info("good"), targets={"/a.pem": target_state(CertObservation(0, "leaf", FACTS))}, source=None
    )
    broken = ProbeState(info=info("broken"), targets={"/b.pem": None}, source=None)  # type: ignore[dict-item]
    metrics = parse_metrics(scrape(Snapshot(probes={"broken": broken, "good": good})))
    assert value(metrics, "certscope_render_errors") == 1
    assert find(metrics, "certscope_cert_not_after_timestamp_seconds", probe="good")


def test_no_input_makes_a_duplicate_series() -> None:
    twice = target_state(CertObservation(0, "leaf", FACTS), CertObservation(0, "leaf", FACTS))
    state = ProbeState(info=info(), targets={"/a.pem": twice}, source=None)
    text = scrape(Snapshot(probes={"pki": state}))
    assert text.count('certscope_cert_not_after_timestamp_seconds{index="0"') == 1


def test_store_keeps_counters_across_rounds_and_drops_vanished_targets() -> None:
    store = ResultStore()
    probe = info()
    store.configure([probe], "test")
    ok = ProbeResult(True, Reason.OK, 0.01, (CertObservation(0, "leaf", FACTS),))

    def bad(path: str) -> tuple[ProbeResult, SourceError]:
        error = SourceError(Reason.PARSE_ERROR, path, f"{path}: bad base64 in PEM block")
        return ProbeResult(False, Reason.PARSE_ERROR, 0.01, errors=(error,)), error

    bad_a, error_a = bad("/a")
    bad_b, error_b = bad("/b")
    _, first_errors = store.publish_round(probe, Discovery(("/a", "/b")), {"/a": (ok, 1.0), "/b": (bad_b, 1.0)}, 0.1)
    assert first_errors == [error_b]
    transitions, new_errors = store.publish_round(probe, Discovery(("/a",)), {"/a": (bad_a, 2.0)}, 0.1)
    assert new_errors == [error_a]  # new for /a (it was fine before): logged
    _, repeated = store.publish_round(probe, Discovery(("/a",)), {"/a": (bad_a, 2.5)}, 0.1)
    assert repeated == []  # the same problem again is not logged again
    state = store.snapshot().probes["pki"]
    assert set(state.targets) == {"/a"}
    assert state.targets["/a"].runs_total == 3
    assert dict(state.targets["/a"].failures_total) == {"parse_error": 2}
    assert state.targets["/a"].last_success == 1.0
    assert [(t.target, t.previous, t.current) for t in transitions] == [("/a", Reason.OK, Reason.PARSE_ERROR)]
    # A round from a config that has since been replaced is dropped.
    store.configure([info()], "new config")
    assert store.publish_round(probe, Discovery(("/a",)), {"/a": (ok, 3.0)}, 0.1) == ([], [])
    assert render(store.snapshot())  # still renders


def test_served_mismatch_compares_the_served_leaf_with_stored_ones() -> None:
    from dataclasses import replace

    served_old = FACTS
    renewed = replace(FACTS, fingerprint_sha256="cd" * 32, not_before=FACTS.not_before + 86400)
    unrelated = replace(FACTS, fingerprint_sha256="ef" * 32, sans=("other.test",), not_before=FACTS.not_before + 1)
    older = replace(FACTS, fingerprint_sha256="01" * 32, not_before=FACTS.not_before - 86400)

    def probe_state(name: str, kind: str, targets: dict[str, CertFacts]) -> ProbeState:
        return ProbeState(
            info=replace(info(name), kind=kind),
            targets={t: target_state(CertObservation(0, "leaf", facts)) for t, facts in targets.items()},
            source=None,
        )

    def mismatches(stored: dict[str, CertFacts]) -> list[tuple[str, float]]:
        snapshot = snapshot_of(
            {
                "site": probe_state("site", "tls", {"site:443": served_old}),
                "disk": probe_state("disk", "files", stored),
            }
        )
        samples = parse_metrics(scrape(snapshot))
        return sorted(
            (labels["source_target"], v)
            for labels, v in find(samples, "certscope_cert_served_mismatch", probe="site", target="site:443")
        )

    # Renewed on disk (newer, same names) -> 1; an unrelated or older certificate -> nothing.
    assert mismatches({"/new.pem": renewed, "/other.pem": unrelated, "/old-backup.pem": older}) == [("/new.pem", 1)]
    # The served certificate is what the file holds -> 0, and the renewal is not reported.
    assert mismatches({"/cur.pem": served_old, "/new.pem": renewed}) == [("/cur.pem", 0)]
    # Stored nowhere: no series.
    assert mismatches({"/other.pem": unrelated}) == []


def test_cross_probe_facts_are_computed_on_publish_and_render_reads_only_the_snapshot() -> None:
    from dataclasses import replace

    import exporter.collector
    import exporter.crossprobe
    import exporter.store

    store = ResultStore()
    disk, site = info("disk"), replace(info("site"), kind="tls")
    store.configure([disk, site], "test")
    renewed = replace(FACTS, fingerprint_sha256="cd" * 32, not_before=FACTS.not_before + 86400)
    store.publish_round(disk, Discovery(("/a.pem",)), {"/a.pem": (ok_result(renewed), 1.0)}, 0.1)
    store.publish_round(site, Discovery(("site:443",)), {"site:443": (ok_result(FACTS), 1.0)}, 0.1)
    first = store.snapshot()
    assert [(m.labels[2], m.labels[5], m.value) for m in first.cross.served_mismatch] == [("site:443", "/a.pem", 1)]
    # A TLS round looks its leaf up in the stored index it finds; nothing stored changed.
    store.publish_round(site, Discovery(("site:443",)), {"site:443": (ok_result(renewed), 2.0)}, 0.1)
    second = store.snapshot()
    assert second.cross.stored is first.cross.stored
    assert [m.value for m in second.cross.served_mismatch] == [0]
    # A snapshot renders the same, however often and whatever was rendered before.
    other = snapshot_of({"x": ProbeState(info=info("x"), targets={}, source=None)})
    texts = {scrape(second), scrape(other) and scrape(second)}
    assert len(texts) == 1
    # Reconfigured without the stored probe: its comparisons go with it.
    store.configure([site], "test")
    assert store.snapshot().cross.served_mismatch == ()
    # No mutable state at module level in the render path (the store's caches are its own).
    mutable = [
        f"{module.__name__}.{name}"
        for module in (exporter.collector, exporter.crossprobe, exporter.store)
        for name, value in vars(module).items()
        if isinstance(value, (dict, list, set)) and not name.startswith("__")
    ]
    assert mutable == []


def ok_result(facts: CertFacts) -> ProbeResult:
    return ProbeResult(True, Reason.OK, 0.01, (CertObservation(0, "leaf", facts),))
