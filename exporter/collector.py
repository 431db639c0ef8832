"""Snapshot -> Prometheus metric families.

``render(snapshot)`` is pure and never raises: it reads the snapshot and nothing
else, and keeps no state between calls (facts joining several probes are computed
by the store when it publishes a round: exporter/crossprobe.py).  Each probe is
rendered inside its own guard, so one broken record costs that probe's series on
this scrape, never the scrape; the count of such failures is itself exported.  Every family drops a label
set it has already emitted, so no input can make a duplicate series (the classic
cause of a 500 on ``/metrics`` in peer exporters).

The metric names and labels are the contract in ``docs/metrics.md``.
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
from probes.base import CaFacts, CertObservation, CrlFacts, Reason, RevocationFacts, TlsFacts
from probes.ca import ISSUED_ROLE

log = logging.getLogger(__name__)

TARGET_LABELS = ("probe", "kind", "target")
CERT_LABELS = (*TARGET_LABELS, "index", "role")
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
        self.tls_handshake = _gauge(
            p + "tls_handshake_duration_seconds", "Duration of the last TLS handshake.", TARGET_LABELS
        )
        self.tls_version = _gauge(
            p + "tls_version_info", "TLS version of the last handshake; always 1.", (*TARGET_LABELS, "version")
        )
        self.tls_cipher = _gauge(
            p + "tls_cipher_info", "Cipher of the last handshake; always 1.", (*TARGET_LABELS, "cipher")
        )
        self.tls_connection = _gauge(
            p + "tls_connection_info",
            "Where the last handshake went; always 1.",
            (*TARGET_LABELS, "address", "server_name", "alpn"),
        )
        self.tls_chain_verified = _gauge(
            p + "tls_chain_verified", "1 if the served chain verified against the trust store.", TARGET_LABELS
        )
        self.tls_chain_complete = _gauge(
            p + "tls_chain_complete",
            "1 if the served chain reaches a trust anchor or a self-signed root.",
            TARGET_LABELS,
        )
        self.tls_hostname_match = _gauge(
            p + "tls_hostname_match", "1 if the leaf covers the name verified (absent when none was).", TARGET_LABELS
        )
        self.tls_client_auth = _gauge(
            p + "tls_client_auth",
            "Client authentication outcome; always 1 (accepted, rejected, not_requested, not_sent).",
            (*TARGET_LABELS, "result"),
        )
        self.http_status = _gauge(
            p + "http_status_code", "HTTP status of the check after the handshake.", TARGET_LABELS
        )
        self.tls_verified_expiry = _gauge(
            p + "tls_verified_chain_expiry_timestamp_seconds",
            "Earliest notAfter on the verified path, trust anchor included (absent unless verified).",
            TARGET_LABELS,
        )
        revocation_labels = (*CERT_LABELS, "method")
        self.revoked = _gauge(
            p + "cert_revoked",
            "1 if the certificate is revoked; 0 if good or unknown (see check_success).",
            revocation_labels,
        )
        self.revocation_ok = _gauge(
            p + "cert_revocation_check_success",
            "1 if the revocation state was established from a valid, fresh answer.",
            revocation_labels,
        )
        self.revocation_status = _gauge(
            p + "cert_revocation_status",
            "Revocation state; always 1 (good, revoked, unknown, not_applicable).",
            (*revocation_labels, "state", "source"),
        )
        self.revocation_stale = _gauge(
            p + "cert_revocation_stale", "1 if the revocation answer is past its nextUpdate.", revocation_labels
        )
        self.revocation_time = _gauge(
            p + "cert_revocation_timestamp_seconds", "When the CA says the certificate was revoked.", revocation_labels
        )
        self.revocation_first_seen = _gauge(
            p + "cert_revocation_first_seen_timestamp_seconds",
            "When certscope first saw the certificate revoked.",
            revocation_labels,
        )
        self.revocation_this_update = _gauge(
            p + "cert_revocation_this_update_timestamp_seconds",
            "thisUpdate of the OCSP answer or CRL.",
            revocation_labels,
        )
        self.revocation_next_update = _gauge(
            p + "cert_revocation_next_update_timestamp_seconds",
            "nextUpdate of the OCSP answer or CRL.",
            revocation_labels,
        )
        self.revocation_produced_at = _gauge(
            p + "cert_revocation_produced_at_timestamp_seconds", "producedAt of the OCSP response.", revocation_labels
        )
        responder_labels = (*TARGET_LABELS, "responder")
        self.ocsp_up = _gauge(
            p + "ocsp_responder_up",
            "1 if the OCSP responder gave a valid, authorised answer to the last request sent to it"
            " (kept while that answer is cached).",
            responder_labels,
        )
        self.ocsp_duration = _gauge(
            p + "ocsp_request_duration_seconds",
            "Duration of the last request sent to the OCSP responder (kept while its answer is cached).",
            responder_labels,
        )
        self.ocsp_last_request = _gauge(
            p + "ocsp_last_request_timestamp_seconds",
            "When the request that responder_up and request_duration_seconds describe was sent.",
            responder_labels,
        )
        self.crl_this_update = _gauge(p + "crl_this_update_timestamp_seconds", "thisUpdate of the CRL.", TARGET_LABELS)
        self.crl_next_update = _gauge(p + "crl_next_update_timestamp_seconds", "nextUpdate of the CRL.", TARGET_LABELS)
        self.crl_number = _gauge(p + "crl_number", "The CRL number extension.", TARGET_LABELS)
        self.crl_entries = _gauge(p + "crl_entries", "Revoked certificates listed in the CRL.", TARGET_LABELS)
        self.crl_size = _gauge(p + "crl_size_bytes", "Size of the CRL as fetched.", TARGET_LABELS)
        self.crl_fetch = _gauge(
            p + "crl_fetch_duration_seconds", "Duration of the last CRL download (304s included).", TARGET_LABELS
        )
        self.crl_signature = _gauge(
            p + "crl_signature_valid", "1 if the CRL is signed by the configured issuer.", TARGET_LABELS
        )
        self.crl_status = _gauge(p + "crl_http_status_code", "HTTP status of the last CRL request.", TARGET_LABELS)
        self.ca_up = _gauge(
            p + "ca_up", "1 if the CA's API gave a well-formed answer to the availability request.", TARGET_LABELS
        )
        self.ca_response = _gauge(
            p + "ca_response_duration_seconds", "Round trip of the CA's availability request.", TARGET_LABELS
        )
        self.ca_issuance_success = _gauge(
            p + "ca_issuance_success",
            "1 if the last synthetic issuance gave a certificate that checked out (absent when issuance is off).",
            TARGET_LABELS,
        )
        self.ca_issuance_duration = _gauge(
            p + "ca_issuance_duration_seconds",
            "How long the CA took to answer the last synthetic issuance request.",
            TARGET_LABELS,
        )
        self.ca_issuance_total = _counter(
            p + "ca_issuance", "Synthetic issuances by result (success, failure).", (*TARGET_LABELS, "result")
        )
        self.ca_issuance_phase = _gauge(
            p + "ca_issuance_phase_duration_seconds",
            "Seconds each step of the last ACME issuance took (directory, nonce, account, order, challenge, ...).",
            (*TARGET_LABELS, "phase"),
        )
        self.ca_issuance_retry_after = _gauge(
            p + "ca_issuance_retry_after_timestamp_seconds",
            "When the CA allows the next ACME issuance attempt (Retry-After of a rateLimited answer).",
            TARGET_LABELS,
        )
        self.build_info = _gauge(p + "build_info", "certscope build; always 1.", ("version", "python_version"))
        self.reload_ok = _gauge(p + "config_last_reload_successful", "1 if the last config (re)load succeeded.", ())
        self.reload_time = _gauge(
            p + "config_last_reload_success_timestamp_seconds", "When the config was last loaded successfully.", ()
        )
        self.render_errors = _gauge(
            p + "render_errors", "Probes whose series could not be rendered in this scrape (a bug; see the log).", ()
        )

        self.handshake_histogram = HistogramMetricFamily(
            p + "tls_handshake_seconds", "TLS handshake durations of every run of the probe.", labels=["probe", "kind"]
        )
        self.probe_histogram = HistogramMetricFamily(
            p + "probe_seconds", "Durations of every run of the probe, all targets.", labels=["probe", "kind"]
        )

    def all(self) -> Iterator[Metric]:
        for value in vars(self).values():
            if isinstance(value, RowFamily):
                yield value
        yield self.handshake_histogram
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
    source_key = (info.name, info.kind)
    owner_values = [info.labels.get(label, "") for label in f.owner_labels]
    f.probe_info.add((*source_key, *owner_values), 1)
    if state.source is not None:
        f.source_up.add(source_key, 1 if state.source.up else 0)
        f.source_objects.add(source_key, state.source.objects)
        f.source_round.add(source_key, state.source.round_duration_seconds)
        for scope, up in state.source.scopes:
            f.source_scope_up.add((*source_key, scope), 1 if up else 0)
        if info.kind == "tls" and state.source.scopes:  # a tls probe discovering its targets
            f.targets_dropped.add(source_key, state.source.targets_dropped)
        for reason_value, count in state.source.watch_restarts:
            f.watch_restarts.add((info.name, reason_value), count)
        for reason in info.source_reasons:
            f.source_errors.add((*source_key, reason.value), state.source.errors_total.get(reason.value, 0))
        for reason_value, count in state.source.errors_total.items():
            f.source_errors.add((*source_key, reason_value), count)
    if state.handshakes.count:
        f.handshake_histogram.add_metric([info.name, info.kind], _buckets(state.handshakes), state.handshakes.total)
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
        if ts.result.tls is not None:
            _render_tls(ts.result.tls, key, extra, f)
        for check in ts.result.revocation:
            _render_revocation(check, ts, (*key, str(check.index), check.role, check.method), extra, f)
            if check.method == "ocsp" and check.source:
                # A cached answer is the responder's last answer: it stays visible, with
                # when it was asked, until the cache asks again (at the answer's nextUpdate).
                up = check.reason not in (
                    Reason.OCSP_UNAVAILABLE,
                    Reason.OCSP_BAD_RESPONSE,
                    Reason.OCSP_UNAUTHORIZED_SIGNER,
                )
                f.ocsp_up.add((*key, check.source), 1 if up else 0, extra)
                f.ocsp_duration.add((*key, check.source), check.duration_seconds, extra)
                if check.requested_at is not None:
                    f.ocsp_last_request.add((*key, check.source), check.requested_at, extra)
        if ts.result.crl is not None:
            _render_crl(ts.result.crl, key, extra, f)
        if ts.result.ca is not None:
            _render_ca(ts.result.ca, ts, key, extra, f)
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


def _render_tls(tls: TlsFacts, key: tuple[str, ...], extra: Extra, f: _Families) -> None:
    f.tls_handshake.add(key, tls.handshake_seconds, extra)
    if tls.version:  # empty when the handshake broke off
        f.tls_version.add((*key, tls.version), 1, extra)
        f.tls_cipher.add((*key, tls.cipher), 1, extra)
    f.tls_connection.add((*key, tls.address, tls.server_name, tls.alpn), 1, extra)
    f.tls_chain_verified.add(key, 1 if tls.chain_verified else 0, extra)
    f.tls_chain_complete.add(key, 1 if tls.chain_complete else 0, extra)
    if tls.hostname_match is not None:
        f.tls_hostname_match.add(key, 1 if tls.hostname_match else 0, extra)
    f.tls_client_auth.add((*key, tls.client_auth), 1, extra)
    if tls.http_status is not None:
        f.http_status.add(key, tls.http_status, extra)
    if tls.verified_chain_not_after is not None:
        f.tls_verified_expiry.add(key, tls.verified_chain_not_after, extra)


def _render_revocation(
    check: RevocationFacts, ts: TargetState, key: tuple[str, ...], extra: Extra, f: _Families
) -> None:
    f.revocation_status.add((*key, check.state, check.source), 1, extra)
    if check.state == "not_applicable":
        return
    f.revoked.add(key, 1 if check.state == "revoked" else 0, extra)
    f.revocation_ok.add(key, 1 if check.state in ("good", "revoked") and not check.stale else 0, extra)
    f.revocation_stale.add(key, 1 if check.stale else 0, extra)
    for family, value in (
        (f.revocation_time, check.revocation_time),
        (f.revocation_this_update, check.this_update),
        (f.revocation_next_update, check.next_update),
        (f.revocation_produced_at, check.produced_at),
        (f.revocation_first_seen, ts.revoked_since.get((check.index, check.role, check.method))),
    ):
        if value is not None:
            family.add(key, value, extra)


def _render_crl(crl: CrlFacts, key: tuple[str, ...], extra: Extra, f: _Families) -> None:
    f.crl_signature.add(key, 1 if crl.signature_valid else 0, extra)
    for family, value in (
        (f.crl_this_update, crl.this_update),
        (f.crl_next_update, crl.next_update),
        (f.crl_number, crl.number),
        (f.crl_fetch, crl.fetch_seconds),
        (f.crl_status, crl.http_status),
    ):
        if value is not None:
            family.add(key, value, extra)
    if crl.size_bytes:
        f.crl_entries.add(key, crl.entries, extra)
        f.crl_size.add(key, crl.size_bytes, extra)


def _render_ca(ca: CaFacts, ts: TargetState, key: tuple[str, ...], extra: Extra, f: _Families) -> None:
    f.ca_up.add(key, 1 if ca.up else 0, extra)
    if ca.response_seconds is not None:
        f.ca_response.add(key, ca.response_seconds, extra)
    if ca.issuance is not None:
        f.ca_issuance_success.add(key, 1 if ca.issuance.success else 0, extra)
        if ca.issuance.seconds is not None:
            f.ca_issuance_duration.add(key, ca.issuance.seconds, extra)
        for phase, seconds in ca.issuance.phases:
            f.ca_issuance_phase.add((*key, phase), seconds, extra)
        if ca.issuance.retry_after is not None:
            f.ca_issuance_retry_after.add(key, ca.issuance.retry_after, extra)
    if ca.issuance is not None or ts.issuance_total:
        # Both results from the first issuance on, so rate() of either is never absent.
        for result in ("success", "failure"):
            f.ca_issuance_total.add((*key, result), ts.issuance_total.get(result, 0), extra)


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
