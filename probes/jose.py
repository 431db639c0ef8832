"""Just enough JOSE for a step-ca JWK provisioner and an ACME client, on ``cryptography`` alone.

step-ca hands out a JWK provisioner's private key as a compact JWE (RFC 7516) whose
content-encryption key is wrapped with ``PBES2-HS256+A128KW`` (RFC 7518 §4.8): the
provisioner password, PBKDF2-HMAC-SHA256 with the ``p2s`` salt and ``p2c`` count,
then AES key unwrap (RFC 3394).  The content is encrypted with AES-GCM (``A128GCM``
to ``A256GCM``; step uses ``A256GCM``).  ``decrypt_jwk`` undoes that and returns the
private key; ``sign_jwt`` makes the one-time token (a JWS, ES256/ES384/ES512, RS256 or
EdDSA by the key) that step-ca's ``/1.0/sign`` accepts.

For ACME (RFC 8555), ``public_jwk`` and ``jwk_thumbprint`` (RFC 7638) describe the
account key, ``sign_jws`` makes the flattened JSON serialization every ACME request is
sent in, and ``hmac_jws`` the HS256 inner JWS of an External Account Binding.

No new dependency: the handful of primitives below are what ``python-jose`` or
``jwcrypto`` would call underneath, and a wrong password is told apart from a
malformed JWE (``BadPassword`` against ``JoseError``), which the probe reports as
``bad_password`` and ``ca_bad_response``.  Error messages never carry the password,
the key or the token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey

_PBES2 = {"PBES2-HS256+A128KW": (hashes.SHA256(), 16)}
_GCM_KEY_BYTES = {"A128GCM": 16, "A192GCM": 24, "A256GCM": 32}
# A count this high makes one decryption take minutes: refuse it rather than hang.
MAX_PBES2_COUNT = 10_000_000
_CURVES: dict[str, tuple[ec.EllipticCurve, str, hashes.HashAlgorithm]] = {
    "P-256": (ec.SECP256R1(), "ES256", hashes.SHA256()),
    "P-384": (ec.SECP384R1(), "ES384", hashes.SHA384()),
    "P-521": (ec.SECP521R1(), "ES512", hashes.SHA512()),
}


class JoseError(ValueError):
    """The JWE or JWK is malformed or uses an algorithm not supported here."""


class BadPassword(JoseError):
    """The JWE is well formed but the password does not open it."""


def b64url_decode(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError) as exc:
        raise JoseError("not base64url") from exc


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def decrypt_jwk(compact: str, password: bytes) -> tuple[PrivateKey, dict[str, Any]]:
    """The private key inside a PBES2 compact JWE, and the JWK's members (``kid``...)
    without the private parts."""
    parts = compact.strip().split(".")
    if len(parts) != 5:
        raise JoseError("the encrypted key is not a compact JWE (five dot-separated parts)")
    header_b64, wrapped_b64, iv_b64, ciphertext_b64, tag_b64 = parts
    try:
        header = json.loads(b64url_decode(header_b64))
    except ValueError as exc:
        raise JoseError("the JWE header is not JSON") from exc
    if not isinstance(header, dict):
        raise JoseError("the JWE header is not a JSON object")
    algorithm, encryption = header.get("alg"), header.get("enc")
    if algorithm not in _PBES2:
        raise JoseError(f"unsupported JWE key algorithm {algorithm!r} (only PBES2-HS256+A128KW)")
    if encryption not in _GCM_KEY_BYTES:
        raise JoseError(f"unsupported JWE content encryption {encryption!r} (only A128GCM..A256GCM)")
    count = header.get("p2c")
    salt_input = header.get("p2s")
    if not isinstance(count, int) or not 0 < count <= MAX_PBES2_COUNT or not isinstance(salt_input, str):
        raise JoseError("the JWE header has no usable p2c/p2s")
    hash_algorithm, kek_bytes = _PBES2[algorithm]
    # RFC 7518 §4.8.1.1: the salt is the algorithm name, a zero byte, then p2s.
    salt = algorithm.encode("ascii") + b"\x00" + b64url_decode(salt_input)
    kek = PBKDF2HMAC(algorithm=hash_algorithm, length=kek_bytes, salt=salt, iterations=count).derive(password)
    try:
        cek = aes_key_unwrap(kek, b64url_decode(wrapped_b64))
    except InvalidUnwrap:
        raise BadPassword("the provisioner password does not decrypt the provisioner key") from None
    if len(cek) != _GCM_KEY_BYTES[encryption]:
        raise JoseError("the unwrapped content key has the wrong size for its algorithm")
    try:
        plaintext = AESGCM(cek).decrypt(
            b64url_decode(iv_b64),
            b64url_decode(ciphertext_b64) + b64url_decode(tag_b64),
            header_b64.encode("ascii"),
        )
    except InvalidTag:
        raise JoseError("the JWE content does not authenticate") from None
    try:
        jwk = json.loads(plaintext)
    except ValueError as exc:
        raise JoseError("the decrypted JWK is not JSON") from exc
    if not isinstance(jwk, dict):
        raise JoseError("the decrypted JWK is not a JSON object")
    key = private_key_from_jwk(jwk)
    public_members = {k: v for k, v in jwk.items() if k not in ("d", "p", "q", "dp", "dq", "qi", "k")}
    return key, public_members


def _int(jwk: dict[str, Any], member: str) -> int:
    value = jwk.get(member)
    if not isinstance(value, str):
        raise JoseError(f"the JWK has no {member!r} member")
    return int.from_bytes(b64url_decode(value), "big")


def private_key_from_jwk(jwk: dict[str, Any]) -> PrivateKey:
    kty = jwk.get("kty")
    if kty == "EC":
        curve = _CURVES.get(str(jwk.get("crv")))
        if curve is None:
            raise JoseError(f"unsupported EC curve {jwk.get('crv')!r}")
        try:
            key = ec.derive_private_key(_int(jwk, "d"), curve[0])
        except ValueError as exc:
            raise JoseError("the EC private key is invalid") from exc
        numbers = key.public_key().public_numbers()
        if (numbers.x, numbers.y) != (_int(jwk, "x"), _int(jwk, "y")):
            raise JoseError("the JWK's public point does not match its private key")
        return key
    if kty == "OKP" and jwk.get("crv") == "Ed25519":
        return ed25519.Ed25519PrivateKey.from_private_bytes(b64url_decode(str(jwk.get("d", ""))))
    if kty == "RSA":
        public = rsa.RSAPublicNumbers(_int(jwk, "e"), _int(jwk, "n"))
        private = rsa.RSAPrivateNumbers(
            _int(jwk, "p"), _int(jwk, "q"), _int(jwk, "d"), _int(jwk, "dp"), _int(jwk, "dq"), _int(jwk, "qi"), public
        )
        try:
            return private.private_key()
        except ValueError as exc:
            raise JoseError("the RSA private key is invalid") from exc
    raise JoseError(f"unsupported JWK key type {kty!r}")


def sign_jwt(key: PrivateKey, header: dict[str, Any], claims: dict[str, Any]) -> str:
    """A compact JWS over ``claims``; ``alg`` is set from the key."""
    alg, _ = _algorithm(key)
    signing_input = (
        b64url(json.dumps({**header, "alg": alg}, separators=(",", ":")).encode())
        + "."
        + b64url(json.dumps(claims, separators=(",", ":")).encode())
    ).encode("ascii")
    return signing_input.decode("ascii") + "." + b64url(_sign(key, signing_input))


def _algorithm(key: PrivateKey) -> tuple[str, hashes.HashAlgorithm | None]:
    """The JWS ``alg`` for ``key`` and the hash it signs with (None: EdDSA)."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        curve_name = {c[0].name: name for name, c in _CURVES.items()}.get(key.curve.name)
        if curve_name is None:
            raise JoseError(f"unsupported EC curve {key.curve.name}")
        _, alg, digest = _CURVES[curve_name]
        return alg, digest
    if isinstance(key, rsa.RSAPrivateKey):
        return "RS256", hashes.SHA256()
    return "EdDSA", None


