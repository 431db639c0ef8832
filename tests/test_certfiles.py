"""Certificate files the configuration names (probes.certfiles): read through the one
bounded reader, so a FIFO or a device as ``issuer_file`` or ``trust.ca_files`` is
refused at once instead of blocking the build or reading without end."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from probes.certfiles import expand_paths, load_certificates
from probes.crl import CrlProbe, CrlSettings
from probes.ocsp import OcspProbe, OcspSettings
from probes.settings import TrustSettings
from probes.verify import TrustStore
from tests.pki import Pki


def test_pem_and_der_files_load(tmp_path: Path, pki: Pki) -> None:
    (tmp_path / "chain.pem").write_bytes(pki.valid.pem + pki.intermediate.pem)
    (tmp_path / "leaf.der").write_bytes(pki.valid.der)
    assert [c.serial_number for c in load_certificates(str(tmp_path / "chain.pem"))] == [
        pki.valid.cert.serial_number,
        pki.intermediate.cert.serial_number,
    ]
    assert load_certificates(str(tmp_path / "leaf.der")) == [pki.valid.cert]
    assert expand_paths((str(tmp_path / "*.pem"), str(tmp_path / "missing.pem"))) == [
        str(tmp_path / "chain.pem"),
        str(tmp_path / "missing.pem"),  # kept, so that its absence is reported
    ]


@pytest.mark.parametrize("special", ["fifo", "/dev/zero"])
def test_a_fifo_or_device_is_refused_at_once(tmp_path: Path, pki: Pki, special: str) -> None:
    path = special
    if special == "fifo":
        path = str(tmp_path / "issuer.pem")
        os.mkfifo(path)  # no writer: open() for reading would block for ever

    def build_all() -> list[str]:
        refusals = []
        for build in (
            lambda: OcspProbe(OcspSettings(certificates=("x.pem",), issuer_file=path)),
            lambda: CrlProbe(CrlSettings(urls=("http://127.0.0.1:1/x.crl",), issuer_file=path)),
        ):
            try:
                build()
            except OSError as exc:
                refusals.append(exc.strerror or str(exc))
        anchors = TrustStore.from_settings(TrustSettings(system=False, ca_files=(path,))).anchors
        return [*refusals, f"{len(anchors)} anchors"]

    # In a thread, so that a reader that blocks fails the test instead of hanging it.
    pool = ThreadPoolExecutor(1)
    future = pool.submit(build_all)
    try:
        assert future.result(timeout=5) == ["not a regular file", "not a regular file", "0 anchors"]
    finally:
        if not future.done() and special == "fifo":
            with open(path, "wb"):  # a writer that closes at once ends a blocked read
                pass
        pool.shutdown(wait=False)
