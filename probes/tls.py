"""The ``tls`` probe: a real handshake to an endpoint, as a real client makes it.

One run: resolve the name (bounded), connect, STARTTLS if configured, handshake
with SNI and ALPN (and a client certificate for mTLS), then one round trip: the
optional HTTP request, or else, when a client certificate was asked for, a short
read, because a TLS 1.3 server rejects a missing or unknown client certificate only
after the client believes the handshake is done.  All of it runs against one
deadline (the probe's ``timeout``); the socket is always closed.

Record first, judge second: the handshake does not verify, so every certificate the
server sends is captured (up to ``max_chain_length``) and exported whatever the
verdict; ``probes.verify`` then judges trust and hostname in-process.

The handshake is made by ``probes.tls_client`` (pyOpenSSL over the OpenSSL that
``cryptography`` ships), whose context is built once per probe configuration and
shared by all its runs.

With a ``kubernetes:`` block the probe also takes its targets from the cluster
(``probes.kubediscovery``: Ingresses, Gateway listeners, annotated Services), each
with its own server name; an address taken from an object passes the egress policy
before any connection, and the served leaf is compared with the Secret that should
back the endpoint (``ProbeResult.stored``).  A watch event that changes the
endpoints wakes the probe's round (``set_wake``).
"""

from __future__ import annotations

import errno
import os
import re
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import ClassVar

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from probes import cpu_slots
from probes.certparse import facts_from_certificate
from probes.context import ProbeContext
from probes.credentials import read_secret
from probes.expect import EXPECT_REASONS, Expect
from probes.fetch import FetchError, getaddrinfo_by, is_ip, resolve_checked
from probes.kubediscovery import Endpoint, KubeDiscoverySettings, KubeEndpoints, compare
from probes.reasons import Reason
from probes.result import CertObservation, Discovery, ProbeResult, SourceError, StoredComparison
from probes.revocation import (
    CRL_REASONS,
    OCSP_REASONS,
    RevocationChecker,
    RevocationSettings,
    ServedEndpoint,
    served_chain_revocation,
)
from probes.revocation_facts import RevocationFacts
from probes.settings import ByteSize, ProbeDefaults, Seconds, TrustSettings, path_field
from probes.starttls import PROTOCOLS, StartTlsError, upgrade
from probes.tls_client import (
    CLIENT_KEY_TYPES,
    ClientKey,
    HandshakeError,
    HandshakeFailed,
    TlsClient,
    TlsConnection,
)
from probes.tls_facts import TlsFacts
from probes.tls_outcome import Outcome, Problem, TlsObservation, tls_outcome
from probes.verify import MEMO_SIZE, ChainMemo, TrustStore, Verdict, VerifySettings, choose_profile
from probes.version import __version__

MAX_HTTP_HEADER = 64 * 1024
MAX_HTTP_BODY = 16 * 1024 * 1024
MEMO_PER_TARGET = 4  # room per configured target in the chain memo: its chain's certificates and its verdict
MAX_HTTP_PEEK = 2048
# The chain memo lives beside the verifier (probes.verify); its names stay importable
# from here, where tests/probes/test_tls_probe.py sizes and drives it.


@dataclass(frozen=True)
class ClientCert:
    """The probe's own certificate for mTLS: PEM files, or PKCS#12 with a password
    from a file or an environment variable."""

    cert_file: str | None = path_field()
    key_file: str | None = path_field()
    pkcs12_file: str | None = path_field()
    password_file: str | None = path_field()
    password_env: str | None = None

    def validate(self) -> list[tuple[str, str]]:
        pem = self.cert_file is not None or self.key_file is not None
        if pem and self.pkcs12_file:
            return [("pkcs12_file", "use cert_file and key_file, or pkcs12_file, not both")]
        if pem and not (self.cert_file and self.key_file):
            return [("key_file" if self.cert_file else "cert_file", "required with the other one")]
        if not pem and not self.pkcs12_file:
            return [("cert_file", "set cert_file and key_file, or pkcs12_file")]
        return []


@dataclass(frozen=True)
class HeaderMatch:
    """A rule on one response header, as blackbox_exporter's
    ``fail_if_header_[not_]matches``: every value is tried; a missing header fails
    the rule unless ``allow_missing``."""

    header: str
    regexp: str
    allow_missing: bool = False

    def validate(self) -> list[tuple[str, str]]:
        problems = []
        if not self.header or any(c in self.header for c in " :\r\n"):
            problems.append(("header", f"not a header name: {self.header!r}"))
        problems += _regexp_problems("regexp", self.regexp)
        return problems


