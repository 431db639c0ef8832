"""``/probe?module=NAME&target=HOST:PORT``: the Prometheus multi-target pattern.

Off unless ``web.probe_endpoint`` is true, and never an open proxy: the module must
be a configured ``tls`` probe, the target must be one of its ``targets`` or match its
``allow_targets`` globs, and every address the name resolves to must pass the egress
policy (no loopback, link-local, unspecified, multicast or cloud-metadata addresses
unless ``global.egress.allow_networks`` lists them).  The probe then connects to the
address that was checked, so a DNS answer cannot change between check and connect.

The answer is the exposition of that one run, rendered like ``/metrics``.  With
tracing on, the run is traced like a scheduled one (its root span says
``certscope.probe.trigger=probe_endpoint``).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import replace
from types import MappingProxyType

from prometheus_client import CollectorRegistry, generate_latest

from exporter.collector import SnapshotCollector
from exporter.config import Config, ProbeConfig
from exporter.scheduler import probe_info
from exporter.store import ProbeState, Snapshot, SourceState, TargetState, snapshot_of
from exporter.tracing import TRACING_OFF, Tracing
from probes.context import Probe, ProbeContext
from probes.fetch import FetchError, resolve_checked
from probes.tls import TlsProbe, split_target

SCRAPE_TIMEOUT_OFFSET = 0.5  # answer before Prometheus gives up on the scrape


class ProbeRefused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def probe_target(
    config: Config,
    lookup: Callable[[str], tuple[ProbeConfig, Probe] | None],
    module: str,
    target: str,
    scrape_timeout: float | None,
    tracing: Tracing = TRACING_OFF,
) -> bytes:
    """Run one probe for /probe and return its exposition, or raise ProbeRefused."""
    if not config.web.probe_endpoint:
        raise ProbeRefused(404, "the /probe endpoint is off (web.probe_endpoint)")
    found = lookup(module)
    if found is None or not isinstance(found[1], TlsProbe):
        raise ProbeRefused(400, f"unknown module {module!r}: name a configured probe of kind tls")
    probe_config, probe = found[0], found[1]
    assert isinstance(probe, TlsProbe)
    try:
        host, port = split_target(target)
    except ValueError as exc:
        raise ProbeRefused(400, f"target: {exc}") from None
    allowed = target in probe.settings.targets or any(
        _glob(pattern).fullmatch(target.lower()) for pattern in probe.settings.allow_targets
    )
    if not allowed:
        raise ProbeRefused(403, f"target {target} is not allowed for module {module}")
    try:
        address = resolve_checked(host, port, config.global_settings.egress.allow_networks)
    except FetchError as exc:
        raise ProbeRefused(403 if exc.kind == "refused" else 400, str(exc)) from None

    timeout: float = probe_config.timeout
    if scrape_timeout is not None:
        timeout = max(0.1, min(timeout, scrape_timeout - SCRAPE_TIMEOUT_OFFSET))
    run = tracing.start_run(probe_config.name, probe_config.kind, target)
    if run is not None:
        run.set_attribute("certscope.probe.trigger", "probe_endpoint")
    ctx = ProbeContext(deadline=time.monotonic() + timeout, probe_name=probe_config.name, tracer=run)
    result = probe.run(f"{target}@{address}", ctx)
    if run is not None:
        result = run.finish(result)
    result_labels = tuple(pair for pair in result.target_labels if pair[0] != "address")
    finished = time.time()
    state = ProbeState(
        info=probe_info(probe_config, probe),
        targets={
            target: TargetState(
                result=replace(result, target_labels=result_labels),
                last_run=finished,
                last_success=finished if result.success else None,
                runs_total=1,
                failures_total=MappingProxyType({} if result.success else {result.reason.value: 1}),
                certificates=result.certificates,
                certificates_from_last_good=False,
                rotations=MappingProxyType({}),
            )
        },
        source=SourceState(True, 1, MappingProxyType({}), frozenset(), result.duration_seconds),
    )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(_OneSnapshot(snapshot_of({probe_config.name: state}))))
    return generate_latest(registry)


class _OneSnapshot:
    """The snapshot source of a one-off registry: always the same snapshot."""

    def __init__(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot

    def snapshot(self) -> Snapshot:
        return self._snapshot


def _glob(pattern: str) -> re.Pattern[str]:
    """'*' and '?' as wildcards, everything else literal (IPv6 brackets included)."""
    return re.compile(re.escape(pattern.lower()).replace(r"\*", ".*").replace(r"\?", "."))
