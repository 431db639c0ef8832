"""The ``crl`` probe: a CRL URL as a monitored target of its own.

Each round fetches every URL (a conditional GET when certscope already holds the
CRL), checks its signature against ``issuer_file`` and its freshness, and exports its
size, entry count, CRL number and update times.  Certificates listed in
``certificates`` (files or globs) are looked up in it.

The URLs are the operator's, so they are trusted like configured TLS targets
(loopback included); ``global.egress`` polices URLs taken from certificates.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import ClassVar

from cryptography import x509

from probes.certfiles import expand_paths, load_certificates
from probes.certparse import facts_from_certificate
from probes.context import ProbeContext
from probes.crl_facts import CrlFacts
from probes.fetch import ANY_NETWORK
from probes.reasons import Reason
from probes.result import CertObservation, Discovery, ProbeResult
from probes.revocation import CRL_REASONS, RevocationChecker, crl_lookup, revocation_facts
from probes.revocation_facts import RevocationFacts
from probes.settings import ByteSize, ProbeDefaults, path_field


@dataclass(frozen=True)
class CrlSettings:
    urls: tuple[str, ...]
    issuer_file: str = path_field(default="")
    # Certificate files (PEM or DER, globs allowed) whose serials are looked up in the CRL.
    certificates: tuple[str, ...] = ()
    max_size: ByteSize = ByteSize(32 * 1024 * 1024)

    def validate(self) -> list[tuple[str, str]]:
        problems = []
        if not self.urls:
            problems.append(("urls", "at least one URL is required"))
        for index, url in enumerate(self.urls):
            if not url.startswith(("http://", "https://")):
                problems.append((f"urls[{index}]", f"must be an http or https URL, got {url!r}"))
        if not self.issuer_file:
            problems.append(("issuer_file", "required: the CA certificate that signs the CRL"))
        return problems


class CrlProbe:
    kind: ClassVar[str] = "crl"
    target_reasons: ClassVar[tuple[Reason, ...]] = (
        *CRL_REASONS,
        Reason.REVOKED,
        Reason.INTERNAL_ERROR,
    )
    source_reasons: ClassVar[tuple[Reason, ...]] = ()
    concurrent_targets: ClassVar[bool] = True
    keeps_last_good: ClassVar[bool] = True

    def __init__(self, settings: CrlSettings, defaults: ProbeDefaults | None = None) -> None:
        self.settings = settings
        self.allow_networks = ANY_NETWORK  # configured URLs; see the module docstring
        self.revocation = (defaults or ProbeDefaults()).revocation or RevocationChecker()
        self.issuer = load_certificates(settings.issuer_file)[0]

    def targets(self) -> Discovery:
        return Discovery(self.settings.urls)

    def run(self, target: str, ctx: ProbeContext) -> ProbeResult:
        started = time.monotonic()
        with ctx.phase("crl") as phase:
            info, seconds, status = self.revocation.crl.fetch(
                target,
                self.issuer,
                deadline=ctx.deadline,
                allow_networks=self.allow_networks,
                revalidate=True,
                max_bytes=self.settings.max_size,
            )
            if status is not None:
                phase.set("http.response.status_code", status)
            phase.set("certscope.crl.cached", seconds is None)
            if info.reason is not Reason.OK:
                phase.fail(info.reason, info.message)
        facts = CrlFacts(
            url=target,
            signature_valid=info.crl is not None and info.reason is not Reason.CRL_BAD_SIGNATURE,
            this_update=info.this_update,
            next_update=info.next_update,
            number=info.number,
            entries=info.entries,
            size_bytes=info.size_bytes,
            fetch_seconds=seconds,
            http_status=status,
        )
        observations: list[CertObservation] = []
        revocation: list[RevocationFacts] = []
        for path in expand_paths(self.settings.certificates):
            for cert in _certificates_or_none(path):
                index = len(observations)
                observations.append(CertObservation(index, "leaf", facts_from_certificate(cert)))
                judgement = crl_lookup(info, cert)
                revocation.append(
                    replace(
                        revocation_facts("crl", target, judgement, time.monotonic() - started, status),
                        index=index,
                    )
                )
        reason = info.reason
        message = info.message
        revoked = [r for r in revocation if r.state == "revoked"]
        if reason is Reason.OK and revoked:
            reason, message = Reason.REVOKED, f"certificate {revoked[0].index} {revoked[0].message}"
        return ProbeResult(
            success=reason is Reason.OK,
            reason=reason,
            duration_seconds=time.monotonic() - started,
            certificates=tuple(observations),
            message=f"{target}: {message}" if message else "",
            revocation=tuple(revocation),
            facts=facts,
        )


def _certificates_or_none(path: str) -> list[x509.Certificate]:
    try:
        return load_certificates(path)
    except (OSError, ValueError):
        return []  # an unreadable file is the files probe's business