def _sign(key: PrivateKey, signing_input: bytes) -> bytes:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        _, digest = _algorithm(key)
        assert digest is not None
        r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(digest)))
        size = (key.curve.key_size + 7) // 8
        return r.to_bytes(size, "big") + s.to_bytes(size, "big")  # JWS wants r||s, not DER
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    return key.sign(signing_input)


def _b64int(value: int, size: int | None = None) -> str:
    return b64url(value.to_bytes(size or max(1, (value.bit_length() + 7) // 8), "big"))


def public_jwk(key: PrivateKey) -> dict[str, str]:
    """The public JWK of ``key``: only the members RFC 7638 hashes, so it is also the
    thumbprint input.  Never any private member."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        numbers = key.public_key().public_numbers()
        crv = {c[0].name: name for name, c in _CURVES.items()}.get(key.curve.name)
        if crv is None:
            raise JoseError(f"unsupported EC curve {key.curve.name}")
        size = (key.curve.key_size + 7) // 8  # fixed width, RFC 7518 6.2.1.2
        return {"crv": crv, "kty": "EC", "x": _b64int(numbers.x, size), "y": _b64int(numbers.y, size)}
    if isinstance(key, rsa.RSAPrivateKey):
        rsa_numbers = key.public_key().public_numbers()
        return {"e": _b64int(rsa_numbers.e), "kty": "RSA", "n": _b64int(rsa_numbers.n)}
    raw = key.public_key().public_bytes_raw()
    return {"crv": "Ed25519", "kty": "OKP", "x": b64url(raw)}


def jwk_thumbprint(key: PrivateKey) -> str:
    """RFC 7638: base64url(SHA-256 of the required members, sorted, no whitespace)."""
    canonical = json.dumps(public_jwk(key), sort_keys=True, separators=(",", ":")).encode()
    return b64url(hashlib.sha256(canonical).digest())


def sign_jws(key: PrivateKey, protected: dict[str, Any], payload: bytes) -> dict[str, str]:
    """A flattened JSON JWS (RFC 7515 7.2.2) over ``payload``; ``alg`` is set from the key.
    An empty ``payload`` gives the empty payload of an ACME POST-as-GET."""
    alg, _ = _algorithm(key)
    header = b64url(json.dumps({**protected, "alg": alg}, separators=(",", ":")).encode())
    body = b64url(payload)
    signature = _sign(key, f"{header}.{body}".encode("ascii"))
    return {"protected": header, "payload": body, "signature": b64url(signature)}


def hmac_jws(mac_key: bytes, protected: dict[str, Any], payload: bytes) -> dict[str, str]:
    """A flattened JSON JWS with HS256 (RFC 7518 3.2): an ACME External Account Binding."""
    header = b64url(json.dumps({**protected, "alg": "HS256"}, separators=(",", ":")).encode())
    body = b64url(payload)
    signature = hmac.new(mac_key, f"{header}.{body}".encode("ascii"), hashlib.sha256).digest()
    return {"protected": header, "payload": body, "signature": b64url(signature)}
