"""Snapshot -> Prometheus metric families.

``render(snapshot)`` is pure and never raises: it reads the snapshot and nothing
else, and keeps no state between calls (facts joining several probes are computed
by the store when it publishes a round: exporter/crossprobe.py).  Each probe is
rendered inside its own guard, so one broken record costs that probe's series on
this scrape, never the scrape; the count of such failures is itself exported.  Every family drops a label
set it has already emitted, so no input can make a duplicate series (the classic
cause of a 500 on ``/metrics`` in peer exporters).

The families every kind shares are built here; a kind's own families, and how its
facts render into them, come from its registry entry (``probes.kinds.KINDS``, the hooks of
probes/metrics.py): this module names no kind.  The metric names and labels are the
contract in ``docs/metrics.md``.
"""

from __future__ import annotations

import logging
import platform
from collections.abc import Iterable, Iterator, Sequence

from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Exemplar as PromExemplar
from prometheus_client.utils import floatToGoString

from exporter import __version__
from exporter.exposition import RowFamily
from exporter.store import Histogram, ProbeInfo, ProbeState, Snapshot, TargetState
from probes.kinds import hooks_of, kind_families, kind_histograms
from probes.metrics import CERT_LABELS, TARGET_LABELS, Family, TargetView
from probes.reasons import Reason
from probes.result import ISSUED_ROLE, CertObservation

log = logging.getLogger(__name__)

IDENTITY_LABELS = (
    "subject_cn",
    "issuer_cn",
    "serial",
    "fingerprint_sha256",
    "spki_sha256",
    "key_type",
    "key_bits",
    "signature_algorithm",
    "sans",
)
SOURCE_LABELS = ("probe", "kind")
MAX_SANS_LABEL = 200  # characters; the sans label is for humans, not for joins


Extra = tuple[tuple[str, str], ...]


def _gauge(name: str, documentation: str, labels: Sequence[str]) -> RowFamily:
    return RowFamily(name, documentation, "gauge", labels)


def _counter(name: str, documentation: str, labels: Sequence[str]) -> RowFamily:
    return RowFamily(name, documentation, "counter", labels)


