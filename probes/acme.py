"""The ACME issuance canary (RFC 8555) for the ``ca`` kind with ``flavor: acme``.

Every run proves that the CA still issues, the way an ACME client (certbot,
cert-manager, lego) would get a certificate, one timed phase (and span) per step:

``acme.directory``
    the availability request of ``probes.ca``: the directory document.
``acme.nonce``
    ``HEAD newNonce``.  Later nonces come from each answer's ``Replay-Nonce``.
``acme.account``
    ``newAccount`` with ``onlyReturnExisting`` and the account key; when the CA
    knows no account for the key, one is created (``termsOfServiceAgreed``,
    ``contact``, and an External Account Binding when configured: an HS256 JWS of the
    account key with the CA's MAC key).  The key is a PEM file the user names,
    created once (EC P-256, mode 0600) and read at every run.
``acme.order``
    ``newOrder`` for ``issuance.sans`` (``dns`` or ``ip`` identifiers), then each
    authorization (POST-as-GET).
``acme.challenge``
    for each pending authorization, its ``http-01`` challenge: certscope binds
    ``http01_listen_address`` for this phase only, answers
    ``/.well-known/acme-challenge/<token>`` with the key authorization, tells the CA
    it is ready, and polls the authorization until it is valid or invalid.  An
    authorization the CA reused (already valid) needs no challenge.  dns-01 and
    tls-alpn-01 are not offered.
``acme.finalize``
    a fresh EC P-256 key and a CSR (the key never leaves this function), ``finalize``,
    then the order is polled until it is valid or invalid.
``acme.download``
    the certificate chain (``application/pem-certificate-chain``).
``issuance.verify``
    ``probes.ca_issue.verify_issued``: the chain verifies against the roots the CA publishes
    (``bundle_urls``), carries every requested name, and has ``issuance.validity``
    when one is set.
``acme.cleanup``
    always, whatever failed: the order's authorizations are deactivated (so the next
    run is validated again, not served a cached authorization) and the certificate
    is revoked, as far as the CA allows.  A cleanup failure is an error on its span
    and in ``IssuanceFacts.message``, never the run's failure.

Politeness, which a canary owes a shared CA:

* ``badNonce`` is retried with the nonce of the refusal, at most ``BAD_NONCE_RETRIES``
  times per request; then the run fails with ``bad_nonce``.
* Polls wait ``poll_interval`` or the CA's ``Retry-After``, whichever is longer, and
  give up at the run's deadline (``deadline_exceeded``: the order or authorization is
  named with its status).
* ``rateLimited`` fails the run with ``rate_limited`` and its ``Retry-After`` (as a Unix
  time, ``certscope_ca_issuance_retry_after_timestamp_seconds``).  Until that time,
  runs send the CA nothing and report the same reason.  Nothing loops: a run makes at
  most one order, and runs come once per ``interval``.

Problem documents map to reasons: ``rateLimited`` -> ``rate_limited``; ``badNonce``
(after the retries) -> ``bad_nonce``; ``unauthorized``, ``accountDoesNotExist``,
``userActionRequired`` (new terms of service), ``externalAccountRequired`` and
pebble's ``agreementRequired`` -> ``unauthorized``; an invalid authorization ->
``challenge_failed`` with the challenge's own error; an order that turned invalid,
``orderNotReady`` -> ``order_invalid``; ``rejectedIdentifier``, ``caa``, ``badCSR``,
``malformed`` and the other client errors -> ``issuance_refused``; ``serverInternal``
and 5xx -> ``api_error``.

Nothing secret leaves this module: not the account key (only its public JWK is ever
sent), not the EAB MAC key (messages are scrubbed of it), not the certificate key.
Messages carry the CA's ``detail`` cut to 200 characters.
"""

from __future__ import annotations

import contextlib
import email.utils
import ipaddress
import json
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from probes.ca import CaClient, CaFailure, CaIssuance, CaSettings, fetch_reason, listen_address, status_reason
from probes.ca_facts import IssuanceFacts
from probes.ca_issue import general_name, require_secret, scrub, verify_issued
from probes.certparse import facts_from_certificate
from probes.context import Phase, ProbeContext
from probes.fetch import FetchError, Response, fetch
from probes.jose import JoseError, PrivateKey, b64url, b64url_decode, hmac_jws, jwk_thumbprint, public_jwk, sign_jws
from probes.reasons import Reason
from probes.result import CertFacts

