"""certscope's chain verdicts against x509-limbo, a path-validation suite nobody here
wrote, under both verification profiles, with OpenSSL as the tie-breaker.

Every SERVER case must agree with the suite's expected result, except those on the
profile's not-claimed list.  Each entry there records three verdicts, all checked:
limbo's expectation, what ``openssl verify -purpose sslserver -auth_level 2`` (run
here) concludes, and certscope's reason.  Under the ``rfc5280`` profile OpenSSL must
side with certscope on every entry: the profile claims RFC 5280 as OpenSSL applies
it.  Under ``webpki`` certscope may be stricter than OpenSSL only where a CA/Browser
Forum rule says so, and the ``webpki::*`` family must agree on >= 95 %.  An entry
that starts to agree fails the test too, so the lists stay true.

CLIENT cases are out of scope: certscope verifies server chains.  The corpus lives
outside the project (../shared/corpora/limbo.json, compiled from C2SP/x509-limbo);
where it is absent, as in a user's clone, the tests skip and say so.
"""

from __future__ import annotations

import subprocess
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from probes.profiles import RFC5280, WEBPKI
from probes.reasons import Reason
from probes.verify import TrustStore, Verdict, verify_served_chain
from tests import limbo_corpus

CASES = limbo_corpus.server_cases()


@dataclass(frozen=True)
class Disagreement:
    """A case certscope does not claim: what limbo expects, what OpenSSL concludes
    (True: the chain verifies) and certscope's reason, with why."""

    limbo: str  # SUCCESS | FAILURE
    openssl: bool
    ours: str  # a Reason value
    why: str


_REVOCATION = "revocation is judged by the ocsp/crl probes (and revocation: settings), not by path validation"
_ANCHOR = (
    "the trusted 'Root A' is issued by another CA and has no authorityKeyIdentifier: certscope accepts such an "
    "anchor only with the AKI RFC 5280 4.2.1.1 requires (OpenSSL refuses every anchor that is not self-signed)"
)
_SERVER_USAGE = "the leaf's keyUsage (keyCertSign only) is no TLS-server usage; OpenSSL -purpose sslserver refuses it"
_RFC_PEDANTRY = "an RFC 5280 encoding rule (criticality, presence) that OpenSSL, Python and Go do not enforce"
_CABF = "a CA/Browser Forum rule: the webpki profile enforces it, rfc5280 (like OpenSSL) does not"
_WEBPKI_CN = "CA/B BR 7.1.4.3: the CN (example.com) is not one of the DNS SANs; rfc5280 does not check it"
_WEBPKI_LEAF_CN = "CA/B BR 7.1.4.3: the leaf's CN (an intermediate's name) is not one of its SANs"
_NOT_IN_BROWSERS = "an RFC 5280 issuance rule cryptography's web-PKI policy and browsers do not enforce"

