"""The whole exposition of a fixed estate, byte for byte.

A deterministic set of probe results, one or more of every kind and every fact the
renderer knows (TLS with OCSP, CRL and stapled revocation, per-address targets, the
ocsp and crl kinds, a CA with an ACME issuance and its phases, Kubernetes Secrets
with their labels and policy, endpoints discovered in Kubernetes against their
Secrets, key exposure, a served certificate renewed on disk, a
key shared by two subjects, rotations, last-good certificates, exemplars), published
through the store round by round with fixed clocks, is rendered as ``/metrics`` would
serve it (text and OpenMetrics) and compared with the checked-in files in
``tests/golden/``.  A refactoring of the store or the renderer must leave them as
they are; a deliberate change of the output shows up here as a diff to review.

To regenerate after a deliberate change (never in CI)::

    CERTSCOPE_UPDATE_GOLDEN=1 python -m pytest tests/test_golden_metrics.py

The build's own version and the Python version are replaced by placeholders, so
the files do not change with either.
"""

from __future__ import annotations

import os
import platform
from dataclasses import replace
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from exporter import __version__
from exporter.collector import SnapshotCollector
from exporter.exposition import encode_snapshot
from exporter.store import ProbeInfo, ResultStore
from probes.ca import CaProbe
from probes.ca_facts import CaFacts, IssuanceFacts
from probes.crl import CrlProbe
from probes.crl_facts import CrlFacts
from probes.files import FilesProbe
from probes.kubediscovery import LOCATION_LABELS
from probes.kubediscovery import SECRET_LABELS as DISCOVERY_SECRET_LABELS
from probes.kubernetes import SECRET_LABELS, KubernetesProbe
from probes.ocsp import OcspProbe
from probes.reasons import Reason
from probes.result import ISSUED_ROLE, CertFacts, CertObservation, Discovery, ProbeResult, SourceError, StoredComparison
from probes.revocation_facts import RevocationFacts
from probes.tls import TlsProbe
from probes.tls_facts import TlsFacts

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("CERTSCOPE_UPDATE_GOLDEN") == "1"
T0 = 1_760_000_000.0  # the first round's wall clock
DAY = 86400.0
# What Prometheus sends: the classic text format, and OpenMetrics (exemplars).
TEXT_ACCEPT = "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
OPENMETRICS_ACCEPT = "application/openmetrics-text;version=1.0.0;q=0.9,text/plain;version=0.0.4;q=0.5"


def cert(name: str, serial: str, *, spki: str = "", not_before: float = T0 - 30 * DAY, **changes: object) -> CertFacts:
    facts = CertFacts(
        fingerprint_sha256=(serial * 64)[:64],
        not_before=not_before,
        not_after=not_before + 90 * DAY,
        subject=f"CN={name}",
        subject_cn=name,
        issuer="CN=Golden Issuing CA",
        issuer_cn="Golden Issuing CA",
        serial=serial,
        sans=(name, f"www.{name}"),
        key_type="ec",
        key_bits=256,
        signature_algorithm="ecdsa-with-SHA256",
        is_ca=False,
        self_issued=False,
        extended_key_usage=("serverAuth",),
        spki_sha256=spki or (serial[::-1] * 64)[:64],
    )
    return replace(facts, **changes)  # type: ignore[arg-type]


INTERMEDIATE = cert(
    "Golden Issuing CA",
    "1a",
    is_ca=True,
    issuer="CN=Golden Root",
    issuer_cn="Golden Root",
    sans=(),
    not_after=T0 + 900 * DAY,
)
ROOT = cert("Golden Root", "2b", is_ca=True, self_issued=True, sans=(), key_type="rsa", key_bits=4096)
SHARED_KEY = "5e" * 32
SITE = cert("site.test", "3c")  # what the endpoint serves
SITE_RENEWED = cert("site.test", "4d", not_before=T0 - 2 * DAY)  # stored on disk, not yet served
API = cert("api.test", "6f", spki=SHARED_KEY)
INTERNAL = cert("internal.test", "7a", spki=SHARED_KEY)  # the same key as api.test: key reuse
ISSUED = cert("canary.acme.test", "8b", not_before=T0 - 60, not_after=T0 + 7 * DAY)
LONG_SANS = cert("many.test", "9c", sans=tuple(f"host{n:03d}.many.test" for n in range(40)))


