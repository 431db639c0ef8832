"""x509-limbo through the real probe: every SERVER case that carries its leaf's
private key is served by ``openssl s_server`` on 127.0.0.1 (leaf, then the case's
untrusted intermediates, as given), and the ``tls`` probe, under each verification
profile, must reach the verdict ``verify_served_chain`` reaches in process on the
same certificates at the same moment.  What the handshake delivers is what is
judged: the probe must lose nothing on the way (order, intermediates, names).

The comparison is at the time of the run.  For the cases whose verdict does not
depend on the time (no validation time, no depth limit) the probe must also reach
limbo's expected result, unless test_limbo.py lists the case as not claimed.  A few cases cannot
be served to a TLS 1.2/1.3 client at all (a key no TLS signature scheme can use);
they are listed with why, and must still fail the handshake.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from probes.context import ProbeContext
from probes.profiles import RFC5280, WEBPKI
from probes.reasons import Reason
from probes.settings import TrustSettings
from probes.tls import TlsProbe, TlsSettings
from probes.verify import TrustStore, VerifySettings, verify_served_chain
from tests import limbo_corpus, servers
from tests.test_limbo import NOT_CLAIMED

SERVABLE = [c for c in limbo_corpus.server_cases() if c.get("peer_certificate_key")]
# Case -> why no TLS 1.2/1.3 handshake can use its leaf.
UNSERVABLE = {
    "webpki::forbidden-p192-leaf": "no TLS 1.2/1.3 signature scheme or group uses P-192",
    "webpki::forbidden-dsa-leaf": "TLS 1.3 has no DSA, and OpenSSL 3 offers no DSS suite by default",
}


def _target(case: dict[str, Any], port: int) -> str:
    """host:port@127.0.0.1: the case's name is the SNI and the name verified, the
    connection goes to the local server."""
    name = case.get("expected_peer_name") or {}
    if name.get("kind") == "IP":
        host = f"[{name['value']}]" if ":" in name["value"] else name["value"]
    else:
        host = name.get("value") or "localhost"
    return f"{host}:{port}@127.0.0.1"


@pytest.fixture
def serve(tmp_path: Path) -> Any:
    started: list[servers.ServerProcess] = []

    def start(case: dict[str, Any]) -> servers.ServerProcess:
        pems = limbo_corpus.pems
        leaf = tmp_path / "leaf.pem"
        key = tmp_path / "leaf.key"
        leaf.write_text(pems(case["peer_certificate"])[0])
        key.write_text(case["peer_certificate_key"])
        key.chmod(0o600)
        chain = None
        if pems(case["untrusted_intermediates"]):
            chain = tmp_path / "chain.pem"
            chain.write_text("".join(pems(case["untrusted_intermediates"])))
        # Security level 0: the server must present weak keys for the probe to judge.
        server = servers.openssl_s_server(
            leaf, key, chain, extra_args=["-cipher", "DEFAULT@SECLEVEL=0"], workdir=tmp_path / "s_server"
        )
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning")
@pytest.mark.parametrize("case", SERVABLE, ids=[c["id"] for c in SERVABLE])
def test_probe_through_a_real_server_agrees_with_the_in_process_verdict(case: dict[str, Any], serve: Any) -> None:
    server = serve(case)
    trusted = server.workdir.parent / "trusted.pem"
    trusted.write_text("".join(limbo_corpus.pems(case["trusted_certs"])))
    target = _target(case, server.port)
    name = target.rpartition(":")[0].strip("[]")
    served = [
        x509.load_pem_x509_certificate(pem.encode())
        for pem in limbo_corpus.pems(case["peer_certificate"]) + limbo_corpus.pems(case["untrusted_intermediates"])
    ]
    for profile in (WEBPKI, RFC5280):
        settings = TlsSettings(
            targets=(target,),
            trust=TrustSettings(system=False, ca_files=(str(trusted),)),
            verify=VerifySettings(profile=profile),
            max_chain_length=64,
        )
        result = TlsProbe(settings).run(target, ProbeContext(deadline=time.monotonic() + 10))
        if case["id"] in UNSERVABLE:
            assert result.reason in (Reason.HANDSHAKE_FAILED, Reason.PROTOCOL_ERROR), result.message
            continue
        expected = verify_served_chain(
            served[:64], TrustStore.from_settings(settings.trust or TrustSettings()), name, datetime.now(UTC),
            profile=profile,
        )  # fmt: skip
        received = [o for o in result.certificates if o.role != "client"]
        assert len(received) == min(len(served), 64), "the probe must see every certificate served"
        assert result.reason is expected.reason, (profile, result.message, expected.message)
        assert result.facts is not None and result.facts.chain_verified == expected.chain_verified
        timeless = not case["validation_time"] and case["max_chain_depth"] is None and case["expected_peer_name"]
        if timeless and case["id"] not in NOT_CLAIMED[profile]:
            # Judged now as limbo judges it: the probe must reach limbo's verdict too.
            assert (result.reason is Reason.OK) == (case["expected_result"] == "SUCCESS"), (profile, result.message)