OK, FAIL = True, False
NOT_CLAIMED: dict[str, dict[str, Disagreement]] = {
    RFC5280: {
        "crl::revoked-certificate-with-crl": Disagreement("FAILURE", OK, "ok", _REVOCATION),
        "crl::crlnumber-missing": Disagreement("FAILURE", OK, "ok", _REVOCATION),
        "crl::crlnumber-critical": Disagreement("FAILURE", OK, "ok", _REVOCATION),
        "crl::issuer-missing-crlsign": Disagreement("FAILURE", OK, "ok", _REVOCATION),
        "cve::cve-2024-0567": Disagreement("SUCCESS", FAIL, "chain_invalid", _ANCHOR),
        "pathlen::validation-ignores-pathlen-in-leaf": Disagreement("SUCCESS", FAIL, "chain_invalid", _SERVER_USAGE),
        "rfc5280::ca-as-leaf": Disagreement("SUCCESS", FAIL, "chain_invalid", _SERVER_USAGE),
        "rfc5280::aki::leaf-missing-aki": Disagreement("FAILURE", OK, "ok", _RFC_PEDANTRY),
        "rfc5280::aki::intermediate-missing-aki": Disagreement("FAILURE", OK, "ok", _RFC_PEDANTRY),
        "rfc5280::ski::root-missing-ski": Disagreement("FAILURE", OK, "ok", _RFC_PEDANTRY),
        "rfc5280::ski::intermediate-missing-ski": Disagreement("FAILURE", OK, "ok", _RFC_PEDANTRY),
        "rfc5280::nc::permitted-dns-match-noncritical": Disagreement("FAILURE", OK, "ok", _RFC_PEDANTRY),
        "rfc5280::nc::not-allowed-in-ee-noncritical": Disagreement("FAILURE", OK, "ok", _RFC_PEDANTRY),
        "rfc5280::nc::not-allowed-in-ee-critical": Disagreement("FAILURE", OK, "ok", _RFC_PEDANTRY),
        "rfc5280::pc::ica-noncritical-pc": Disagreement("FAILURE", OK, "ok", _RFC_PEDANTRY),
        "rfc5280::san::noncritical-with-empty-subject": Disagreement("FAILURE", OK, "ok", _RFC_PEDANTRY),
        "rfc5280::root-non-critical-basic-constraints": Disagreement("FAILURE", OK, "ok", _RFC_PEDANTRY),
        "rfc5280::serial::zero": Disagreement("FAILURE", OK, "ok", "a zero serial number; OpenSSL accepts it"),
        "rfc5280::leaf-ku-keycertsign": Disagreement(
            "FAILURE", OK, "ok", "keyCertSign beside digitalSignature in a leaf; OpenSSL accepts it"
        ),
        "webpki::aki::root-with-aki-missing-keyidentifier": Disagreement("FAILURE", OK, "ok", _CABF),
        "webpki::cn::ipv4-hex-mismatch": Disagreement("FAILURE", OK, "ok", _CABF),
        "webpki::cn::ipv4-leading-zeros-mismatch": Disagreement("FAILURE", OK, "ok", _CABF),
        "webpki::cn::ipv6-uppercase-mismatch": Disagreement("FAILURE", OK, "ok", _CABF),
        "webpki::cn::ipv6-uncompressed-mismatch": Disagreement("FAILURE", OK, "ok", _CABF),
        "webpki::cn::ipv6-non-rfc5952-mismatch": Disagreement("FAILURE", OK, "ok", _CABF),
        "webpki::cn::punycode-not-in-san": Disagreement("FAILURE", OK, "ok", _CABF),
        "webpki::cn::utf8-vs-punycode-mismatch": Disagreement("FAILURE", OK, "ok", _CABF),
        "webpki::cn::not-in-san": Disagreement("FAILURE", OK, "ok", _CABF),
        "webpki::cn::case-mismatch": Disagreement("FAILURE", OK, "ok", _CABF),
        "webpki::eku::ee-anyeku": Disagreement("FAILURE", OK, "ok", _CABF),
        "webpki::eku::ee-critical-eku": Disagreement("FAILURE", OK, "ok", _CABF),
        "webpki::eku::ee-without-eku": Disagreement("FAILURE", OK, "ok", _CABF),
        "webpki::eku::root-has-eku": Disagreement("FAILURE", OK, "ok", _CABF),
        "webpki::nc::intermediate-permitted-excluded-subtrees-both-null": Disagreement("FAILURE", OK, "ok", _CABF),
        "webpki::nc::intermediate-permitted-excluded-subtrees-both-empty-sequences": Disagreement(
            "FAILURE", OK, "ok", _CABF
        ),
        "webpki::san::public-suffix-multi-label-wildcard-san": Disagreement("FAILURE", OK, "ok", _CABF),
        "webpki::san::public-suffix-private-namespace-wildcard-san": Disagreement("FAILURE", OK, "ok", _CABF),
        "webpki::san::san-critical-with-nonempty-subject": Disagreement("FAILURE", OK, "ok", _CABF),
        "webpki::forbidden-dsa-leaf": Disagreement("FAILURE", OK, "ok", _CABF),
        "webpki::forbidden-rsa-not-divisible-by-8-in-root": Disagreement("FAILURE", OK, "ok", _CABF),
        "webpki::forbidden-rsa-key-not-divisible-by-8-in-leaf": Disagreement("FAILURE", OK, "ok", _CABF),
        "webpki::ee-basicconstraints-ca": Disagreement("FAILURE", OK, "ok", _CABF),
    },
    WEBPKI: {
        "crl::revoked-certificate-with-crl": Disagreement("FAILURE", OK, "ok", _REVOCATION),
        "crl::crlnumber-missing": Disagreement("FAILURE", OK, "ok", _REVOCATION),
        "crl::crlnumber-critical": Disagreement("FAILURE", OK, "ok", _REVOCATION),
        "crl::issuer-missing-crlsign": Disagreement("FAILURE", OK, "ok", _REVOCATION),
        "cve::cve-2024-0567": Disagreement("SUCCESS", FAIL, "chain_invalid", _ANCHOR),
        "pathlen::validation-ignores-pathlen-in-leaf": Disagreement("SUCCESS", FAIL, "chain_invalid", _WEBPKI_LEAF_CN),
        "rfc5280::ca-as-leaf": Disagreement(
            "SUCCESS", FAIL, "chain_invalid", "conflicts with webpki::ca-as-leaf (FAILURE), which this profile follows"
        ),
        "rfc5280::eku::ee-without-eku": Disagreement(
            "SUCCESS",
            OK,
            "chain_invalid",
            "conflicts with webpki::eku::ee-without-eku (FAILURE), which this profile follows",
        ),
        "rfc5280::nc::permitted-dns-match-more": Disagreement("SUCCESS", OK, "chain_invalid", _WEBPKI_CN),
        "rfc5280::nc::permitted-dns-match-noncritical": Disagreement(
            "FAILURE", OK, "ok", "conflicts with webpki::nc::permitted-dns-match-noncritical (SUCCESS), followed here"
        ),
        "rfc5280::pc::ica-noncritical-pc": Disagreement("FAILURE", OK, "ok", _NOT_IN_BROWSERS),
        "rfc5280::ski::root-missing-ski": Disagreement(
            "FAILURE", OK, "ok", "roots without SKI are in every trust store (Hongkong Post Root CA 1, TWCA Global)"
        ),
        "rfc5280::ski::intermediate-missing-ski": Disagreement("FAILURE", OK, "ok", _NOT_IN_BROWSERS),
    },
}
# Where the webpki profile is stricter than OpenSSL on purpose: CA/B rules.
WEBPKI_STRICTER_THAN_OPENSSL = {"rfc5280::eku::ee-without-eku", "rfc5280::nc::permitted-dns-match-more"}