class _Families:
    def __init__(self, owner_labels: Sequence[str]) -> None:
        p = "certscope_"
        self.owner_labels = tuple(owner_labels)
        self.not_after = _gauge(
            p + "cert_not_after_timestamp_seconds", "Certificate notAfter (Unix seconds).", CERT_LABELS
        )
        self.not_before = _gauge(
            p + "cert_not_before_timestamp_seconds", "Certificate notBefore (Unix seconds).", CERT_LABELS
        )
        self.info = _gauge(
            p + "cert_info", "Certificate identity; always 1.", (*CERT_LABELS, *IDENTITY_LABELS, *self.owner_labels)
        )
        self.threshold = _gauge(
            p + "cert_expiry_threshold_seconds",
            "Alert when notAfter - time() falls below this, per severity.",
            (*CERT_LABELS, "severity"),
        )
        self.rotations = _counter(
            p + "cert_rotations", "Times the certificate at this location changed (new fingerprint).", CERT_LABELS
        )
        self.last_rotation = _gauge(
            p + "cert_last_rotation_timestamp_seconds",
            "When the certificate at this location last changed.",
            CERT_LABELS,
        )
        self.stale = _gauge(
            p + "cert_observation_stale",
            "1 when the certificate is the last good observation of a target now failing.",
            CERT_LABELS,
        )
        self.success = _gauge(p + "probe_success", "1 if the last run of the target succeeded.", TARGET_LABELS)
        self.duration = _gauge(p + "probe_duration_seconds", "Duration of the last run of the target.", TARGET_LABELS)
        self.last_run = _gauge(p + "probe_last_run_timestamp_seconds", "When the target was last run.", TARGET_LABELS)
        self.last_success = _gauge(
            p + "probe_last_success_timestamp_seconds", "When the target last succeeded.", TARGET_LABELS
        )
        self.runs = _counter(p + "probe_runs", "Runs of the target.", TARGET_LABELS)
        self.failures = _counter(
            p + "probe_failures", "Failed runs of the target, by reason.", (*TARGET_LABELS, "reason")
        )
        self.status = _gauge(
            p + "probe_status",
            "1 for the reason of the target's last outcome (ok when fine).",
            (*TARGET_LABELS, "reason"),
        )
        self.probe_info = _gauge(
            p + "probe_info",
            "A configured probe with its owner labels; always 1.  Alerts about targets take their owner from here.",
            (*SOURCE_LABELS, *self.owner_labels),
        )
        self.source_up = _gauge(p + "source_up", "1 if the source could be read in its last round.", SOURCE_LABELS)
        self.source_objects = _gauge(
            p + "source_objects", "Objects (files, Secrets, endpoints) found in the last round.", SOURCE_LABELS
        )
        self.source_errors = _counter(
            p + "source_errors", "Problems reading source items, by reason.", (*SOURCE_LABELS, "reason")
        )
        self.source_round = _gauge(
            p + "source_round_duration_seconds", "Duration of the source's last complete round.", SOURCE_LABELS
        )
        self.source_scope_up = _gauge(
            p + "source_scope_up",
            "1 if this part of the source (a Kubernetes resource, namespace and type) is listed and watched.",
            (*SOURCE_LABELS, "scope"),
        )
        self.targets_dropped = _gauge(
            p + "source_targets_dropped",
            "Endpoints the source discovered in its last round but left out (over max_targets).",
            SOURCE_LABELS,
        )
        self.watch_restarts = _counter(
            p + "kubernetes_watch_restarts",
            "Kubernetes watches restarted, by reason (expired: 410, relist; dropped; error; timeout: normal end).",
            ("probe", "reason"),
        )
        self.served_mismatch = _gauge(
            p + "cert_served_mismatch",
            "1 if a newer certificate for the served names is stored at source_target (renewed, not served);"
            " 0 if the served certificate is the one stored there.",
            (*TARGET_LABELS, "source_probe", "source_kind", "source_target"),
        )
        self.endpoint_secret = _gauge(
            p + "endpoint_secret_status",
            "1 for how the leaf a discovered endpoint serves compares with its Secret's:"
            " match, stale (renewed, not served), other (not the Secret's), secret_missing.",
            (*TARGET_LABELS, "state"),
        )
        self.key_exposed = _gauge(
            p + "private_key_exposed",
            "1 when a private key stored with this target is exposed, by cause (never decoded to tell).",
            (*TARGET_LABELS, "cause"),
        )
        self.key_reuse = _gauge(
            p + "key_reuse_subjects",
            "Distinct certificate subjects sharing this public key, when more than one.",
            ("spki_sha256", "key_type"),
        )
        # The kinds' own families (probes/metrics.py), written through ``add``.
        self.kind_rows = {
            family.name: RowFamily(family.name, family.help, family.type, family.labels) for family in kind_families()
        }
        self.build_info = _gauge(p + "build_info", "certscope build; always 1.", ("version", "python_version"))
        self.reload_ok = _gauge(p + "config_last_reload_successful", "1 if the last config (re)load succeeded.", ())
        self.reload_time = _gauge(
            p + "config_last_reload_success_timestamp_seconds", "When the config was last loaded successfully.", ()
        )
        self.render_errors = _gauge(
            p + "render_errors", "Probes whose series could not be rendered in this scrape (a bug; see the log).", ()
        )

        self.kind_histograms = {
            histogram.name: HistogramMetricFamily(histogram.name, histogram.help, labels=["probe", "kind"])
            for histogram in kind_histograms()
        }
        self.probe_histogram = HistogramMetricFamily(
            p + "probe_seconds", "Durations of every run of the probe, all targets.", labels=["probe", "kind"]
        )

    def add(self, family: Family, labels: tuple[str, ...], value: float, extra: Extra = ()) -> None:
        """A row of a kind's family (``probes.metrics.Rows``)."""
        self.kind_rows[family.name].add(labels, value, extra)

    def all(self) -> Iterator[Metric]:
        for value in vars(self).values():
            if isinstance(value, RowFamily):
                yield value
            elif value is self.kind_rows:  # between the shared families and the build's own
                yield from self.kind_rows.values()
        yield from self.kind_histograms.values()
        yield self.probe_histogram


