"""Scale-out by sharding: each replica owns a stable hash partition of the targets
and of the Kubernetes namespaces; together they cover everything exactly once."""

from __future__ import annotations

import base64
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.cli import parse_shard
from probes.kubernetes import KubernetesProbe, KubernetesSettings
from probes.settings import ProbeDefaults, Shard
from tests.helpers import find
from tests.kube_apiserver import FakeApiServer
from tests.pki import Pki


def test_every_key_has_exactly_one_owner_and_shares_are_even() -> None:
    keys = [f"host-{n}.example:443" for n in range(3000)]
    owners = [[s for s in range(3) if Shard(s, 3).owns(key)] for key in keys]
    assert all(len(o) == 1 for o in owners)
    counts = [sum(1 for o in owners if o == [s]) for s in range(3)]
    assert all(900 <= c <= 1100 for c in counts), counts
    # Stable: the same answer every time (no per-process hash seed).
    assert [Shard(1, 3).owns(k) for k in keys[:50]] == [Shard(1, 3).owns(k) for k in keys[:50]]


def test_shard_flags() -> None:
    assert parse_shard("hostname", 3, "certscope-2") == Shard(2, 3)
    assert parse_shard("1", 2, "anything") == Shard(1, 2)
    with pytest.raises(ValueError, match=r"outside 0\.\.1"):
        parse_shard("2", 2, "x")
    with pytest.raises(ValueError, match="does not end in -<ordinal>"):
        parse_shard("hostname", 2, "laptop")
    with pytest.raises(ValueError, match="must be a number or 'hostname'"):
        parse_shard("first", 2, "x")


def test_two_daemons_split_a_directory(pki: Pki, tmp_path: Path, start_daemon: Any) -> None:
    certs = tmp_path / "certs"
    certs.mkdir()
    for number in range(40):
        (certs / f"c{number:02}.pem").write_bytes(pki.valid.pem)
    config = f"probes:\n  - {{name: disk, kind: files, paths: ['{certs}'], interval: 1s}}\n"
    seen = []
    for index in (0, 1):
        daemon = start_daemon(config, f"--shard.index={index}", "--shard.count=2")
        samples = daemon.wait_metrics(lambda s: find(s, "certscope_probe_success", probe="disk"), 20, "a round")
        seen.append({labels["target"] for labels, _ in find(samples, "certscope_probe_success", probe="disk")})
        assert f"shard={index}/2" in daemon.log()
    assert seen[0].isdisjoint(seen[1])
    assert seen[0] | seen[1] == {str(certs / f"c{n:02}.pem") for n in range(40)}
    assert 10 <= len(seen[0]) <= 30


def test_bad_shard_flag_exits_with_a_message(start_daemon: Any, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "exporter", "run", "--shard.index=5", "--shard.count=2"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert "--shard.index 5 is outside 0..1 (--shard.count 2)" in done.stderr


@pytest.fixture
def api(pki: Pki) -> Iterator[FakeApiServer]:
    server = FakeApiServer().start()
    server.allow(token="shard-token")
    for namespace in "abcdefgh":
        server.put(
            "secrets",
            {
                "metadata": {"namespace": f"ns-{namespace}", "name": "tls"},
                "type": "kubernetes.io/tls",
                "data": {"tls.crt": base64.b64encode(pki.valid.pem).decode()},
            },
        )
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize("namespaces", [(), tuple(f"ns-{n}" for n in "abcdefgh")])
def test_kubernetes_namespaces_are_split(api: FakeApiServer, tmp_path: Path, namespaces: tuple[str, ...]) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "current-context": "t",
                "contexts": [{"name": "t", "context": {"cluster": "c", "user": "u"}}],
                "clusters": [{"name": "c", "cluster": {"server": api.url}}],
                "users": [{"name": "u", "user": {"token": "shard-token"}}],
            }
        )
    )
    settings = KubernetesSettings(kubeconfig=str(kubeconfig), namespaces=namespaces)
    found = []
    for index in (0, 1):
        probe = KubernetesProbe(settings, ProbeDefaults(shard=Shard(index, 2)))
        try:
            discovery = probe.targets()
            found.append(set(discovery.targets))
            if namespaces:  # only this replica's namespaces are watched at all
                watched = {scope.split("/")[1] for scope, _ in discovery.scopes}
                assert watched == {t.split("/")[0] for t in discovery.targets}
        finally:
            probe.close()
    assert found[0].isdisjoint(found[1])
    assert found[0] | found[1] == {f"ns-{n}/tls/tls.crt" for n in "abcdefgh"}
