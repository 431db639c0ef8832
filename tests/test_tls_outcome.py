"""The precedence of a ``tls`` run's outcome (probes.tls_outcome), one row per rule.

Each row sets the problems a run could see at once and names the one it must
report; the ties are the rows where two or more problems are present.  The last
test feeds real verdicts (probes.verify over certificates built here) through the
same function, where the chain verdict orders expiry before hostname.
"""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509

from probes.certparse import facts_from_certificate
from probes.expect import Expect
from probes.reasons import Reason
from probes.revocation_facts import RevocationFacts
from probes.tls_outcome import Problem, TlsObservation, tls_outcome
from probes.verify import TrustStore, Verdict, verify_served_chain
from tests.pki import build_pki, issue

GOOD_VERDICT = Verdict(Reason.OK, "", True, True, True)
EXPIRED = Verdict(Reason.CERT_EXPIRED, "the leaf expired on 2020-01-01 00:00 UTC", False, True, True)
MISMATCH = Verdict(Reason.HOSTNAME_MISMATCH, "a.test is not covered", True, True, False)
UNTRUSTED = Verdict(Reason.UNTRUSTED_ROOT, "the chain ends in an untrusted root", False, True, True)
REQUIRED = Problem(Reason.CLIENT_CERT_REQUIRED, "the server requires a client certificate")
REJECTED = Problem(Reason.CLIENT_CERT_REJECTED, "the server rejected the client certificate (HTTP 400)")
HTTP_403 = Problem(Reason.HTTP_FORBIDDEN, "HTTP 403 for /")
REFUSED = Problem(Reason.CONNECT_REFUSED, "connection to 127.0.0.1:1 refused")
HANDSHAKE = Problem(Reason.HANDSHAKE_FAILED, "handshake failed: bad record")

LEAF = facts_from_certificate(issue("a.test", sans=("a.test",)).cert)  # an EC P-256 leaf for a.test
WANTS_B = Expect(names=("b.test",))
WANTS_RSA = Expect(key_type="rsa")


def state(method: str, state: str, reason: Reason = Reason.OK, message: str = "", index: int = 0) -> RevocationFacts:
    return RevocationFacts(method, state, reason, f"http://{method}.test/", message, index=index)


REVOKED_OCSP = state("ocsp", "revoked", Reason.REVOKED, "revoked at 2024-01-01 00:00 UTC")
REVOKED_CRL_1 = state("crl", "revoked", Reason.REVOKED, "on the CRL since 2024-02-01 00:00 UTC", index=1)
GOOD_OCSP = state("ocsp", "good")
OCSP_DOWN = state("ocsp", "unknown", Reason.OCSP_UNAVAILABLE, "connection refused")
CRL_STALE = state("crl", "unknown", Reason.CRL_STALE, "the CRL expired")

