"""The outcome of one ``tls`` run: which observed problem the run reports.

A run can see several problems at once (an expired leaf on a server that also
refuses the client certificate and whose leaf is revoked).  It reports one reason,
chosen here, purely from what the run observed, in this order:

1. the connection or handshake did not complete: its failure (a TLS 1.2 server that
   refuses the client certificate does so after sending its chain, which is judged
   and exported, but the refusal is the outcome);
2. the server refused the client certificate after the handshake (TLS 1.3, or an
   nginx 400 page): ``client_cert_required`` / ``client_cert_rejected``;
3. a served certificate is revoked (OCSP, CRL or the staple): ``revoked``, before any
   chain problem, because a revoked certificate must be replaced whatever else is
   wrong with it;
4. the chain verdict (``probes.verify``, which orders expiry, hostname and trust
   problems among themselves): its reason;
5. any other failure of the round trip (an HTTP status, header or body rule, a
   timeout or protocol error after the handshake);
6. the leaf's unmet expectation (``expect:``, ``probes.expect``);
7. with ``revocation.hard_fail``, a revocation state that could not be established:
   its reason (``ocsp_unavailable``, ``crl_stale``, ...).

Otherwise the run succeeds.  Messages are the ones the run reports (the caller puts
the endpoint in front).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from probes.expect import Expect, unmet_expectation
from probes.reasons import Reason
from probes.result import CertFacts
from probes.revocation_facts import RevocationFacts
from probes.verify import Verdict

CLIENT_CERT_REFUSALS = (Reason.CLIENT_CERT_REQUIRED, Reason.CLIENT_CERT_REJECTED)


class Problem(NamedTuple):
    """One failure a run observed: its reason and what it says."""

    reason: Reason
    message: str


class Outcome(NamedTuple):
    success: bool
    reason: Reason
    message: str


OK = Outcome(True, Reason.OK, "")


@dataclass(frozen=True)
class TlsObservation:
    """What one run saw, as far as it got."""

    handshake_failure: Problem | None = None  # the connection or handshake did not complete
    verdict: Verdict | None = None  # the chain and hostname verdict; None without a chain
    after_handshake: Problem | None = None  # the round trip after the handshake failed
    revocation: Sequence[RevocationFacts] = ()
    leaf: CertFacts | None = None  # the served leaf, for ``expect``
    expect: Expect | None = None
    hard_fail: bool = False  # an unknown revocation state fails the run


def tls_outcome(seen: TlsObservation) -> Outcome:
    """(success, reason, message) of a run: the first problem in the module's order."""
    if seen.handshake_failure is not None:
        return _failed(seen.handshake_failure)
    if seen.after_handshake is not None and seen.after_handshake.reason in CLIENT_CERT_REFUSALS:
        return _failed(seen.after_handshake)
    if revoked := [r for r in seen.revocation if r.state == "revoked"]:
        first = revoked[0]
        return Outcome(False, Reason.REVOKED, f"certificate {first.index} {first.message} ({first.source})")
    if seen.verdict is not None and seen.verdict.reason is not Reason.OK:
        return Outcome(False, seen.verdict.reason, seen.verdict.message)
    if seen.after_handshake is not None:
        return _failed(seen.after_handshake)
    if seen.expect is not None and seen.leaf is not None:
        unmet = unmet_expectation(seen.leaf, seen.expect)
        if unmet is not None:
            return Outcome(False, *unmet)
    if seen.hard_fail:
        unknown = [r for r in seen.revocation if r.state == "unknown"]
        if unknown:
            return Outcome(False, unknown[0].reason, f"{unknown[0].method}: {unknown[0].message}")
    return OK


def _failed(problem: Problem) -> Outcome:
    return Outcome(False, problem.reason, problem.message)
