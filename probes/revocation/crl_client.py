"""The CRL client: fetches CRLs, keeps them, and looks certificates up in them.

``CrlClient.fetch(url, issuer, ...)`` downloads a CRL over ``probes.fetch`` (egress
policy, deadline, byte cap), judges it with ``judges.evaluate_crl`` and keeps it
until its nextUpdate (at most ``crl_refresh`` seconds); after that it asks again
with a conditional GET, and a 304 keeps the CRL whose signature was checked when it
arrived.  ``status(query)`` is one certificate's state in the CRL its query or its
CRL distribution point names.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, replace
from datetime import datetime

from cryptography import x509

from probes.fetch import FetchError, fetch
from probes.reasons import Reason
from probes.revocation.judges import (
    CrlInfo,
    RevocationQuery,
    crl_lookup,
    crl_urls,
    evaluate_crl,
    not_applicable,
    revocation_facts,
)
from probes.revocation_facts import RevocationFacts


@dataclass
class _CrlEntry:
    info: CrlInfo
    fetched: float  # monotonic
    etag: str | None
    last_modified: str | None


class CrlClient:
    def __init__(self, *, max_crl_bytes: int = 32 * 1024 * 1024, crl_refresh: float = 3600.0) -> None:
        self._lock = threading.Lock()
        self._crls: dict[tuple[str, tuple[str, ...]], _CrlEntry] = {}
        self.max_crl_bytes = max_crl_bytes
        self.crl_refresh = crl_refresh
        self.requests = 0  # network requests made, for tests and benchmarks

    def fetch(
        self,
        url: str,
        issuer: x509.Certificate,
        *,
        deadline: float,
        allow_networks: tuple[str, ...] = (),
        revalidate: bool = False,
        max_bytes: int | None = None,
    ) -> tuple[CrlInfo, float | None, int | None]:
        """(CRL judgement, seconds the fetch took or None from cache, HTTP status).
        ``revalidate`` asks the server (conditionally) even before nextUpdate."""
        cache_key = (url, allow_networks)
        with self._lock:
            entry = self._crls.get(cache_key)
        now_wall = time.time()
        if (
            not revalidate
            and entry is not None
            and entry.info.crl is not None
            and entry.info.next_update is not None
            and now_wall < entry.info.next_update
            and time.monotonic() - entry.fetched < self.crl_refresh
        ):
            return entry.info, None, None
        headers = {}
        if entry is not None and entry.etag:
            headers["If-None-Match"] = entry.etag
        if entry is not None and entry.last_modified:
            headers["If-Modified-Since"] = entry.last_modified
        try:
            self.requests += 1
            response = fetch(
                url,
                deadline=deadline,
                max_bytes=max_bytes or self.max_crl_bytes,
                allow_networks=allow_networks,
                headers=headers,
            )
        except FetchError as exc:
            reason = Reason.CRL_TOO_LARGE if exc.kind == "too_large" else Reason.CRL_UNAVAILABLE
            return CrlInfo(None, reason, str(exc)), None, None
        now = datetime.now(tz=issuer.not_valid_after_utc.tzinfo)
        if response.status == 304 and entry is not None:
            # Unchanged: its signature was checked when it arrived; only the clock moved.
            info = entry.info
            if info.reason is Reason.OK and info.next_update is not None and info.next_update < time.time() - 300:
                info = replace(info, reason=Reason.CRL_STALE, message=f"the CRL expired at {info.next_update:.0f}")
        elif response.status != 200:
            return (
                CrlInfo(None, Reason.CRL_UNAVAILABLE, f"HTTP {response.status} for {url}"),
                response.seconds,
                response.status,
            )
        else:
            info = evaluate_crl(response.body, issuer, now)
        with self._lock:
            self._crls[cache_key] = _CrlEntry(
                info, time.monotonic(), response.headers.get("etag"), response.headers.get("last-modified")
            )
        return info, response.seconds, response.status

    def status(self, query: RevocationQuery) -> RevocationFacts:
        urls = [query.url] if query.url else crl_urls(query.cert)
        if not urls:
            return not_applicable("crl", "the certificate names no CRL distribution point")
        started = time.monotonic()
        url = urls[0]
        info, _, status = self.fetch(url, query.issuer, deadline=query.deadline, allow_networks=query.allow_networks)
        return revocation_facts("crl", url, crl_lookup(info, query.cert), time.monotonic() - started, status)