def _certificates(value: str | list[str]) -> list[x509.Certificate]:
    return [x509.load_pem_x509_certificate(pem.encode()) for pem in limbo_corpus.pems(value)]


def limbo_verdict(case: dict[str, Any], profile: str) -> Verdict:
    trust = TrustStore(_certificates(case["trusted_certs"]))
    served = _certificates(case["peer_certificate"]) + _certificates(case["untrusted_intermediates"])
    name = (case.get("expected_peer_name") or {}).get("value")
    now = datetime.fromisoformat(case["validation_time"]) if case["validation_time"] else datetime.now().astimezone()
    depth = case["max_chain_depth"] if case["max_chain_depth"] is not None else 8
    return verify_served_chain(served, trust, name, now, depth, profile)


def openssl_verifies(case: dict[str, Any], directory: Path) -> bool:
    """``openssl verify -purpose sslserver -auth_level 2 -verify_hostname NAME
    -CAfile trusted -untrusted intermediates leaf`` at the case's time."""
    pems = limbo_corpus.pems
    (directory / "trusted.pem").write_text("".join(pems(case["trusted_certs"])))
    (directory / "untrusted.pem").write_text("".join(pems(case["untrusted_intermediates"])))
    (directory / "leaf.pem").write_text("".join(pems(case["peer_certificate"])))
    args = ["openssl", "verify", "-purpose", "sslserver", "-auth_level", "2", "-CAfile", str(directory / "trusted.pem")]
    if pems(case["untrusted_intermediates"]):
        args += ["-untrusted", str(directory / "untrusted.pem")]
    name = case.get("expected_peer_name") or {}
    if name:
        args += ["-verify_ip" if name["kind"] == "IP" else "-verify_hostname", name["value"]]
    if case["validation_time"]:
        args += ["-attime", str(int(datetime.fromisoformat(case["validation_time"]).timestamp()))]
    done = subprocess.run([*args, str(directory / "leaf.pem")], capture_output=True, text=True, timeout=30)
    return done.returncode == 0


