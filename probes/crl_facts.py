"""The ``crl`` kind's facts (``CrlFacts``: what one CRL fetch showed) and how they
show: metric families and the kind's hooks.
"""

from __future__ import annotations

from dataclasses import dataclass

from probes.metrics import TARGET_LABELS, KindHooks, Rows, TargetView, gauge
from probes.revocation_facts import REVOCATION_FAMILIES, REVOKED_SINCE, render_revocation


@dataclass(frozen=True, slots=True)
class CrlFacts:
    """What one CRL fetch showed (the ``crl`` kind)."""

    url: str
    signature_valid: bool
    this_update: float | None
    next_update: float | None
    number: int | None
    entries: int
    size_bytes: int
    fetch_seconds: float | None  # None when served from the cache
    http_status: int | None


# -- metrics ---------------------------------------------------------------------------

_P = "certscope_"
THIS_UPDATE = gauge(_P + "crl_this_update_timestamp_seconds", "thisUpdate of the CRL.", TARGET_LABELS)
NEXT_UPDATE = gauge(_P + "crl_next_update_timestamp_seconds", "nextUpdate of the CRL.", TARGET_LABELS)
NUMBER = gauge(_P + "crl_number", "The CRL number extension.", TARGET_LABELS)
ENTRIES = gauge(_P + "crl_entries", "Revoked certificates listed in the CRL.", TARGET_LABELS)
SIZE = gauge(_P + "crl_size_bytes", "Size of the CRL as fetched.", TARGET_LABELS)
FETCH = gauge(_P + "crl_fetch_duration_seconds", "Duration of the last CRL download (304s included).", TARGET_LABELS)
SIGNATURE = gauge(_P + "crl_signature_valid", "1 if the CRL is signed by the configured issuer.", TARGET_LABELS)
HTTP_STATUS = gauge(_P + "crl_http_status_code", "HTTP status of the last CRL request.", TARGET_LABELS)
CRL_FAMILIES = (THIS_UPDATE, NEXT_UPDATE, NUMBER, ENTRIES, SIZE, FETCH, SIGNATURE, HTTP_STATUS)


def render_crl(view: TargetView, rows: Rows) -> None:
    crl = view.facts
    if isinstance(crl, CrlFacts):
        key, extra = view.key, view.extra
        rows.add(SIGNATURE, key, 1 if crl.signature_valid else 0, extra)
        for family, value in (
            (THIS_UPDATE, crl.this_update),
            (NEXT_UPDATE, crl.next_update),
            (NUMBER, crl.number),
            (FETCH, crl.fetch_seconds),
            (HTTP_STATUS, crl.http_status),
        ):
            if value is not None:
                rows.add(family, key, value, extra)
        if crl.size_bytes:
            rows.add(ENTRIES, key, crl.entries, extra)
            rows.add(SIZE, key, crl.size_bytes, extra)
    render_revocation(view, rows)


CRL_HOOKS = KindHooks(families=(*REVOCATION_FAMILIES, *CRL_FAMILIES), render=render_crl, tallies=(REVOKED_SINCE,))
