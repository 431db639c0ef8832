"""Expected identity: what a certificate must be, beyond valid and trusted.

A renewal that produced the wrong SANs, a different issuer, a smaller key or a
server certificate without serverAuth is a classic outage that a valid chain does
not catch.  ``unmet_expectation(facts, expect)`` returns the first unmet expectation as
(reason, message), or None.
"""

from __future__ import annotations

from dataclasses import dataclass

from probes.reasons import Reason
from probes.result import CertFacts
from probes.settings import Seconds

KEY_TYPES = ("rsa", "ec", "ed25519", "ed448", "dsa")
EXPECT_REASONS = (
    Reason.SAN_MISMATCH,
    Reason.WRONG_ISSUER,
    Reason.WEAK_KEY,
    Reason.VALIDITY_TOO_LONG,
    Reason.EKU_MISMATCH,
)


@dataclass(frozen=True)
class Expect:
    names: tuple[str, ...] = ()  # every name must be covered by a SAN (wildcards as clients match them)
    issuer: str | None = None  # the issuer's CN or its whole RFC 4514 DN
    key_type: str | None = None
    min_key_bits: int | None = None
    max_validity: Seconds | None = None  # notAfter - notBefore
    eku: tuple[str, ...] = ()  # serverAuth, clientAuth, ... all required

    def validate(self) -> list[tuple[str, str]]:
        problems = []
        if self.key_type is not None and self.key_type not in KEY_TYPES:
            problems.append(("key_type", f"must be one of {', '.join(KEY_TYPES)}, got {self.key_type!r}"))
        if self.min_key_bits is not None and self.min_key_bits < 1:
            problems.append(("min_key_bits", "must be positive"))
        return problems


def unmet_expectation(facts: CertFacts, expect: Expect) -> tuple[Reason, str] | None:
    for name in expect.names:
        if not covers(facts.sans, name):
            return Reason.SAN_MISMATCH, f"{name} is not among the SANs ({', '.join(facts.sans) or 'none'})"
    if expect.issuer is not None and expect.issuer not in (facts.issuer_cn, facts.issuer):
        return Reason.WRONG_ISSUER, f"issued by {facts.issuer or '(unknown)'}, expected {expect.issuer}"
    if expect.key_type is not None and facts.key_type != expect.key_type:
        return Reason.WEAK_KEY, f"key is {facts.key_type}-{facts.key_bits}, expected {expect.key_type}"
    if expect.min_key_bits is not None and facts.key_bits < expect.min_key_bits:
        return Reason.WEAK_KEY, f"key is {facts.key_type}-{facts.key_bits}, below {expect.min_key_bits} bits"
    if expect.max_validity is not None and facts.not_after - facts.not_before > expect.max_validity:
        days = (facts.not_after - facts.not_before) / 86400
        return Reason.VALIDITY_TOO_LONG, f"valid for {days:.0f} days, over {expect.max_validity / 86400:g}"
    missing = [usage for usage in expect.eku if usage not in facts.extended_key_usage]
    if missing:
        have = ", ".join(facts.extended_key_usage) or "none"
        return Reason.EKU_MISMATCH, f"extended key usage lacks {', '.join(missing)} (has {have})"
    return None


def covers(sans: tuple[str, ...], name: str) -> bool:
    """Does a SAN cover ``name``?  RFC 6125: a wildcard only as the left-most label."""
    wanted = name.rstrip(".").lower().split(".")
    for san in sans:
        labels = san.rstrip(".").lower().split(".")
        if labels == wanted:
            return True
        if labels[0] == "*" and len(labels) == len(wanted) and len(labels) > 2 and labels[1:] == wanted[1:]:
            return True
    return False
