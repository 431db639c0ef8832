"""PKCS#12 files built field by field (RFC 7292), for the costs no tool would choose.

``cryptography`` writes a PKCS#12 with one iteration count for everything and takes
as long to write it as to read it; these builders write the DER directly, so a
2^24-iteration MAC costs nothing to make.  Only what the tests need is encoded.
"""

from __future__ import annotations

import os

from cryptography.hazmat.primitives import hashes, padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

ID_DATA = "1.2.840.113549.1.7.1"
ID_ENCRYPTED_DATA = "1.2.840.113549.1.7.6"
CERT_BAG = "1.2.840.113549.1.12.10.1.3"
SHROUDED_KEY_BAG = "1.2.840.113549.1.12.10.1.2"
X509_CERTIFICATE = "1.2.840.113549.1.9.22.1"
PBES2 = "1.2.840.113549.1.5.13"
PBKDF2 = "1.2.840.113549.1.5.12"
SCRYPT = "1.3.6.1.4.1.11591.4.11"
HMAC_SHA256 = "1.2.840.113549.2.9"
AES256_CBC = "2.16.840.1.101.3.4.1.42"
SHA256 = "2.16.840.1.101.3.4.2.1"
PBE_SHA1_3DES = "1.2.840.113549.1.12.1.3"


def tlv(tag: int, content: bytes) -> bytes:
    length = len(content)
    if length < 0x80:
        return bytes([tag, length]) + content
    encoded = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(encoded)]) + encoded + content


def seq(*items: bytes) -> bytes:
    return tlv(0x30, b"".join(items))


def integer(value: int) -> bytes:
    return tlv(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big", signed=False))


def octets(value: bytes) -> bytes:
    return tlv(0x04, value)


def explicit(number: int, content: bytes) -> bytes:
    return tlv(0xA0 | number, content)


def oid(dotted: str) -> bytes:
    parts = [int(p) for p in dotted.split(".")]
    body = bytearray([40 * parts[0] + parts[1]])
    for part in parts[2:]:
        chunk = [part & 0x7F]
        part >>= 7
        while part:
            chunk.append(0x80 | (part & 0x7F))
            part >>= 7
        body.extend(reversed(chunk))
    return tlv(0x06, bytes(body))


NULL = b"\x05\x00"


def _cert_bags(certificates: list[bytes]) -> bytes:
    return seq(
        *(seq(oid(CERT_BAG), explicit(0, seq(oid(X509_CERTIFICATE), explicit(0, octets(c))))) for c in certificates)
    )


def _data(content: bytes) -> bytes:
    return seq(oid(ID_DATA), explicit(0, octets(content)))


def pbkdf2_algorithm(iterations: int, salt: bytes = b"s" * 16) -> bytes:
    return seq(oid(PBKDF2), seq(octets(salt), integer(iterations), seq(oid(HMAC_SHA256), NULL)))


def pbes2_aes(iterations: int, iv: bytes = b"\x00" * 16, salt: bytes = b"s" * 16) -> bytes:
    return seq(oid(PBES2), seq(pbkdf2_algorithm(iterations, salt), seq(oid(AES256_CBC), octets(iv))))


def pfx(auth_safe: list[bytes], mac_iterations: int | None) -> bytes:
    """PFX { version 3, authSafe data(AuthenticatedSafe), macData }; the MAC digest
    is zeros (it cannot verify: the point is what checking it costs)."""
    mac = b""
    if mac_iterations is not None:
        mac = seq(seq(seq(oid(SHA256), NULL), octets(b"\x00" * 32)), octets(b"m" * 8), integer(mac_iterations))
    return seq(integer(3), _data(seq(*auth_safe)), mac)


def expensive_mac(certificates: list[bytes], iterations: int) -> bytes:
    """Certificates in the clear, guarded by a MAC of ``iterations`` rounds: what
    any PKCS#12 reader computes before it reads a single bag."""
    return pfx([_data(_cert_bags(certificates))], iterations)


def expensive_key_bag(certificates: list[bytes], iterations: int) -> bytes:
    """No MAC; a shrouded key bag whose PBKDF2 runs ``iterations`` rounds, in the clear."""
    key_bag = seq(oid(SHROUDED_KEY_BAG), explicit(0, seq(pbes2_aes(iterations), octets(os.urandom(64)))))
    return pfx([_data(_cert_bags(certificates)), _data(seq(key_bag))], None)


def hidden_expensive_key_bag(certificates: list[bytes], inner_iterations: int, outer_iterations: int = 2048) -> bytes:
    """The expensive key bag of ``expensive_key_bag`` inside an encrypted
    SafeContents (PBES2/AES-256-CBC under the empty password, as a file with no
    password configured is read), so no reader can see its cost before it decrypts:
    only a deadline stops it.  No MAC."""
    key_bag = seq(oid(SHROUDED_KEY_BAG), explicit(0, seq(pbes2_aes(inner_iterations), octets(os.urandom(64)))))
    safe_contents = seq(key_bag)
    salt, iv = os.urandom(16), os.urandom(16)
    key = PBKDF2HMAC(hashes.SHA256(), 32, salt, outer_iterations).derive(b"")
    padder = padding.PKCS7(128).padder()
    plain = padder.update(safe_contents) + padder.finalize()
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    ciphertext = encryptor.update(plain) + encryptor.finalize()
    encrypted = seq(
        oid(ID_ENCRYPTED_DATA),
        explicit(0, seq(integer(0), seq(oid(ID_DATA), pbes2_aes(outer_iterations, iv, salt), tlv(0x80, ciphertext)))),
    )
    return pfx([_data(_cert_bags(certificates)), encrypted], None)
