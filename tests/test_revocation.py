"""Revocation against real infrastructure: an `openssl ocsp` responder and CRLs made by
`openssl ca -gencrl`, served over HTTP, plus endpoints that fail in every way a real
one does.  Each case yields its state and reason; none affects another."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from probes.context import ProbeContext
from probes.crl import CrlProbe, CrlSettings
from probes.ocsp import OcspProbe, OcspSettings
from probes.result import ProbeResult
from probes.revocation import RevocationChecker
from probes.settings import ProbeDefaults
from probes.tls import RevocationSettings, TlsProbe, TlsSettings
from tests import servers
from tests.helpers import DaemonProcess, find
from tests.revocation_servers import (
    HTTP_PATHS,
    RevocationStack,
    html_reply,
    ocsp_request,
    python_ocsp_response,
    refused_port,
    revocation_stack,
    tarpit,
)

LOCAL = ProbeDefaults(allow_networks=("127.0.0.0/8", "::1/128"))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RevocationStack]:
    with revocation_stack(tmp_path_factory.mktemp("revocation")) as running:
        yield running


def ocsp(
    stack: RevocationStack,
    which: str,
    url: str | None = None,
    timeout: float = 3,
    checker: RevocationChecker | None = None,
) -> ProbeResult:
    """One run of an ocsp probe; probes given the same ``checker`` share its caches,
    as the probes of a daemon share the scheduler's."""
    cert = getattr(stack.pki, which)
    probe = OcspProbe(
        OcspSettings(certificates=(str(cert.cert_path),), issuer_file=str(stack.pki.ca.cert_path), url=url),
        replace(LOCAL, revocation=checker),
    )
    return probe.run(str(cert.cert_path), ProbeContext(deadline=time.monotonic() + timeout))


def crl(
    stack: RevocationStack,
    url: str,
    timeout: float = 3,
    checker: RevocationChecker | None = None,
    **settings: Any,
) -> ProbeResult:
    probe = CrlProbe(
        CrlSettings(
            urls=(url,),
            issuer_file=str(stack.pki.ca.cert_path),
            certificates=(str(stack.pki.good.cert_path), str(stack.pki.revoked.cert_path)),
            **settings,
        ),
        replace(LOCAL, revocation=checker),
    )
    return probe.run(url, ProbeContext(deadline=time.monotonic() + timeout))


def test_ocsp_good_revoked_unknown_from_openssl(stack: RevocationStack) -> None:
    good = ocsp(stack, "good")
    assert (good.success, good.reason.value, good.revocation[0].state) == (True, "ok", "good")
    check = good.revocation[0]
    assert check.source == stack.ocsp.url and check.next_update and check.this_update
    revoked = ocsp(stack, "revoked")
    assert (revoked.reason.value, revoked.revocation[0].state) == ("revoked", "revoked")
    entry = stack.pki.revoked_entry
    assert revoked.revocation[0].revocation_reason == "keyCompromise"
    assert revoked.revocation[0].revocation_time == pytest.approx(entry.revoked_at.timestamp(), abs=1)
    unknown = ocsp(stack, "unknown")
    assert (unknown.reason.value, unknown.revocation[0].state) == ("ocsp_unknown_certificate", "unknown")


def test_ocsp_answers_are_cached_until_next_update(stack: RevocationStack) -> None:
    checker = RevocationChecker()
    ocsp(stack, "good", checker=checker)
    requests_before = checker.requests
    second = ocsp(stack, "good", checker=checker)
    assert checker.requests == requests_before == 1, "a fresh cached answer must not be asked again"
    assert second.revocation[0].from_cache


def rendered(probe_name: str, kind: str, results: dict[str, ProbeResult]) -> dict[str, list[Any]]:
    """The exposition of one round of ``results`` (target -> result), through the store."""
    from exporter.collector import render
    from exporter.store import ProbeInfo, ResultStore
    from probes.result import Discovery

    info = ProbeInfo(probe_name, kind, 60.0, 28 * 86400.0, 7 * 86400.0, {}, (), (), True)
    store = ResultStore()
    store.configure([info], "test")
    store.publish_round(info, Discovery(tuple(results)), {t: (r, time.time()) for t, r in results.items()}, 0.1)
    samples: dict[str, list[Any]] = {}
    for family in render(store.snapshot()):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return samples