@dataclass(frozen=True)
class HttpCheck:
    path: str = "/"
    method: str = "GET"
    expect_status: tuple[int, ...] = (200,)
    host: str | None = None  # Host header; default: the server name
    # What the answer must (not) say, so that a probe can prove that the client
    # certificate's identity reached the application (blackbox_exporter's names).
    fail_if_body_matches_regexp: tuple[str, ...] = ()
    fail_if_body_not_matches_regexp: tuple[str, ...] = ()
    fail_if_header_matches: tuple[HeaderMatch, ...] = ()
    fail_if_header_not_matches: tuple[HeaderMatch, ...] = ()
    max_body_bytes: ByteSize = ByteSize(64 * 1024)  # the body read for the regexps, at most

    def validate(self) -> list[tuple[str, str]]:
        problems = []
        if not self.path.startswith("/"):
            problems.append(("path", f"must start with '/', got {self.path!r}"))
        if self.method not in ("GET", "HEAD", "OPTIONS"):
            problems.append(("method", "must be GET, HEAD or OPTIONS"))
        for field_name in ("fail_if_body_matches_regexp", "fail_if_body_not_matches_regexp"):
            for index, pattern in enumerate(getattr(self, field_name)):
                problems += _regexp_problems(f"{field_name}[{index}]", pattern)
        if self.method == "HEAD" and (self.fail_if_body_matches_regexp or self.fail_if_body_not_matches_regexp):
            problems.append(("method", "a HEAD answer has no body for the body regexps"))
        if not 1 <= self.max_body_bytes <= MAX_HTTP_BODY:
            problems.append(("max_body_bytes", f"must be between 1 byte and {MAX_HTTP_BODY // (1024 * 1024)} MiB"))
        return problems

    @property
    def reads_body(self) -> bool:
        return bool(self.fail_if_body_matches_regexp or self.fail_if_body_not_matches_regexp)


def _regexp_problems(field_name: str, pattern: str) -> list[tuple[str, str]]:
    try:
        re.compile(pattern)
    except re.error as exc:
        return [(field_name, f"not a regular expression: {exc}")]
    return []


@dataclass(frozen=True)
class TlsSettings:
    targets: tuple[str, ...] = ()  # required unless kubernetes discovers them
    server_name: str | None = None  # SNI and the name verified; default: the target host
    alpn: tuple[str, ...] = ()
    starttls: str | None = None
    client_cert: ClientCert | None = None
    trust: TrustSettings | None = None  # default: global.trust
    http: HttpCheck | None = None
    resolve: str = "first"  # first | all (every A/AAAA address, each its own target)
    ip_version: str = "any"  # any | ipv4 | ipv6
    max_chain_length: int = 16
    # How long to wait after the handshake for a TLS 1.3 server to reject the client
    # certificate, when no HTTP check makes a round trip anyway.
    client_auth_wait: Seconds = Seconds(0.5)  # at most; see _round_trip
    expect: Expect | None = None  # checked on the leaf
    verify: VerifySettings | None = None  # the verification profile (probes.profiles)
    revocation: RevocationSettings | None = None
    # Further targets /probe may be asked for, as globs over host:port
    # ("*.example.com:443"); loopback, link-local and metadata addresses stay
    # refused unless global.egress.allow_networks lets them through.
    allow_targets: tuple[str, ...] = ()
    # Endpoints discovered in Kubernetes (probes/kubediscovery.py), besides ``targets``.
    kubernetes: KubeDiscoverySettings | None = None

    def validate(self) -> list[tuple[str, str]]:
        problems = []
        if not self.targets and self.kubernetes is None:
            problems.append(("targets", "at least one target is required (or kubernetes discovery)"))
        for index, target in enumerate(self.targets):
            try:
                split_target(target)
            except ValueError as exc:
                problems.append((f"targets[{index}]", str(exc)))
        if self.starttls is not None and self.starttls not in PROTOCOLS:
            problems.append(("starttls", f"must be one of {', '.join(PROTOCOLS)}, got {self.starttls!r}"))
        if self.starttls and self.http:
            problems.append(("http", "an HTTP check cannot follow STARTTLS"))
        if self.resolve not in ("first", "all"):
            problems.append(("resolve", f"must be first or all, got {self.resolve!r}"))
        if self.ip_version not in ("any", "ipv4", "ipv6"):
            problems.append(("ip_version", f"must be any, ipv4 or ipv6, got {self.ip_version!r}"))
        if not 1 <= self.max_chain_length <= 64:
            problems.append(("max_chain_length", "must be between 1 and 64"))
        if self.server_name is not None and is_ip(self.server_name):
            problems.append(("server_name", "must be a DNS name; an IP address is never sent as SNI"))
        return problems


