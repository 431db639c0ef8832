"""Facts that join the results of several probes, computed when a round is published.

Two series compare what one probe saw with what others saw:

* ``certscope_cert_served_mismatch``: the leaf an endpoint serves (a kind whose
  hooks say ``CrossProbeRole.SERVED``: tls) against the leaves stored at rest (kinds
  saying ``STORED``: files, Kubernetes Secrets): 0 per location holding the same
  certificate, 1 per location holding a newer one for the same names (renewed, not
  served yet).
* ``certscope_key_reuse_subjects``: public keys found in certificates of more than
  one subject.

The store computes a ``CrossProbeIndex`` each time it publishes a new set of probe
states (``cross_probe_index``) and keeps it on the snapshot; the renderer only
writes its rows out, so ``render(snapshot)`` reads nothing but the snapshot.  The
work of the previous index is reused: probe states are immutable and replaced on
every round, so the stored-leaf index stays valid while no stored kind's state
changed (a TLS round only looks its leaves up), and a probe's public keys stay valid
while its state is the same object.

Computing never raises: a part that fails is left out, logged, and counted in
``broken`` (exported with ``certscope_render_errors``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

from probes.kinds import hooks_of
from probes.metrics import CrossProbeRole

if TYPE_CHECKING:
    from exporter.store import ProbeState, TargetState

log = logging.getLogger(__name__)

MAX_MISMATCH_LOCATIONS = 10  # stored locations reported per served certificate

Labels = tuple[tuple[str, str], ...]
KeyId = tuple[str, str]  # (spki_sha256, key_type)


@dataclass(frozen=True, slots=True)
class Location:
    """Where a stored leaf was found."""

    probe: str
    kind: str
    target: str
    not_before: float


@dataclass(frozen=True, slots=True)
class ServedMismatch:
    """One ``certscope_cert_served_mismatch`` sample."""

    labels: tuple[str, str, str, str, str, str]  # probe, kind, target, source_probe, source_kind, source_target
    value: int
    extra: Labels  # the served target's own labels (address, ...)


@dataclass(frozen=True, slots=True)
class StoredLeaves:
    """Leaf certificates of the stored kinds, by fingerprint and by identity, and the
    states they were read from."""

    states: tuple[ProbeState, ...]
    by_fingerprint: Mapping[str, list[Location]]
    by_identity: Mapping[tuple[str, ...], list[Location]]


@dataclass(frozen=True, slots=True)
class ProbeKeys:
    """The subjects of each public key in one probe's certificates, in the order first seen."""

    state: ProbeState
    subjects: Mapping[KeyId, frozenset[str]]


@dataclass(frozen=True, slots=True)
class CrossProbeIndex:
    served_mismatch: tuple[ServedMismatch, ...] = ()
    key_reuse: tuple[tuple[KeyId, int], ...] = ()  # keys with more than one subject, and how many
    broken: int = 0  # parts that could not be computed (a bug; see the log)
    # Kept for the next computation only.
    stored: StoredLeaves | None = field(default=None, repr=False, compare=False)
    keys: Mapping[str, ProbeKeys] = field(default_factory=dict, repr=False, compare=False)


EMPTY_INDEX = CrossProbeIndex()


def cross_probe_index(states: Sequence[ProbeState], previous: CrossProbeIndex = EMPTY_INDEX) -> CrossProbeIndex:
    """The index of ``states`` (in the snapshot's order), reusing what ``previous``
    computed from states that have not changed since.  Never raises."""
    broken = 0
    stored = previous.stored
    try:
        mismatches, stored = _served_mismatch(states, previous.stored)
    except Exception:
        broken += 1
        mismatches = ()
        log.exception("cannot compute certscope_cert_served_mismatch")
    try:
        reuse, keys = _key_reuse(states, previous.keys)
    except Exception:
        broken += 1
        reuse, keys = (), {}
        log.exception("cannot compute certscope_key_reuse_subjects")
    return CrossProbeIndex(mismatches, reuse, broken, stored, keys)


def _same_states(cached: tuple[ProbeState, ...], current: tuple[ProbeState, ...]) -> bool:
    return len(cached) == len(current) and all(a is b for a, b in zip(cached, current, strict=True))


def _readable_targets(states: Iterable[ProbeState]) -> Iterator[tuple[ProbeState, str, TargetState]]:
    """Every target of ``states``, skipping a probe whose records cannot be read (its
    own series are already counted in ``certscope_render_errors``)."""
    for state in states:
        try:
            targets = [(target, ts) for target, ts in state.targets.items() if ts.certificates is not None]
        except Exception:  # noqa: BLE001 - a broken record costs its probe only
            continue
        for target, ts in targets:
            yield state, target, ts


