"""The ``ca`` probe: a certificate authority's HTTP API as a monitored target.

One target per probe, its ``url``.  Each run:

1. **Availability** - one request whose answer must be well formed for the flavor:
   ``step``: ``GET /health`` answering ``{"status": "ok"}``; ``cfssl``: ``POST
   /api/v1/cfssl/info`` answering ``success`` with a certificate (cfssl 1.2 has no
   health endpoint); ``acme``: ``GET`` of the directory, a JSON object with
   ``newNonce``, ``newAccount``, ``newOrder`` and a ``meta`` object; ``bundle``: ``GET``
   of a PEM, DER or PKCS#7 bundle holding at least one certificate.  Its outcome and
   round trip are ``certscope_ca_up`` and ``certscope_ca_response_duration_seconds``.
2. **Published certificates** - step: ``/roots.pem`` and ``/federation``; cfssl: the
   ``info`` certificate; bundle: the bundle; plus every URL in ``bundle_urls``.  They
   join the inventory with ``kind="ca"`` (deduplicated by fingerprint, numbered in the
   order found), so root and intermediate expiry is alerted on like any certificate.
3. **Synthetic issuance** (``issuance.enabled``, off by default) - see
   ``probes.ca_issue`` (step, cfssl) and ``probes.acme`` (ACME, RFC 8555): a fresh key
   and CSR, a certificate from the CA, checked against the roots just fetched; counted
   in ``certscope_ca_issuance_total``.  The last certificate an ACME canary got joins
   the inventory with ``role="issued"``.

The run succeeds when all three did; its ``reason`` is the first failure in that
order.  The URLs (``url``, ``bundle_urls``) are the operator's, so they are trusted
like configured TLS targets (a CA on loopback is probed); ``global.egress`` polices
URLs taken from certificates and /probe callers.
HTTPS to the CA is verified against ``trust`` (default: the global trust store).

Credentials (step provisioner password, cfssl auth key) are read from a file or an
environment variable at each issuance and never appear in a message, a log line, a
label or a span; CA error text is truncated and scrubbed of them before it is kept.
"""

from __future__ import annotations

import json
import ssl
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from cryptography import x509
from cryptography.hazmat.primitives.serialization import pkcs7

from probes.ca_facts import CaFacts, IssuanceFacts
from probes.certparse import parse_container, role_in_bundle
from probes.context import ProbeContext
from probes.fetch import ANY_NETWORK, FetchError, Response, fetch
from probes.reasons import Reason
from probes.result import ISSUED_ROLE, CertFacts, CertObservation, Discovery, ProbeResult, SourceError
from probes.settings import ByteSize, ProbeDefaults, Seconds, TrustSettings, path_field

if TYPE_CHECKING:
    from probes.acme import AcmeCanary

FLAVORS = ("step", "cfssl", "acme", "bundle")
ISSUING_FLAVORS = ("step", "cfssl", "acme")
ACME_CHALLENGES = ("http-01",)
DEFAULT_VALIDITY = Seconds(600)  # step and cfssl, when issuance.validity is not set
DEFAULT_COMMON_NAME = "certscope-probe.invalid"


