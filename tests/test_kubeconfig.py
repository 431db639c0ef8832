"""kubeconfig files written by ``kubectl config``, in a directory laid out like a
kubeadm control-plane node: ``/etc/kubernetes/pki`` and the four kubeconfigs
(``admin.conf``, ``controller-manager.conf``, ``scheduler.conf`` with embedded
certificates, ``kubelet.conf`` pointing at the kubelet's rotating
``kubelet-client-current.pem``), as ``kubeadm init`` leaves them.

kubectl comes from Debian (package kubernetes-client, or the kubectl the machine
image ships; scripts/install-test-deps); without it these tests fail, they do not
skip.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from probes.context import ProbeContext
from probes.files import FilesProbe, FilesSettings
from probes.kubeconfig import looks_like_kubeconfig, parse_kubeconfig
from probes.reasons import Reason
from probes.result import ProbeResult
from tests.helpers import find
from tests.pki import DAY, NOW, Issued, issue
from tests.test_fuzz import FUZZ, mutated

KUBECONFIGS = ("admin.conf", "controller-manager.conf", "scheduler.conf", "kubelet.conf")
USERS = {
    "admin.conf": "kubernetes-admin",
    "controller-manager.conf": "system:kube-controller-manager",
    "scheduler.conf": "system:kube-scheduler",
    "kubelet.conf": "system:node:cp-1",
}


def kubectl(kubeconfig: Path, *args: str, cwd: Path | None = None) -> None:
    binary = shutil.which("kubectl")
    if binary is None:
        pytest.fail("kubectl is not installed: run scripts/install-test-deps (Debian kubernetes-client)")
    done = subprocess.run(
        [binary, "config", *args, f"--kubeconfig={kubeconfig}"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env={"PATH": os.environ.get("PATH", ""), "HOME": str(kubeconfig.parent)},
    )
    assert done.returncode == 0, done.stdout + done.stderr


@dataclass
class Node:
    root: Path  # plays the host's /
    kubernetes: Path  # /etc/kubernetes
    ca: Issued
    clients: dict[str, Issued]  # kubeconfig file -> its user's client certificate
    kubelet_pki: Path

    def conf(self, name: str) -> Path:
        return self.kubernetes / name


def write_pem(path: Path, *items: Issued, key: Issued | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(item.pem for item in items) + (key.key_pem if key else b""))
    return path


def kubeadm_node(root: Path) -> Node:
    kubernetes = root / "etc" / "kubernetes"
    pki = kubernetes / "pki"
    ca = issue("kubernetes", ca=True, not_after=NOW + 3650 * DAY)
    write_pem(pki / "ca.crt", ca)
    write_pem(pki / "ca.key", key=ca).chmod(0o600)
    write_pem(pki / "apiserver.crt", issue("kube-apiserver", ca, not_after=NOW + 365 * DAY))
    write_pem(pki / "front-proxy-ca.crt", issue("front-proxy-ca", ca=True, not_after=NOW + 3650 * DAY))
    etcd_ca = issue("etcd-ca", ca=True, not_after=NOW + 3650 * DAY)
    write_pem(pki / "etcd" / "ca.crt", etcd_ca)
    write_pem(pki / "etcd" / "server.crt", issue("cp-1", etcd_ca, not_after=NOW + 365 * DAY))
    # Each client certificate expires on a different day, so a mix-up shows.
    clients = {name: issue(USERS[name], ca, not_after=NOW + (300 + 10 * n) * DAY) for n, name in enumerate(KUBECONFIGS)}
    kubelet_pki = root / "var" / "lib" / "kubelet" / "pki"
    for name in KUBECONFIGS:
        conf = kubernetes / name
        user = USERS[name]
        kubectl(conf, "set-cluster", "kubernetes", "--server=https://127.0.0.1:6443",
                f"--certificate-authority={pki / 'ca.crt'}", "--embed-certs=true")  # fmt: skip
        if name == "kubelet.conf":
            # kubeadm points kubelet.conf at the file the kubelet rotates itself.
            current = kubelet_pki / "kubelet-client-current.pem"
            dated = write_pem(kubelet_pki / "kubelet-client-2026-01-01.pem", clients[name], key=clients[name])
            current.symlink_to(dated.name)
            kubectl(conf, "set-credentials", user, f"--client-certificate={current}", f"--client-key={current}")
        else:
            scratch = root / "scratch"
            cert = write_pem(scratch / f"{name}.crt", clients[name])
            key = write_pem(scratch / f"{name}.key", key=clients[name])
            kubectl(conf, "set-credentials", user, f"--client-certificate={cert}", f"--client-key={key}",
                    "--embed-certs=true")  # fmt: skip
        kubectl(conf, "set-context", f"{user}@kubernetes", "--cluster=kubernetes", f"--user={user}")
        kubectl(conf, "use-context", f"{user}@kubernetes")
        conf.chmod(0o600)  # as kubeadm writes them
    shutil.rmtree(root / "scratch")
    return Node(root, kubernetes, ca, clients, kubelet_pki)


@pytest.fixture
def node(tmp_path: Path) -> Node:
    return kubeadm_node(tmp_path / "host")


def run(probe: FilesProbe, target: Path | str) -> ProbeResult:
    return probe.run(str(target), ProbeContext(deadline=time.monotonic() + 30))


def preset_probe(node: Node) -> FilesProbe:
    """What the Helm chart's kubeadm preset reads."""
    return FilesProbe(FilesSettings(paths=(f"{node.kubernetes}/pki/**/*.crt", f"{node.kubernetes}/*.conf")))


