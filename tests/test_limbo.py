"""certscope's chain verdicts against x509-limbo, a path-validation suite nobody here wrote.

Every SERVER case must agree with the suite's expected result, except those on the
allow-list below, each with the reason certscope does not claim that check.  An
allow-listed case that starts to agree fails the test too, so the list stays true.
CLIENT cases (client-certificate validation) are out of scope: certscope verifies
server chains.  The corpus lives outside the project (../shared/corpora/limbo.json,
compiled from C2SP/x509-limbo); where it is absent, as in a user's clone, the test
skips and says so.
"""

from __future__ import annotations

import ast
import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from probes.base import Reason
from probes.verify import TrustStore, verify_served_chain

CORPUS = Path(__file__).resolve().parent.parent.parent / "shared" / "corpora" / "limbo.json"

# Case id -> why certscope's verdict differs from the suite's.
_REVOCATION = "revocation is judged by the ocsp/crl probes, not by path validation"
_CN = "CA/B Forum CN-SAN consistency is an issuance rule; clients match SANs only"
_PEDANTIC = "RFC 5280 / webpki encoding pedantry that cryptography does not enforce (nor Go)"
_KEYS = "weak or odd keys are allowed by cryptography's policy; flag them with expect.min_key_bits"
_PATHLEN = "cryptography's handling of self-issued certificates and pathlen (a false rejection)"
NOT_CLAIMED = {
    "crl::revoked-certificate-with-crl": _REVOCATION,
    "crl::crlnumber-missing": _REVOCATION,
    "crl::crlnumber-critical": _REVOCATION,
    "crl::issuer-missing-crlsign": _REVOCATION,
    "crl::issuer-no-keyusage-extension": _REVOCATION,
    "pathlen::validation-ignores-pathlen-in-leaf": _PATHLEN,
    "pathlen::self-issued-certs-pathlen": _PATHLEN,
    "pathlen::max-chain-depth-1-self-issued": _PATHLEN,
    "rfc5280::ca-as-leaf": "cryptography rejects a CA certificate used as the leaf",
    "rfc5280::aki::intermediate-missing-aki": _PEDANTIC,
    "rfc5280::aki::cross-signed-root-missing-aki": _PEDANTIC,
    "rfc5280::ski::root-missing-ski": _PEDANTIC,
    "rfc5280::ski::intermediate-missing-ski": _PEDANTIC,
    "rfc5280::nc::permitted-dns-match-noncritical": _PEDANTIC,
    "rfc5280::pc::ica-noncritical-pc": _PEDANTIC,
    "rfc5280::serial::zero": _PEDANTIC,
    "rfc5280::nc::permitted-dn-match": "DN name constraints are not supported by cryptography",
    "webpki::aki::root-with-aki-authoritycertissuer": _PEDANTIC,
    "webpki::aki::root-with-aki-authoritycertserialnumber": _PEDANTIC,
    "webpki::aki::root-with-aki-all-fields": _PEDANTIC,
    "webpki::aki::root-with-aki-ski-mismatch": _PEDANTIC,
    "webpki::eku::ee-anyeku": _PEDANTIC,
    "webpki::eku::ee-without-eku": _PEDANTIC,
    "webpki::eku::root-has-eku": _PEDANTIC,
    "webpki::cn::ipv4-hex-mismatch": _CN,
    "webpki::cn::ipv4-leading-zeros-mismatch": _CN,
    "webpki::cn::ipv6-uppercase-mismatch": _CN,
    "webpki::cn::ipv6-uncompressed-mismatch": _CN,
    "webpki::cn::ipv6-non-rfc5952-mismatch": _CN,
    "webpki::cn::punycode-not-in-san": _CN,
    "webpki::cn::utf8-vs-punycode-mismatch": _CN,
    "webpki::cn::not-in-san": _CN,
    "webpki::cn::case-mismatch": _CN,
    "webpki::san::public-suffix-multi-label-wildcard-san": "no public-suffix list is shipped",
    "webpki::san::public-suffix-private-namespace-wildcard-san": "no public-suffix list is shipped",
    "webpki::forbidden-p192-leaf": _KEYS,
    "webpki::forbidden-dsa-leaf": _KEYS,
    "webpki::forbidden-weak-rsa-in-leaf": _KEYS,
    "webpki::forbidden-rsa-not-divisible-by-8-in-root": _KEYS,
    "webpki::forbidden-rsa-key-not-divisible-by-8-in-leaf": _KEYS,
}


def _cases() -> list[dict[str, Any]]:
    if not CORPUS.exists():
        return []
    return [c for c in json.loads(CORPUS.read_text())["testcases"] if c["validation_kind"] == "SERVER"]


def _certificates(value: str | list[str]) -> list[x509.Certificate]:
    if isinstance(value, str):
        value = ast.literal_eval(value) if value.startswith("[") else [value]
    return [x509.load_pem_x509_certificate(pem.encode()) for pem in value]


CASES = _cases()


@pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning")
@pytest.mark.skipif(not CASES, reason=f"x509-limbo corpus not found at {CORPUS} (C2SP/x509-limbo)")
@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_verdict_agrees_with_x509_limbo(case: dict[str, Any]) -> None:
    trust = TrustStore(_certificates(case["trusted_certs"]))
    served = _certificates(case["peer_certificate"]) + _certificates(case["untrusted_intermediates"])
    name = (case.get("expected_peer_name") or {}).get("value")
    now = datetime.fromisoformat(case["validation_time"]) if case["validation_time"] else datetime.now().astimezone()
    depth = case["max_chain_depth"] if case["max_chain_depth"] is not None else 8
    started = time.monotonic()
    verdict = verify_served_chain(served, trust, name, now, depth)
    assert time.monotonic() - started < 2, "path validation must stay fast on pathological chains"
    agrees = (verdict.reason is Reason.OK) == (case["expected_result"] == "SUCCESS")
    why = NOT_CLAIMED.get(case["id"])
    if why is None:
        assert agrees, f"{case['id']}: expected {case['expected_result']}, got {verdict.reason}: {verdict.message}"
    else:
        assert not agrees, f"{case['id']} now agrees; drop it from NOT_CLAIMED ({why})"