@dataclass(frozen=True)
class AcmeIssuance:
    """ACME (RFC 8555) issuance: the account, how challenges are answered, cleanup.
    Secrets (the EAB MAC key) come from ``*_file`` or ``*_env`` only; the account key
    is a file certscope creates on first use and reads at every run."""

    # PEM private key of the ACME account (EC P-256/P-384 or RSA); created (EC P-256,
    # mode 0600) when the file does not exist.  Not a path_field: it may not exist yet.
    account_key_file: str = ""
    contact: tuple[str, ...] = ()  # mailto: URLs sent when the account is created
    terms_of_service_agreed: bool = False  # sent when the account is created
    # External Account Binding (RFC 8555 7.3.4): the key id and the base64url MAC key
    # the CA handed out; used once, when the account is created.
    eab_kid: str = ""
    eab_hmac_key_file: str | None = path_field()
    eab_hmac_key_env: str | None = None
    challenge: str = "http-01"
    # Where certscope answers http-01: the CA connects to port 80 of each name (pebble:
    # its httpPort), so this must be reachable there, e.g. 0.0.0.0:80 or :8080 behind
    # a Service that maps port 80 to it.  Bound for the challenge phase only.
    http01_listen_address: str = ""
    # Shortest wait between polls of an authorization or order; a longer Retry-After
    # from the CA wins.
    poll_interval: Seconds = Seconds(1)
    deactivate_authorizations: bool = True  # so the next run is validated again
    revoke: bool = True  # revoke the certificate once checked

    def validate(self) -> list[tuple[str, str]]:
        problems: list[tuple[str, str]] = []
        if self.eab_hmac_key_file and self.eab_hmac_key_env:
            problems.append(("eab_hmac_key_env", "set eab_hmac_key_file or eab_hmac_key_env, not both"))
        if bool(self.eab_kid) != bool(self.eab_hmac_key_file or self.eab_hmac_key_env):
            problems.append(("eab_kid", "an External Account Binding needs eab_kid and eab_hmac_key_file/_env"))
        if self.challenge not in ACME_CHALLENGES:
            why = " (dns-01 is not supported: see docs/configuration.md)" if self.challenge == "dns-01" else ""
            problems.append(("challenge", f"must be http-01, got {self.challenge!r}{why}"))
        if self.http01_listen_address:
            try:
                listen_address(self.http01_listen_address)
            except ValueError as exc:
                problems.append(("http01_listen_address", str(exc)))
        if not 0.05 <= self.poll_interval <= 300:
            problems.append(("poll_interval", "must be between 50ms and 5m"))
        for index, contact in enumerate(self.contact):
            if ":" not in contact:
                problems.append((f"contact[{index}]", f"must be a URL such as mailto:ops@example.com, got {contact!r}"))
        return problems