def test_a_kubeadm_node_is_inventoried_with_every_kubeconfig(node: Node) -> None:
    probe = preset_probe(node)
    discovery = probe.targets()
    assert not discovery.errors
    confs = sorted(t for t in discovery.targets if t.endswith(".conf"))
    assert confs == sorted(str(node.conf(name)) for name in KUBECONFIGS)
    assert len(discovery.targets) == 5 + 4  # ca, apiserver, front-proxy-ca, etcd ca and server; the kubeconfigs
    for name in KUBECONFIGS:
        result = run(probe, node.conf(name))
        assert result.success, result.errors
        located = {(o.role, o.labels): o.cert for o in result.certificates}
        assert set(located) == {
            ("root", (("kubeconfig_cluster", "kubernetes"),)),
            ("leaf", (("kubeconfig_user", USERS[name]),)),
        }
        ca = located[("root", (("kubeconfig_cluster", "kubernetes"),))]
        client = located[("leaf", (("kubeconfig_user", USERS[name]),))]
        assert (ca.fingerprint_sha256, ca.not_after) == (node.ca.fingerprint, node.ca.not_after)
        assert (client.fingerprint_sha256, client.not_after) == (
            node.clients[name].fingerprint,
            node.clients[name].not_after,
        ), name
        assert client.subject_cn == USERS[name]
        assert result.key_exposure == (), name  # 0600, owned like its directory
    for target in discovery.targets:
        assert run(probe, target).success, target


def test_embedded_client_key_readable_by_others_is_exposed(node: Node) -> None:
    admin = node.conf("admin.conf")
    admin.chmod(0o644)
    kubelet = node.conf("kubelet.conf")
    kubelet.chmod(0o644)  # refers to its key: nothing in this file to expose
    probe = preset_probe(node)
    assert run(probe, admin).key_exposure == ("other_readable", "group_readable")
    assert run(probe, kubelet).key_exposure == ()


def test_a_rotated_referenced_certificate_is_seen_although_the_kubeconfig_is_unchanged(node: Node) -> None:
    probe = preset_probe(node)
    kubelet = node.conf("kubelet.conf")
    probe.targets()
    first = run(probe, kubelet)
    run(probe, node.conf("admin.conf"))
    renewed = issue(USERS["kubelet.conf"], node.ca, not_after=NOW + 400 * DAY)
    dated = write_pem(node.kubelet_pki / "kubelet-client-2026-09-01.pem", renewed, key=renewed)
    current = node.kubelet_pki / "kubelet-client-current.pem"
    current.unlink()
    current.symlink_to(dated.name)
    # targets() hands back unchanged files' results without a run: not this one.
    assert str(kubelet) not in probe.targets().unchanged
    second = run(probe, kubelet)
    user = [o.cert for o in second.certificates if o.role == "leaf"]
    assert [c.not_after for c in user] == [renewed.not_after]
    assert first.certificates != second.certificates
    # A kubeconfig that references nothing is cached like any file.
    assert str(node.conf("admin.conf")) in probe.targets().unchanged


