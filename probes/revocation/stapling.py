"""Stapled OCSP: ask the server for the OCSP response it staples, in a handshake of
its own, and judge it (``stapled_status``) as any OCSP answer.

Python's ``ssl`` cannot send the ``status_request`` extension, so this one handshake
uses pyOpenSSL, which can (``request_ocsp`` and an OCSP client callback).  It verifies
nothing and sends no client certificate; the staple arrives with the server's
certificate, before any of that matters.  Direct TLS only (no STARTTLS).
"""

from __future__ import annotations

import select
import socket
import time
from datetime import UTC, datetime

from cryptography import x509
from OpenSSL import SSL

from probes.base import Reason, RevocationFacts
from probes.revocation.judges import NOT_APPLICABLE, UNKNOWN, evaluate_ocsp, revocation_facts


def stapled_status(
    leaf: x509.Certificate, issuer: x509.Certificate | None, address: str, port: int, server_name: str, deadline: float
) -> RevocationFacts:
    """The leaf's state in the OCSP response the server at ``address`` staples."""
    try:
        staple = fetch_stapled_response(address, port, server_name, deadline)
    except OSError as exc:
        return RevocationFacts("stapled", UNKNOWN, Reason.OCSP_UNAVAILABLE, "", f"stapling handshake: {exc}")
    if staple is None:
        return RevocationFacts("stapled", NOT_APPLICABLE, Reason.OK, "", "the server staples no OCSP response")
    if issuer is None:
        return RevocationFacts("stapled", UNKNOWN, Reason.OCSP_BAD_RESPONSE, "", "the leaf's issuer is unknown")
    judged = evaluate_ocsp(staple, leaf, issuer, datetime.now(UTC))
    return revocation_facts("stapled", "stapled", judged, 0.0, None)


def fetch_stapled_response(address: str, port: int, server_name: str, deadline: float) -> bytes | None:
    """The DER OCSP response the server staples, or None if it staples none.
    Raises OSError (TimeoutError included) when the handshake cannot be made."""
    staple: list[bytes] = []

    def on_staple(connection: SSL.Connection, response: bytes, data: object) -> bool:
        if response:
            staple.append(response)
        return True  # judged by certscope, not here

    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    context.set_verify(SSL.VERIFY_NONE)
    context.set_ocsp_client_callback(on_staple)
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(max(0.001, deadline - time.monotonic()))
        sock.connect((address, port))
        sock.setblocking(False)
        connection = SSL.Connection(context, sock)
        if server_name:
            connection.set_tlsext_host_name(server_name.encode("idna"))
        connection.request_ocsp()
        connection.set_connect_state()
        while True:
            try:
                connection.do_handshake()
                break
            except (SSL.WantReadError, SSL.WantWriteError):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("stapling handshake did not finish before the deadline") from None
                select.select([sock], [], [], remaining)
            except SSL.Error as exc:
                if staple:  # e.g. a client certificate was required after the staple came
                    break
                raise OSError(f"stapling handshake failed: {exc}") from None
        try:
            connection.shutdown()
        except SSL.Error:
            pass
    return staple[0] if staple else None
