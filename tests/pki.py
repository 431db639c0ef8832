"""A test PKI built with ``cryptography``: root -> intermediate -> leaves.

Leaves: valid, expired, not yet valid; written as PEM, DER, PKCS#7 and PKCS#12 by
``write_formats``.  EC P-256 keys keep it fast (a whole PKI in a few milliseconds).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs7, pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
DAY = dt.timedelta(days=1)
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


@dataclass(frozen=True)
class Issued:
    cert: x509.Certificate
    key: PrivateKey

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    @property
    def not_after(self) -> float:
        return self.cert.not_valid_after_utc.timestamp()

    @property
    def fingerprint(self) -> str:
        return self.cert.fingerprint(hashes.SHA256()).hex()


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "certscope tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _key_usage(ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def issue(
    common_name: str,
    issuer: Issued | None = None,
    *,
    ca: bool = False,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    sans: tuple[str, ...] = (),
    extra_extensions: tuple[x509.ExtensionType, ...] = (),
    key: PrivateKey | None = None,
    extended_key_usage: tuple[x509.ObjectIdentifier, ...] = (ExtendedKeyUsageOID.SERVER_AUTH,),
) -> Issued:
    """A certificate for ``common_name`` signed by ``issuer`` (self-signed without one).
    ``key`` defaults to a new EC P-256 key; ``extended_key_usage`` applies to leaves only."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    signer_key = issuer.key if issuer else key
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(issuer.cert.subject if issuer else _name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or NOW - DAY)
        .not_valid_after(not_after or NOW + 90 * DAY)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key((issuer.key if issuer else key).public_key()),
            critical=False,
        )
        .add_extension(_key_usage(ca), critical=True)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in sans]), critical=False)
    if not ca:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(extended_key_usage)), critical=False)
    for extension in extra_extensions:
        builder = builder.add_extension(extension, critical=False)
    return Issued(builder.sign(signer_key, hashes.SHA256()), key)


@dataclass(frozen=True)
class Pki:
    root: Issued
    intermediate: Issued
    valid: Issued
    expired: Issued
    not_yet_valid: Issued


def build_pki() -> Pki:
    root = issue("certscope test root", ca=True, not_after=NOW + 3650 * DAY)
    intermediate = issue("certscope test intermediate", root, ca=True, not_after=NOW + 1825 * DAY)
    return Pki(
        root=root,
        intermediate=intermediate,
        valid=issue("valid.test", intermediate, sans=("valid.test", "www.valid.test")),
        expired=issue(
            "expired.test", intermediate, not_before=NOW - 100 * DAY, not_after=NOW - 10 * DAY, sans=("expired.test",)
        ),
        not_yet_valid=issue(
            "future.test", intermediate, not_before=NOW + 10 * DAY, not_after=NOW + 100 * DAY, sans=("future.test",)
        ),
    )


def write_formats(pki: Pki, directory: Path, password: bytes = b"correct horse") -> dict[str, Path]:
    """One file per format; returns name -> path."""
    directory.mkdir(parents=True, exist_ok=True)
    files = {
        "valid.pem": pki.valid.pem,
        "expired.pem": pki.expired.pem,
        "future.pem": pki.not_yet_valid.pem,
        "chain.pem": b"leaf follows\n" + pki.valid.pem + b"\nintermediate:\n" + pki.intermediate.pem + pki.root.pem,
        "valid.der": pki.valid.der,
        "chain.p7b": pkcs7.serialize_certificates([pki.valid.cert, pki.intermediate.cert], serialization.Encoding.DER),
        "chain.p7c.pem": pkcs7.serialize_certificates(
            [pki.expired.cert, pki.intermediate.cert], serialization.Encoding.PEM
        ),
        "bundle.p12": pkcs12.serialize_key_and_certificates(
            b"bundle",
            pki.valid.key,
            pki.valid.cert,
            [pki.intermediate.cert],
            serialization.BestAvailableEncryption(password),
        ),
    }
    paths = {}
    for name, data in files.items():
        path = directory / name
        path.write_bytes(data)
        paths[name] = path
    return paths
