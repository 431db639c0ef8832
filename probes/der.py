"""The one DER reader certscope has, for the few structures it reads by hand.

``read_element`` and ``elements`` walk definite-length DER within bounds: a high tag
number, an indefinite (BER) or over-long length, or an element running past its
enclosing one is a ``DerError`` (a ``ValueError``).  Their users: the certificate
fields certparse takes without decoding (issuer, SubjectPublicKeyInfo), OCSP's
issuerKeyHash (revocation), the PKCS#12 pricer (pkcs12), and a certificate's
authorityKeyIdentifier (below).

cryptography refuses to load an authorityKeyIdentifier that has an
authorityCertIssuer without an authorityCertSerialNumber (or the reverse), and
then refuses every extension of the certificate with it.  OpenSSL reads such an
identifier and acts on it (a root whose identifier names another issuer is not
self-signed to OpenSSL), so the verification profiles need its fields all the same.
``authority_key_identifier`` tries cryptography first and walks the DER of the
to-be-signed certificate only when that fails.  Malformed input gives None.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509

_AKI_OID = bytes.fromhex("551d23")  # 2.5.29.35


@dataclass(frozen=True, slots=True)
class AuthorityKeyId:
    key_identifier: bytes | None
    directory_names: tuple[bytes, ...]  # DER of each directoryName in authorityCertIssuer
    serial_number: int | None


def authority_key_identifier(cert: x509.Certificate) -> AuthorityKeyId | None:
    """The certificate's authorityKeyIdentifier, or None when it has none (or it
    cannot be read at all)."""
    try:
        value = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    except x509.ExtensionNotFound:
        return None
    except Exception:  # noqa: BLE001 - cryptography will not load it: read the DER
        return _from_der(cert.tbs_certificate_bytes)
    names = tuple(
        n.value.public_bytes() for n in value.authority_cert_issuer or () if isinstance(n, x509.DirectoryName)
    )
    return AuthorityKeyId(value.key_identifier, names, value.authority_cert_serial_number)


class DerError(ValueError):
    """Not DER this reader follows."""


Element = tuple[int, int, int]  # (tag, start of the contents, end of the contents)


def read_element(data: bytes, offset: int, limit: int | None = None) -> Element:
    """The element at ``offset``, which must end by ``limit`` (the end of its
    enclosing element; the end of ``data`` when None)."""
    limit = len(data) if limit is None else limit
    if limit - offset < 2:
        raise DerError("truncated DER")
    tag = data[offset]
    if tag & 0x1F == 0x1F:
        raise DerError("high tag number")  # no structure certscope reads uses one
    length = data[offset + 1]
    start = offset + 2
    if length & 0x80:
        count = length & 0x7F
        if not 0 < count <= 4 or start + count > limit:
            raise DerError("indefinite or unsupported DER length")
        length = int.from_bytes(data[start : start + count], "big")
        start += count
    end = start + length
    if end > limit:
        raise DerError("truncated DER")
    return tag, start, end


def elements(data: bytes, start: int, end: int) -> list[Element]:
    """Each element in [start, end), in order: the contents of a constructed one."""
    found = []
    offset = start
    while offset < end:
        element = read_element(data, offset, end)
        found.append(element)
        offset = element[2]
    return found


def _from_der(tbs: bytes) -> AuthorityKeyId | None:
    try:
        _, start, end = read_element(tbs, 0)
        extensions = next((c for c in elements(tbs, start, end) if c[0] == 0xA3), None)
        if extensions is None:
            return None
        _, seq_start, seq_end = read_element(tbs, extensions[1], extensions[2])
        for _, ext_start, ext_end in elements(tbs, seq_start, seq_end):
            parts = elements(tbs, ext_start, ext_end)
            if tbs[parts[0][1] : parts[0][2]] != _AKI_OID:
                continue
            value_tag, value_start, value_end = parts[-1]
            if value_tag != 0x04:
                return None
            _, aki_start, aki_end = read_element(tbs, value_start, value_end)
            key_id, names, serial = None, [], None
            for tag, content, stop in elements(tbs, aki_start, aki_end):
                if tag == 0x80:
                    key_id = tbs[content:stop]
                elif tag == 0xA1:
                    for name_tag, name_start, name_stop in elements(tbs, content, stop):
                        if name_tag == 0xA4:  # directoryName, EXPLICIT: the whole Name inside
                            _, _, name_end = read_element(tbs, name_start, name_stop)
                            names.append(tbs[name_start:name_end])
                elif tag == 0x82:
                    serial = int.from_bytes(tbs[content:stop], "big", signed=True)
            return AuthorityKeyId(key_id, tuple(names), serial)
        return None
    except (IndexError, ValueError):
        return None