def info(name: str, probe: type, **changes: object) -> ProbeInfo:
    base = ProbeInfo(
        name=name,
        kind=probe.kind,  # type: ignore[attr-defined]
        interval=60.0,
        warning_seconds=28 * DAY,
        critical_seconds=7 * DAY,
        labels={},
        target_reasons=probe.target_reasons,  # type: ignore[attr-defined]
        source_reasons=probe.source_reasons,  # type: ignore[attr-defined]
        keeps_last_good=probe.keeps_last_good,  # type: ignore[attr-defined]
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def chain(*certs: CertFacts) -> tuple[CertObservation, ...]:
    roles = ["leaf", *["intermediate"] * (len(certs) - 2), "root"] if len(certs) > 1 else ["leaf"]
    return tuple(
        CertObservation(index, role, facts) for index, (role, facts) in enumerate(zip(roles, certs, strict=True))
    )


def ok(seconds: float, *certificates: CertObservation, **fields: object) -> ProbeResult:
    return ProbeResult(True, Reason.OK, seconds, tuple(certificates), **fields)  # type: ignore[arg-type]


def tls_facts(address: str, server_name: str, **changes: object) -> TlsFacts:
    facts = TlsFacts(
        address=address,
        server_name=server_name,
        version="TLSv1.3",
        cipher="TLS_AES_128_GCM_SHA256",
        alpn="h2",
        handshake_seconds=0.012,
        chain_verified=True,
        chain_complete=True,
        hostname_match=True,
        client_auth="not_requested",
        http_status=200,
        verified_chain_not_after=SITE.not_after,
    )
    return replace(facts, **changes)  # type: ignore[arg-type]


OCSP_GOOD = RevocationFacts(
    method="ocsp",
    state="good",
    reason=Reason.OK,
    source="http://ocsp.golden.test/",
    this_update=T0 - 3600,
    next_update=T0 + 3 * DAY,
    produced_at=T0 - 3600,
    duration_seconds=0.034,
    http_status=200,
    requested_at=T0 - 5,
)
CRL_GOOD = RevocationFacts(
    method="crl",
    state="good",
    reason=Reason.OK,
    source="http://crl.golden.test/issuing.crl",
    this_update=T0 - DAY,
    next_update=T0 + 6 * DAY,
    duration_seconds=0.05,
    index=1,
    role="intermediate",
)
STAPLED_NONE = RevocationFacts(method="stapled", state="not_applicable", reason=Reason.OK, source="")


def build_store() -> ResultStore:
    store = ResultStore()
    files = info("disk", FilesProbe, labels={"team": "platform"})
    tls = info("site", TlsProbe, labels={"team": "web", "owner": "alice"})
    tls_all = info("site-all", TlsProbe)
    ocsp = info("responder", OcspProbe)
    crl = info("issuing-crl", CrlProbe)
    kube = info("cluster", KubernetesProbe, labels={"team": "platform"}, interval=30.0)
    ca = info("acme", CaProbe, warning_seconds=3 * DAY, critical_seconds=DAY)
    ingresses = info("ingresses", TlsProbe)
    store.configure([files, tls, tls_all, ocsp, crl, kube, ca, ingresses], "golden.yaml")
    store.record_reload(True, now=T0 - 10)

    for round_no in range(2):
        now = T0 + round_no * 60
        renewed = round_no == 1

        # files: a renewal on disk in the second round (a rotation), a world-readable
        # key, a bundle, a file that fails, a keystore alias label.
        bad = SourceError(Reason.PARSE_ERROR, "/etc/pki/broken.pem", "/etc/pki/broken.pem: bad base64 in PEM block")
        store.publish_round(
            files,
            Discovery(("/etc/pki/site.pem", "/etc/pki/api.pem", "/etc/pki/broken.pem", "/etc/pki/store.p12")),
            {
                "/etc/pki/site.pem": (ok(0.002, *chain(SITE_RENEWED if renewed else SITE, INTERMEDIATE)), now),
                "/etc/pki/api.pem": (ok(0.001, *chain(API), key_exposure=("other_readable", "group_readable")), now),
                "/etc/pki/broken.pem": (
                    ProbeResult(False, Reason.PARSE_ERROR, 0.001, errors=(bad,), message=bad.message),
                    now,
                ),
                "/etc/pki/store.p12": (
                    ok(0.004, CertObservation(0, "leaf", LONG_SANS, (("alias", 'many "quoted"\nalias'),))),
                    now,
                ),
            },
            0.25,
        )

        # tls: one named target (OCSP, CRL, stapled), and per-address targets of
        # resolve: all, one of which fails in the second round (last good kept).
        trace = "0af7651916cd43dd8448eb211c80319c"
        site_result = ok(
            0.08,
            *chain(SITE, INTERMEDIATE, ROOT),
            facts=tls_facts("127.0.0.1", "site.test"),
            revocation=(OCSP_GOOD, CRL_GOOD, STAPLED_NONE),
            trace_id=trace if renewed else "",
            phases=(("dns", 0.001), ("connect", 0.002), ("tls.handshake", 0.012)),
        )
        v4 = ("api.test:443@127.0.0.1", "127.0.0.1")
        v6 = ("api.test:443@::1", "::1")
        per_address = {
            target: ok(
                0.02,
                *chain(API, INTERMEDIATE),
                facts=tls_facts(address, "api.test", alpn="", http_status=None, client_auth="accepted"),
                target_labels=(("target", "api.test:443"), ("address", address)),
            )
            for target, address in (v4, v6)
        }
        if renewed:
            per_address[v6[0]] = ProbeResult(
                False,
                Reason.HANDSHAKE_FAILED,
                0.5,
                facts=tls_facts(
                    "::1",
                    "api.test",
                    version="",
                    cipher="",
                    alpn="",
                    chain_verified=False,
                    chain_complete=False,
                    hostname_match=None,
                    client_auth="not_sent",
                    http_status=None,
                    verified_chain_not_after=None,
                    handshake_seconds=0.3,
                ),
                target_labels=(("target", "api.test:443"), ("address", "::1")),
                message="api.test:443: handshake failed",
            )
        store.publish_round(tls, Discovery(("site.test:443",)), {"site.test:443": (site_result, now)}, 0.09)
        store.publish_round(
            tls_all,
            Discovery(tuple(per_address)),
            {target: (result, now + 1) for target, result in per_address.items()},
            0.6,
        )

        # ocsp kind: revoked in the second round (first seen then).
        revoked = replace(
            OCSP_GOOD,
            state="revoked",
            reason=Reason.REVOKED,
            revocation_time=T0 + 30,
            revocation_reason="keyCompromise",
            from_cache=False,
        )
        check = revoked if renewed else replace(OCSP_GOOD, from_cache=True)
        store.publish_round(
            ocsp,
            Discovery(("/etc/pki/internal.pem",)),
            {
                "/etc/pki/internal.pem": (
                    ProbeResult(
                        not renewed,
                        Reason.REVOKED if renewed else Reason.OK,
                        0.04,
                        chain(INTERNAL),
                        revocation=(check,),
                    ),
                    now,
                )
            },
            0.05,
        )

        # crl kind: fetched, then served from the cache (no fetch duration).
        crl_facts = CrlFacts(
            url="http://crl.golden.test/issuing.crl",
            signature_valid=True,
            this_update=T0 - DAY,
            next_update=T0 + 6 * DAY,
            number=4711,
            entries=3,
            size_bytes=812,
            fetch_seconds=None if renewed else 0.05,
            http_status=304 if renewed else 200,
        )
        root_crl = replace(crl_facts, url="http://crl.golden.test/root.crl", number=None, entries=0, size_bytes=0)
        store.publish_round(
            crl,
            Discovery(("http://crl.golden.test/issuing.crl", "http://crl.golden.test/root.crl")),
            {
                "http://crl.golden.test/issuing.crl": (ok(0.06, facts=crl_facts), now),
                "http://crl.golden.test/root.crl": (
                    ok(0.03, facts=replace(root_crl, fetch_seconds=0.03, http_status=200)),
                    now,
                ),
            },
            0.06,
        )

        # kubernetes: Secrets with their labels, owner annotations, a per-object
        # threshold, a ConfigMap with a private key, scopes and watch restarts.
        def secret(namespace: str, name: str, key: str) -> tuple[tuple[str, str], ...]:
            return tuple(zip(SECRET_LABELS, (namespace, name, key), strict=True))

        kube_results = {
            "web/site-tls/tls.crt": ok(
                0.0,
                *chain(SITE_RENEWED, INTERMEDIATE),
                target_labels=secret("web", "site-tls", "tls.crt"),
                info_labels=(("owner", "bob"), ("issuer_name", "letsencrypt")),
                thresholds=(14 * DAY, -1.0),
            ),
            "web/site-tls/ca.crt": ok(0.0, *chain(ROOT), target_labels=secret("web", "site-tls", "ca.crt")),
            "configmap/web/leaky/key.pem": ok(
                0.0,
                target_labels=(
                    ("configmap_namespace", "web"),
                    ("configmap_name", "leaky"),
                    ("configmap_key", "key.pem"),
                ),
                key_exposure=("configmap",),
            ),
        }
        store.publish_round(
            kube,
            Discovery(
                tuple(kube_results),
                errors=(SourceError(Reason.API_FORBIDDEN, "secrets/kube-system", "secrets/kube-system: forbidden"),)
                if renewed
                else (),
                up=not renewed,
                scopes=(("secrets/web", True), ("secrets/kube-system", not renewed)),
                watch_restarts=(("expired", 1 + round_no), ("timeout", 4)),
            ),
            {target: (result, now) for target, result in kube_results.items()},
            0.3,
        )

        # tls discovering endpoints in Kubernetes: served vs the Secret's leaf, one
        # endpoint left out over max_targets, the watch scopes.
        def ingress(name: str) -> tuple[tuple[str, str], ...]:
            return tuple(zip(LOCATION_LABELS, ("Ingress", "web", name), strict=True))

        def secret_of(name: str) -> tuple[tuple[str, str], ...]:
            return tuple(zip(DISCOVERY_SECRET_LABELS, ("web", name), strict=True))

        discovered = {
            "ingress/web/site/site.test": ok(
                0.03,
                *chain(SITE, INTERMEDIATE),
                facts=tls_facts("10.0.0.7", "site.test"),
                target_labels=ingress("site"),
                info_labels=(("team", "web"),),
                stored=StoredComparison("stale" if renewed else "match", secret_of("site-tls")),
            ),
            "ingress/web/other/other.test": ok(
                0.03,
                *chain(LONG_SANS, INTERMEDIATE),
                facts=tls_facts("10.0.0.8", "other.test", hostname_match=False),
                target_labels=ingress("other"),
                stored=StoredComparison("secret_missing", secret_of("other-tls")),
            ),
        }
        store.publish_round(
            ingresses,
            Discovery(
                tuple(discovered),
                scopes=(("ingresses/web", True), ("secrets/web", True)),
                watch_restarts=(("timeout", 2),),
                dropped=1 + round_no,
            ),
            {target: (result, now) for target, result in discovered.items()},
            0.2,
        )

        # ca: an ACME issuance with its phases; the second is rate limited.
        issuance = IssuanceFacts(
            success=not renewed,
            reason=Reason.OK if not renewed else Reason.RATE_LIMITED,
            seconds=2.5 if not renewed else 0.4,
            phases=(("directory", 0.01), ("nonce", 0.005), ("account", 0.02), ("order", 0.03), ("challenge", 1.9))
            if not renewed
            else (("directory", 0.01), ("nonce", 0.004), ("order", 0.02)),
            retry_after=T0 + 3600 if renewed else None,
            message="rate limited" if renewed else "",
        )
        ca_facts = CaFacts(flavor="acme", up=True, response_seconds=0.011, issuance=issuance)
        ca_result = ProbeResult(
            not renewed,
            Reason.OK if not renewed else Reason.RATE_LIMITED,
            2.6,
            (CertObservation(0, ISSUED_ROLE, ISSUED),) if not renewed else (),
            facts=ca_facts,
        )
        store.publish_round(
            ca,
            Discovery(("https://acme.golden.test/directory",)),
            {"https://acme.golden.test/directory": (ca_result, now)},
            2.6,
        )
    return store


def exposition(accept: str) -> str:
    """The snapshot's part of a ``/metrics`` body for a scraper sending ``accept``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(build_store()))
    client_encoder, content_type = choose_encoder(accept)
    body = encode_snapshot(registry, content_type, client_encoder, compress=False).decode()
    # Neither the build's version nor Python's is a property of the renderer.
    return body.replace(f'version="{__version__}"', 'version="<version>"').replace(
        f'python_version="{platform.python_version()}"', 'python_version="<python>"'
    )


@pytest.mark.parametrize(
    ("accept", "golden"),
    [(TEXT_ACCEPT, "metrics.txt"), (OPENMETRICS_ACCEPT, "metrics.openmetrics.txt")],
    ids=["text", "openmetrics"],
)
def test_exposition_is_byte_for_byte_the_golden_file(accept: str, golden: str) -> None:
    body = exposition(accept)
    path = GOLDEN / golden
    if UPDATE:
        path.parent.mkdir(exist_ok=True)
        path.write_text(body, encoding="utf-8", newline="\n")
    expected = path.read_text(encoding="utf-8")
    assert body == expected, f"the exposition differs from {path}; see this module's docstring to regenerate"


def test_the_golden_files_cover_every_family_and_kind() -> None:
    """The golden input keeps its coverage: every family certscope renders appears
    with at least one sample, for every kind."""
    text = (GOLDEN / "metrics.txt").read_text(encoding="utf-8")
    declared = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")]
    samples = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if not line.startswith("#")}
    empty = [name for name in declared if not any(s == name or s.startswith(name + "_") for s in samples)]
    assert empty == [], f"families without a sample in the golden input: {empty}"
    for kind in ("files", "tls", "ocsp", "crl", "kubernetes", "ca"):
        assert f'kind="{kind}"' in text
    needles = ('address="::1"', 'source_kind="files"', "certscope_key_reuse_subjects{", 'secret_name="site-tls"')
    for needle in (*needles, 'state="stale"', 'object_kind="Ingress"'):
        assert needle in text