ERROR_PREFIX = "urn:ietf:params:acme:error:"
BAD_NONCE_RETRIES = 5
MAX_ACCOUNT_KEY_BYTES = 64 * 1024
# Time kept back from the flow for cleanup (deactivate, revoke) when a step runs
# into the deadline: at most this, at most a quarter of the run.
CLEANUP_RESERVE = 2.0
JOSE_JSON = "application/jose+json"
PEM_CHAIN = "application/pem-certificate-chain"
CHALLENGE_PATH = "/.well-known/acme-challenge/"

_UNAUTHORIZED = {"unauthorized", "accountDoesNotExist", "userActionRequired", "externalAccountRequired"}
_UNAUTHORIZED |= {"agreementRequired"}  # pebble's name for terms not agreed to (pre-RFC)
_PROBLEM_REASONS = {
    "rateLimited": Reason.RATE_LIMITED,
    "badNonce": Reason.BAD_NONCE,
    "orderNotReady": Reason.ORDER_INVALID,
    "serverInternal": Reason.API_ERROR,
    **{name: Reason.UNAUTHORIZED for name in _UNAUTHORIZED},
}


class AcmeFailure(CaFailure):
    """A CA answer with a problem document (or none), reason already mapped."""

    def __init__(self, reason: Reason, message: str, *, problem: str = "", status: int | None = None) -> None:
        super().__init__(reason, message, status=status)
        self.problem = problem  # the short type: rateLimited, badNonce, ... ('' for none)


@dataclass
class _Run:
    """What one canary run created at the CA, for the cleanup."""

    authorizations: dict[str, str] = field(default_factory=dict)  # URL -> last known status
    certificate: x509.Certificate | None = None
    first_request: float | None = None  # monotonic time the first request to the CA left
    last_answer: float | None = None  # monotonic time the last answer arrived


