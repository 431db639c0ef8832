"""``RevocationChecker``: the OCSP and CRL clients, with their caches, that the probes
of one process share.  The scheduler creates one and hands it to the probes it
builds (``ProbeDefaults.revocation``); nothing else holds one, and nothing is
queried per scrape."""

from __future__ import annotations

from probes.revocation.crl_client import CrlClient
from probes.revocation.ocsp_client import OcspClient


class RevocationChecker:
    def __init__(self, *, max_crl_bytes: int = 32 * 1024 * 1024, crl_refresh: float = 3600.0) -> None:
        self.ocsp = OcspClient()
        self.crl = CrlClient(max_crl_bytes=max_crl_bytes, crl_refresh=crl_refresh)

    @property
    def requests(self) -> int:
        """Network requests made (OCSP and CRL), for tests and benchmarks."""
        return self.ocsp.requests + self.crl.requests