def test_missing_reference_and_bad_data_are_errors_of_their_own(node: Node, tmp_path: Path) -> None:
    probe = preset_probe(node)
    (node.kubelet_pki / "kubelet-client-current.pem").unlink()
    result = run(probe, node.conf("kubelet.conf"))
    assert result.reason is Reason.NOT_FOUND
    assert "user 'system:node:cp-1': client-certificate" in result.message
    assert "kubelet-client-current.pem" in result.message
    assert [o.labels for o in result.certificates] == [(("kubeconfig_cluster", "kubernetes"),)]  # the CA still is

    document = yaml.safe_load(node.conf("admin.conf").read_text())
    document["users"][0]["user"]["client-certificate-data"] = "not base64!"
    broken = tmp_path / "broken.conf"
    broken.write_text(yaml.safe_dump(document))
    result = run(FilesProbe(FilesSettings(paths=(str(broken),))), broken)
    assert result.reason is Reason.PARSE_ERROR and "client-certificate-data is not valid base64" in result.message
    assert len(result.certificates) == 1
    assert "LS0t" not in result.message  # never quotes key or certificate data

    relative = tmp_path / "relative" / "kubeconfig"
    relative.parent.mkdir()
    write_pem(relative.parent / "ca.pem", node.ca)
    # Run from the kubeconfig's directory, kubectl writes the path as given; it reads it
    # relative to the kubeconfig's directory, and so must certscope.
    kubectl(relative, "set-cluster", "c", "--server=https://127.0.0.1:6443", "--certificate-authority=ca.pem",
            cwd=relative.parent)  # fmt: skip
    assert "certificate-authority: ca.pem" in relative.read_text(), relative.read_text()
    result = run(FilesProbe(FilesSettings(paths=(str(relative),))), relative)
    assert result.success and [o.cert.fingerprint_sha256 for o in result.certificates] == [node.ca.fingerprint]

    not_yaml = tmp_path / "not-yaml.conf"
    not_yaml.write_text("apiVersion: v1\nkind: Config\nclusters: [unclosed\n")
    result = run(FilesProbe(FilesSettings(paths=(str(not_yaml),))), not_yaml)
    assert result.reason is Reason.PARSE_ERROR and "not valid YAML" in result.message
    other_yaml = tmp_path / "deployment.yaml"
    other_yaml.write_text("apiVersion: apps/v1\nkind: Deployment\n")
    assert not looks_like_kubeconfig(other_yaml.read_bytes())
    json_config = tmp_path / "config.json"
    json_config.write_text(json.dumps(document | {"users": []}))
    assert looks_like_kubeconfig(json_config.read_bytes())
    assert run(FilesProbe(FilesSettings(paths=(str(json_config),))), json_config).success


@FUZZ
@given(data=st.data())
def test_mutated_kubeconfigs_never_raise(data: st.DataObject) -> None:
    seeds = (SEED_KUBECONFIG, SEED_KUBECONFIG.replace(b"client-certificate-data", b"client-certificate"))
    text = data.draw(mutated(seeds))
    located = parse_kubeconfig(text, "/nonexistent/fuzz.conf", max_file_size=1 << 20)
    for error in located.errors:
        assert error.reason in {
            Reason.PARSE_ERROR,
            Reason.NO_CERTIFICATE,
            Reason.MALFORMED_CERTIFICATE,
            Reason.NOT_FOUND,
            Reason.READ_ERROR,
            Reason.PERMISSION_DENIED,
            Reason.FILE_TOO_LARGE,
            Reason.EMPTY_FILE,
        }, error


def _seed() -> bytes:
    import base64

    ca = issue("fuzz ca", ca=True)
    client = issue("fuzz client", ca)
    return yaml.safe_dump(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "c", "cluster": {"certificate-authority-data": base64.b64encode(ca.pem).decode()}}],
            "users": [{"name": "u", "user": {"client-certificate-data": base64.b64encode(client.pem).decode()}}],
        }
    ).encode()


SEED_KUBECONFIG = _seed()


def test_scan_reads_a_kubeadm_directory(node: Node) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "exporter", "scan", "--output", "json", str(node.conf("admin.conf")),
         str(node.kubernetes / "pki")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    document = json.loads(done.stdout)
    # pki/ holds ca.key and has no certificate in it: scan reports the key file; nothing else fails.
    assert {e["item"] for e in document["errors"]} == {str(node.kubernetes / "pki" / "ca.key")}
    admin = [c for c in document["certificates"] if c["path"] == str(node.conf("admin.conf"))]
    assert {json.dumps(c["where"], sort_keys=True) for c in admin} == {
        '{"kubeconfig_cluster": "kubernetes"}',
        '{"kubeconfig_user": "kubernetes-admin"}',
    }
    table = subprocess.run(
        [sys.executable, "-m", "exporter", "scan", str(node.conf("scheduler.conf"))],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert table.returncode == 0, table.stdout + table.stderr
    assert f"{node.conf('scheduler.conf')}[1] (leaf) kubeconfig_user=system:kube-scheduler: ok" in table.stdout


def test_daemon_exports_kubeconfig_certificates_by_cluster_and_user(node: Node, start_daemon: object) -> None:
    config = f"""
global: {{interval: 1s}}
probes:
  - name: kubeadm
    kind: files
    paths: ["{node.kubernetes}/pki/**/*.crt", "{node.kubernetes}/*.conf"]
"""
    daemon = start_daemon(config)  # type: ignore[operator]
    metrics = daemon.wait_metrics(
        lambda m: len(find(m, "certscope_cert_not_after_timestamp_seconds", probe="kubeadm")) == 5 + 8
    )
    for name in KUBECONFIGS:
        user = find(
            metrics,
            "certscope_cert_not_after_timestamp_seconds",
            target=str(node.conf(name)),
            kubeconfig_user=USERS[name],
        )
        assert [v for _, v in user] == [node.clients[name].not_after], name
        cluster = find(metrics, "certscope_cert_info", target=str(node.conf(name)), kubeconfig_cluster="kubernetes")
        assert len(cluster) == 1 and cluster[0][0]["role"] == "root"
    assert "kubeconfig_user=system:kube-scheduler" in daemon.get("/").text