class AcmeCanary:
    """One ``ca`` probe's ACME issuance; kept across runs for the rate-limit hold-off
    and the last issued certificate (runs of one probe never overlap)."""

    def __init__(self, settings: CaSettings, client: CaClient) -> None:
        self.settings = settings
        self.client = client
        self.hold_until: float | None = None  # Unix time: no request before it (rateLimited)
        self.hold_message = ""
        self.last_issued: CertFacts | None = None

    def issued_in_inventory(self, now: float) -> CertFacts | None:
        """The last issued certificate while less than half its lifetime has passed: a
        successful run replaces it every interval, and when issuance keeps failing it
        leaves the inventory long before an expiry alert could fire for it."""
        facts = self.last_issued
        if facts is None or now >= facts.not_after - (facts.not_after - facts.not_before) / 2:
            return None
        return facts

    def issue(self, directory: dict[str, Any], anchors: list[x509.Certificate], ctx: ProbeContext) -> IssuanceFacts:
        now = time.time()
        if self.hold_until is not None and now < self.hold_until:
            message = (
                f"issuance: the CA rate-limited this account until "
                f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(self.hold_until))}; "
                f"nothing is sent before then ({self.hold_message})"
            )
            return IssuanceFacts(False, Reason.RATE_LIMITED, None, message, _phases(ctx), self.hold_until)
        self.hold_until = None
        secrets_seen: list[str] = []
        run = _Run()
        session: _Session | None = None
        cleanup_notes: list[str] = []
        try:
            key, created = _account_key(self.settings.issuance.acme.account_key_file)
            reserve = min(CLEANUP_RESERVE, ctx.remaining() / 4)
            session = _Session(self.client, directory, key, ctx.deadline - reserve, run)
            session.key_created = created
            chain = self._issue(session, anchors, ctx, run, secrets_seen)
            seconds = _ca_seconds(run)
            with ctx.phase("issuance.verify"):
                verify_issued(chain, anchors, self.settings.issuance, "acme")
            self.last_issued = facts_from_certificate(chain[0])
            facts = IssuanceFacts(True, Reason.OK, seconds)
        except CaFailure as exc:
            if exc.reason is Reason.RATE_LIMITED:
                self.hold_until = exc.retry_after
                self.hold_message = scrub(str(exc), secrets_seen)
            # Retry-After is kept (and exported) for a rate limit only: that is when the
            # canary holds off; after other errors it tries again at the next interval.
            retry_after = exc.retry_after if exc.reason is Reason.RATE_LIMITED else None
            message = scrub(f"issuance: {exc}", secrets_seen)
            facts = IssuanceFacts(False, exc.reason, _ca_seconds(run), message, retry_after=retry_after)
        finally:
            if session is not None:
                session.deadline = ctx.deadline
                cleanup_notes = self._cleanup(session, run, ctx)
                ctx.set_attribute("certscope.acme.bad_nonce_retries", session.bad_nonce_retries)
        message = facts.message
        if cleanup_notes:
            message = (message + "; " if message else "") + scrub("cleanup: " + "; ".join(cleanup_notes), secrets_seen)
        return IssuanceFacts(facts.success, facts.reason, facts.seconds, message, _phases(ctx), facts.retry_after)

    # -- the steps ------------------------------------------------------------------

    def _issue(
        self,
        session: _Session,
        anchors: list[x509.Certificate],
        ctx: ProbeContext,
        run: _Run,
        secrets_seen: list[str],
    ) -> list[x509.Certificate]:
        issuance = self.settings.issuance
        with ctx.phase("acme.nonce"):
            session.new_nonce()
        with ctx.phase("acme.account") as phase:
            self._account(session, phase, secrets_seen)
        with ctx.phase("acme.order") as phase:
            identifiers = [_identifier(name) for name in issuance.names]
            response, order = session.post_json(session.endpoint("newOrder"), {"identifiers": identifiers}, "newOrder")
            order_url = response.headers.get("location", "")
            authorizations = order.get("authorizations")
            finalize_url = order.get("finalize")
            if not order_url or not isinstance(authorizations, list) or not isinstance(finalize_url, str):
                raise CaFailure(
                    Reason.CA_BAD_RESPONSE, "newOrder: no Location, authorizations or finalize in the answer"
                )
            _expect_status(order, "order", ("pending", "ready", "processing", "valid"))
            pending: list[tuple[str, dict[str, Any]]] = []
            for url in authorizations:
                if not isinstance(url, str):
                    raise CaFailure(Reason.CA_BAD_RESPONSE, "newOrder: an authorization is not a URL")
                _, authorization = session.post_json(url, None, "authorization")
                status = str(authorization.get("status", ""))
                run.authorizations[url] = status
                if status == "pending":
                    pending.append((url, authorization))
                elif status == "valid":
                    phase.event(
                        "certscope.acme.authorization_reused", **{"certscope.acme.identifier": _name(authorization)}
                    )
                else:
                    raise CaFailure(
                        Reason.CHALLENGE_FAILED,
                        f"the authorization for {_name(authorization)} is {status or 'without status'}",
                    )
            phase.set("certscope.acme.authorizations", len(authorizations))
        with ctx.phase("acme.challenge") as phase:
            phase.set("certscope.acme.challenges", len(pending))
            if pending:
                self._challenges(session, pending, run, phase)
        with ctx.phase("acme.finalize"):
            certificate_url = self._finalize(session, order_url, order, finalize_url)
        with ctx.phase("acme.download"):
            response = session.post(certificate_url, None, "certificate", accept=PEM_CHAIN)
            try:
                chain = x509.load_pem_x509_certificates(response.body)
            except ValueError:
                raise CaFailure(Reason.CA_BAD_RESPONSE, "certificate: the answer is not a PEM chain") from None
            run.certificate = chain[0]
        return chain

    def _account(self, session: _Session, phase: Phase, secrets_seen: list[str]) -> None:
        acme = self.settings.issuance.acme
        url = session.endpoint("newAccount")
        if session.key_created:
            phase.event("certscope.acme.account_key_created", **{"certscope.acme.key_file": acme.account_key_file})
        try:
            response, account = session.post_json(url, {"onlyReturnExisting": True}, "newAccount", use_jwk=True)
        except AcmeFailure as exc:
            if exc.problem != "accountDoesNotExist":
                raise
            payload: dict[str, Any] = {"termsOfServiceAgreed": acme.terms_of_service_agreed}
            if acme.contact:
                payload["contact"] = list(acme.contact)
            if acme.eab_kid:
                secret = require_secret(acme.eab_hmac_key_file, acme.eab_hmac_key_env, "issuance.acme.eab_hmac_key")
                text = secret.decode("utf-8", "replace")
                secrets_seen.append(text)
                try:
                    mac_key = b64url_decode(text.strip())
                except JoseError:
                    raise CaFailure(
                        Reason.CREDENTIAL_UNAVAILABLE, "issuance.acme.eab_hmac_key: not base64url"
                    ) from None
                binding = hmac_jws(
                    mac_key, {"kid": acme.eab_kid, "url": url}, json.dumps(public_jwk(session.key)).encode()
                )
                secrets_seen.append(binding["signature"])
                payload["externalAccountBinding"] = binding
            response, account = session.post_json(url, payload, "newAccount", use_jwk=True)
            phase.event("certscope.acme.account_created", **{"certscope.acme.eab": bool(acme.eab_kid)})
        location = response.headers.get("location", "")
        if not location:
            raise CaFailure(Reason.CA_BAD_RESPONSE, "newAccount: no Location (account URL) in the answer")
        status = account.get("status")
        if status != "valid":
            raise CaFailure(Reason.UNAUTHORIZED, f"the ACME account is {status or 'without status'}, not valid")
        session.kid = location

    def _challenges(
        self, session: _Session, pending: list[tuple[str, dict[str, Any]]], run: _Run, phase: Phase
    ) -> None:
        acme = self.settings.issuance.acme
        thumbprint = jwk_thumbprint(session.key)
        with contextlib.ExitStack() as stack:
            try:
                listener = stack.enter_context(http01_listener(listen_address(acme.http01_listen_address)))
            except OSError as exc:
                raise CaFailure(
                    Reason.CHALLENGE_FAILED,
                    f"cannot answer http-01 on {acme.http01_listen_address}: {exc.strerror or exc}",
                ) from None
            for _, authorization in pending:
                challenge = _http01(authorization)
                listener.add(challenge["token"], f"{challenge['token']}.{thumbprint}")
                session.post_json(challenge["url"], {}, "challenge")
            try:
                for url, authorization in pending:
                    final = session.poll(url, "authorization", ("pending",), acme.poll_interval)
                    run.authorizations[url] = str(final.get("status", ""))
                    if final.get("status") != "valid":
                        raise CaFailure(
                            Reason.CHALLENGE_FAILED,
                            f"http-01 for {_name(authorization)} is {final.get('status')}{_challenge_error(final)}",
                        )
            finally:
                phase.set("certscope.acme.validation_requests", listener.served)

    def _finalize(self, session: _Session, order_url: str, order: dict[str, Any], finalize_url: str) -> str:
        issuance, acme = self.settings.issuance, self.settings.issuance.acme
        if order.get("status") == "pending":  # some CAs mark the order ready a moment after the authorizations
            order = session.poll(order_url, "order", ("pending",), acme.poll_interval)
        if order.get("status") == "ready":
            key = ec.generate_private_key(ec.SECP256R1())
            csr = _csr(key, issuance)
            del key  # the certificate is checked and revoked; nothing uses the key
            _, order = session.post_json(finalize_url, {"csr": b64url(csr)}, "finalize")
        if order.get("status") == "processing":
            order = session.poll(order_url, "order", ("processing",), acme.poll_interval)
        if order.get("status") != "valid":
            error = order.get("error")
            detail = f": {_detail(error)}" if isinstance(error, dict) else ""
            raise CaFailure(Reason.ORDER_INVALID, f"the order is {order.get('status')} after finalize{detail}")
        certificate_url = order.get("certificate")
        if not isinstance(certificate_url, str):
            raise CaFailure(Reason.CA_BAD_RESPONSE, "the valid order has no certificate URL")
        return certificate_url

    def _cleanup(self, session: _Session, run: _Run, ctx: ProbeContext) -> list[str]:
        """Deactivate the order's authorizations and revoke the certificate; what failed."""
        acme = self.settings.issuance.acme
        to_deactivate = [url for url, status in run.authorizations.items() if status in ("pending", "valid")]
        to_deactivate = to_deactivate if acme.deactivate_authorizations and session.kid else []
        revoke = acme.revoke and run.certificate is not None and session.kid is not None
        if not to_deactivate and not revoke:
            return []
        notes: list[str] = []
        with ctx.phase("acme.cleanup") as phase:
            for url in to_deactivate:
                try:
                    session.post_json(url, {"status": "deactivated"}, "deactivate authorization")
                except CaFailure as exc:
                    notes.append(str(exc))
            phase.set("certscope.acme.deactivated", len(to_deactivate) - len(notes))
            if revoke and run.certificate is not None:
                if "revokeCert" not in session.directory:
                    notes.append("the directory has no revokeCert: the certificate stays valid")
                else:
                    der = run.certificate.public_bytes(serialization.Encoding.DER)
                    try:
                        session.post(session.endpoint("revokeCert"), {"certificate": b64url(der)}, "revokeCert")
                        phase.set("certscope.acme.revoked", True)
                    except CaFailure as exc:
                        notes.append(str(exc))
            if notes:
                phase.fail(Reason.API_ERROR, "; ".join(notes))
        return notes


