"""The catalogue of bad certificate files: name -> (how to make it, expected reason)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtensionOID, NameOID

from tests.pki import Pki, issue


def _symlink_loop(path: Path, pki: Pki) -> None:
    other = path.with_name(path.name + ".other")
    os.symlink(path.name, other)
    os.symlink(other.name, path)


def _fifo(path: Path, pki: Pki) -> None:
    os.mkfifo(path)


def _huge(path: Path, pki: Pki) -> None:
    with open(path, "wb") as handle:  # sparse: 1 GiB of apparent size, no disk used
        handle.truncate(1024**3)


def _truncated(path: Path, pki: Pki) -> None:
    path.write_bytes(pki.valid.pem[: len(pki.valid.pem) // 2])


def _bad_base64(path: Path, pki: Pki) -> None:
    lines = pki.valid.pem.splitlines()
    lines[3] = b"!!!!not*base64!!!!" + lines[3][18:]
    path.write_bytes(b"\n".join(lines) + b"\n")


def _key_only(path: Path, pki: Pki) -> None:
    path.write_bytes(pki.valid.key_pem)


def _csr(path: Path, pki: Pki) -> None:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "csr.test")]))
        .sign(pki.valid.key, hashes.SHA256())
    )
    path.write_bytes(csr.public_bytes(serialization.Encoding.PEM))


def _wrong_password(path: Path, pki: Pki) -> None:
    path.write_bytes(
        pkcs12.serialize_key_and_certificates(
            b"x", pki.valid.key, pki.valid.cert, None, serialization.BestAvailableEncryption(b"not the configured one")
        )
    )


def _raising_fields(path: Path, pki: Pki) -> None:
    # A SAN extension whose contents are not a SAN: loads fine, raises on access.
    broken = issue(
        "raising-fields.test",
        pki.intermediate,
        extra_extensions=(x509.UnrecognizedExtension(ExtensionOID.SUBJECT_ALTERNATIVE_NAME, b"\x04\x03abc"),),
    )
    path.write_bytes(broken.pem)


def _duplicate(path: Path, pki: Pki) -> None:
    path.write_bytes(pki.valid.pem + pki.intermediate.pem + pki.valid.pem)


def _broken_symlink(path: Path, pki: Pki) -> None:
    os.symlink("does-not-exist.pem", path)


def _empty(path: Path, pki: Pki) -> None:
    path.write_bytes(b"")


Maker = Callable[[Path, Pki], None]

# name -> (maker, reason).  Permission denied needs a non-root reader; see the tests.
BAD_FILES: dict[str, tuple[Maker, str]] = {
    "loop.pem": (_symlink_loop, "symlink_loop"),
    "broken-link.pem": (_broken_symlink, "broken_symlink"),
    "fifo.pem": (_fifo, "not_regular_file"),
    "huge.pem": (_huge, "file_too_large"),
    "empty.pem": (_empty, "empty_file"),
    "truncated.pem": (_truncated, "parse_error"),
    "bad-base64.pem": (_bad_base64, "parse_error"),
    "key-only.pem": (_key_only, "no_certificate"),
    "request.csr.pem": (_csr, "no_certificate"),
    "wrong-password.p12": (_wrong_password, "bad_password"),
    "raising-fields.pem": (_raising_fields, "malformed_certificate"),
    "duplicate.pem": (_duplicate, "duplicate_certificate"),
}


def make_bad_files(directory: Path, pki: Pki) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, (maker, _) in BAD_FILES.items():
        maker(directory / name, pki)
        paths[name] = directory / name
    return paths
