"""The revocation checks of a served chain (the ``tls`` kind's ``revocation:``).

For every served certificate whose issuer is known (the next certificate on the
verified path, else the next one served) and which is not self-signed: OCSP and/or
the CRL, through the shared clients; then, with ``stapled``, the leaf's stapled
OCSP response.  Each check is a phase of the run (``ocsp``, ``crl``, ``stapled``,
inside ``revocation``) described by ``annotate_revocation``.  What the states mean
for the run's outcome is ``probes.tls_outcome``'s business.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from cryptography import x509

from probes.context import ProbeContext
from probes.revocation.checker import RevocationChecker
from probes.revocation.judges import RevocationQuery
from probes.revocation.stapling import stapled_status
from probes.revocation_facts import RevocationFacts, annotate_revocation


@dataclass(frozen=True)
class RevocationSettings:
    ocsp: bool = False
    crl: bool = False
    # Ask the server to staple an OCSP response (status_request, in the probe's
    # handshake) and judge it.
    stapled: bool = False
    nonce: bool = False  # send an OCSP nonce (forces POST; many responders ignore it)
    # Fail the target when the state cannot be established, instead of only
    # exporting check_success 0 (what browsers call hard-fail).
    hard_fail: bool = False

    @property
    def enabled(self) -> bool:
        return self.ocsp or self.crl or self.stapled


@dataclass(frozen=True)
class ServedEndpoint:
    """Where the chain was served: the address connected to, the name sent, and
    the OCSP response stapled to the handshake (None: none was)."""

    address: str
    port: int
    server_name: str
    staple: bytes | None = None


def served_chain_revocation(
    checker: RevocationChecker,
    settings: RevocationSettings,
    served: Sequence[x509.Certificate],
    verified_path: tuple[x509.Certificate, ...],
    endpoint: ServedEndpoint,
    ctx: ProbeContext,
    allow_networks: tuple[str, ...],
) -> list[RevocationFacts]:
    """The revocation state of every served certificate that can be checked, in the
    order served (OCSP before CRL), then the stapled response."""
    if not settings.enabled:
        return []
    path = list(verified_path) or served
    results: list[RevocationFacts] = []
    with ctx.phase("revocation"):
        for index, cert in enumerate(served):
            issuer = next(
                (path[i + 1] for i, c in enumerate(path[:-1]) if c == cert and path[i + 1].subject == cert.issuer),
                None,
            )
            if issuer is None or cert.issuer == cert.subject:
                continue
            role = "leaf" if index == 0 else "intermediate"
            query = RevocationQuery(cert, issuer, None, ctx.deadline, allow_networks)
            if settings.ocsp:
                with ctx.phase("ocsp") as phase:
                    found = checker.ocsp.status(query, use_nonce=settings.nonce)
                    annotate_revocation(phase, found, index, role)
                results.append(replace(found, index=index, role=role))
            if settings.crl:
                with ctx.phase("crl") as phase:
                    found = checker.crl.status(query)
                    annotate_revocation(phase, found, index, role)
                results.append(replace(found, index=index, role=role))
        if settings.stapled and served:
            issuer = path[1] if len(path) > 1 and path[1].subject == served[0].issuer else None
            with ctx.phase("stapled") as phase:
                found = stapled_status(served[0], issuer, endpoint.staple)
                annotate_revocation(phase, found, 0, "leaf")
            results.append(found)
    return results
