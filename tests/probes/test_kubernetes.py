"""The ``kubernetes`` probe against the protocol-faithful API server fixture.

Each test builds its PKI with ``cryptography``, puts Secrets into a
``FakeApiServer`` on an OS-chosen port, and watches what certscope makes of them:
in process (``KubernetesProbe``) where timing matters, and through the running
daemon's ``/metrics`` for what Prometheus sees."""

from __future__ import annotations

import logging
import os
import stat
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from probes.context import ProbeContext
from probes.kubernetes import KubernetesProbe, KubernetesSettings
from probes.reasons import Reason
from tests.fixtures import kube_objects
from tests.fixtures.helpers import find, value, wait_for
from tests.fixtures.kube_apiserver import FakeApiServer, ServerTls
from tests.fixtures.kube_objects import b64, write_kubeconfig
from tests.fixtures.pki import DAY, NOW, Issued, Pki, issue
from tests.fixtures.servers import build_tls_pki, openssl_s_server, write_tls_files

TOKEN = "t0ken-" + "s3cret" * 4  # must never appear in a log, metric or message
api, kubeconfig = kube_objects.api_fixtures(TOKEN)
probes = kube_objects.probes_fixture()


def tls_secret(namespace: str, name: str, leaf: Issued, *chain: Issued, **metadata: Any) -> dict[str, Any]:
    """A TLS Secret with an empty ``ca.crt``, as cert-manager writes one: the probe must skip the empty key."""
    return kube_objects.tls_secret(namespace, name, leaf, *chain, ca_crt="", **metadata)


def make_probe(kubeconfig: Path, **settings: Any) -> KubernetesProbe:
    return KubernetesProbe(KubernetesSettings(kubeconfig=str(kubeconfig), **settings))


def inventory(probe: KubernetesProbe) -> dict[str, list[str]]:
    """target -> fingerprints, as one round sees it."""
    discovery = probe.targets()
    ctx = ProbeContext(deadline=float("inf"))
    return {
        target: [o.cert.fingerprint_sha256 for o in probe.run(target, ctx).certificates] for target in discovery.targets
    }


# --------------------------------------------------------------------------- in process