# -- the protocol ---------------------------------------------------------------------


class _Session:
    """Signed requests to one ACME server within one run: nonces, badNonce retries,
    problem documents, polling.  Every request goes through ``probes.fetch`` (egress
    policy, byte cap, the run's deadline)."""

    def __init__(self, client: CaClient, directory: dict[str, Any], key: PrivateKey, deadline: float, run: _Run):
        self.client = client
        self.directory = directory
        self.key = key
        self.deadline = deadline
        self.run = run
        self.nonce: str | None = None
        self.kid: str | None = None
        self.bad_nonce_retries = 0
        self.key_created = False  # the account key file was written in this run

    def endpoint(self, name: str) -> str:
        url = self.directory.get(name)
        if not isinstance(url, str) or not url:
            raise CaFailure(Reason.CA_BAD_RESPONSE, f"the ACME directory has no {name}")
        return url

    def _send(
        self, method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> Response:
        if self.run.first_request is None:
            self.run.first_request = time.monotonic()
        try:
            response = fetch(
                url,
                deadline=self.deadline,
                max_bytes=self.client.max_bytes,
                allow_networks=self.client.allow_networks,
                method=method,
                body=body,
                headers=headers or {},
                tls_context=self.client.context,
            )
        except FetchError as exc:
            raise CaFailure(fetch_reason(exc), str(exc)) from None
        self.run.last_answer = time.monotonic()
        nonce = response.headers.get("replay-nonce")
        if nonce:
            self.nonce = nonce
        return response

    def new_nonce(self) -> None:
        url = self.endpoint("newNonce")
        response = self._send("HEAD", url)
        if response.status not in (200, 204):
            raise _failure("newNonce", response)
        if not response.headers.get("replay-nonce"):
            raise CaFailure(Reason.CA_BAD_RESPONSE, "newNonce: no Replay-Nonce in the answer")

    def post(
        self,
        url: str,
        payload: dict[str, Any] | None,
        what: str,
        *,
        use_jwk: bool = False,
        accept: str | None = None,
    ) -> Response:
        """A signed POST (``payload`` None: POST-as-GET); badNonce is retried with the
        refusal's own nonce.  A 2xx answer, or ``AcmeFailure``."""
        body = b"" if payload is None else json.dumps(payload).encode()
        headers = {"Content-Type": JOSE_JSON, **({"Accept": accept} if accept else {})}
        for attempt in range(BAD_NONCE_RETRIES + 1):
            if self.nonce is None:
                self.new_nonce()
            protected: dict[str, Any] = {"nonce": self.nonce, "url": url}
            if use_jwk or self.kid is None:
                protected["jwk"] = public_jwk(self.key)
            else:
                protected["kid"] = self.kid
            self.nonce = None  # used: the answer brings the next one
            signed = json.dumps(sign_jws(self.key, protected, body)).encode()
            response = self._send("POST", url, signed, headers)
            if 200 <= response.status < 300:
                return response
            failure = _failure(what, response)
            if failure.problem == "badNonce" and attempt < BAD_NONCE_RETRIES:
                self.bad_nonce_retries += 1  # the refusal brought a fresh nonce
                continue
            if failure.problem == "badNonce":
                raise AcmeFailure(
                    Reason.BAD_NONCE,
                    f"{failure} (still after {BAD_NONCE_RETRIES} retries with fresh nonces)",
                    problem="badNonce",
                    status=response.status,
                )
            raise failure
        raise AssertionError("unreachable")

    def post_json(
        self, url: str, payload: dict[str, Any] | None, what: str, *, use_jwk: bool = False
    ) -> tuple[Response, dict[str, Any]]:
        response = self.post(url, payload, what, use_jwk=use_jwk)
        try:
            document = json.loads(response.body) if response.body else {}
        except ValueError:
            raise CaFailure(Reason.CA_BAD_RESPONSE, f"{what}: the answer is not JSON") from None
        if not isinstance(document, dict):
            raise CaFailure(Reason.CA_BAD_RESPONSE, f"{what}: the answer is not a JSON object")
        return response, document

    def poll(self, url: str, what: str, waiting: tuple[str, ...], interval: float) -> dict[str, Any]:
        """POST-as-GET ``url`` until its status leaves ``waiting``; waits ``interval`` or
        the CA's Retry-After, whichever is longer, and never past the deadline."""
        started = time.monotonic()
        while True:
            response, document = self.post_json(url, None, what)
            status = document.get("status")
            if status not in waiting:
                return document
            wait = max(interval, _retry_after_seconds(response) or 0.0)
            if time.monotonic() + wait >= self.deadline:
                waited = time.monotonic() - started
                raise CaFailure(
                    Reason.DEADLINE_EXCEEDED,
                    f"the {what} is still {status} after {waited:.1f} s "
                    f"(next poll in {wait:.1f} s would pass the run's timeout)",
                )
            time.sleep(wait)


def _failure(what: str, response: Response) -> AcmeFailure:
    """The reason and message of an ACME error answer (RFC 7807 problem document)."""
    problem_type, detail = "", ""
    try:
        document = json.loads(response.body) if response.body else None
    except ValueError:
        document = None
    if isinstance(document, dict):
        raw_type = document.get("type")
        if isinstance(raw_type, str):
            problem_type = raw_type.removeprefix(ERROR_PREFIX)
        detail = _detail(document)
    reason = _PROBLEM_REASONS.get(problem_type)
    if reason is None:
        if response.status >= 500:
            reason = Reason.API_ERROR
        elif problem_type or 400 <= response.status < 500:
            reason = Reason.ISSUANCE_REFUSED  # rejectedIdentifier, caa, badCSR, malformed, ...
        else:
            reason = status_reason(response.status)
    text = f"{what}: {problem_type or 'HTTP error'}"
    text += f": {detail}" if detail else ""
    text += f" (HTTP {response.status})"
    failure = AcmeFailure(reason, text, problem=problem_type, status=response.status)
    retry = _retry_after_seconds(response)
    if retry is not None:
        failure.retry_after = time.time() + retry
    return failure


def _detail(document: dict[str, Any]) -> str:
    detail = document.get("detail")
    return " ".join(detail.split())[:200] if isinstance(detail, str) else ""


def _retry_after_seconds(response: Response) -> float | None:
    """Retry-After as seconds from now: delta-seconds or an HTTP date (RFC 9110 10.2.3)."""
    value = response.headers.get("retry-after", "").strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _expect_status(document: dict[str, Any], what: str, good: tuple[str, ...]) -> None:
    status = document.get("status")
    if status not in good:
        error = document.get("error")
        detail = f": {_detail(error)}" if isinstance(error, dict) else ""
        raise CaFailure(Reason.ORDER_INVALID, f"the new {what} is {status}{detail}")


def _name(authorization: dict[str, Any]) -> str:
    identifier = authorization.get("identifier")
    value = identifier.get("value") if isinstance(identifier, dict) else None
    return str(value) if value else "an identifier"


def _http01(authorization: dict[str, Any]) -> dict[str, str]:
    challenges = authorization.get("challenges")
    offered = [c for c in challenges if isinstance(c, dict)] if isinstance(challenges, list) else []
    for challenge in offered:
        token, url = challenge.get("token"), challenge.get("url")
        if challenge.get("type") == "http-01" and isinstance(token, str) and isinstance(url, str):
            if not token or not all(ch.isalnum() or ch in "-_" for ch in token):
                raise CaFailure(Reason.CA_BAD_RESPONSE, "the http-01 token is not base64url")
            return {"token": token, "url": url}
    types = ", ".join(str(c.get("type")) for c in offered) or "none"
    raise CaFailure(Reason.CHALLENGE_FAILED, f"the CA offers no http-01 challenge for {_name(authorization)} ({types})")


def _challenge_error(authorization: dict[str, Any]) -> str:
    challenges = authorization.get("challenges")
    for challenge in challenges if isinstance(challenges, list) else []:
        error = challenge.get("error") if isinstance(challenge, dict) else None
        if isinstance(error, dict):
            kind = str(error.get("type", "")).removeprefix(ERROR_PREFIX)
            return f": {kind}: {_detail(error)}" if kind else f": {_detail(error)}"
    return ""


def _identifier(name: str) -> dict[str, str]:
    try:
        return {"type": "ip", "value": str(ipaddress.ip_address(name))}
    except ValueError:
        return {"type": "dns", "value": name}


def _csr(key: ec.EllipticCurvePrivateKey, issuance: CaIssuance) -> bytes:
    names = issuance.names
    dns_names = [n for n in names if _identifier(n)["type"] == "dns"]
    # The CN, when there is one, must be one of the names ordered, and a DNS name.
    common_name = issuance.common_name if issuance.common_name in dns_names else next(iter(dns_names), "")
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)] if 0 < len(common_name) <= 64 else []
    subject = x509.Name(attributes)
    general = [general_name(name) for name in names]
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(subject)
        .add_extension(x509.SubjectAlternativeName(general), critical=False)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.DER)