def render(snapshot: Snapshot) -> list[Metric]:
    """Metric families for ``snapshot``.  Never raises."""
    owner_labels = sorted({label for state in snapshot.probes.values() for label in state.info.labels})
    families = _Families(owner_labels)
    families.build_info.add((__version__, platform.python_version()), 1)
    families.reload_ok.add((), 1 if snapshot.reload.successful else 0)
    families.reload_time.add((), snapshot.reload.last_success_timestamp)
    broken = 0
    for state in snapshot.probes.values():
        try:
            _render_probe(state, families)
        except Exception:
            broken += 1
            log.exception("cannot render the series of probe %s", state.info.name)
    try:
        _render_cross_probe(snapshot, families)
    except Exception:
        broken += 1
        log.exception("cannot render the cross-probe series")
    families.render_errors.add((), broken + snapshot.cross.broken)
    return list(families.all())


def _render_probe(state: ProbeState, f: _Families) -> None:
    info = state.info
    hooks = hooks_of(info.kind)
    render_facts = hooks.render
    source_key = (info.name, info.kind)
    owner_values = [info.labels.get(label, "") for label in f.owner_labels]
    f.probe_info.add((*source_key, *owner_values), 1)
    if state.source is not None:
        f.source_up.add(source_key, 1 if state.source.up else 0)
        f.source_objects.add(source_key, state.source.objects)
        f.source_round.add(source_key, state.source.round_duration_seconds)
        for scope, up in state.source.scopes:
            f.source_scope_up.add((*source_key, scope), 1 if up else 0)
        if hooks.reports_dropped_targets and state.source.scopes:  # a probe discovering its targets
            f.targets_dropped.add(source_key, state.source.targets_dropped)
        for reason_value, count in state.source.watch_restarts:
            f.watch_restarts.add((info.name, reason_value), count)
        for reason in info.source_reasons:
            f.source_errors.add((*source_key, reason.value), state.source.errors_total.get(reason.value, 0))
        for reason_value, count in state.source.errors_total.items():
            f.source_errors.add((*source_key, reason_value), count)
    for name, histogram in state.histograms.items():
        if histogram.count:
            f.kind_histograms[name].add_metric([info.name, info.kind], _buckets(histogram), histogram.total)
    if state.durations.count:
        f.probe_histogram.add_metric([info.name, info.kind], _buckets(state.durations), state.durations.total)
    for target, ts in state.targets.items():
        key = (info.name, info.kind, target)
        extra = ts.result.target_labels
        f.success.add(key, 1 if ts.result.success else 0, extra)
        f.duration.add(key, ts.result.duration_seconds, extra)
        f.last_run.add(key, ts.last_run, extra)
        if ts.last_success is not None:
            f.last_success.add(key, ts.last_success, extra)
        f.runs.add(key, ts.runs_total, extra)
        for reason in info.target_reasons:
            f.failures.add((*key, reason.value), ts.failures_total.get(reason.value, 0), extra)
        for reason_value, count in ts.failures_total.items():
            f.failures.add((*key, reason_value), count, extra)
        f.status.add((*key, ts.result.reason.value), 1, extra)
        for cause in ts.result.key_exposure:
            f.key_exposed.add((*key, cause), 1, extra)
        if ts.result.stored is not None:
            f.endpoint_secret.add((*key, ts.result.stored.state), 1, extra + ts.result.stored.labels)
        if render_facts is not None:
            render_facts(TargetView(key, extra, ts.result, ts.tallies), f)
        for observation in ts.certificates:
            _render_certificate(
                observation, ts, (*key, str(observation.index), observation.role), extra, info, owner_values, f
            )