def test_a_cached_answer_keeps_the_responder_visible_with_its_age(
    stack: RevocationStack,
) -> None:
    """While an answer is reused from the cache, the responder's last answer (up, duration)
    stays exported with the time it was asked: "down" and "slow" describe that answer."""
    checker = RevocationChecker()  # nothing cached yet
    before = time.time()
    first = ocsp(stack, "good", checker=checker)
    second = ocsp(stack, "good", checker=checker)
    fresh, cached = first.revocation[0], second.revocation[0]
    assert (fresh.from_cache, cached.from_cache) == (False, True)
    assert fresh.requested_at is not None and before <= fresh.requested_at <= time.time()
    assert cached.requested_at == fresh.requested_at and cached.duration_seconds == fresh.duration_seconds

    target = str(stack.pki.good.cert_path)
    metrics = rendered("ocsp", "ocsp", {target: second})
    responder = {"target": target, "responder": stack.ocsp.url}
    assert find(metrics, "certscope_ocsp_responder_up", **responder)[0][1] == 1
    assert find(metrics, "certscope_ocsp_request_duration_seconds", **responder)[0][1] == fresh.duration_seconds
    assert find(metrics, "certscope_ocsp_last_request_timestamp_seconds", **responder)[0][1] == fresh.requested_at

    # A responder that does not answer is asked again every round (failures are not
    # cached): up 0, with the time of this round's request.
    down_url = f"http://127.0.0.1:{refused_port()}"
    down = ocsp(stack, "good", url=down_url)
    metrics = rendered("ocsp", "ocsp", {target: down})
    responder = {"target": target, "responder": down_url}
    assert find(metrics, "certscope_ocsp_responder_up", **responder)[0][1] == 0
    assert find(metrics, "certscope_ocsp_last_request_timestamp_seconds", **responder)[0][1] >= fresh.requested_at


@pytest.mark.parametrize(
    ("variant", "reason"),
    [
        ("stale", "ocsp_stale"),
        ("future", "ocsp_bad_response"),
        ("wrong-key", "ocsp_bad_response"),  # claims to be the CA; the signature does not verify
        ("bad-eku", "ocsp_unauthorized_signer"),
        ("no-certs", "ocsp_unauthorized_signer"),
        ("wrong-serial", "ocsp_bad_response"),
        ("unauthorized", "ocsp_bad_response"),
        ("try-later", "ocsp_bad_response"),
        ("garbage", "ocsp_bad_response"),
    ],
)
def test_ocsp_bad_answers(stack: RevocationStack, variant: str, reason: str) -> None:
    result = ocsp(stack, "good", url=stack.http.url(f"/ocsp/{variant}/"))
    assert result.reason.value == reason, result.message
    assert result.revocation[0].state == "unknown", "unknown is never reported as good"


def test_ocsp_from_a_responder_whose_signer_lacks_the_eku(stack: RevocationStack) -> None:
    responder = stack.responder("bad_eku")
    result = ocsp(stack, "good", url=responder.url)
    assert result.reason.value == "ocsp_unauthorized_signer"
    assert "OCSPSigning" in result.message


@pytest.mark.parametrize(
    ("where", "reason"),
    [("down", "ocsp_unavailable"), ("tarpit", "ocsp_unavailable"), ("error", "ocsp_unavailable"),
     ("html", "ocsp_bad_response")],
)  # fmt: skip
def test_ocsp_responder_failures(stack: RevocationStack, where: str, reason: str) -> None:
    trap = tarpit()
    stack.http["/html-ocsp/"] = html_reply()
    try:
        url = {
            "down": f"http://127.0.0.1:{refused_port()}",
            "tarpit": f"http://127.0.0.1:{trap.port}",
            "error": stack.http.url(HTTP_PATHS["error"]),
            "html": stack.http.url("/html-ocsp/"),
        }[where]
        started = time.monotonic()
        result = ocsp(stack, "good", url=url, timeout=1.0)
        assert time.monotonic() - started < 1.5, "the deadline holds"
        assert result.reason.value == reason, result.message
        assert result.revocation[0].state == "unknown"
    finally:
        trap.stop()


def test_egress_policy_refuses_loopback_by_default(stack: RevocationStack) -> None:
    cert = stack.pki.good
    probe = OcspProbe(OcspSettings(certificates=(str(cert.cert_path),), issuer_file=str(stack.pki.ca.cert_path)))
    result = probe.run(str(cert.cert_path), ProbeContext(deadline=time.monotonic() + 3))
    assert result.reason.value == "ocsp_unavailable"
    assert "egress policy" in result.message


