"""The one DER structure certscope reads by hand: a certificate's
authorityKeyIdentifier.

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


def _read(data: bytes, offset: int) -> tuple[int, int, int]:
    """(tag, start of the content, end of the content) of the TLV at ``offset``."""
    tag = data[offset]
    length = data[offset + 1]
    start = offset + 2
    if length & 0x80:
        count = length & 0x7F
        if not 0 < count <= 4:
            raise ValueError("unsupported DER length")
        length = int.from_bytes(data[start : start + count], "big")
        start += count
    end = start + length
    if end > len(data):
        raise ValueError("truncated DER")
    return tag, start, end


def _children(data: bytes, start: int, end: int) -> list[tuple[int, int, int, int]]:
    """(tag, content start, content end, TLV start) of each element in [start, end)."""
    items = []
    offset = start
    while offset < end:
        tag, content, stop = _read(data, offset)
        items.append((tag, content, stop, offset))
        offset = stop
    return items


def _from_der(tbs: bytes) -> AuthorityKeyId | None:
    try:
        _, start, end = _read(tbs, 0)
        extensions = next((c for c in _children(tbs, start, end) if c[0] == 0xA3), None)
        if extensions is None:
            return None
        _, seq_start, seq_end = _read(tbs, extensions[1])
        for _, ext_start, ext_end, _ in _children(tbs, seq_start, seq_end):
            parts = _children(tbs, ext_start, ext_end)
            if tbs[parts[0][1] : parts[0][2]] != _AKI_OID:
                continue
            value_tag, value_start, _, _ = parts[-1]
            if value_tag != 0x04:
                return None
            _, aki_start, aki_end = _read(tbs, value_start)
            key_id, names, serial = None, [], None
            for tag, content, stop, _ in _children(tbs, aki_start, aki_end):
                if tag == 0x80:
                    key_id = tbs[content:stop]
                elif tag == 0xA1:
                    for name_tag, name_start, _, _ in _children(tbs, content, stop):
                        if name_tag == 0xA4:  # directoryName, EXPLICIT: the whole Name inside
                            _, _, name_end = _read(tbs, name_start)
                            names.append(tbs[name_start:name_end])
                elif tag == 0x82:
                    serial = int.from_bytes(tbs[content:stop], "big", signed=True)
            return AuthorityKeyId(key_id, tuple(names), serial)
        return None
    except (IndexError, ValueError):
        return None