def listen_address(address: str) -> tuple[str, int]:
    """'0.0.0.0:80', '[::]:80', ':8080' -> (host, port); the empty host is 0.0.0.0."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) <= 65535:
        raise ValueError(f"must be host:port with a port from 1 to 65535, got {address!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host or "0.0.0.0", int(port)


@dataclass(frozen=True)
class CaIssuance:
    """The synthetic issuance probe.  Secrets come from ``*_file`` or ``*_env`` only."""

    enabled: bool = False
    common_name: str = DEFAULT_COMMON_NAME
    sans: tuple[str, ...] = ()  # DNS names or IP addresses; default: the common name
    # Lifetime asked for (step) / expected from the profile (cfssl), 10 minutes when
    # unset; ACME: expected, and unchecked when unset (the CA decides: 90 days at
    # Let's Encrypt; orders carry no notAfter, which Let's Encrypt refuses).
    validity: Seconds | None = None
    # Accepted excess over ``validity``: CAs backdate notBefore (step-ca by 1 minute).
    validity_tolerance: Seconds = Seconds(120)
    # step: the JWK provisioner and its password.
    provisioner: str = ""
    password_file: str | None = path_field()
    password_env: str | None = None
    # cfssl: signing profile, endpoint (sign: our CSR; newcert: the CA makes the key,
    # which is dropped on arrival), and the hex auth key of an authenticated profile
    # (then the request goes to authsign).
    profile: str = ""
    endpoint: str = "sign"
    auth_key_file: str | None = path_field()
    auth_key_env: str | None = None
    acme: AcmeIssuance = field(default_factory=AcmeIssuance)

    def validate(self) -> list[tuple[str, str]]:
        problems: list[tuple[str, str]] = []
        if self.password_file and self.password_env:
            problems.append(("password_env", "set password_file or password_env, not both"))
        if self.auth_key_file and self.auth_key_env:
            problems.append(("auth_key_env", "set auth_key_file or auth_key_env, not both"))
        if not self.common_name.strip():
            problems.append(("common_name", "must not be empty"))
        for index, name in enumerate(self.sans):
            if not name.strip() or not name.isascii():
                problems.append((f"sans[{index}]", f"must be a DNS name or an IP address, got {name!r}"))
        if self.endpoint not in ("sign", "newcert"):
            problems.append(("endpoint", f"must be sign or newcert, got {self.endpoint!r}"))
        if (self.auth_key_file or self.auth_key_env) and self.endpoint != "sign":
            problems.append(("endpoint", "an auth key works with cfssl's sign endpoint only (authsign)"))
        if self.validity_tolerance < 0:
            problems.append(("validity_tolerance", "must not be negative"))
        return problems

    @property
    def names(self) -> tuple[str, ...]:
        return self.sans or (self.common_name,)

    def expected_validity(self, flavor: str) -> float | None:
        """The lifetime to ask for and check; None: not checked (ACME without ``validity``)."""
        if self.validity is not None:
            return self.validity
        return None if flavor == "acme" else DEFAULT_VALIDITY


@dataclass(frozen=True)
class CaSettings:
    url: str
    flavor: str = "bundle"
    bundle_urls: tuple[str, ...] = ()  # more PEM/DER/PKCS#7 bundles the CA publishes
    trust: TrustSettings | None = None  # for HTTPS to the CA; default: global.trust
    max_size: ByteSize = ByteSize(4 * 1024 * 1024)
    issuance: CaIssuance = field(default_factory=CaIssuance)

    def validate(self) -> list[tuple[str, str]]:
        problems: list[tuple[str, str]] = []
        if self.flavor not in FLAVORS:
            problems.append(("flavor", f"must be one of {', '.join(FLAVORS)}, got {self.flavor!r}"))
        for name, url in (("url", self.url), *((f"bundle_urls[{i}]", u) for i, u in enumerate(self.bundle_urls))):
            if not url.startswith(("http://", "https://")):
                problems.append((name, f"must be an http or https URL, got {url!r}"))
        issuance = self.issuance
        if issuance.enabled:
            if self.flavor not in ISSUING_FLAVORS:
                flavors = ", ".join(ISSUING_FLAVORS)
                problems.append(
                    ("issuance.enabled", f"synthetic issuance is available for {flavors}, not {self.flavor!r}")
                )
            if self.flavor == "acme":
                problems.extend(self._acme_problems())
            if self.flavor == "step":
                if not issuance.provisioner:
                    problems.append(("issuance.provisioner", "required for step: the JWK provisioner's name"))
                if not (issuance.password_file or issuance.password_env):
                    problems.append(("issuance.password_file", "required for step (or issuance.password_env)"))
        return problems

    def _acme_problems(self) -> list[tuple[str, str]]:
        issuance, acme = self.issuance, self.issuance.acme
        problems: list[tuple[str, str]] = []
        if not issuance.sans and issuance.common_name == DEFAULT_COMMON_NAME:
            problems.append(
                ("issuance.sans", "required for acme: the names to order, which must reach the challenge listener")
            )
        if not acme.account_key_file:
            problems.append(("issuance.acme.account_key_file", "required for acme (created on first use)"))
        if not acme.http01_listen_address:
            problems.append(("issuance.acme.http01_listen_address", "required for acme: where http-01 is answered"))
        if not self.bundle_urls:
            problems.append(
                ("bundle_urls", "required for acme issuance: the CA's roots the issued chain must verify against")
            )
        return problems


def ca_reasons() -> tuple[Reason, ...]:
    return (
        Reason.DNS_ERROR,
        Reason.CONNECT_REFUSED,
        Reason.CONNECT_TIMEOUT,
        Reason.CONNECT_FAILED,
        Reason.HANDSHAKE_FAILED,
        Reason.API_UNAUTHORIZED,
        Reason.API_FORBIDDEN,
        Reason.API_ERROR,
        Reason.HTTP_UNEXPECTED_STATUS,
        Reason.CA_BAD_RESPONSE,
        Reason.NO_CERTIFICATE,
        Reason.ISSUANCE_REFUSED,
        Reason.ISSUED_CERT_INVALID,
        Reason.SAN_MISMATCH,
        Reason.VALIDITY_MISMATCH,
        Reason.PROVISIONER_NOT_FOUND,
        Reason.CREDENTIAL_UNAVAILABLE,
        Reason.BAD_PASSWORD,
        Reason.RATE_LIMITED,
        Reason.BAD_NONCE,
        Reason.UNAUTHORIZED,
        Reason.ORDER_INVALID,
        Reason.CHALLENGE_FAILED,
        Reason.DEADLINE_EXCEEDED,
        Reason.INTERNAL_ERROR,
    )


class CaFailure(Exception):
    """A step of a CA run failed with ``reason``; the message is safe to show."""

    def __init__(self, reason: Reason, message: str, seconds: float | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.seconds = seconds  # the round trip, when the CA did answer
        self.status = status  # its HTTP status, when it answered with an error
        self.retry_after: float | None = None  # Unix time the CA asked to wait until (Retry-After)


def tls_context(trust: TrustSettings) -> ssl.SSLContext:
    context = ssl.create_default_context() if trust.system else ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    for path in trust.ca_files:
        context.load_verify_locations(cafile=path)
    return context


class CaClient:
    """Bounded JSON/bytes requests to one CA, failures mapped to reasons."""

    def __init__(self, base_url: str, context: ssl.SSLContext, allow_networks: tuple[str, ...], max_bytes: int):
        self.base_url = base_url.rstrip("/")
        self.context = context
        self.allow_networks = allow_networks
        self.max_bytes = max_bytes

    def url(self, path: str) -> str:
        return path if path.startswith(("http://", "https://")) else self.base_url + path

    def request(
        self,
        path: str,
        deadline: float,
        *,
        method: str = "GET",
        body: Any = None,
        ok: tuple[int, ...] = (200,),
    ) -> Response:
        """The response, or ``CaFailure`` for a network failure or a status not in ``ok``."""
        url = self.url(path)
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        started = time.monotonic()
        try:
            response = fetch(
                url,
                deadline=deadline,
                max_bytes=self.max_bytes,
                allow_networks=self.allow_networks,
                method=method,
                body=data,
                headers=headers,
                tls_context=self.context,
            )
        except FetchError as exc:
            raise CaFailure(fetch_reason(exc), str(exc)) from None
        if response.status not in ok:
            raise CaFailure(
                status_reason(response.status),
                f"{url}: HTTP {response.status}{_error_detail(response.body)}",
                time.monotonic() - started,
                response.status,
            )
        return response

    def json(self, path: str, deadline: float, **kwargs: Any) -> tuple[Any, Response]:
        response = self.request(path, deadline, **kwargs)
        try:
            return json.loads(response.body), response
        except ValueError:
            raise CaFailure(
                Reason.CA_BAD_RESPONSE, f"{self.url(path)}: the answer is not JSON", response.seconds
            ) from None


def status_reason(status: int) -> Reason:
    if status == 401:
        return Reason.API_UNAUTHORIZED
    if status == 403:
        return Reason.API_FORBIDDEN
    if status >= 500:
        return Reason.API_ERROR
    return Reason.HTTP_UNEXPECTED_STATUS


def fetch_reason(exc: FetchError) -> Reason:
    if exc.kind == "too_large":
        return Reason.CA_BAD_RESPONSE
    if exc.kind == "refused":
        return Reason.CONNECT_FAILED  # the egress policy; the message says so
    return {
        "dns": Reason.DNS_ERROR,
        "connect_refused": Reason.CONNECT_REFUSED,
        "timeout": Reason.CONNECT_TIMEOUT,
        "tls": Reason.HANDSHAKE_FAILED,
    }.get(exc.cause, Reason.CONNECT_FAILED)


def _error_detail(body: bytes) -> str:
    """The CA's own words for an error (step: ``message``; cfssl: ``errors[].message``),
    short; the caller scrubs credentials from the final message."""
    try:
        document = json.loads(body)
    except ValueError:
        return ""
    message = ""
    if isinstance(document, dict):
        if isinstance(document.get("message"), str):
            message = document["message"]
        elif isinstance(document.get("detail"), str):  # ACME problem documents
            message = document["detail"]
        elif isinstance(document.get("errors"), list) and document["errors"]:
            first = document["errors"][0]
            if isinstance(first, dict) and isinstance(first.get("message"), str):
                message = first["message"]
    message = " ".join(message.split())[:200]
    return f": {message}" if message else ""


class CaProbe:
    kind: ClassVar[str] = "ca"
    target_reasons: ClassVar[tuple[Reason, ...]] = ca_reasons()
    source_reasons: ClassVar[tuple[Reason, ...]] = ()
    concurrent_targets: ClassVar[bool] = True
    keeps_last_good: ClassVar[bool] = True

    def __init__(self, settings: CaSettings, defaults: ProbeDefaults | None = None) -> None:
        defaults = defaults or ProbeDefaults()
        self.settings = settings
        context = tls_context(settings.trust or defaults.trust)
        self.client = CaClient(settings.url, context, ANY_NETWORK, settings.max_size)
        self.acme: AcmeCanary | None = None
        if settings.flavor == "acme" and settings.issuance.enabled:
            from probes.acme import AcmeCanary  # it imports this module

            self.acme = AcmeCanary(settings, self.client)

    def targets(self) -> Discovery:
        return Discovery((self.settings.url,))

    def run(self, target: str, ctx: ProbeContext) -> ProbeResult:
        from probes.ca_issue import issue  # the issuance flows import this module

        started = time.monotonic()
        flavor = self.settings.flavor
        published = _Published()
        failures: list[tuple[Reason, str]] = []
        up, response_seconds = False, None

        # For ACME the availability request is the directory: the canary's first phase.
        with ctx.phase("acme.directory" if flavor == "acme" else "ca.availability") as phase:
            try:
                response_seconds = self._availability(ctx, published)
                up = True
            except CaFailure as exc:
                failures.append((exc.reason, str(exc)))
                response_seconds = exc.seconds
                phase.fail(exc.reason, str(exc))

        with ctx.phase("ca.published") as phase:
            sources = _published_paths(flavor) if up else ()
            for path in (*sources, *self.settings.bundle_urls):
                try:
                    self._published(path, ctx, published)
                except CaFailure as exc:
                    failures.append((exc.reason, str(exc)))
                    phase.fail(exc.reason, str(exc))

        issuance = None
        anchors = [c for c in published.certificates if _is_ca(c)]
        if self.acme is not None:
            if published.directory is not None:
                issuance = self.acme.issue(published.directory, anchors, ctx)
            else:  # nothing to start from; counted as a failed issuance, for the CA's reason
                reason, message = failures[0]
                issuance = IssuanceFacts(False, reason, None, f"issuance: no ACME directory ({message})")
        elif self.settings.issuance.enabled:
            issuance = issue(self.settings, self.client, anchors, ctx)
        if issuance is not None and not issuance.success:
            failures.append((issuance.reason, issuance.message))

        observations = _observations(published.facts)
        issued = self.acme.issued_in_inventory(time.time()) if self.acme is not None and up else None
        if issued is not None:
            observations += (CertObservation(len(observations), ISSUED_ROLE, issued),)
        reason, message = failures[0] if failures else (Reason.OK, "")
        return ProbeResult(
            success=not failures,
            reason=reason,
            duration_seconds=time.monotonic() - started,
            certificates=observations,
            errors=tuple(published.errors),
            phases=tuple(ctx.phases),
            message=message,
            facts=CaFacts(flavor=flavor, up=up, response_seconds=response_seconds, issuance=issuance),
        )

    # -- availability and published certificates -------------------------------

    def _availability(self, ctx: ProbeContext, published: _Published) -> float:
        flavor, client = self.settings.flavor, self.client
        if flavor == "step":
            document, response = client.json("/health", ctx.deadline)
            if not isinstance(document, dict) or document.get("status") != "ok":
                raise CaFailure(Reason.CA_BAD_RESPONSE, f"{client.url('/health')}: status is not ok", response.seconds)
            return response.seconds
        if flavor == "cfssl":
            body = {"profile": self.settings.issuance.profile} if self.settings.issuance.profile else {}
            document, response = client.json("/api/v1/cfssl/info", ctx.deadline, method="POST", body=body)
            result = document.get("result") if isinstance(document, dict) else None
            pem = result.get("certificate") if isinstance(result, dict) else None
            if not (isinstance(document, dict) and document.get("success") is True and isinstance(pem, str)):
                raise CaFailure(
                    Reason.CA_BAD_RESPONSE,
                    f"{client.url('/api/v1/cfssl/info')}: no successful answer with a certificate",
                    response.seconds,
                )
            published.add(pem.encode(), client.url("/api/v1/cfssl/info"), response.seconds)
            return response.seconds
        if flavor == "acme":
            document, response = client.json("", ctx.deadline)
            published.directory = document if isinstance(document, dict) else None
            missing = (
                [k for k in ("newNonce", "newAccount", "newOrder") if not isinstance(document.get(k), str)]
                if (isinstance(document, dict))
                else ["a JSON object"]
            )
            if not missing and not isinstance(document.get("meta"), dict):
                missing = ["meta"]
            if missing:
                published.directory = None
                raise CaFailure(
                    Reason.CA_BAD_RESPONSE,
                    f"{client.url('')}: the ACME directory lacks {', '.join(missing)}",
                    response.seconds,
                )
            return response.seconds
        response = client.request("", ctx.deadline)
        published.add(response.body, client.url(""), response.seconds)
        return response.seconds

    def _published(self, path: str, ctx: ProbeContext, published: _Published) -> None:
        url = self.client.url(path)
        if path == "/federation":
            # step-ca 0.19 answers /federation with 201 Created.
            document, response = self.client.json(path, ctx.deadline, ok=(200, 201))
            crts = document.get("crts") if isinstance(document, dict) else None
            if not isinstance(crts, list) or not all(isinstance(c, str) for c in crts):
                raise CaFailure(Reason.CA_BAD_RESPONSE, f"{url}: no crts list", response.seconds)
            published.add("".join(crts).encode(), url, response.seconds)
            return
        response = self.client.request(path, ctx.deadline)
        published.add(response.body, url, response.seconds)


def _published_paths(flavor: str) -> tuple[str, ...]:
    return ("/roots.pem", "/federation") if flavor == "step" else ()


class _Published:
    """The certificates a run collected: facts for the inventory, objects for the
    issuance check against the very roots just published."""

    def __init__(self) -> None:
        self.facts: list[CertFacts] = []
        self.certificates: list[x509.Certificate] = []
        self.errors: list[SourceError] = []
        self.directory: dict[str, Any] | None = None  # acme: the directory document

    def add(self, data: bytes, url: str, seconds: float | None) -> None:
        parsed = parse_container(data, url)
        self.errors.extend(parsed.errors)
        if not parsed.certificates:
            raise CaFailure(Reason.NO_CERTIFICATE, f"{url}: no certificate in the answer", seconds)
        self.facts.extend(parsed.certificates)
        self.certificates.extend(_load_all(data))


def _load_all(data: bytes) -> list[x509.Certificate]:
    """Best effort: what parse_container reported stays the inventory's truth."""
    try:
        if b"-----BEGIN CERTIFICATE" in data:
            return x509.load_pem_x509_certificates(data)
        try:
            return [x509.load_der_x509_certificate(data)]
        except ValueError:
            return pkcs7.load_der_pkcs7_certificates(data)
    except ValueError:
        return []


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except (x509.ExtensionNotFound, ValueError):
        return False
    return constraints.ca


def _observations(published: list[CertFacts]) -> tuple[CertObservation, ...]:
    seen: set[str] = set()
    observations: list[CertObservation] = []
    for facts in published:
        if facts.fingerprint_sha256 in seen:
            continue  # /federation repeats /roots.pem
        seen.add(facts.fingerprint_sha256)
        observations.append(CertObservation(len(observations), role_in_bundle(facts), facts))
    return tuple(observations)
