"""Synthetic issuance for the ``ca`` kind: ask the CA for a short-lived certificate
the way a workload would, and check what comes back.

One issuance:

1. a fresh EC P-256 key and a CSR for ``common_name`` and ``sans`` (made locally; the
   key lives only in this function and is never written, logged or returned);
2. the request (its round trip is ``certscope_ca_issuance_duration_seconds``):

   * ``step``: the JWK provisioner's encrypted key comes from ``GET /provisioners``;
     the password (``password_file``/``password_env``) decrypts it (``probes.jose``);
     a one-time token (JWT: ``iss`` provisioner, ``sub`` common name, ``aud``
     ``<url>/1.0/sign``, ``sans``, 5-minute ``exp``, random ``jti``) signed with it goes
     with the CSR and ``notAfter=<validity>`` to ``POST /1.0/sign``;
   * ``cfssl``: ``POST /api/v1/cfssl/sign`` with the CSR and ``profile``; with an auth
     key, the same request wrapped for ``authsign`` (HMAC-SHA256 token); or
     ``newcert``, where cfssl makes the key itself and the key in its answer is
     dropped unread;

3. the answer is checked: the certificate chains (with the intermediates sent along)
   to a CA certificate the CA published in this run; every requested name is among its
   SANs; its lifetime is ``validity`` (up to ``validity_tolerance`` more, as CAs
   backdate notBefore; cfssl by 5 minutes, so a cfssl profile must be longer than that
   for the certificate to be valid when it arrives).

ACME issuance (order, challenge, finalize, download) is ``probes.acme``; it ends with
the same ``verify_issued``.

Failures are ``IssuanceFacts`` with a reason, never exceptions.  Every message is
scrubbed of the credentials and the token before it leaves this module.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import secrets
import time
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from cryptography.x509.verification import ExtensionPolicy, PolicyBuilder, Store, VerificationError

from probes.ca import CaClient, CaFailure, CaIssuance, CaSettings
from probes.ca_facts import IssuanceFacts
from probes.context import ProbeContext
from probes.credentials import CredentialUnavailable, read_secret
from probes.jose import BadPassword, JoseError, decrypt_jwk, sign_jwt
from probes.reasons import Reason

TOKEN_LIFETIME = 300  # seconds; the token is used at once, this only bounds clock skew
MAX_PROVISIONER_PAGES = 20
_CFSSL_AUTH_ERRORS = ("authentication required", "invalid token")


def issue(settings: CaSettings, client: CaClient, anchors: list[x509.Certificate], ctx: ProbeContext) -> IssuanceFacts:
    secrets_seen: list[str] = []  # every credential or token read, for scrubbing
    try:
        phase = time.monotonic()
        key = ec.generate_private_key(ec.SECP256R1())
        csr_pem = _csr(key, settings.issuance)
        ctx.record_phase("issuance.keygen", time.monotonic() - phase)
        if settings.flavor == "step":
            chain, seconds = _step(settings.issuance, client, anchors, csr_pem, ctx, secrets_seen)
        else:
            chain, seconds = _cfssl(settings.issuance, client, csr_pem, ctx, secrets_seen)
        del key  # the certificate is checked and dropped; nothing uses the key
        phase = time.monotonic()
        try:
            verify_issued(chain, anchors, settings.issuance, settings.flavor)
        finally:
            ctx.record_phase("issuance.verify", time.monotonic() - phase)
        return IssuanceFacts(True, Reason.OK, seconds)
    except CaFailure as exc:
        return IssuanceFacts(False, exc.reason, exc.seconds, scrub(f"issuance: {exc}", secrets_seen))


# -- step-ca ----------------------------------------------------------------------


def _step(
    issuance: CaIssuance,
    client: CaClient,
    anchors: list[x509.Certificate],
    csr_pem: str,
    ctx: ProbeContext,
    secrets_seen: list[str],
) -> tuple[list[x509.Certificate], float]:
    phase = time.monotonic()
    provisioner = _find_provisioner(client, issuance.provisioner, ctx)
    encrypted = provisioner.get("encryptedKey")
    public = provisioner.get("key")
    if not isinstance(encrypted, str) or not isinstance(public, dict) or not isinstance(public.get("kid"), str):
        raise CaFailure(
            Reason.CA_BAD_RESPONSE, f"provisioner {issuance.provisioner!r} publishes no encrypted key and key id"
        )
    password = require_secret(issuance.password_file, issuance.password_env, "issuance.password")
    secrets_seen.append(password.decode("utf-8", "replace"))
    try:
        signing_key, _ = decrypt_jwk(encrypted, password)
    except BadPassword:
        raise CaFailure(
            Reason.BAD_PASSWORD, f"the password does not decrypt the key of provisioner {issuance.provisioner!r}"
        ) from None
    except JoseError as exc:
        raise CaFailure(Reason.CA_BAD_RESPONSE, f"provisioner {issuance.provisioner!r}: {exc}") from None
    finally:
        del password
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": issuance.provisioner,
        "sub": issuance.common_name,
        "aud": client.url("/1.0/sign"),
        "sans": list(issuance.names),
        "iat": now,
        "nbf": now,
        "exp": now + TOKEN_LIFETIME,
        "jti": secrets.token_hex(32),
    }
    roots = [c for c in anchors if c.subject == c.issuer]
    if roots:  # what `step ca token` sends: the fingerprint of the root it trusts
        claims["sha"] = roots[0].fingerprint(hashes.SHA256()).hex()
    token = sign_jwt(signing_key, {"kid": public["kid"], "typ": "JWT"}, claims)
    secrets_seen.append(token)
    ctx.record_phase("issuance.token", time.monotonic() - phase)

    phase = time.monotonic()
    body = {"csr": csr_pem, "ott": token, "notAfter": f"{int(issuance.expected_validity('step') or 0)}s"}
    try:
        document, response = client.json("/1.0/sign", ctx.deadline, method="POST", body=body, ok=(200, 201))
    except CaFailure as exc:
        raise _refusal(exc) from None
    finally:
        ctx.record_phase("issuance.request", time.monotonic() - phase)
    pems = document.get("certChain") if isinstance(document, dict) else None
    if not pems and isinstance(document, dict) and isinstance(document.get("crt"), str):
        pems = [document["crt"], document.get("ca") or ""]
    return _load_chain(pems, client.url("/1.0/sign"), response.seconds), response.seconds


def _find_provisioner(client: CaClient, name: str, ctx: ProbeContext) -> dict[str, Any]:
    cursor = ""
    for _ in range(MAX_PROVISIONER_PAGES):
        document, _ = client.json(f"/provisioners?limit=100&cursor={cursor}", ctx.deadline)
        listed = document.get("provisioners") if isinstance(document, dict) else None
        if not isinstance(listed, list):
            raise CaFailure(Reason.CA_BAD_RESPONSE, f"{client.url('/provisioners')}: no provisioners list")
        for provisioner in listed:
            if isinstance(provisioner, dict) and provisioner.get("name") == name and provisioner.get("type") == "JWK":
                return provisioner
        cursor = document.get("nextCursor") or ""
        if not listed or not isinstance(cursor, str) or not cursor:
            break
    raise CaFailure(Reason.PROVISIONER_NOT_FOUND, f"the CA lists no JWK provisioner named {name!r}")


# -- cfssl --------------------------------------------------------------------------


def _cfssl(
    issuance: CaIssuance, client: CaClient, csr_pem: str, ctx: ProbeContext, secrets_seen: list[str]
) -> tuple[list[x509.Certificate], float]:
    profile = {"profile": issuance.profile} if issuance.profile else {}
    if issuance.endpoint == "newcert":
        path = "/api/v1/cfssl/newcert"
        body: dict[str, Any] = {
            "request": {
                "CN": issuance.common_name,
                "hosts": list(issuance.names),
                "key": {"algo": "ecdsa", "size": 256},
            },
            **profile,
        }
    else:
        path = "/api/v1/cfssl/sign"
        body = {"certificate_request": csr_pem, "hosts": list(issuance.names), **profile}
        if issuance.auth_key_file or issuance.auth_key_env:
            secret = require_secret(issuance.auth_key_file, issuance.auth_key_env, "issuance.auth_key")
            secrets_seen.append(secret.decode("utf-8", "replace"))
            try:
                auth_key = bytes.fromhex(secret.decode("ascii"))
            except (UnicodeDecodeError, ValueError):
                raise CaFailure(Reason.CREDENTIAL_UNAVAILABLE, "issuance.auth_key: not a hex key") from None
            request = json.dumps(body).encode()
            token = base64.b64encode(hmac.new(auth_key, request, hashlib.sha256).digest()).decode()
            secrets_seen.append(token)
            path = "/api/v1/cfssl/authsign"
            body = {"token": token, "request": base64.b64encode(request).decode()}
    phase = time.monotonic()
    try:
        document, response = client.json(path, ctx.deadline, method="POST", body=body)
    except CaFailure as exc:
        raise _refusal(exc) from None
    finally:
        ctx.record_phase("issuance.request", time.monotonic() - phase)
    result = document.get("result") if isinstance(document, dict) else None
    if isinstance(result, dict):
        result.pop("private_key", None)  # newcert: the CA-made key is not ours to keep
    pem = result.get("certificate") if isinstance(result, dict) else None
    if not (isinstance(document, dict) and document.get("success") is True and isinstance(pem, str)):
        raise CaFailure(Reason.CA_BAD_RESPONSE, f"{client.url(path)}: no certificate in the answer", response.seconds)
    return _load_chain([pem], client.url(path), response.seconds), response.seconds


def _refusal(exc: CaFailure) -> CaFailure:
    """A 4xx to an issuance request is a refusal; cfssl says 400 for bad auth."""
    text = str(exc).lower()
    if exc.reason is Reason.HTTP_UNEXPECTED_STATUS and any(words in text for words in _CFSSL_AUTH_ERRORS):
        return CaFailure(Reason.API_UNAUTHORIZED, str(exc), exc.seconds)
    if exc.reason is Reason.HTTP_UNEXPECTED_STATUS and exc.status is not None and 400 <= exc.status < 500:
        return CaFailure(Reason.ISSUANCE_REFUSED, str(exc), exc.seconds)
    return exc


# -- shared -------------------------------------------------------------------------


def require_secret(path: str | None, env: str | None, what: str) -> bytes:
    """A credential the issuance cannot go without (probes/credentials.py), or a
    ``credential_unavailable`` failure naming its source, never its value."""
    try:
        secret = read_secret(env, path, what)
    except CredentialUnavailable as exc:
        raise CaFailure(Reason.CREDENTIAL_UNAVAILABLE, str(exc)) from None
    if secret is None:
        raise CaFailure(Reason.CREDENTIAL_UNAVAILABLE, f"{what}: no file or environment variable configured")
    return secret


def _csr(key: ec.EllipticCurvePrivateKey, issuance: CaIssuance) -> str:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuance.common_name)])
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(subject)
        .add_extension(x509.SubjectAlternativeName([general_name(n) for n in issuance.names]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode("ascii")


def general_name(name: str) -> x509.GeneralName:
    """An IP address SAN for an address literal, a DNS name SAN otherwise."""
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _load_chain(pems: Any, url: str, seconds: float) -> list[x509.Certificate]:
    if not isinstance(pems, list) or not pems or not all(isinstance(p, str) for p in pems):
        raise CaFailure(Reason.CA_BAD_RESPONSE, f"{url}: no certificate in the answer", seconds)
    try:
        return x509.load_pem_x509_certificates("".join(pems).encode())
    except ValueError:
        raise CaFailure(Reason.CA_BAD_RESPONSE, f"{url}: the certificate in the answer is not PEM", seconds) from None


def verify_issued(
    chain: list[x509.Certificate], anchors: list[x509.Certificate], issuance: CaIssuance, flavor: str = "step"
) -> None:
    leaf, intermediates = chain[0], [c for c in chain[1:] if c not in anchors]
    if not anchors:
        raise CaFailure(Reason.ISSUED_CERT_INVALID, "no CA certificate was published to verify the issued one against")
    # Trust is what this check is about; which extensions a CA puts in a leaf is its
    # policy (webpki rules still apply to the CA certificates on the path).
    policy = (
        PolicyBuilder()
        .store(Store(anchors))
        .time(datetime.now(UTC))
        .extension_policies(ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=ExtensionPolicy.permit_all())
    )
    try:
        policy.build_client_verifier().verify(leaf, intermediates)
    except VerificationError as exc:
        raise CaFailure(
            Reason.ISSUED_CERT_INVALID, f"the issued certificate does not chain to a published root: {exc}"
        ) from None
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        present = {str(n.value) for n in san if isinstance(n, (x509.DNSName, x509.IPAddress))}
    except (x509.ExtensionNotFound, ValueError):
        present = set()
    missing = [n for n in issuance.names if str(general_name(n).value) not in present]
    if missing:
        raise CaFailure(Reason.SAN_MISMATCH, f"the issued certificate lacks the requested names {', '.join(missing)}")
    lifetime = (leaf.not_valid_after_utc - leaf.not_valid_before_utc).total_seconds()
    validity = issuance.expected_validity(flavor)
    if validity is not None and not validity - 1 <= lifetime <= validity + issuance.validity_tolerance:
        raise CaFailure(
            Reason.VALIDITY_MISMATCH,
            f"the issued certificate is valid for {lifetime:.0f} s, not the {validity:.0f} s asked for",
        )


def scrub(message: str, values: list[str]) -> str:
    for value in values:
        if len(value) >= 4:
            message = message.replace(value, "<redacted>")
    return message
