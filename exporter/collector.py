"""Snapshot -> Prometheus metric families.

``render(snapshot, now)`` is pure and never raises: each probe is rendered inside its
own guard, so one broken record costs that probe's series on this scrape, never the
scrape; the count of such failures is itself exported.  Every family drops a label
set it has already emitted, so no input can make a duplicate series (the classic
cause of a 500 on ``/metrics`` in peer exporters).

The metric names and labels are the contract in ``docs/metrics.md``.
"""

from __future__ import annotations

import logging
import platform
from collections.abc import Iterable, Iterator, Sequence

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from exporter import __version__
from exporter.store import ProbeState, Snapshot
from probes.base import Reason

log = logging.getLogger(__name__)

TARGET_LABELS = ("probe", "kind", "target")
CERT_LABELS = (*TARGET_LABELS, "index", "role")
IDENTITY_LABELS = (
    "subject_cn",
    "issuer_cn",
    "serial",
    "fingerprint_sha256",
    "key_type",
    "key_bits",
    "signature_algorithm",
    "sans",
)
SOURCE_LABELS = ("probe", "kind")
MAX_SANS_LABEL = 200  # characters; the sans label is for humans, not for joins


class _Family:
    """A metric family that refuses a label set it has already seen."""

    def __init__(self, metric: GaugeMetricFamily | CounterMetricFamily) -> None:
        self.metric = metric
        self._seen: set[tuple[str, ...]] = set()

    def add(self, labels: Sequence[str], value: float) -> None:
        key = tuple(labels)
        if key in self._seen:
            return
        self._seen.add(key)
        self.metric.add_metric(list(labels), value)


def _gauge(name: str, documentation: str, labels: Sequence[str]) -> _Family:
    return _Family(GaugeMetricFamily(name, documentation, labels=list(labels)))


def _counter(name: str, documentation: str, labels: Sequence[str]) -> _Family:
    return _Family(CounterMetricFamily(name, documentation, labels=list(labels)))


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
        self.build_info = _gauge(p + "build_info", "certscope build; always 1.", ("version", "python_version"))
        self.reload_ok = _gauge(p + "config_last_reload_successful", "1 if the last config (re)load succeeded.", ())
        self.reload_time = _gauge(
            p + "config_last_reload_success_timestamp_seconds", "When the config was last loaded successfully.", ()
        )
        self.render_errors = _gauge(
            p + "render_errors", "Probes whose series could not be rendered in this scrape (a bug; see the log).", ()
        )

    def all(self) -> Iterator[Metric]:
        for value in vars(self).values():
            if isinstance(value, _Family):
                yield value.metric


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
    families.render_errors.add((), broken)
    return list(families.all())


def _render_probe(state: ProbeState, f: _Families) -> None:
    info = state.info
    source_key = (info.name, info.kind)
    if state.source is not None:
        f.source_up.add(source_key, 1 if state.source.up else 0)
        f.source_objects.add(source_key, state.source.objects)
        f.source_round.add(source_key, state.source.round_duration_seconds)
        for reason in info.source_reasons:
            f.source_errors.add((*source_key, reason.value), state.source.errors_total.get(reason.value, 0))
        for reason_value, count in state.source.errors_total.items():
            f.source_errors.add((*source_key, reason_value), count)
    owner_values = [info.labels.get(label, "") for label in f.owner_labels]
    for target, ts in state.targets.items():
        key = (info.name, info.kind, target)
        f.success.add(key, 1 if ts.result.success else 0)
        f.duration.add(key, ts.result.duration_seconds)
        f.last_run.add(key, ts.last_run)
        if ts.last_success is not None:
            f.last_success.add(key, ts.last_success)
        f.runs.add(key, ts.runs_total)
        for reason in info.target_reasons:
            f.failures.add((*key, reason.value), ts.failures_total.get(reason.value, 0))
        for reason_value, count in ts.failures_total.items():
            f.failures.add((*key, reason_value), count)
        f.status.add((*key, ts.result.reason.value), 1)
        for observation in ts.certificates:
            cert = observation.cert
            cert_key = (*key, str(observation.index), observation.role)
            f.not_after.add(cert_key, cert.not_after)
            f.not_before.add(cert_key, cert.not_before)
            f.info.add(
                (
                    *cert_key,
                    cert.subject_cn,
                    cert.issuer_cn,
                    cert.serial,
                    cert.fingerprint_sha256,
                    cert.key_type,
                    str(cert.key_bits),
                    cert.signature_algorithm,
                    _sans_label(cert.sans),
                    *owner_values,
                ),
                1,
            )
            f.threshold.add((*cert_key, "warning"), info.warning_seconds)
            f.threshold.add((*cert_key, "critical"), info.critical_seconds)
            rotation = ts.rotations.get(observation.index)
            f.rotations.add(cert_key, rotation.count if rotation else 0)
            if rotation is not None and rotation.last_timestamp is not None:
                f.last_rotation.add(cert_key, rotation.last_timestamp)
            f.stale.add(cert_key, 1 if ts.certificates_from_last_good else 0)


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