def test_crl_good_lists_the_revoked_certificate(stack: RevocationStack) -> None:
    for path in (HTTP_PATHS["crl"], HTTP_PATHS["crl_pem"]):
        result = crl(stack, stack.http.url(path))
        assert result.reason.value == "revoked", result.message  # the revoked leaf is on it
        states = {r.index: r.state for r in result.revocation}
        assert states == {0: "good", 1: "revoked"}
        assert result.facts is not None and result.facts.signature_valid and result.facts.number is not None
        assert result.facts.entries >= 1 and result.facts.http_status == 200


def test_crl_revalidation_uses_conditional_get(stack: RevocationStack) -> None:
    url = stack.http.url(HTTP_PATHS["crl"])
    checker = RevocationChecker()  # one daemon's cache, shared by its rounds
    crl(stack, url, checker=checker)
    before = stack.http.count(HTTP_PATHS["crl"], status=304)
    again = crl(stack, url, checker=checker)
    assert stack.http.count(HTTP_PATHS["crl"], status=304) == before + 1
    assert again.facts is not None and again.facts.entries >= 1  # the cached CRL still answers


@pytest.mark.parametrize(
    ("path", "reason", "settings"),
    [
        ("crl_stale", "crl_stale", {}),
        ("crl_bad_signature", "crl_bad_signature", {}),
        ("crl_wrong_key", "crl_bad_signature", {}),
        ("crl_garbage", "crl_unavailable", {}),
        ("error", "crl_unavailable", {}),
        ("huge", "crl_too_large", {"max_size": 1024 * 1024}),
        ("lying", "crl_too_large", {}),  # the announced length alone is over the cap
        ("lying", "crl_unavailable", {"max_size": 200 * 1024 * 1024}),  # then 16 bytes and a close
        ("dribble", "crl_unavailable", {}),
        ("crl_big", "crl_too_large", {"max_size": 1024 * 1024}),
    ],
)
def test_crl_failures(stack: RevocationStack, path: str, reason: str, settings: dict[str, Any]) -> None:
    started = time.monotonic()
    result = crl(stack, stack.http.url(HTTP_PATHS[path]), timeout=1.0, **settings)
    assert time.monotonic() - started < 1.5, "the deadline and the byte cap hold"
    assert result.reason.value == reason, result.message
    assert all(r.state != "good" for r in result.revocation), "unknown is never good"


def test_big_crl_within_the_cap(stack: RevocationStack) -> None:
    result = crl(stack, stack.http.url(HTTP_PATHS["crl_big"]), timeout=10)
    assert result.facts is not None and result.facts.entries >= 100_000
    assert result.reason.value == "revoked"


def test_tls_probe_checks_the_served_leaf(stack: RevocationStack, tmp_path: Path) -> None:
    for which, expected in (("good", "ok"), ("revoked", "revoked")):
        leaf = getattr(stack.pki, which)
        server = servers.openssl_s_server(leaf.cert_path, leaf.key_path, None)
        try:
            target = f"127.0.0.1:{server.port}"
            name = leaf.cert.subject.rfc4514_string().split("CN=")[1].split(",")[0]
            probe = TlsProbe(
                TlsSettings(
                    targets=(target,),
                    server_name=name,
                    trust=servers_trust(stack),
                    revocation=RevocationSettings(ocsp=True, crl=True),
                ),
                LOCAL,
            )
            result = probe.run(target, ProbeContext(deadline=time.monotonic() + 5))
            assert result.reason.value == expected, result.message
            assert {(r.method, r.state) for r in result.revocation} == {
                ("ocsp", "good" if which == "good" else "revoked"),
                ("crl", "good" if which == "good" else "revoked"),
            }
        finally:
            server.stop()


def servers_trust(stack: RevocationStack) -> Any:
    from probes.settings import TrustSettings

    return TrustSettings(system=False, ca_files=(str(stack.pki.ca.cert_path),))


