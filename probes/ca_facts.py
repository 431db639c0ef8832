"""The ``ca`` kind's facts (``CaFacts``: the CA's API; ``IssuanceFacts``: one
synthetic issuance) and how they show: metric families, the issuance counter kept
across runs, and the kind's hooks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from probes.metrics import TARGET_LABELS, KindHooks, Rows, Tally, TargetView, counter, gauge
from probes.reasons import Reason
from probes.result import ProbeResult


@dataclass(frozen=True, slots=True)
class IssuanceFacts:
    """One synthetic issuance (the ``ca`` kind): asked, received, verified."""

    success: bool
    reason: Reason  # OK or why it failed
    # Seconds the CA took to answer the issuance request(s); None when no request
    # reached the CA (the credential could not be read, the key did not decrypt).
    seconds: float | None
    message: str = ""
    # Phase name -> seconds of the issuance's own steps (ACME: nonce, account, order, ...).
    phases: tuple[tuple[str, float], ...] = ()
    # Unix time before which the CA asked not to be asked again (ACME rateLimited).
    retry_after: float | None = None


@dataclass(frozen=True, slots=True)
class CaFacts:
    """What one run of the ``ca`` kind showed about the CA's API."""

    flavor: str  # step | cfssl | acme | bundle
    up: bool  # the availability request got a well-formed answer
    response_seconds: float | None  # that request's round trip (None: no answer at all)
    issuance: IssuanceFacts | None = None  # None when synthetic issuance is off


# -- metrics ---------------------------------------------------------------------------

_P = "certscope_"
UP = gauge(_P + "ca_up", "1 if the CA's API gave a well-formed answer to the availability request.", TARGET_LABELS)
RESPONSE = gauge(_P + "ca_response_duration_seconds", "Round trip of the CA's availability request.", TARGET_LABELS)
ISSUANCE_SUCCESS = gauge(
    _P + "ca_issuance_success",
    "1 if the last synthetic issuance gave a certificate that checked out (absent when issuance is off).",
    TARGET_LABELS,
)
ISSUANCE_DURATION = gauge(
    _P + "ca_issuance_duration_seconds",
    "How long the CA took to answer the last synthetic issuance request.",
    TARGET_LABELS,
)
ISSUANCES = counter(_P + "ca_issuance", "Synthetic issuances by result (success, failure).", (*TARGET_LABELS, "result"))
ISSUANCE_PHASE = gauge(
    _P + "ca_issuance_phase_duration_seconds",
    "Seconds each step of the last ACME issuance took (directory, nonce, account, order, challenge, ...).",
    (*TARGET_LABELS, "phase"),
)
ISSUANCE_RETRY_AFTER = gauge(
    _P + "ca_issuance_retry_after_timestamp_seconds",
    "When the CA allows the next ACME issuance attempt (Retry-After of a rateLimited answer).",
    TARGET_LABELS,
)
CA_FAMILIES = (
    UP,
    RESPONSE,
    ISSUANCE_SUCCESS,
    ISSUANCE_DURATION,
    ISSUANCES,
    ISSUANCE_PHASE,
    ISSUANCE_RETRY_AFTER,
)
_RESULTS = ("success", "failure")


def _issuances(previous: Mapping[str, int] | None, result: ProbeResult, finished: float) -> Mapping[str, int] | None:
    """Synthetic issuances of the target by result (success | failure), cumulative."""
    issuance = result.facts.issuance if isinstance(result.facts, CaFacts) else None
    if issuance is None:
        return previous
    outcome = "success" if issuance.success else "failure"
    counts = dict(previous or {})
    counts[outcome] = counts.get(outcome, 0) + 1
    return MappingProxyType(counts)


ISSUANCE_TOTAL = Tally("issuance_total", _issuances)


def render_ca(view: TargetView, rows: Rows) -> None:
    ca = view.facts
    if not isinstance(ca, CaFacts):
        return
    key, extra = view.key, view.extra
    rows.add(UP, key, 1 if ca.up else 0, extra)
    if ca.response_seconds is not None:
        rows.add(RESPONSE, key, ca.response_seconds, extra)
    if ca.issuance is not None:
        rows.add(ISSUANCE_SUCCESS, key, 1 if ca.issuance.success else 0, extra)
        if ca.issuance.seconds is not None:
            rows.add(ISSUANCE_DURATION, key, ca.issuance.seconds, extra)
        for phase, seconds in ca.issuance.phases:
            rows.add(ISSUANCE_PHASE, (*key, phase), seconds, extra)
        if ca.issuance.retry_after is not None:
            rows.add(ISSUANCE_RETRY_AFTER, key, ca.issuance.retry_after, extra)
    issuance_total: Mapping[str, int] = view.tallies.get(ISSUANCE_TOTAL.name, {})
    if ca.issuance is not None or issuance_total:
        # Both results from the first issuance on, so rate() of either is never absent.
        for outcome in _RESULTS:
            rows.add(ISSUANCES, (*key, outcome), issuance_total.get(outcome, 0), extra)


CA_HOOKS = KindHooks(families=CA_FAMILIES, render=render_ca, tallies=(ISSUANCE_TOTAL,))