def _stored_leaves(states: tuple[ProbeState, ...], previous: StoredLeaves | None) -> StoredLeaves:
    if previous is not None and _same_states(previous.states, states):
        return previous
    by_fingerprint: dict[str, list[Location]] = {}
    by_identity: dict[tuple[str, ...], list[Location]] = {}
    for state, target, ts in _readable_targets(states):
        for observation in ts.certificates:
            if observation.role != "leaf":
                continue
            cert = observation.cert
            location = Location(state.info.name, state.info.kind, target, cert.not_before)
            by_fingerprint.setdefault(cert.fingerprint_sha256, []).append(location)
            by_identity.setdefault(_identity_key(cert.sans, cert.subject), []).append(location)
    return StoredLeaves(states, by_fingerprint, by_identity)


def _identity_key(sans: Sequence[str], subject: str) -> tuple[str, ...]:
    # Renewals keep the names; they may change the issuer (a new intermediate).
    return tuple(sorted(sans)) if sans else ("subject", subject)


def _served_mismatch(
    states: Sequence[ProbeState], previous: StoredLeaves | None
) -> tuple[tuple[ServedMismatch, ...], StoredLeaves | None]:
    """For each leaf a probe of a serving kind was served: 0 per stored location (file, Secret)
    holding the same certificate, or 1 per stored location holding a newer
    certificate for the same names — renewed on disk or in the Secret, not yet
    served.  Nothing when the served certificate is stored nowhere we look."""
    served = [s for s in states if hooks_of(s.info.kind).cross_probe is CrossProbeRole.SERVED and s.targets]
    stored_states = tuple(s for s in states if hooks_of(s.info.kind).cross_probe is CrossProbeRole.STORED)
    if not served or not stored_states:
        return (), previous
    stored = _stored_leaves(stored_states, previous)
    rows: list[ServedMismatch] = []
    for state in served:
        for target, ts in state.targets.items():
            leaf = next((o.cert for o in ts.certificates if o.index == 0 and o.role == "leaf"), None)
            if leaf is None:
                continue
            same = stored.by_fingerprint.get(leaf.fingerprint_sha256)
            if same:
                locations, value = same, 0
            else:
                candidates = stored.by_identity.get(_identity_key(leaf.sans, leaf.subject), [])
                locations, value = [c for c in candidates if c.not_before > leaf.not_before], 1
            for location in locations[:MAX_MISMATCH_LOCATIONS]:
                labels = (state.info.name, state.info.kind, target, location.probe, location.kind, location.target)
                rows.append(ServedMismatch(labels, value, ts.result.target_labels))
    return tuple(rows), stored


def _probe_keys(state: ProbeState, before: ProbeKeys | None) -> ProbeKeys:
    subjects: dict[KeyId, set[str]] = {}
    for _state, _target, ts in _readable_targets((state,)):
        for observation in ts.certificates:
            cert = observation.cert
            if cert.spki_sha256:
                subjects.setdefault((cert.spki_sha256, cert.key_type), set()).add(cert.subject)
    # A key's names as the round before held them, when they are the same: a later
    # round then leaves no new set per key behind for the garbage collector.
    known = before.subjects if before is not None else {}
    kept = {}
    for key, names in subjects.items():
        old = known.get(key)
        kept[key] = old if old is not None and old == names else frozenset(names)
    return ProbeKeys(state, MappingProxyType(kept))


def _key_reuse(
    states: Sequence[ProbeState], previous: Mapping[str, ProbeKeys]
) -> tuple[tuple[tuple[KeyId, int], ...], Mapping[str, ProbeKeys]]:
    """Public keys found in certificates of more than one subject (a key baked into a
    shared image, or copied between services).  Renewals keep their subject, so
    they do not count."""
    keys: dict[str, ProbeKeys] = {}
    subjects: dict[KeyId, set[str]] = {}
    for state in states:
        cached = previous.get(state.info.name)
        probe_keys = cached if cached is not None and cached.state is state else _probe_keys(state, cached)
        keys[state.info.name] = probe_keys
        for key, names in probe_keys.subjects.items():
            subjects.setdefault(key, set()).update(names)
    reuse = tuple((key, len(names)) for key, names in subjects.items() if len(names) > 1)
    return reuse, MappingProxyType(keys)