def test_daemon_exports_revocation(stack: RevocationStack, start_daemon: Any) -> None:
    config = {
        "global": {"interval": "1h", "egress": {"allow_networks": ["127.0.0.0/8"]}},
        "probes": [
            {
                "name": "ocsp",
                "kind": "ocsp",
                "certificates": [str(stack.pki.good.cert_path), str(stack.pki.revoked.cert_path)],
                "issuer_file": str(stack.pki.ca.cert_path),
            },
            {
                "name": "crl",
                "kind": "crl",
                "urls": [stack.http.url(HTTP_PATHS["crl"]), stack.http.url(HTTP_PATHS["crl_stale"])],
                "issuer_file": str(stack.pki.ca.cert_path),
            },
        ],
    }
    daemon: DaemonProcess = start_daemon(yaml.safe_dump(config))
    daemon.wait_ready()
    metrics = daemon.metrics()
    revoked_target = str(stack.pki.revoked.cert_path)
    assert find(metrics, "certscope_cert_revoked", target=revoked_target, method="ocsp")[0][1] == 1
    assert find(metrics, "certscope_cert_revocation_check_success", target=revoked_target)[0][1] == 1
    assert find(metrics, "certscope_cert_revocation_first_seen_timestamp_seconds", target=revoked_target)
    assert find(metrics, "certscope_cert_revocation_timestamp_seconds", target=revoked_target)
    good_target = str(stack.pki.good.cert_path)
    assert find(metrics, "certscope_cert_revoked", target=good_target)[0][1] == 0
    assert find(metrics, "certscope_ocsp_responder_up", target=good_target)[0][1] == 1
    good_crl = stack.http.url(HTTP_PATHS["crl"])
    assert find(metrics, "certscope_crl_signature_valid", target=good_crl)[0][1] == 1
    assert find(metrics, "certscope_crl_entries", target=good_crl)[0][1] >= 1
    stale = stack.http.url(HTTP_PATHS["crl_stale"])
    assert find(metrics, "certscope_probe_status", target=stale)[0][0]["reason"] == "crl_stale"
    assert find(metrics, "certscope_crl_next_update_timestamp_seconds", target=stale)[0][1] < time.time()


@pytest.mark.parametrize(
    ("which", "variant", "state", "reason"),
    [
        ("good", "good", "good", "ok"),
        ("revoked", "good", "revoked", "revoked"),  # "good" variant: status read from index.txt
        ("good", "stale", "unknown", "ok"),  # soft-fail: the target passes, check_success says no
        ("good", None, "not_applicable", "ok"),
    ],
)
def test_stapled_ocsp(stack: RevocationStack, tmp_path: Path, which: str, variant: str | None, state: str,
                      reason: str) -> None:  # fmt: skip
    leaf = getattr(stack.pki, which)
    extra: tuple[str, ...] = ()
    if variant is not None:
        staple = tmp_path / "staple.der"
        request = ocsp_request(leaf.cert, stack.pki.ca.cert)
        staple.write_bytes(python_ocsp_response(stack.pki, request, variant))  # type: ignore[arg-type]
        extra = ("-status_file", str(staple))
    server = servers.openssl_s_server(leaf.cert_path, leaf.key_path, None, extra_args=extra)
    try:
        target = f"127.0.0.1:{server.port}"
        name = leaf.cert.subject.rfc4514_string().split("CN=")[1].split(",")[0]
        settings = TlsSettings(
            targets=(target,), server_name=name, trust=servers_trust(stack), revocation=RevocationSettings(stapled=True)
        )
        result = TlsProbe(settings, LOCAL).run(target, ProbeContext(deadline=time.monotonic() + 5))
        (stapled,) = [r for r in result.revocation if r.method == "stapled"]
        assert (stapled.state, result.reason.value) == (state, reason), stapled.message
    finally:
        server.stop()


def test_an_ip_literal_needs_no_resolver_thread() -> None:
    """A responder or CRL URL with an IP address is answered at once, even with the
    deadline spent; a name must go to the resolver and gets no answer in no time."""
    import socket

    from probes.fetch import getaddrinfo_by

    spent = time.monotonic() - 1
    [(family, *_, address)] = getaddrinfo_by("127.0.0.1", 80, socket.AF_INET, spent)
    assert family == socket.AF_INET and address == ("127.0.0.1", 80)
    assert getaddrinfo_by("::1", 80, 0, spent)[0][4][:2] == ("::1", 80)
    with pytest.raises((TimeoutError, socket.gaierror)):  # timed out, or refused at once
        getaddrinfo_by("responder.invalid", 80, 0, spent)