ROWS: list[tuple[str, TlsObservation, Reason, str]] = [
    # rule 0: nothing wrong
    ("all good", TlsObservation(verdict=GOOD_VERDICT, revocation=(GOOD_OCSP,), leaf=LEAF), Reason.OK, ""),
    # rule 1: no completed handshake
    ("connect refused", TlsObservation(handshake_failure=REFUSED), Reason.CONNECT_REFUSED, REFUSED.message),
    (
        "TLS 1.2 refusal of the client certificate beats its expired chain",
        TlsObservation(handshake_failure=REQUIRED, verdict=EXPIRED),
        Reason.CLIENT_CERT_REQUIRED,
        REQUIRED.message,
    ),
    (
        "a broken handshake beats anything else it could have shown",
        TlsObservation(
            handshake_failure=HANDSHAKE, verdict=EXPIRED, revocation=(REVOKED_OCSP,), after_handshake=HTTP_403
        ),
        Reason.HANDSHAKE_FAILED,
        HANDSHAKE.message,
    ),
    # rule 2: client-certificate refusal after the handshake
    (
        "client cert rejected beats revoked, expired and a hostname mismatch",
        TlsObservation(verdict=EXPIRED, after_handshake=REJECTED, revocation=(REVOKED_OCSP,)),
        Reason.CLIENT_CERT_REJECTED,
        REJECTED.message,
    ),
    (
        "client cert required with a good chain",
        TlsObservation(verdict=GOOD_VERDICT, after_handshake=REQUIRED),
        Reason.CLIENT_CERT_REQUIRED,
        REQUIRED.message,
    ),
    # rule 3: revoked
    (
        "revoked beats expired (and the hostname mismatch behind it)",
        TlsObservation(verdict=EXPIRED, revocation=(GOOD_OCSP, REVOKED_OCSP)),
        Reason.REVOKED,
        "certificate 0 revoked at 2024-01-01 00:00 UTC (http://ocsp.test/)",
    ),
    (
        "revoked beats a hostname mismatch and an HTTP failure",
        TlsObservation(verdict=MISMATCH, revocation=(REVOKED_OCSP,), after_handshake=HTTP_403),
        Reason.REVOKED,
        "certificate 0 revoked at 2024-01-01 00:00 UTC (http://ocsp.test/)",
    ),
    (
        "the first revoked certificate is named: an intermediate on the CRL",
        TlsObservation(verdict=GOOD_VERDICT, revocation=(GOOD_OCSP, REVOKED_CRL_1, REVOKED_OCSP)),
        Reason.REVOKED,
        "certificate 1 on the CRL since 2024-02-01 00:00 UTC (http://crl.test/)",
    ),
    (
        "revoked beats an unknown state even with hard_fail",
        TlsObservation(verdict=GOOD_VERDICT, revocation=(OCSP_DOWN, REVOKED_CRL_1), hard_fail=True),
        Reason.REVOKED,
        "certificate 1 on the CRL since 2024-02-01 00:00 UTC (http://crl.test/)",
    ),
    # rule 4: the chain verdict
    ("expired", TlsObservation(verdict=EXPIRED, leaf=LEAF), Reason.CERT_EXPIRED, EXPIRED.message),
    (
        "hostname mismatch beats the HTTP failure, the expectation and hard_fail",
        TlsObservation(
            verdict=MISMATCH,
            after_handshake=HTTP_403,
            leaf=LEAF,
            expect=WANTS_B,
            revocation=(OCSP_DOWN,),
            hard_fail=True,
        ),
        Reason.HOSTNAME_MISMATCH,
        MISMATCH.message,
    ),
    ("untrusted root", TlsObservation(verdict=UNTRUSTED), Reason.UNTRUSTED_ROOT, UNTRUSTED.message),
    # rule 5: other failures of the round trip
    (
        "an HTTP status beats the expectation",
        TlsObservation(verdict=GOOD_VERDICT, after_handshake=HTTP_403, leaf=LEAF, expect=WANTS_B),
        Reason.HTTP_FORBIDDEN,
        HTTP_403.message,
    ),
    # rule 6: expectations on the leaf
    (
        "the first unmet expectation beats hard_fail",
        TlsObservation(verdict=GOOD_VERDICT, leaf=LEAF, expect=WANTS_B, revocation=(OCSP_DOWN,), hard_fail=True),
        Reason.SAN_MISMATCH,
        "b.test is not among the SANs (a.test)",
    ),
    (
        "key type expectation",
        TlsObservation(verdict=GOOD_VERDICT, leaf=LEAF, expect=WANTS_RSA),
        Reason.WEAK_KEY,
        "key is ec-256, expected rsa",
    ),
    (
        "an expectation with no leaf to check is not a failure",
        TlsObservation(verdict=GOOD_VERDICT, expect=WANTS_B),
        Reason.OK,
        "",
    ),
    # rule 7: unknown revocation state, only with hard_fail
    (
        "unknown state with hard_fail: the first one",
        TlsObservation(verdict=GOOD_VERDICT, revocation=(GOOD_OCSP, CRL_STALE, OCSP_DOWN), hard_fail=True),
        Reason.CRL_STALE,
        "crl: the CRL expired",
    ),
    (
        "unknown state without hard_fail succeeds",
        TlsObservation(verdict=GOOD_VERDICT, revocation=(OCSP_DOWN, CRL_STALE), leaf=LEAF, expect=Expect()),
        Reason.OK,
        "",
    ),
]


@pytest.mark.parametrize(("seen", "reason", "message"), [row[1:] for row in ROWS], ids=[row[0] for row in ROWS])
def test_outcome_precedence(seen: TlsObservation, reason: Reason, message: str) -> None:
    outcome = tls_outcome(seen)
    assert (outcome.reason, outcome.message) == (reason, message)
    assert outcome.success is (reason is Reason.OK)


def test_every_rule_has_a_row() -> None:
    """Each reason the rules can pick appears as the winner of some row, so a rule
    that stopped firing (or fired in the wrong place) fails a row above."""
    winners = {row[2] for row in ROWS}
    assert {
        Reason.OK,
        Reason.CONNECT_REFUSED,
        Reason.CLIENT_CERT_REQUIRED,
        Reason.CLIENT_CERT_REJECTED,
        Reason.REVOKED,
        Reason.CERT_EXPIRED,
        Reason.HOSTNAME_MISMATCH,
        Reason.HTTP_FORBIDDEN,
        Reason.SAN_MISMATCH,
        Reason.CRL_STALE,
    } <= winners


def test_real_verdicts_expired_and_mismatched_and_revoked() -> None:
    """A leaf that is expired *and* for another name: probes.verify reports the
    expiry (no valid path exists, and expiry is what the on-call acts on first);
    the same leaf revoked reports revoked.  A valid leaf for another name reports
    the mismatch."""
    pki = build_pki()
    now = dt.datetime.now(dt.UTC)
    expired_other = issue(
        "other.test",
        pki.intermediate,
        sans=("other.test",),
        not_before=now - dt.timedelta(days=90),
        not_after=now - dt.timedelta(days=1),
    )
    valid_other = issue("other.test", pki.intermediate, sans=("other.test",))
    trust = TrustStore([pki.root.cert])

    def verdict_for(leaf_der: bytes) -> Verdict:
        served = [x509.load_der_x509_certificate(leaf_der), pki.intermediate.cert]
        return verify_served_chain(served, trust, "a.test", now)

    expired_verdict = verdict_for(expired_other.der)
    assert expired_verdict.hostname_match is False  # both problems are there
    assert tls_outcome(TlsObservation(verdict=expired_verdict)).reason is Reason.CERT_EXPIRED
    revoked = tls_outcome(TlsObservation(verdict=expired_verdict, revocation=(REVOKED_OCSP,)))
    assert revoked.reason is Reason.REVOKED
    assert tls_outcome(TlsObservation(verdict=verdict_for(valid_other.der))).reason is Reason.HOSTNAME_MISMATCH
