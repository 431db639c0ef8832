"""The daemon over a tree of thousands of new certificate files: they are parsed in
worker processes (probes/files_workers.py), every certificate is exported, and
SIGTERM in the middle of the batch stops the daemon in time with no worker left."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import signal
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from probes.cpu_slots import available_cpus
from tests.fixtures.helpers import DaemonProcess, find, wait_for
from tests.fixtures.pki import Pki


def write_tree(directory: Path, count: int, pki: Pki) -> None:
    """``count`` distinct leaves issued by the test intermediate, one key for all."""
    directory.mkdir(parents=True)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    issuer = pki.intermediate
    for number in range(count):
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"leaf-{number}.example.test")]))
            .issuer_name(issuer.cert.subject)
            .public_key(key.public_key())
            .serial_number(number + 1)
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30 + number % 60))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(f"leaf-{number}.example.test")]), False)
            .sign(issuer.key, hashes.SHA256())
        )
        (directory / f"leaf-{number:05d}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def start(tmp_path: Path, tree: Path) -> DaemonProcess:
    config = tmp_path / "certscope.yaml"
    config.write_text(json.dumps({"probes": [{"name": "tree", "kind": "files", "paths": [str(tree)]}]}))
    return DaemonProcess(config, tmp_path / "daemon.log")


def children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found |= {int(child) for child in (task / "children").read_text().split()}
        except OSError:
            pass
    return found


def test_a_large_tree_is_parsed_in_workers_and_exported_whole(tmp_path: Path, pki: Pki) -> None:
    tree = tmp_path / "tree"
    write_tree(tree, 2_500, pki)
    daemon = start(tmp_path, tree)
    try:
        daemon.wait_ready(60)
        samples = daemon.metrics()
        not_after = find(samples, "certscope_cert_not_after_timestamp_seconds", probe="tree")
        assert len(not_after) == 2_500
        if available_cpus() >= 2:
            assert re.search(r"files: 2500 of 2500 new files parsed in \d+ worker processes", daemon.log())
        else:  # one CPU: parsed in the daemon itself
            assert "worker processes" not in daemon.log()
    finally:
        assert daemon.stop() == 0


def test_sigterm_during_the_batch_stops_in_time_and_leaves_no_worker(tmp_path: Path, pki: Pki) -> None:
    tree = tmp_path / "tree"
    write_tree(tree, 8_000, pki)
    daemon = start(tmp_path, tree)
    with_workers = available_cpus() >= 2  # with one CPU the daemon parses them itself
    try:
        if with_workers:
            wait_for(lambda: "new files in" in daemon.log(), 30, "the batch to start")
            workers = wait_for(lambda: children(daemon.process.pid), 10, "the worker processes")
        else:
            wait_for(lambda: "round" in daemon.log(), 30, "the first round to start")
        daemon.signal(signal.SIGTERM)
        stopped = time.monotonic()
        daemon.process.wait(timeout=15)
        assert time.monotonic() - stopped < 10
        assert daemon.process.returncode == 0
        if with_workers:
            parsed = re.search(r"files: (\d+) of 8000 new files parsed", daemon.log())
            assert parsed is not None and int(parsed.group(1)) < 8000, daemon.log()[-2000:]
            # Gone, not orphaned.
            wait_for(lambda: all(not os.path.exists(f"/proc/{pid}") for pid in workers), 5, "the workers to exit")
    finally:
        daemon.stop()