def _ca_seconds(run: _Run) -> float | None:
    """From the first request to the last answer: the CA's share of the issuance,
    validation and polls included; None when nothing reached the CA."""
    if run.first_request is None or run.last_answer is None:
        return None
    return run.last_answer - run.first_request


def _phases(ctx: ProbeContext) -> tuple[tuple[str, float], ...]:
    """The run's ACME phases without their ``acme.`` prefix, and ``verify``."""
    kept: list[tuple[str, float]] = []
    for name, seconds in ctx.phases:
        if name.startswith("acme."):
            kept.append((name.removeprefix("acme."), seconds))
        elif name == "issuance.verify":
            kept.append(("verify", seconds))
    return tuple(kept)


# -- the account key --------------------------------------------------------------------


def _account_key(path: str) -> tuple[PrivateKey, bool]:
    """The account key from ``path``, and whether it was just created (EC P-256, 0600,
    when the file does not exist).  Errors name the file, never its content."""
    where = f"issuance.acme.account_key_file: {path}"
    created = False
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_ACCOUNT_KEY_BYTES)
    except FileNotFoundError:
        data = _create_account_key(path, where)
        created = True
    except OSError as exc:
        raise CaFailure(Reason.CREDENTIAL_UNAVAILABLE, f"{where}: cannot read: {exc.strerror}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise CaFailure(Reason.CREDENTIAL_UNAVAILABLE, f"{where}: encrypted keys are not supported") from None
    except ValueError:
        raise CaFailure(Reason.CREDENTIAL_UNAVAILABLE, f"{where}: not a PEM private key") from None
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name in ("secp256r1", "secp384r1"):
        return key, created
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size >= 2048:
        return key, created
    raise CaFailure(Reason.CREDENTIAL_UNAVAILABLE, f"{where}: use an EC P-256/P-384 or RSA (2048+) key")


def _create_account_key(path: str, where: str) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    temporary = f"{path}.{secrets.token_hex(6)}.tmp"
    try:
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(pem)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temporary, path)  # never replaces a key another run wrote meanwhile
        except FileExistsError:
            with open(path, "rb") as handle:
                return handle.read(MAX_ACCOUNT_KEY_BYTES)
    except OSError as exc:
        raise CaFailure(Reason.CREDENTIAL_UNAVAILABLE, f"{where}: cannot create: {exc.strerror}") from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
    return pem


