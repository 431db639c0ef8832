"""Revocation checks: ``RevocationFacts`` (one check of one certificate location),
how a check is described on its phase span, and the revocation metric families
shared by the kinds that check revocation (tls, ocsp, crl).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from probes.context import Phase
from probes.metrics import CERT_LABELS, TARGET_LABELS, KindHooks, Rows, Tally, TargetView, gauge
from probes.reasons import Reason
from probes.result import ProbeResult


@dataclass(frozen=True, slots=True)
class RevocationFacts:
    """One revocation check of one certificate location (``index``, ``role``)."""

    method: str  # ocsp | crl | stapled
    state: str  # good | revoked | unknown | not_applicable
    reason: Reason  # OK, REVOKED, or why the state is unknown
    source: str  # responder or CRL URL ('' when not applicable)
    message: str = ""
    stale: bool = False
    this_update: float | None = None
    next_update: float | None = None
    produced_at: float | None = None
    revocation_time: float | None = None
    revocation_reason: str = ""
    duration_seconds: float = 0.0
    http_status: int | None = None
    from_cache: bool = False
    # Wall clock of the network request that gave this answer (OCSP): a cached answer
    # keeps the time it was asked, so its age is known while it is reused.
    requested_at: float | None = None
    index: int = 0
    role: str = "leaf"


def annotate_revocation(phase: Phase, facts: RevocationFacts, index: int, role: str) -> None:
    """Describe one revocation check on its phase span.  A revoked certificate or an
    unknown state (no usable answer) fails the phase; the run's own outcome is
    decided elsewhere (an unknown state fails the run only with ``hard_fail``)."""
    if not phase.traced:
        return
    phase.set("certscope.revocation.method", facts.method)
    phase.set("certscope.revocation.state", facts.state)
    phase.set("certscope.revocation.cached", facts.from_cache)
    phase.set("certscope.certificate.index", index)
    phase.set("certscope.certificate.role", role)
    host = urlsplit(facts.source).hostname if "://" in facts.source else None
    if host:
        phase.set("server.address", host)  # never the URL: it could carry credentials
    if facts.http_status is not None:
        phase.set("http.response.status_code", facts.http_status)
    if facts.state == "revoked":
        phase.event("certscope.revoked", **{"error.type": Reason.REVOKED.value, "certscope.message": facts.message})
        phase.fail(Reason.REVOKED, facts.message)
    elif facts.state == "unknown":
        phase.fail(facts.reason, facts.message)


# -- metrics ---------------------------------------------------------------------------

_P = "certscope_"
_CHECK_LABELS = (*CERT_LABELS, "method")
_RESPONDER_LABELS = (*TARGET_LABELS, "responder")
REVOKED = gauge(
    _P + "cert_revoked", "1 if the certificate is revoked; 0 if good or unknown (see check_success).", _CHECK_LABELS
)
CHECK_SUCCESS = gauge(
    _P + "cert_revocation_check_success",
    "1 if the revocation state was established from a valid, fresh answer.",
    _CHECK_LABELS,
)
STATUS = gauge(
    _P + "cert_revocation_status",
    "Revocation state; always 1 (good, revoked, unknown, not_applicable).",
    (*_CHECK_LABELS, "state", "source"),
)
STALE = gauge(_P + "cert_revocation_stale", "1 if the revocation answer is past its nextUpdate.", _CHECK_LABELS)
REVOCATION_TIME = gauge(
    _P + "cert_revocation_timestamp_seconds", "When the CA says the certificate was revoked.", _CHECK_LABELS
)
FIRST_SEEN = gauge(
    _P + "cert_revocation_first_seen_timestamp_seconds",
    "When certscope first saw the certificate revoked.",
    _CHECK_LABELS,
)
THIS_UPDATE = gauge(
    _P + "cert_revocation_this_update_timestamp_seconds", "thisUpdate of the OCSP answer or CRL.", _CHECK_LABELS
)
NEXT_UPDATE = gauge(
    _P + "cert_revocation_next_update_timestamp_seconds", "nextUpdate of the OCSP answer or CRL.", _CHECK_LABELS
)
PRODUCED_AT = gauge(
    _P + "cert_revocation_produced_at_timestamp_seconds", "producedAt of the OCSP response.", _CHECK_LABELS
)
RESPONDER_UP = gauge(
    _P + "ocsp_responder_up",
    "1 if the OCSP responder gave a valid, authorised answer to the last request sent to it"
    " (kept while that answer is cached).",
    _RESPONDER_LABELS,
)
RESPONDER_DURATION = gauge(
    _P + "ocsp_request_duration_seconds",
    "Duration of the last request sent to the OCSP responder (kept while its answer is cached).",
    _RESPONDER_LABELS,
)
RESPONDER_LAST_REQUEST = gauge(
    _P + "ocsp_last_request_timestamp_seconds",
    "When the request that responder_up and request_duration_seconds describe was sent.",
    _RESPONDER_LABELS,
)
REVOCATION_FAMILIES = (
    REVOKED,
    CHECK_SUCCESS,
    STATUS,
    STALE,
    REVOCATION_TIME,
    FIRST_SEEN,
    THIS_UPDATE,
    NEXT_UPDATE,
    PRODUCED_AT,
    RESPONDER_UP,
    RESPONDER_DURATION,
    RESPONDER_LAST_REQUEST,
)
_RESPONDER_DOWN = (Reason.OCSP_UNAVAILABLE, Reason.OCSP_BAD_RESPONSE, Reason.OCSP_UNAUTHORIZED_SIGNER)

CheckKey = tuple[int, str, str]  # the certificate's (index, role) and the method


def _revoked_since(previous: Mapping[CheckKey, float] | None, result: ProbeResult, finished: float) -> Any:
    """(index, role, method) -> when certscope first saw the certificate revoked, so
    revocation propagation (revoked at the CA -> visible to clients) is measurable."""
    old = previous or {}
    since = {
        (r.index, r.role, r.method): old.get((r.index, r.role, r.method), finished)
        for r in result.revocation
        if r.state == "revoked"
    }
    return MappingProxyType(since) if since else None


REVOKED_SINCE = Tally("revoked_since", _revoked_since)


def render_revocation(view: TargetView, rows: Rows) -> None:
    """The revocation checks of one target's result."""
    key, extra = view.key, view.extra
    revoked_since: Mapping[CheckKey, float] = view.tallies.get(REVOKED_SINCE.name, {})
    for check in view.result.revocation:
        check_key = (*key, str(check.index), check.role, check.method)
        rows.add(STATUS, (*check_key, check.state, check.source), 1, extra)
        if check.state != "not_applicable":
            rows.add(REVOKED, check_key, 1 if check.state == "revoked" else 0, extra)
            ok = check.state in ("good", "revoked") and not check.stale
            rows.add(CHECK_SUCCESS, check_key, 1 if ok else 0, extra)
            rows.add(STALE, check_key, 1 if check.stale else 0, extra)
            for family, value in (
                (REVOCATION_TIME, check.revocation_time),
                (THIS_UPDATE, check.this_update),
                (NEXT_UPDATE, check.next_update),
                (PRODUCED_AT, check.produced_at),
                (FIRST_SEEN, revoked_since.get((check.index, check.role, check.method))),
            ):
                if value is not None:
                    rows.add(family, check_key, value, extra)
        if check.method == "ocsp" and check.source:
            # A cached answer is the responder's last answer: it stays visible, with
            # when it was asked, until the cache asks again (at the answer's nextUpdate).
            responder = (*key, check.source)
            rows.add(RESPONDER_UP, responder, 0 if check.reason in _RESPONDER_DOWN else 1, extra)
            rows.add(RESPONDER_DURATION, responder, check.duration_seconds, extra)
            if check.requested_at is not None:
                rows.add(RESPONDER_LAST_REQUEST, responder, check.requested_at, extra)


# The hooks of a kind whose facts are revocation checks only (the ocsp kind); the tls
# and crl kinds add these families, this render and this tally to their own.
REVOCATION_HOOKS = KindHooks(families=REVOCATION_FAMILIES, render=render_revocation, tallies=(REVOKED_SINCE,))