def split_target(target: str) -> tuple[str, int]:
    """'host:443', '192.0.2.1:443', '[2001:db8::1]:443' -> (host, port)."""
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"must be host:port, got {target!r}")
    if "@" in host:  # '@' separates a target from its pinned address (resolve: all)
        raise ValueError(f"'@' is not allowed in a host name, got {target!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if not is_ip(host):
            raise ValueError(f"not an IPv6 address in brackets: {target!r}")
    elif ":" in host:
        raise ValueError(f"write IPv6 addresses in brackets, as [{host}]:{port}")
    if not host:
        raise ValueError(f"no host in {target!r}")
    return host, int(port)


class _Failure(Exception):
    def __init__(self, reason: Reason, message: str, tls: TlsFacts | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.tls = tls  # what is known of a handshake that failed part-way

    @property
    def problem(self) -> Problem:
        return Problem(self.reason, str(self))


class TlsProbe:
    kind: ClassVar[str] = "tls"
    target_reasons: ClassVar[tuple[Reason, ...]] = (
        Reason.DNS_ERROR,
        Reason.CONNECT_REFUSED,
        Reason.CONNECT_TIMEOUT,
        Reason.CONNECT_FAILED,
        Reason.STARTTLS_FAILED,
        Reason.HANDSHAKE_TIMEOUT,
        Reason.HANDSHAKE_FAILED,
        Reason.PROTOCOL_ERROR,
        Reason.CERT_EXPIRED,
        Reason.CERT_NOT_YET_VALID,
        Reason.HOSTNAME_MISMATCH,
        Reason.SELF_SIGNED,
        Reason.UNTRUSTED_ROOT,
        Reason.INCOMPLETE_CHAIN,
        Reason.CHAIN_INVALID,
        Reason.CLIENT_CERT_REQUIRED,
        Reason.CLIENT_CERT_REJECTED,
        Reason.HTTP_UNAUTHORIZED,
        Reason.HTTP_FORBIDDEN,
        Reason.HTTP_UNEXPECTED_STATUS,
        Reason.HTTP_UNEXPECTED_HEADER,
        Reason.HTTP_UNEXPECTED_BODY,
        Reason.WEAK_SIGNATURE,
        Reason.REVOKED,
        *OCSP_REASONS,
        *CRL_REASONS,
        *EXPECT_REASONS,
        Reason.INTERNAL_ERROR,
    )
    source_reasons: ClassVar[tuple[Reason, ...]] = (Reason.DNS_ERROR,)
    concurrent_targets: ClassVar[bool] = True
    keeps_last_good: ClassVar[bool] = True
    # Every wait of a run goes through probes.cpu_slots: a round runs in event loops.
    runs_in_event_loop: ClassVar[bool] = True

    def __init__(self, settings: TlsSettings, defaults: ProbeDefaults | None = None) -> None:
        self.settings = settings
        defaults = defaults or ProbeDefaults()
        trust = settings.trust or defaults.trust
        self.trust = TrustStore.from_settings(trust)
        self.profile = choose_profile(settings.verify, trust)
        self.allow_networks = defaults.allow_networks
        self.revocation = defaults.revocation or RevocationChecker()
        self.client_certificates: tuple[CertObservation, ...] = ()
        self.client = self._build_client()
        discovered = settings.kubernetes.max_targets if settings.kubernetes is not None else 0
        capacity = max(MEMO_SIZE, MEMO_PER_TARGET * (len(settings.targets) + discovered))
        self._memo = ChainMemo(self.trust, capacity, self.profile)
        self._source = KubeEndpoints(settings.kubernetes) if settings.kubernetes is not None else None
        self._endpoints: dict[str, Endpoint] = {}  # the discovered targets of the latest round

    def set_wake(self, wake: Callable[[], None]) -> None:
        """Called by the scheduler: ``wake()`` runs the round now.  A discovery
        source calls it when a watch event adds, changes or removes an endpoint."""
        if self._source is not None:
            self._source.on_change = wake

    def close(self) -> None:
        if self._source is not None:
            self._source.close()

    # -- configuration -----------------------------------------------------------

    def _build_client(self) -> TlsClient:
        revocation = self.settings.revocation
        client = TlsClient(self.settings.alpn, request_staple=revocation is not None and revocation.stapled)
        if self.settings.client_cert is not None:
            chain, key = self._load_client_cert(self.settings.client_cert)
            try:
                client.use_client_certificate(chain, key)
            except Exception as exc:  # noqa: BLE001 - OpenSSL's refusal, named
                # A key that is not the certificate's, or a certificate or key that
                # security level 2 refuses (an RSA key under 2048 bits, say).
                raise ValueError(f"client_cert: OpenSSL refused the certificate or key ({exc})") from None
            self.client_certificates = tuple(
                CertObservation(index, "client", facts_from_certificate(cert)) for index, cert in enumerate(chain)
            )
        return client

    @staticmethod
    def _load_client_cert(client: ClientCert) -> tuple[list[x509.Certificate], ClientKey]:
        """The chain (leaf first) and key; a ValueError naming the file when one
        does not load (never the password: a password that cannot be read is a
        ValueError naming where it was looked for)."""
        password = read_secret(client.password_env, client.password_file, "client_cert.password")
        if client.pkcs12_file:
            with open(client.pkcs12_file, "rb") as handle:
                bundle = pkcs12.load_pkcs12(handle.read(), password)
            if bundle.cert is None or bundle.key is None:
                raise ValueError(f"{client.pkcs12_file}: PKCS#12 holds no certificate and key")
            chain = [bundle.cert.certificate, *(c.certificate for c in bundle.additional_certs)]
            key: object = bundle.key
        else:
            assert client.cert_file and client.key_file
            with open(client.cert_file, "rb") as handle:
                data = handle.read()
            try:
                chain = x509.load_pem_x509_certificates(data)
            except ValueError:
                raise ValueError(f"client_cert.cert_file {client.cert_file}: holds no PEM certificate") from None
            with open(client.key_file, "rb") as handle:
                data = handle.read()
            try:
                key = serialization.load_pem_private_key(data, password)
            except (ValueError, TypeError) as exc:
                raise ValueError(f"client_cert.key_file {client.key_file}: not a usable private key ({exc})") from None
        if not isinstance(key, CLIENT_KEY_TYPES):
            raise ValueError(f"client_cert: a {type(key).__name__} cannot sign a TLS handshake")
        return chain, key

    # -- discovery ---------------------------------------------------------------

    def targets(self) -> Discovery:
        static = self._static_targets()
        if self._source is None:
            return static
        found = self._source.look()
        previous, self._endpoints = self._endpoints, found.endpoints
        # Unchanged since the last round: a round woken early for a new endpoint may
        # carry these over instead of probing them again (the scheduler decides).
        carried = frozenset(t for t, e in found.endpoints.items() if previous.get(t) == e)
        return Discovery(
            (*static.targets, *(t for t in found.endpoints if t not in static.targets)),
            (*static.errors, *found.errors),
            up=found.up,
            scopes=found.scopes,
            watch_restarts=found.watch_restarts,
            carried=carried,
            dropped=found.dropped,
        )

    def _static_targets(self) -> Discovery:
        if self.settings.resolve != "all":
            return Discovery(self.settings.targets)
        targets: list[str] = []
        errors: list[SourceError] = []
        for target in self.settings.targets:
            host, port = split_target(target)
            try:
                addresses = _resolve(host, port, self.settings.ip_version, time.monotonic() + 10)
            except _Failure as failure:
                errors.append(SourceError(failure.reason, target, f"{target}: {failure}"))
                targets.append(target)  # probed (and failing) as a whole
                continue
            targets.extend(f"{target}@{address}" for address in dict.fromkeys(a for a, _ in addresses))
        return Discovery(tuple(targets), tuple(errors))

    # -- one run -----------------------------------------------------------------

    def run(self, target: str, ctx: ProbeContext) -> ProbeResult:
        # The run computes in a CPU slot and gives it back at every wait on the
        # network (probes.cpu_slots), so dozens in flight do not fight for the GIL.
        with cpu_slots.held():
            return self._run_target(target, ctx)

    def _run_target(self, target: str, ctx: ProbeContext) -> ProbeResult:
        endpoint = self._endpoints.get(target)
        if endpoint is not None:
            return self._run_discovered(endpoint, ctx)
        started = time.monotonic()
        name, _, pinned_address = target.partition("@")
        host, port = split_target(name)
        server_name = self.settings.server_name or ("" if is_ip(host) else host)
        labels = (("target", name), ("address", pinned_address)) if pinned_address else ()
        observations: list[CertObservation] = list(self.client_certificates)
        try:
            return self._run(host, port, server_name, pinned_address, ctx, started, observations, labels)
        except _Failure as failure:
            outcome = tls_outcome(TlsObservation(handshake_failure=failure.problem))
            return _result(outcome, name, started, observations, ctx, labels, failure.tls)

    def _run_discovered(self, endpoint: Endpoint, ctx: ProbeContext) -> ProbeResult:
        """An endpoint found in the cluster: its address checked against the egress
        policy unless configured, then the usual run, then served vs stored."""
        started = time.monotonic()
        observations: list[CertObservation] = list(self.client_certificates)
        labels = endpoint.labels
        where = f"{endpoint.host}:{endpoint.port}"
        try:
            pinned = ""
            if not endpoint.trusted:
                with ctx.phase("dns") as phase:
                    try:
                        pinned = cpu_slots.blocking(
                            lambda: resolve_checked(endpoint.host, endpoint.port, self.allow_networks, ctx.deadline)
                        )
                    except FetchError as exc:
                        reason = Reason.CONNECT_FAILED if exc.kind == "refused" else Reason.DNS_ERROR
                        phase.fail(reason, str(exc))
                        raise _Failure(reason, str(exc)) from None
            result = self._run(
                endpoint.host, endpoint.port, endpoint.server_name, pinned, ctx, started, observations, labels
            )
        except _Failure as failure:
            outcome = tls_outcome(TlsObservation(handshake_failure=failure.problem))
            result = _result(outcome, f"{endpoint.target} ({where})", started, observations, ctx, labels, failure.tls)
        stored = None
        leaf = next((o.cert for o in result.certificates if o.role == "leaf" and o.index == 0), None)
        if leaf is not None and endpoint.secrets and self._source is not None:
            leaves = self._source.stored_leaves(endpoint.secrets)
            if leaves is not None:
                secret_labels = (("secret_namespace", endpoint.secrets[0][0]), ("secret_name", endpoint.secrets[0][1]))
                stored = StoredComparison(compare(leaf, leaves), secret_labels)
        return replace(result, info_labels=endpoint.info_labels, stored=stored)

    def _run(
        self,
        host: str,
        port: int,
        server_name: str,
        pinned_address: str,
        ctx: ProbeContext,
        started: float,
        observations: list[CertObservation],
        labels: tuple[tuple[str, str], ...],
    ) -> ProbeResult:
        settings = self.settings
        ctx.set_attribute("server.address", host)
        ctx.set_attribute("server.port", port)
        if pinned_address or is_ip(host):
            literal = pinned_address or host  # no lookup, so no dns phase
            addresses = [(literal, int(socket.AF_INET6 if ":" in literal else socket.AF_INET))]
        else:
            with ctx.phase("dns") as phase:
                addresses = _resolve(host, port, settings.ip_version, ctx.deadline)
                phase.set("certscope.dns.addresses", len(addresses))
        sock, address = _connect(addresses, port, ctx)
        session: TlsConnection | None = None
        ctx.set_attribute("network.peer.address", address)
        ctx.set_attribute("network.peer.port", port)
        try:
            if protocol := settings.starttls:
                with ctx.phase("starttls") as phase:
                    phase.set("certscope.starttls.protocol", protocol)
                    try:
                        cpu_slots.blocking(lambda: upgrade(protocol, sock, server_name or host, ctx.deadline))
                    except (StartTlsError, OSError) as exc:
                        raise _Failure(Reason.STARTTLS_FAILED, f"{settings.starttls} STARTTLS: {exc}") from None

            phase_start = time.monotonic()
            with ctx.phase("tls.handshake") as phase:
                try:
                    session = self.client.connect(sock, server_name, ctx.deadline)
                except TimeoutError:
                    raise _Failure(Reason.HANDSHAKE_TIMEOUT, "handshake did not finish before the deadline") from None
                except HandshakeFailed as exc:
                    # A TLS 1.2 server refuses a client certificate after sending its
                    # own chain: record what arrived before reporting the failure.
                    ders, served = exc.session.peer_chain(settings.max_chain_length)
                    observations.extend(self._memo.observe(ders, served))
                    failure = self._handshake_failure(exc.session, exc)
                    if served and failure.reason in (Reason.CLIENT_CERT_REQUIRED, Reason.CLIENT_CERT_REJECTED):
                        verdict = self._memo.verdict(ders, served, server_name or host)
                        failure.tls = _failed_handshake_facts(
                            address, server_name, time.monotonic() - phase_start, verdict
                        )
                    raise failure from None
                except OSError as exc:
                    raise _Failure(Reason.HANDSHAKE_FAILED, f"connection lost during the handshake: {exc}") from None
                handshake_seconds = time.monotonic() - phase_start
                phase.set("tls.established", True)

            ders, served = session.peer_chain(settings.max_chain_length)
            served_observations = self._memo.observe(ders, served)
            observations.extend(served_observations)
            version = session.version
            cipher = session.cipher
            alpn = session.alpn

            client_auth, http_status, after_failure = self._round_trip(
                session, server_name or host, ctx, handshake_seconds
            )

            with ctx.phase("verify") as phase:
                verdict = self._memo.verdict(ders, served, server_name or host)
                phase.set("certscope.chain.length", len(served))
                phase.set("certscope.chain.verified", verdict.chain_verified)
                if verdict.hostname_match is not None:
                    phase.set("certscope.hostname.match", verdict.hostname_match)
                if verdict.reason is not Reason.OK:
                    phase.event(
                        "certscope.verification_error",
                        **{"error.type": verdict.reason.value, "certscope.message": verdict.message},
                    )
                    phase.fail(verdict.reason, verdict.message)
        finally:
            (session or sock).close()  # a session owns its socket

        revocation_settings = settings.revocation or RevocationSettings()
        revocation: list[RevocationFacts] = []
        if revocation_settings.enabled:  # OCSP and CRL fetches block inside the library
            endpoint = ServedEndpoint(address, port, server_name, session.staple if session is not None else None)
            revocation = cpu_slots.blocking(
                lambda: served_chain_revocation(
                    self.revocation,
                    revocation_settings,
                    served,
                    verdict.verified_path,
                    endpoint,
                    ctx,
                    self.allow_networks,
                )
            )
        verified_not_after = (
            min(c.not_valid_after_utc for c in verdict.verified_path).timestamp()
            if verdict.chain_verified and verdict.verified_path
            else None
        )
        facts = TlsFacts(
            address=address,
            server_name=server_name,
            version=version,
            cipher=cipher,
            alpn=alpn,
            handshake_seconds=handshake_seconds,
            chain_verified=verdict.chain_verified,
            chain_complete=verdict.chain_complete,
            hostname_match=verdict.hostname_match,
            client_auth=client_auth,
            http_status=http_status,
            verified_chain_not_after=verified_not_after,
        )
        outcome = tls_outcome(
            TlsObservation(
                verdict=verdict,
                after_handshake=after_failure.problem if after_failure is not None else None,
                revocation=revocation,
                leaf=served_observations[0].cert if served_observations else None,
                expect=settings.expect,
                hard_fail=settings.revocation is not None and settings.revocation.hard_fail,
            )
        )
        # The memo's own tuple when there is no client certificate: a chain seen
        # before then adds no new object to the result.
        certificates = served_observations if not self.client_certificates else tuple(observations)
        return _result(outcome, f"{host}:{port}", started, certificates, ctx, labels, facts, revocation)

    def _handshake_failure(self, session: TlsConnection, exc: HandshakeError) -> _Failure:
        text = f"{exc.code} {exc}".upper()
        requested = session.certificate_requested
        sent = self.settings.client_cert is not None
        if "CERTIFICATE_REQUIRED" in text or (requested and not sent and "HANDSHAKE_FAILURE" in text):
            return _Failure(Reason.CLIENT_CERT_REQUIRED, "the server requires a client certificate")
        if sent and requested and any(alert in text for alert in _CLIENT_CERT_ALERTS):
            return _Failure(Reason.CLIENT_CERT_REJECTED, f"the server rejected the client certificate ({exc.code})")
        if any(marker in text for marker in _PROTOCOL_MARKERS):
            return _Failure(Reason.PROTOCOL_ERROR, f"no common protocol version or cipher ({exc.code})")
        return _Failure(Reason.HANDSHAKE_FAILED, f"handshake failed: {exc.code or exc}")

    def _round_trip(
        self, tls: TlsConnection, host: str, ctx: ProbeContext, handshake_seconds: float
    ) -> tuple[str, int | None, _Failure | None]:
        """After the handshake: (client_auth result, HTTP status, failure or None)."""
        requested = tls.certificate_requested
        sent = self.settings.client_cert is not None
        http = self.settings.http
        failure: _Failure | None = None
        status: int | None = None
        if http is not None or (requested and tls.version == "TLSv1.3"):
            with ctx.phase("http" if http is not None else "client_auth") as phase:
                try:
                    if http is not None:
                        phase.set("http.request.method", http.method)
                        response = _http_exchange(tls, http, host, ctx)
                        status = response.status
                        phase.set("http.response.status_code", status)
                        failure = _http_failure(response, http)
                    else:
                        # A rejection comes one round trip after our Finished; the handshake
                        # took about one, so twice its time (at least 50 ms) is plenty.  An
                        # acceptance with a session ticket ends the wait as soon as it comes;
                        # silence until the end of the wait is an acceptance too.
                        wait = min(self.settings.client_auth_wait, max(0.05, 2 * handshake_seconds))
                        evidence = tls.client_verdict(min(ctx.deadline, time.monotonic() + wait))
                        phase.set("certscope.client_auth.evidence", evidence)
                except HandshakeError as exc:
                    failure = self._handshake_failure(tls, exc)
                except TimeoutError:
                    failure = _Failure(Reason.HANDSHAKE_TIMEOUT, "no answer after the handshake before the deadline")
                except (OSError, ValueError) as exc:
                    failure = _Failure(Reason.PROTOCOL_ERROR, f"after the handshake: {exc}")
                if failure is not None:
                    phase.fail(failure.reason, str(failure))
        if not requested:
            client_auth = "not_requested"
        elif failure is not None and failure.reason in (Reason.CLIENT_CERT_REQUIRED, Reason.CLIENT_CERT_REJECTED):
            client_auth = "rejected"
        else:
            client_auth = "accepted" if sent else "not_sent"
        return client_auth, status, failure


def _result(
    outcome: Outcome,
    where: str,
    started: float,
    observations: Sequence[CertObservation],
    ctx: ProbeContext,
    labels: tuple[tuple[str, str], ...],
    tls: TlsFacts | None,
    revocation: Sequence[RevocationFacts] = (),
) -> ProbeResult:
    """A run's result: its outcome (``probes.tls_outcome``), its message led by
    ``where`` (the endpoint), and what it observed."""
    return ProbeResult(
        success=outcome.success,
        reason=outcome.reason,
        duration_seconds=time.monotonic() - started,
        certificates=tuple(observations),
        phases=tuple(ctx.phases),
        message=f"{where}: {outcome.message}" if outcome.message else "",
        facts=tls,
        revocation=tuple(revocation),
        target_labels=labels,
    )


def _http_failure(response: HttpResponse, http: HttpCheck) -> _Failure | None:
    """The failure an HTTP answer after the handshake means, if any: the status
    first, then the header rules, then the body rules.  Messages name the rule,
    never a header value or the body (either may carry a token)."""
    status = response.status
    # nginx answers a missing or refused client certificate with a 400 page
    # instead of a TLS alert.
    if status == 400 and b"No required SSL certificate was sent" in response.body:
        return _Failure(Reason.CLIENT_CERT_REQUIRED, "the server requires a client certificate (HTTP 400)")
    if status == 400 and b"The SSL certificate error" in response.body:
        return _Failure(Reason.CLIENT_CERT_REJECTED, "the server rejected the client certificate (HTTP 400)")
    if status == 401:
        return _Failure(Reason.HTTP_UNAUTHORIZED, f"HTTP {status} for {http.path}")
    if status == 403:
        return _Failure(Reason.HTTP_FORBIDDEN, f"HTTP {status} for {http.path}")
    if status not in http.expect_status:
        return _Failure(Reason.HTTP_UNEXPECTED_STATUS, f"HTTP {status} for {http.path}")
    for rule in http.fail_if_header_matches:
        values = response.header_values(rule.header)
        if not values and not rule.allow_missing:
            return _Failure(Reason.HTTP_UNEXPECTED_HEADER, f"{http.path}: the answer has no {rule.header} header")
        if any(re.search(rule.regexp, value) for value in values):
            return _Failure(Reason.HTTP_UNEXPECTED_HEADER, f"{http.path}: header {rule.header} matches {rule.regexp!r}")
    for rule in http.fail_if_header_not_matches:
        values = response.header_values(rule.header)
        if not values:
            if rule.allow_missing:
                continue
            return _Failure(Reason.HTTP_UNEXPECTED_HEADER, f"{http.path}: the answer has no {rule.header} header")
        if not any(re.search(rule.regexp, value) for value in values):
            return _Failure(
                Reason.HTTP_UNEXPECTED_HEADER, f"{http.path}: header {rule.header} does not match {rule.regexp!r}"
            )
    if http.reads_body:
        text = response.body.decode("utf-8", errors="replace")
        truncated = f" (first {http.max_body_bytes} bytes read)" if response.truncated else ""
        for pattern in http.fail_if_body_matches_regexp:
            if re.search(pattern, text):
                return _Failure(Reason.HTTP_UNEXPECTED_BODY, f"{http.path}: the body matches {pattern!r}")
        for pattern in http.fail_if_body_not_matches_regexp:
            if not re.search(pattern, text):
                return _Failure(
                    Reason.HTTP_UNEXPECTED_BODY, f"{http.path}: the body does not match {pattern!r}{truncated}"
                )
    return None


_CLIENT_CERT_ALERTS = (
    "UNKNOWN_CA",
    "BAD_CERTIFICATE",
    "CERTIFICATE_UNKNOWN",
    "UNSUPPORTED_CERTIFICATE",
    "CERTIFICATE_EXPIRED",
    "CERTIFICATE_REVOKED",
    "ACCESS_DENIED",
    "DECRYPT_ERROR",
    "HANDSHAKE_FAILURE",
)
_PROTOCOL_MARKERS = (
    "UNSUPPORTED_PROTOCOL",
    "PROTOCOL_VERSION",
    "WRONG_VERSION_NUMBER",
    "NO_PROTOCOLS_AVAILABLE",
    "NO_SHARED_CIPHER",
    "NO_CIPHERS_AVAILABLE",
    "VERSION_TOO_LOW",
    "INSUFFICIENT_SECURITY",
)


def _resolve(host: str, port: int, ip_version: str, deadline: float) -> list[tuple[str, int]]:
    family = {"ipv4": socket.AF_INET, "ipv6": socket.AF_INET6}.get(ip_version, socket.AF_UNSPEC)
    if is_ip(host):
        return [(host, int(socket.AF_INET6 if ":" in host else socket.AF_INET))]
    try:
        infos = cpu_slots.blocking(lambda: getaddrinfo_by(host, port, family, deadline))
    except TimeoutError as exc:
        raise _Failure(Reason.DNS_ERROR, str(exc)) from None
    except socket.gaierror as exc:
        raise _Failure(Reason.DNS_ERROR, f"cannot resolve {host}: {exc.strerror}") from None
    addresses = [(str(info[4][0]), int(info[0])) for info in infos]
    if not addresses:
        raise _Failure(Reason.DNS_ERROR, f"{host} has no {ip_version} address")
    return addresses


def _connect(addresses: list[tuple[str, int]], port: int, ctx: ProbeContext) -> tuple[socket.socket, str]:
    """Connect to the first address that answers (in resolver order)."""
    last: _Failure | None = None
    with ctx.phase("connect") as phase:
        for attempt, (address, family) in enumerate(addresses, 1):
            phase.set("certscope.connect.attempts", attempt)
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                _open(sock, address, port, ctx.deadline)
            except TimeoutError:
                sock.close()
                last = _Failure(Reason.CONNECT_TIMEOUT, f"no answer from {address}:{port} before the deadline")
                break  # the deadline is spent
            except ConnectionRefusedError:
                sock.close()
                last = _Failure(Reason.CONNECT_REFUSED, f"connection to {address}:{port} refused")
                continue
            except OSError as exc:
                sock.close()
                last = _Failure(Reason.CONNECT_FAILED, f"cannot connect to {address}:{port}: {exc.strerror or exc}")
                continue
            sock.settimeout(max(ctx.remaining(), 0.001))
            phase.set("network.peer.address", address)
            return sock, address
        assert last is not None
        raise last


def _open(sock: socket.socket, address: str, port: int, deadline: float) -> None:
    """``sock.connect()`` against the deadline, non-blocking, so that the CPU slot
    is given back only for a connection still on its way."""
    sock.setblocking(False)
    code = sock.connect_ex((address, port))
    if code == errno.EINPROGRESS:
        cpu_slots.wait_ready(sock, deadline, write=True)
        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if code:
        raise OSError(code, os.strerror(code))  # ConnectionRefusedError for ECONNREFUSED


def _failed_handshake_facts(address: str, server_name: str, seconds: float, verdict: Verdict) -> TlsFacts:
    """Facts of a handshake the server broke off over the client certificate; its
    own chain arrived before that and is judged as usual."""
    return TlsFacts(
        address=address,
        server_name=server_name,
        version="",
        cipher="",
        alpn="",
        handshake_seconds=seconds,
        chain_verified=verdict.chain_verified,
        chain_complete=verdict.chain_complete,
        hostname_match=verdict.hostname_match,
        client_auth="rejected",
    )


@dataclass(frozen=True)
class HttpResponse:
    status: int
    headers: tuple[tuple[str, str], ...]  # (lower-case name, value), in order
    body: bytes  # what was read of it (decoded from chunks): for the rules, or a 400's explanation
    truncated: bool = False  # the body was longer than was read

    def header_values(self, name: str) -> list[str]:
        wanted = name.lower()
        return [value for key, value in self.headers if key == wanted]


def _http_exchange(tls: TlsConnection, http: HttpCheck, host: str, ctx: ProbeContext) -> HttpResponse:
    """One request on the connection and its answer: the head, and the body when
    the rules need it (at most ``max_body_bytes``) or the status is 400."""
    request = (
        f"{http.method} {http.path} HTTP/1.1\r\nHost: {http.host or host}\r\n"
        f"User-Agent: certscope/{__version__}\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    )
    tls.sendall(request.encode("ascii"), ctx.deadline)
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = tls.recv(4096, ctx.deadline)
        if not chunk:
            break
        received += chunk
        if len(received) > MAX_HTTP_HEADER:
            raise ValueError("HTTP response head longer than 64 KiB")
    head, _, rest = received.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise ValueError(f"not an HTTP response: {lines[0][:80]!r}")
    status = int(parts[1])
    headers = tuple(
        (name.strip().lower(), value.strip()) for name, sep, value in (line.partition(":") for line in lines[1:]) if sep
    )
    response = HttpResponse(status, headers, rest)
    if http.reads_body and http.method != "HEAD":
        body, truncated = _read_body(tls, response, http.max_body_bytes, ctx)
        return HttpResponse(status, headers, body, truncated)
    if status == 400 and len(received) < MAX_HTTP_PEEK:
        # Some servers (nginx) explain a client-certificate refusal in the body.
        try:
            rest += tls.recv(MAX_HTTP_PEEK, min(ctx.deadline, time.monotonic() + 0.2))
        except (TimeoutError, HandshakeError, OSError):
            pass
        return HttpResponse(status, headers, rest)
    return response


def _read_body(tls: TlsConnection, response: HttpResponse, limit: int, ctx: ProbeContext) -> tuple[bytes, bool]:
    """The body after the head (Content-Length, chunked, or up to the close), at
    most ``limit`` bytes of it once decoded; and whether there was more."""
    raw = response.body
    lengths = response.header_values("content-length")
    chunked = any("chunked" in v.lower() for v in response.header_values("transfer-encoding"))
    expected = int(lengths[0]) if lengths and lengths[0].isdigit() and not chunked else None
    # Read a little past the limit, to tell a body of exactly ``limit`` bytes from a
    # longer one; chunk framing adds a few bytes per chunk.
    cap = 2 * limit + 4096 if chunked else limit + 1

    def complete() -> bool:
        if expected is not None:
            return len(raw) >= expected
        return chunked and raw.endswith(b"0\r\n\r\n")

    while len(raw) < cap and not complete():
        chunk = tls.recv(65536, ctx.deadline)
        if not chunk:  # the server closed the session
            break
        raw += chunk
    body = _dechunk(raw) if chunked else raw
    if expected is not None:
        body = body[:expected]
    return body[:limit], len(body) > limit


def _dechunk(data: bytes) -> bytes:
    """The payload of a chunked body (as much of it as arrived)."""
    body = b""
    while data:
        size_line, sep, data = data.partition(b"\r\n")
        if not sep:
            break
        try:
            size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
        except ValueError:
            break
        if size == 0:
            break
        body += data[:size]
        data = data[size + 2 :]
    return body