def test_the_corpus_is_there() -> None:
    """The corpus comes with shared/ beside the checkout; without it every case below
    (and in test_limbo_served.py) would vanish from the run, so its absence fails."""
    assert CASES, (
        f"x509-limbo corpus not found at {limbo_corpus.CORPUS} (C2SP/x509-limbo): shared/ must be beside the checkout"
    )


@pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning")
@pytest.mark.parametrize("profile", [WEBPKI, RFC5280])
@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_verdict_agrees_with_x509_limbo(case: dict[str, Any], profile: str, tmp_path: Path) -> None:
    started = time.monotonic()
    verdict = limbo_verdict(case, profile)
    assert time.monotonic() - started < 2, "path validation must stay fast on pathological chains"
    agrees = (verdict.reason is Reason.OK) == (case["expected_result"] == "SUCCESS")
    entry = NOT_CLAIMED[profile].get(case["id"])
    if entry is None:
        assert agrees, f"{case['id']}: expected {case['expected_result']}, got {verdict.reason}: {verdict.message}"
        return
    assert not agrees, f"{case['id']} now agrees under {profile}; drop it from NOT_CLAIMED ({entry.why})"
    assert case["expected_result"] == entry.limbo
    assert verdict.reason.value == entry.ours, verdict.message
    assert openssl_verifies(case, tmp_path) == entry.openssl, "OpenSSL's verdict changed"
    sides_with_us = entry.openssl == (verdict.reason is Reason.OK)
    if profile == RFC5280 or case["id"] not in WEBPKI_STRICTER_THAN_OPENSSL:
        assert sides_with_us, f"{case['id']}: certscope differs from both limbo and OpenSSL under {profile}"


@pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning")
def test_agreement_by_family() -> None:
    """The figures docs/metrics.md quotes: agreement with limbo per family and
    profile; the web-PKI family under the webpki profile at >= 95 %."""
    agree: Counter[tuple[str, str]] = Counter()
    total: Counter[str] = Counter()
    for case in CASES:
        family = case["id"].split("::")[0]
        total[family] += 1
        for profile in (WEBPKI, RFC5280):
            ok = limbo_verdict(case, profile).reason is Reason.OK
            agree[(profile, family)] += ok == (case["expected_result"] == "SUCCESS")
    table = {f: {p: f"{agree[(p, f)]}/{n}" for p in (WEBPKI, RFC5280)} for f, n in sorted(total.items())}
    print(table)
    assert agree[(WEBPKI, "webpki")] >= 0.95 * total["webpki"], table
    assert sum(agree[(WEBPKI, f)] for f in total) == len(CASES) - len(NOT_CLAIMED[WEBPKI])
    assert sum(agree[(RFC5280, f)] for f in total) == len(CASES) - len(NOT_CLAIMED[RFC5280])