def test_secret_added_rotated_deleted_and_keys_never_read(
    api: FakeApiServer, kubeconfig: Path, pki: Pki, probes: list[KubernetesProbe], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    first = issue("web.example", pki.intermediate, sans=("web.example",))
    secret = tls_secret("team-a", "web-tls", first, pki.intermediate)
    # A key that is not base64 at all: decoding it would be an error, so none means unread.
    secret["data"]["tls.key"] = "!!! not base64, never decoded !!!"
    api.put("secrets", secret)
    probe = make_probe(kubeconfig)
    probes.append(probe)

    seen = inventory(probe)
    assert seen == {"team-a/web-tls/tls.crt": [first.fingerprint, pki.intermediate.fingerprint]}
    discovery = probe.targets()
    assert discovery.up and discovery.errors == ()
    result = probe.run("team-a/web-tls/tls.crt", ProbeContext(deadline=float("inf")))
    assert dict(result.target_labels) == {
        "secret_namespace": "team-a",
        "secret_name": "web-tls",
        "secret_key": "tls.crt",
    }

    renewed = issue("web.example", pki.intermediate, sans=("web.example",))
    api.put("secrets", tls_secret("team-a", "web-tls", renewed, pki.intermediate))
    wait_for(lambda: inventory(probe)["team-a/web-tls/tls.crt"][0] == renewed.fingerprint, 10, "the rotation")

    api.delete("secrets", "team-a", "web-tls")
    wait_for(lambda: inventory(probe) == {}, 10, "the deletion")
    assert TOKEN not in caplog.text


def test_type_is_filtered_server_side_and_lists_are_paged(
    api: FakeApiServer, kubeconfig: Path, pki: Pki, probes: list[KubernetesProbe]
) -> None:
    for number in range(5):
        api.put("secrets", tls_secret("apps", f"tls-{number}", pki.valid))
    api.put(
        "secrets",
        {
            "metadata": {"namespace": "apps", "name": "sh.helm.release.v1.app.v1"},
            "type": "helm.sh/release.v1",
            "data": {"release": b64(b"x" * 100_000)},
        },
    )
    probe = make_probe(kubeconfig, page_size=2)
    probes.append(probe)
    assert len(inventory(probe)) == 5
    lists = [r for r in api.requests if r.path == "/api/v1/secrets" and "watch" not in r.query]
    assert [r.query.get("fieldSelector") for r in lists] == ["type=kubernetes.io/tls"] * 3
    assert [r.query.get("limit") for r in lists] == ["2"] * 3
    assert "continue" not in lists[0].query and all("continue" in r.query for r in lists[1:])


@pytest.mark.parametrize(
    ("outage", "expiry"),
    [("expired_while_open", "event"), ("reconnect_too_old", "event"), ("reconnect_too_old", "status")],
)
def test_watch_expiry_relists_with_nothing_lost_or_duplicated(
    outage: str, expiry: str, pki: Pki, tmp_path: Path, probes: list[KubernetesProbe]
) -> None:
    """A watch that ends in 410 relists; ``expiry`` is how the server answers a watch opened too late."""
    api = FakeApiServer(bookmark_interval=0.5, watch_expiry=expiry).start()
    try:
        api.allow(token=TOKEN)
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", api.url, {"token": TOKEN})
        certs = {f"s{n}": issue(f"s{n}.example", pki.intermediate) for n in range(6)}
        for name in ("s0", "s1", "s2"):
            api.put("secrets", tls_secret("ns", name, certs[name]))
        probe = make_probe(kubeconfig)
        probes.append(probe)
        assert set(inventory(probe)) == {"ns/s0/tls.crt", "ns/s1/tls.crt", "ns/s2/tls.crt"}
        # The list is done before the watch opens; a fault injected in between would miss it.
        wait_for(lambda: api.open_watches() == 1, 5, "the watch")

        if outage == "expired_while_open":
            # The open watch gets an ERROR event (410) and ends.
            api.compact()
            api.expire_watches()
        else:
            # The watch is cut; while the client backs off (>= 0.25 s) history moves on and
            # is compacted, so the watch it reopens from its last version gets a 410.
            api.drop_connections()
            # Mutate only once the server's stream has ended, so no event rides the cut stream;
            # polled tightly because the client's backoff is the whole margin.
            cut_deadline = time.monotonic() + 5
            while api.open_watches() and time.monotonic() < cut_deadline:
                time.sleep(0.002)
        api.delete("secrets", "ns", "s0")
        api.put("secrets", tls_secret("ns", "s1", certs["s4"]))  # s1 rotated
        api.put("secrets", tls_secret("ns", "s3", certs["s3"]))
        api.compact()

        expected = {
            "ns/s1/tls.crt": [certs["s4"].fingerprint],
            "ns/s2/tls.crt": [certs["s2"].fingerprint],
            "ns/s3/tls.crt": [certs["s3"].fingerprint],
        }
        wait_for(lambda: inventory(probe) == expected, 15, "the relist after 410")
        # The events can reach the client in the chunk before the ERROR event that ends
        # the watch, so the inventory may be right a moment before the 410 is counted.
        wait_for(lambda: dict(probe.targets().watch_restarts)["expired"] >= 1, 5, "the 410 to be counted")
        # And the watch after the relist works: a new Secret arrives by watch.
        api.put("secrets", tls_secret("ns", "s5", certs["s5"]))
        wait_for(lambda: "ns/s5/tls.crt" in inventory(probe), 10, "an event after recovery")
        discovery = probe.targets()
        assert len(discovery.targets) == len(set(discovery.targets)) == 4
    finally:
        api.stop()


def test_dropped_watch_reconnects_from_last_version(
    api: FakeApiServer, kubeconfig: Path, pki: Pki, probes: list[KubernetesProbe]
) -> None:
    api.put("secrets", tls_secret("ns", "a", pki.valid))
    probe = make_probe(kubeconfig)
    probes.append(probe)
    assert set(inventory(probe)) == {"ns/a/tls.crt"}
    wait_for(lambda: api.open_watches() == 1, 5, "the watch")
    lists_before = sum(1 for r in api.requests if "watch" not in r.query)
    api.drop_connections()
    api.put("secrets", tls_secret("ns", "b", pki.valid))
    wait_for(lambda: set(inventory(probe)) == {"ns/a/tls.crt", "ns/b/tls.crt"}, 15, "the event after reconnecting")
    assert dict(probe.targets().watch_restarts)["dropped"] >= 1
    # Reconnected by watching from the last resourceVersion, not by listing again.
    assert sum(1 for r in api.requests if "watch" not in r.query) == lists_before


def test_forbidden_namespace_is_down_alone(
    api: FakeApiServer, tmp_path: Path, pki: Pki, probes: list[KubernetesProbe]
) -> None:
    api.allow(token="team-a-token", namespaces=["team-a"])
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", api.url, {"token": "team-a-token"})
    api.put("secrets", tls_secret("team-a", "ok", pki.valid))
    api.put("secrets", tls_secret("team-b", "hidden", pki.valid))
    probe = make_probe(kubeconfig, namespaces=("team-a", "team-b"))
    probes.append(probe)
    discovery = probe.targets()
    assert discovery.targets == ("team-a/ok/tls.crt",)
    assert dict(discovery.scopes) == {
        "secrets/team-a/kubernetes.io/tls": True,
        "secrets/team-b/kubernetes.io/tls": False,
    }
    assert not discovery.up
    [error] = discovery.errors
    assert error.reason is Reason.API_FORBIDDEN
    assert 'in the namespace "team-b"' in error.message


def test_bad_token_is_unauthorized_and_never_quoted(api: FakeApiServer, tmp_path: Path, probes: list) -> None:
    wrong = "wrong-" + "x" * 30
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", api.url, {"token": wrong})
    probe = make_probe(kubeconfig)
    probes.append(probe)
    discovery = probe.targets()
    assert not discovery.up
    [error] = discovery.errors
    assert error.reason is Reason.API_UNAUTHORIZED
    assert "HTTP 401" in error.message and wrong not in error.message


def test_invalid_base64_fails_its_key_only(
    api: FakeApiServer, kubeconfig: Path, pki: Pki, probes: list[KubernetesProbe]
) -> None:
    broken = tls_secret("ns", "broken", pki.valid)
    broken["data"]["tls.crt"] = "@@@ not base64 @@@"
    api.put("secrets", broken)
    api.put("secrets", tls_secret("ns", "good", pki.valid))
    probe = make_probe(kubeconfig)
    probes.append(probe)
    probe.targets()
    ctx = ProbeContext(deadline=float("inf"))
    bad = probe.run("ns/broken/tls.crt", ctx)
    assert (bad.success, bad.reason) == (False, Reason.PARSE_ERROR)
    assert bad.message == "ns/broken/tls.crt: value is not valid base64"
    assert probe.run("ns/good/tls.crt", ctx).success


def test_opaque_key_patterns_configmaps_and_annotations(
    api: FakeApiServer, kubeconfig: Path, pki: Pki, probes: list[KubernetesProbe]
) -> None:
    api.put(
        "secrets",
        {
            "metadata": {"namespace": "ns", "name": "bundle"},
            "type": "Opaque",
            "data": {"ca.pem": b64(pki.root.pem), "server.key": "never read", "notes.txt": b64(b"hello")},
        },
    )
    annotated = tls_secret(
        "ns",
        "owned",
        pki.valid,
        annotations={
            "certscope.io/team": "payments",
            "certscope.io/warning": "45d",
            "cert-manager.io/issuer-name": "letsencrypt",
            "cert-manager.io/certificate-name": "owned",
        },
    )
    api.put("secrets", annotated)
    api.put("secrets", tls_secret("ns", "skipped", pki.valid, annotations={"certscope.io/ignore": "true"}))
    api.put(
        "configmaps",
        {"metadata": {"namespace": "ns", "name": "kube-root-ca.crt"}, "data": {"ca.crt": pki.root.pem.decode()}},
    )
    probe = make_probe(
        kubeconfig, secret_types=("kubernetes.io/tls", "Opaque"), keys=("tls.crt", "*.pem"), configmaps=True
    )
    probes.append(probe)
    seen = inventory(probe)
    assert seen == {
        "ns/bundle/ca.pem": [pki.root.fingerprint],
        "ns/owned/tls.crt": [pki.valid.fingerprint],
        "configmap/ns/kube-root-ca.crt/ca.crt": [pki.root.fingerprint],
    }
    owned = probe.run("ns/owned/tls.crt", ProbeContext(deadline=float("inf")))
    assert dict(owned.info_labels) == {
        "team": "payments",
        "cert_manager_issuer": "letsencrypt",
        "cert_manager_certificate": "owned",
    }
    assert owned.thresholds == (45 * 86400, -1.0)


def test_private_key_patterns_are_refused_by_the_config() -> None:
    problems = KubernetesSettings(keys=("tls.crt", "tls.key")).validate()
    assert problems == [("keys[1]", "'tls.key' names a private key; certscope never reads keys")]


# --------------------------------------------------------------------------- credentials


def test_kubeconfig_with_client_certificate_over_https(tmp_path: Path, pki: Pki, probes: list) -> None:
    tls = write_tls_files(build_tls_pki(pki), tmp_path / "tls")
    api = FakeApiServer(
        tls=ServerTls(str(tls.localhost.fullchain), str(tls.localhost.key), client_ca_file=str(tls.client_ca))
    ).start()
    try:
        api.allow(user="client.localhost")
        api.put("secrets", tls_secret("ns", "a", pki.valid))
        kubeconfig = write_kubeconfig(
            tmp_path / "kubeconfig",
            api.url,
            {
                "client-certificate-data": b64(tls.client.cert.read_bytes()),
                "client-key-data": b64(tls.client.key.read_bytes()),
            },
            {"certificate-authority": str(tls.root_ca)},
        )
        probe = make_probe(kubeconfig)
        probes.append(probe)
        assert set(inventory(probe)) == {"ns/a/tls.crt"}
        assert {r.identity for r in api.requests} == {"client.localhost"}
    finally:
        api.stop()


def test_exec_credential_plugin(api: FakeApiServer, tmp_path: Path, pki: Pki, probes: list) -> None:
    api.allow(token="exec-token-1")
    calls = tmp_path / "calls"
    plugin = tmp_path / "bin" / "credential-helper"
    plugin.parent.mkdir()
    expires = (NOW + DAY).strftime("%Y-%m-%dT%H:%M:%SZ")
    plugin.write_text(
        f"""#!{sys.executable}
import json, os, sys
info = json.loads(os.environ["KUBERNETES_EXEC_INFO"])
assert info["kind"] == "ExecCredential" and info["spec"]["interactive"] is False
with open({str(calls)!r}, "a") as log:
    log.write(os.environ["HELPER_ARG"] + "\\n")
status = {{"token": "exec-token-1", "expirationTimestamp": "{expires}"}}
print(json.dumps({{"apiVersion": info["apiVersion"], "kind": "ExecCredential", "status": status}}))
"""
    )
    plugin.chmod(plugin.stat().st_mode | stat.S_IXUSR)
    api.put("secrets", tls_secret("ns", "a", pki.valid))
    kubeconfig = write_kubeconfig(
        tmp_path / "kubeconfig",
        api.url,
        {
            "exec": {
                "apiVersion": "client.authentication.k8s.io/v1",
                "command": "./bin/credential-helper",  # relative to the kubeconfig, as kubectl does
                "env": [{"name": "HELPER_ARG", "value": "called"}],
                "interactiveMode": "Never",
            }
        },
    )
    probe = make_probe(kubeconfig)
    probes.append(probe)
    assert set(inventory(probe)) == {"ns/a/tls.crt"}
    # One run serves the list and the watch: the credential is cached until it expires.
    assert calls.read_text().splitlines() == ["called"]


def test_exec_plugin_failure_does_not_quote_its_output(api: FakeApiServer, tmp_path: Path, probes: list) -> None:
    plugin = tmp_path / "failing-helper"
    plugin.write_text(f"#!{sys.executable}\nimport sys\nprint('leaked-token-123')\nsys.exit(3)\n")
    plugin.chmod(0o755)
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", api.url, {"exec": {"command": str(plugin)}})
    probe = make_probe(kubeconfig)
    probes.append(probe)
    [error] = probe.targets().errors
    assert error.reason is Reason.API_UNAUTHORIZED
    assert error.message.endswith("exec credential plugin failing-helper exited with 3")
    assert "leaked-token" not in error.message


def test_in_cluster_token_is_reread_when_rotated(
    tmp_path: Path, pki: Pki, probes: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    tls = write_tls_files(build_tls_pki(pki), tmp_path / "tls")
    api = FakeApiServer(tls=ServerTls(str(tls.localhost.fullchain), str(tls.localhost.key))).start()
    try:
        api.allow(token="sa-token-1", user="system:serviceaccount:monitoring:certscope")
        api.allow(token="sa-token-2", user="system:serviceaccount:monitoring:certscope-rotated")
        api.put("secrets", tls_secret("ns", "a", pki.valid))
        account = tmp_path / "serviceaccount"
        account.mkdir()
        (account / "ca.crt").write_bytes(tls.root_ca.read_bytes())
        (account / "token").write_text("sa-token-1\n")
        host, port = api.url.removeprefix("https://").rsplit(":", 1)
        monkeypatch.setenv("KUBERNETES_SERVICE_HOST", host)
        monkeypatch.setenv("KUBERNETES_SERVICE_PORT", port)
        probe = KubernetesProbe(KubernetesSettings(service_account_dir=str(account), watch_timeout=1))
        probes.append(probe)
        assert set(inventory(probe)) == {"ns/a/tls.crt"}
        (account / "token").write_text("sa-token-2\n")
        os.utime(account / "token", (NOW.timestamp() + 5, NOW.timestamp() + 5))
        # The next watch (every 1-2 s here) carries the new token.
        wait_for(
            lambda: api.requests[-1].identity == "system:serviceaccount:monitoring:certscope-rotated",
            10,
            "a request with the rotated token",
        )
    finally:
        api.stop()


# --------------------------------------------------------------------------- the daemon


def test_daemon_exports_secrets_rotations_policy_and_served_mismatch(
    api: FakeApiServer, kubeconfig: Path, pki: Pki, tmp_path: Path, start_daemon: Any
) -> None:
    tls_pki = build_tls_pki(pki)
    tls = write_tls_files(tls_pki, tmp_path / "tls")
    # The endpoint serves the old certificate; the Secret already holds its renewal.
    renewed = issue("localhost", pki.intermediate, not_before=NOW, sans=("localhost",))
    old = issue("localhost", pki.intermediate, not_before=NOW - 80 * DAY, not_after=NOW + 10 * DAY, sans=("localhost",))
    old_cert = tmp_path / "old.crt"
    old_key = tmp_path / "old.key"
    old_cert.write_bytes(old.pem)
    old_key.write_bytes(old.key_pem)
    api.put(
        "secrets",
        tls_secret(
            "web",
            "site-tls",
            renewed,
            pki.intermediate,
            annotations={"certscope.io/owner": "web-team", "certscope.io/critical": "3d"},
        ),
    )
    with openssl_s_server(old_cert, old_key, tls.intermediate_ca) as server:
        host, port = server.address
        config = f"""
global: {{interval: 1s, trust: {{system: false, ca_files: [{tls.root_ca}]}}}}
probes:
  - {{name: cluster, kind: kubernetes, kubeconfig: {kubeconfig}}}
  - {{name: site, kind: tls, targets: ["{host}:{port}"], server_name: localhost}}
"""
        daemon = start_daemon(config)
        secret_labels = {"secret_namespace": "web", "secret_name": "site-tls", "secret_key": "tls.crt"}
        samples = daemon.wait_metrics(
            lambda s: find(s, "certscope_cert_served_mismatch", probe="site"), 20, "the mismatch series"
        )
        leaf = {"probe": "cluster", "kind": "kubernetes", "target": "web/site-tls/tls.crt", "index": "0"}
        assert (
            value(samples, "certscope_cert_not_after_timestamp_seconds", **leaf, **secret_labels) == renewed.not_after
        )
        [(info_labels, _)] = find(samples, "certscope_cert_info", **leaf)
        assert info_labels["owner"] == "web-team" and info_labels["fingerprint_sha256"] == renewed.fingerprint
        assert value(samples, "certscope_cert_expiry_threshold_seconds", **leaf, severity="critical") == 3 * 86400
        assert value(samples, "certscope_cert_expiry_threshold_seconds", **leaf, severity="warning") == 28 * 86400
        assert (
            value(
                samples,
                "certscope_cert_served_mismatch",
                probe="site",
                source_probe="cluster",
                source_target="web/site-tls/tls.crt",
            )
            == 1
        )
        assert value(samples, "certscope_source_scope_up", probe="cluster", scope="secrets/*/kubernetes.io/tls") == 1
        assert not find(samples, "certscope_cert_info", secret_key="tls.key")

        # Rotate the Secret back to what is served: the rotation is counted, and
        # the served certificate now matches (0).
        api.put("secrets", tls_secret("web", "site-tls", old, pki.intermediate))
        samples = daemon.wait_metrics(
            lambda s: (
                find(s, "certscope_cert_served_mismatch", probe="site", source_probe="cluster")
                and find(s, "certscope_cert_served_mismatch", probe="site", source_probe="cluster")[0][1] == 0
            ),
            20,
            "the mismatch to clear",
        )
        assert value(samples, "certscope_cert_rotations_total", **leaf, role="leaf") == 1

        api.delete("secrets", "web", "site-tls")
        samples = daemon.wait_metrics(
            lambda s: not find(s, "certscope_cert_not_after_timestamp_seconds", probe="cluster"), 20, "deletion"
        )
        assert not find(samples, "certscope_cert_served_mismatch")
        text = daemon.get("/metrics").text + daemon.log()
        assert TOKEN not in text
        assert b64(renewed.key_pem)[:40] not in text


def test_api_errors_mark_the_scope_down_until_it_recovers(
    api: FakeApiServer, kubeconfig: Path, pki: Pki, probes: list[KubernetesProbe]
) -> None:
    api.put("secrets", tls_secret("ns", "a", pki.valid))
    api.fail_next(500, count=2)
    probe = make_probe(kubeconfig)
    probes.append(probe)
    first = probe.targets()
    assert not first.up and first.targets == ()
    [error] = first.errors
    assert error.reason is Reason.API_ERROR and "HTTP 500" in error.message
    # Retried after a jittered backoff (0.25-0.5 s, then 0.5-1 s): up with the Secret.
    recovered = wait_for(lambda: (d := probe.targets()).up and d, 10, "the scope to recover")
    assert recovered.targets == ("ns/a/tls.crt",) and recovered.errors == ()


def test_relabelled_out_secret_disappears(
    api: FakeApiServer, kubeconfig: Path, pki: Pki, probes: list[KubernetesProbe]
) -> None:
    api.put("secrets", tls_secret("ns", "a", pki.valid, labels={"certscope.io/watch": "true"}))
    api.put("secrets", tls_secret("ns", "b", pki.valid))
    probe = make_probe(kubeconfig, label_selector="certscope.io/watch=true")
    probes.append(probe)
    assert set(inventory(probe)) == {"ns/a/tls.crt"}
    api.put("secrets", tls_secret("ns", "a", pki.valid, labels={"certscope.io/watch": "false"}))
    wait_for(lambda: inventory(probe) == {}, 10, "the relabelled Secret to go")


def test_resync_lists_again_and_list_has_a_deadline(
    api: FakeApiServer, kubeconfig: Path, pki: Pki, probes: list[KubernetesProbe]
) -> None:
    for number in range(3):
        api.put("secrets", tls_secret("ns", f"s{number}", pki.valid))
    probe = make_probe(kubeconfig, resync_interval=2)
    probes.append(probe)
    assert len(inventory(probe)) == 3

    def lists() -> int:
        return sum(1 for r in api.requests if "watch" not in r.query and r.path == "/api/v1/secrets")

    wait_for(lambda: lists() >= 2, 10, "a resync list")
    assert len(inventory(probe)) == 3

    # One object per page and a deadline far shorter than 300 pages take.
    for number in range(300):
        api.put("secrets", tls_secret("slow", f"s{number}", pki.valid))
    slow = make_probe(kubeconfig, namespaces=("slow",), page_size=1, list_timeout=0.2)
    probes.append(slow)
    discovery = slow.targets()
    assert not discovery.up
    [error] = discovery.errors
    assert error.reason is Reason.DEADLINE_EXCEEDED
    assert error.message == "secrets/slow/kubernetes.io/tls: list not complete after list_timeout=0.2s"


def test_a_malformed_object_is_its_own_error_not_the_scopes(
    api: FakeApiServer, kubeconfig: Path, pki: Pki, probes: list[KubernetesProbe]
) -> None:
    api.put("secrets", tls_secret("ns", "good", pki.valid))
    bad = tls_secret("ns", "bad", pki.valid)
    bad["metadata"]["annotations"] = ["not", "a", "mapping"]
    api.put("secrets", bad)
    worse = tls_secret("ns", "worse", pki.valid)
    worse["data"] = "not a mapping"
    api.put("secrets", worse)
    probe = make_probe(kubeconfig)
    probes.append(probe)
    discovery = probe.targets()
    assert discovery.up and discovery.targets == ("ns/good/tls.crt",)
    assert sorted((e.reason, e.item) for e in discovery.errors) == [
        (Reason.PARSE_ERROR, "ns/bad"),
        (Reason.PARSE_ERROR, "ns/worse"),
    ]
    # The watch goes on: a later change still arrives.
    api.put("secrets", tls_secret("ns", "later", pki.valid))
    wait_for(lambda: "ns/later/tls.crt" in probe.targets().targets, 10, "an event after the malformed ones")
