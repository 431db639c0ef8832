"""Revocation: is a certificate revoked, and could a client find out?

One concern a module:

* ``judges``: the two pure judges, never raising, over bytes fetched elsewhere:
  ``evaluate_ocsp`` (an OCSP response, checked the way a careful client must) and
  ``evaluate_crl`` / ``crl_lookup`` (a CRL, then a serial in it); the states and
  the reasons they give.
* ``ocsp_client``: ``OcspClient`` builds an OCSP request, asks the responder and
  caches the answer until its nextUpdate.  (The ``ocsp`` probe *kind*, a target of
  its own, is ``probes/ocsp.py``.)
* ``crl_client``: ``CrlClient`` fetches CRLs, revalidates them by conditional GET
  and looks certificates up in them.
* ``checker``: ``RevocationChecker``, the two clients a process shares.
* ``stapling``: the OCSP response a server staples, fetched in a pyOpenSSL
  handshake and judged.
* ``chain``: the checks of a served chain for the ``tls`` kind.

States are ``good``, ``revoked``, ``unknown`` and ``not_applicable`` (no responder, no
CRL distribution point).  A stale good answer is ``unknown``: unknown is never good.
The names other modules use are importable from here.
"""

from probes.revocation.chain import RevocationSettings, ServedEndpoint, served_chain_revocation
from probes.revocation.checker import RevocationChecker
from probes.revocation.crl_client import CrlClient
from probes.revocation.judges import (
    CRL_REASONS,
    GOOD,
    NOT_APPLICABLE,
    OCSP_REASONS,
    REVOKED,
    UNKNOWN,
    CrlInfo,
    RevocationQuery,
    crl_lookup,
    crl_urls,
    evaluate_crl,
    evaluate_ocsp,
    ocsp_urls,
    revocation_facts,
)
from probes.revocation.ocsp_client import MAX_OCSP_BYTES, OcspClient, build_ocsp_request

__all__ = [
    "CRL_REASONS",
    "GOOD",
    "MAX_OCSP_BYTES",
    "NOT_APPLICABLE",
    "OCSP_REASONS",
    "REVOKED",
    "UNKNOWN",
    "CrlClient",
    "CrlInfo",
    "OcspClient",
    "RevocationChecker",
    "RevocationQuery",
    "RevocationSettings",
    "ServedEndpoint",
    "build_ocsp_request",
    "crl_lookup",
    "crl_urls",
    "evaluate_crl",
    "evaluate_ocsp",
    "ocsp_urls",
    "revocation_facts",
    "served_chain_revocation",
]
