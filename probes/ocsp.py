"""The ``ocsp`` probe: certificates checked against their OCSP responder, and the
responder's health.

Targets are certificate files (``certificates``, PEM or DER; the first certificate of
each file is checked).  Each round asks the responder from the certificate's AIA, or
``url`` when set, through the OCSP client the process shares
(``probes.revocation.ocsp_client``) and its cache: an answer is reused until its
nextUpdate, so a responder is not asked more often than its answers expire.

The AIA URL comes from a certificate and obeys ``global.egress``; ``url`` is the
operator's and is trusted like a configured TLS target (loopback included).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import ClassVar

from probes.certfiles import expand_paths, load_certificates
from probes.certparse import facts_from_certificate
from probes.context import ProbeContext
from probes.fetch import ANY_NETWORK
from probes.reasons import Reason
from probes.result import CertObservation, Discovery, ProbeResult
from probes.revocation import OCSP_REASONS, RevocationChecker, RevocationQuery
from probes.revocation_facts import annotate_revocation
from probes.settings import ProbeDefaults, path_field


@dataclass(frozen=True)
class OcspSettings:
    certificates: tuple[str, ...] = ()  # certificate files, globs allowed
    issuer_file: str = path_field(default="")
    url: str | None = None  # the responder; default: the certificate's AIA OCSP URL
    nonce: bool = False

    def validate(self) -> list[tuple[str, str]]:
        problems = []
        if not self.certificates:
            problems.append(("certificates", "at least one certificate file is required"))
        if not self.issuer_file:
            problems.append(("issuer_file", "required: the certificates' issuer"))
        if self.url is not None and not self.url.startswith(("http://", "https://")):
            problems.append(("url", f"must be an http or https URL, got {self.url!r}"))
        return problems


class OcspProbe:
    kind: ClassVar[str] = "ocsp"
    target_reasons: ClassVar[tuple[Reason, ...]] = (
        Reason.REVOKED,
        *OCSP_REASONS,
        Reason.READ_ERROR,
        Reason.INTERNAL_ERROR,
    )
    source_reasons: ClassVar[tuple[Reason, ...]] = ()
    concurrent_targets: ClassVar[bool] = True
    keeps_last_good: ClassVar[bool] = True

    def __init__(self, settings: OcspSettings, defaults: ProbeDefaults | None = None) -> None:
        self.settings = settings
        defaults = defaults or ProbeDefaults()
        # The egress policy polices URLs from certificates, not the operator's own.
        self.allow_networks = ANY_NETWORK if settings.url else defaults.allow_networks
        self.revocation = defaults.revocation or RevocationChecker()
        self.issuer = load_certificates(settings.issuer_file)[0]

    def targets(self) -> Discovery:
        return Discovery(tuple(expand_paths(self.settings.certificates)))

    def run(self, target: str, ctx: ProbeContext) -> ProbeResult:
        started = time.monotonic()
        try:
            cert = load_certificates(target)[0]
        except (OSError, ValueError, IndexError) as exc:
            return ProbeResult(False, Reason.READ_ERROR, time.monotonic() - started, message=f"{target}: {exc}")
        with ctx.phase("ocsp") as phase:
            query = RevocationQuery(cert, self.issuer, self.settings.url, ctx.deadline, self.allow_networks)
            answer = self.revocation.ocsp.status(query, use_nonce=self.settings.nonce)
            annotate_revocation(phase, answer, 0, "leaf")
        reason = answer.reason
        return ProbeResult(
            success=answer.state == "good" or (answer.state == "not_applicable"),
            reason=reason,
            duration_seconds=time.monotonic() - started,
            certificates=(CertObservation(0, "leaf", facts_from_certificate(cert)),),
            message=f"{target}: {answer.message}" if answer.message else "",
            revocation=(replace(answer, index=0, role="leaf"),),
        )