def _render_cross_probe(snapshot: Snapshot, f: _Families) -> None:
    """The facts joining probes, as the store computed them when it published the
    states (exporter/crossprobe.py)."""
    for mismatch in snapshot.cross.served_mismatch:
        f.served_mismatch.add(mismatch.labels, mismatch.value, mismatch.extra)
    for (spki, key_type), count in snapshot.cross.key_reuse:
        f.key_reuse.add((spki, key_type), count)


_Bucket = tuple[str, float] | tuple[str, float, PromExemplar]


def _buckets(histogram: Histogram) -> list[_Bucket]:
    """Cumulative buckets; a bucket with a traced observation carries it as an
    exemplar (shown in the OpenMetrics exposition only)."""
    cumulative = 0
    buckets: list[_Bucket] = []
    exemplars = histogram.exemplars or (None,) * len(histogram.counts)
    bounds = (*histogram.bounds, float("inf"))
    for bound, count, exemplar in zip(bounds, histogram.counts, exemplars, strict=True):
        cumulative += count
        le = floatToGoString(bound)  # type: ignore[no-untyped-call]
        if exemplar is None:
            buckets.append((le, cumulative))
        else:
            traced = PromExemplar({"trace_id": exemplar.trace_id}, exemplar.value, exemplar.timestamp)
            buckets.append((le, cumulative, traced))
    return buckets


def _render_certificate(
    observation: CertObservation,
    ts: TargetState,
    cert_key: tuple[str, ...],
    extra: Extra,
    info: ProbeInfo,
    owner_values: Sequence[str],
    f: _Families,
) -> None:
    cert = observation.cert
    if observation.labels:  # where inside the target: keystore alias, kubeconfig cluster or user
        extra = extra + observation.labels
    f.not_after.add(cert_key, cert.not_after, extra)
    f.not_before.add(cert_key, cert.not_before, extra)
    identity = (
        cert.subject_cn,
        cert.issuer_cn,
        cert.serial,
        cert.fingerprint_sha256,
        cert.spki_sha256,
        cert.key_type,
        str(cert.key_bits),
        cert.signature_algorithm,
        _sans_label(cert.sans),
    )
    f.info.add((*cert_key, *identity, *owner_values), 1, extra + ts.result.info_labels)
    warning, critical = info.warning_seconds, info.critical_seconds
    if observation.role == ISSUED_ROLE:
        # An ACME canary's certificate: nothing serves it, so its expiry is no one's
        # renewal task (a failing canary is CertscopeIssuanceFailing).
        warning = critical = 0.0
    elif ts.result.thresholds is not None:  # per-object policy (annotations); negative: not set
        own_warning, own_critical = ts.result.thresholds
        warning = own_warning if own_warning >= 0 else warning
        critical = own_critical if own_critical >= 0 else critical
    f.threshold.add((*cert_key, "warning"), warning, extra)
    f.threshold.add((*cert_key, "critical"), critical, extra)
    rotation = ts.rotations.get((observation.index, observation.role))
    f.rotations.add(cert_key, rotation.count if rotation else 0, extra)
    if rotation is not None and rotation.last_timestamp is not None:
        f.last_rotation.add(cert_key, rotation.last_timestamp, extra)
    f.stale.add(cert_key, 1 if ts.certificates_from_last_good else 0, extra)


def _sans_label(sans: Iterable[str]) -> str:
    text = ",".join(sans)
    return text if len(text) <= MAX_SANS_LABEL else text[: MAX_SANS_LABEL - 3] + "..."


class SnapshotCollector(Collector):
    """A prometheus-client collector rendering the store's latest snapshot."""

    def __init__(self, snapshot_source: object) -> None:
        self._source = snapshot_source

    def collect(self) -> Iterable[Metric]:
        return render(self._source.snapshot())  # type: ignore[attr-defined]

    def describe(self) -> Iterable[Metric]:
        return []  # unchecked collector: series vary with the snapshot


__all__ = ["Reason", "SnapshotCollector", "render"]