# -- the http-01 listener ---------------------------------------------------------------


class _Http01Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], listener: Http01Listener) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.listener = listener
        super().__init__(address, _Http01Handler)


class _Http01Handler(BaseHTTPRequestHandler):
    server: _Http01Server
    server_version = "certscope"
    sys_version = ""
    timeout = 10  # a validation request that stalls holds a thread this long at most

    def do_GET(self) -> None:
        self._answer(body=True)

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def _answer(self, body: bool) -> None:
        path = self.path.split("?", 1)[0]
        if "://" in path:  # an absolute URI in the request line
            path = "/" + path.split("://", 1)[1].partition("/")[2]
        token = path[len(CHALLENGE_PATH) :] if path.startswith(CHALLENGE_PATH) else ""
        answer = self.server.listener.answer(token)
        data = answer.encode("ascii") if answer is not None else b"not found\n"
        self.send_response(200 if answer is not None else 404)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass  # the CA's validation requests are counted on the span, not logged


class Http01Listener:
    """One listening socket per address, shared by the probes that answer there; each
    run adds its tokens through a scope that removes them when the phase ends."""

    _registry: ClassVar[dict[tuple[str, int], tuple[Http01Listener, int]]] = {}
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, address: tuple[str, int]) -> None:
        self.address = address
        self._tokens: dict[str, str] = {}
        self._tokens_lock = threading.Lock()
        self.served = 0
        self._server = _Http01Server(address, self)
        self._thread = threading.Thread(
            # shutdown() waits up to one poll interval: it is part of the challenge phase.
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.02},
            name="acme-http01",
            daemon=True,
        )
        self._thread.start()

    def answer(self, token: str) -> str | None:
        with self._tokens_lock:
            answer = self._tokens.get(token)
            if answer is not None:
                self.served += 1
            return answer

    def add(self, token: str, key_authorization: str) -> None:
        with self._tokens_lock:
            self._tokens[token] = key_authorization

    def remove(self, token: str) -> None:
        with self._tokens_lock:
            self._tokens.pop(token, None)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


class _Scope:
    """A run's view of a shared listener: its tokens, and its count of answers."""

    def __init__(self, listener: Http01Listener) -> None:
        self._listener = listener
        self._tokens: list[str] = []
        self._served_before = listener.served

    @property
    def served(self) -> int:
        return self._listener.served - self._served_before

    def add(self, token: str, key_authorization: str) -> None:
        self._tokens.append(token)
        self._listener.add(token, key_authorization)

    def remove_all(self) -> None:
        for token in self._tokens:
            self._listener.remove(token)


@contextlib.contextmanager
def http01_listener(address: tuple[str, int]) -> Iterator[_Scope]:
    """Listen on ``address`` (or join the listener already there) for the block."""
    with Http01Listener._lock:
        entry = Http01Listener._registry.get(address)
        listener = entry[0] if entry else Http01Listener(address)
        Http01Listener._registry[address] = (listener, (entry[1] if entry else 0) + 1)
    scope = _Scope(listener)
    try:
        yield scope
    finally:
        scope.remove_all()
        with Http01Listener._lock:
            listener, users = Http01Listener._registry[address]
            if users > 1:
                Http01Listener._registry[address] = (listener, users - 1)
            else:
                del Http01Listener._registry[address]
                listener.close()
