"""Java keystores, JKS and JCEKS: every certificate, by alias.

Both formats (``sun.security.provider.JavaKeyStore`` and
``com.sun.crypto.provider.JceKeyStore``) are a magic number, a version, a count of
entries, the entries, and a SHA-1 digest over the password, the words "Mighty
Aphrodite" and everything before it.  An entry is one of:

* a private key entry (tag 1): alias, date, the *encrypted* key, and the
  certificate chain in the clear;
* a trusted certificate entry (tag 2): alias, date, one certificate;
* in JCEKS only, a secret key entry (tag 3): alias, date, and a Java-serialised
  ``SealedObject`` holding the encrypted key.

Only certificates are decoded.  A private key's bytes are skipped by their length
and a sealed secret key by walking its serialisation stream, so no key is ever
decrypted and the key password is never needed.  The store password is needed to
check the digest: a store whose digest does not match is ``bad_password`` (Java
itself cannot tell a wrong password from an altered store either, and says
"Keystore was tampered with, or password was incorrect"); no certificate of it is
exported, since nothing it says can be trusted.  A store that does not follow the
layout above is ``parse_error``, naming the entry where it broke.

Why a reader of our own rather than ``pyjks`` (the usual Python library): pyjks
requires ``twofish``, a C extension last released in 2013 with no wheels, which
the container image cannot build (it has no compiler, and the build stage takes
binary wheels only); pyjks itself has had no release since 2020; and of what it
does, certscope needs only the part above: the two container layouts, the digest,
and skipping one kind of serialised object.  The layouts are tested on stores
made by the JDK's own ``keytool`` (tests/test_keystore.py) and fuzzed.
"""

from __future__ import annotations

import hashlib
import struct

from probes.certparse import facts_from_der
from probes.credentials import CredentialUnavailable
from probes.located import Labels, Located, PasswordSource
from probes.reasons import Reason
from probes.result import SourceError

JKS_MAGIC = b"\xfe\xed\xfe\xed"
JCEKS_MAGIC = b"\xce\xce\xce\xce"
DIGEST_SALT = b"Mighty Aphrodite"  # the JDK's own constant
DIGEST_BYTES = 20  # SHA-1
ALIAS_LABEL = "keystore_alias"

_PRIVATE_KEY, _TRUSTED_CERT, _SECRET_KEY = 1, 2, 3


class _Corrupt(Exception):
    """The store does not follow the layout; the message says where."""


def is_keystore(data: bytes) -> bool:
    return len(data) >= 12 and data[:4] in (JKS_MAGIC, JCEKS_MAGIC)


def parse_keystore(data: bytes, name: str, password_source: PasswordSource) -> Located:
    store_type = "JKS" if data[:4] == JKS_MAGIC else "JCEKS"
    try:
        entries, end = _entries(data, store_type)
    except _Corrupt as exc:
        return _failed(Reason.PARSE_ERROR, name, f"{name}: corrupt {store_type} keystore ({exc})")
    try:
        password = password_source()
    except CredentialUnavailable as exc:  # names the variable or file, never the value
        return _failed(Reason.BAD_PASSWORD, name, f"{name}: cannot open {store_type} keystore ({exc})")
    if password is None:
        return _failed(Reason.BAD_PASSWORD, name, f"{name}: cannot open {store_type} keystore (no password configured)")
    if not _digest_matches(data, end, password):
        return _failed(
            Reason.BAD_PASSWORD,
            name,
            f"{name}: cannot open {store_type} keystore (wrong password, or the store was altered)",
        )
    certificates = []
    errors: list[SourceError] = []
    for alias, chain in entries:
        labels: Labels = ((ALIAS_LABEL, alias),)
        for position, (cert_type, der) in enumerate(chain):
            item = f"{name}[{alias}]" + (f"[{position}]" if len(chain) > 1 else "")
            if cert_type not in ("X.509", ""):
                message = f"{item}: {cert_type!r} is not an X.509 certificate"
                errors.append(SourceError(Reason.PARSE_ERROR, item, message))
                continue
            try:
                certificates.append((facts_from_der(der), labels))
            except Exception as exc:  # noqa: BLE001 - any loader failure is a parse error
                message = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
                errors.append(SourceError(Reason.PARSE_ERROR, item, f"{item}: not a valid certificate ({message})"))
    return Located(tuple(certificates), tuple(errors))


def _failed(reason: Reason, name: str, message: str) -> Located:
    return Located((), (SourceError(reason, name, message),))


def _digest_matches(data: bytes, end: int, password: bytes) -> bool:
    # Java hashes the password's chars as two bytes each, big-endian: UTF-16BE.
    chars = password.decode("utf-8", "replace").encode("utf-16-be")
    return hashlib.sha1(chars + DIGEST_SALT + data[:end]).digest() == data[end : end + DIGEST_BYTES]


Chain = list[tuple[str, bytes]]  # (certificate type, DER)


def _entries(data: bytes, store_type: str) -> tuple[list[tuple[str, Chain]], int]:
    """(alias, certificates) of every entry that holds certificates, and where the
    digest starts.  Raises _Corrupt."""
    reader = _Reader(data)
    reader.take(4)  # the magic number, checked by is_keystore
    version = reader.u32()
    if version not in (1, 2):
        raise _Corrupt(f"unknown version {version}")
    count = reader.u32()
    if count > len(data):  # every entry takes more than a byte
        raise _Corrupt(f"claims {count} entries in {len(data)} bytes")
    entries: list[tuple[str, Chain]] = []
    aliases: set[str] = set()
    for number in range(count):
        tag = reader.u32()
        try:
            alias = reader.utf()
        except _Corrupt as exc:
            raise _Corrupt(f"entry {number}: {exc}") from None
        try:
            reader.take(8)  # creation date
            if tag == _PRIVATE_KEY:
                reader.take(reader.u32())  # the encrypted key: skipped, never decrypted
                chain = [_certificate(reader, version) for _ in range(reader.bounded_count())]
            elif tag == _TRUSTED_CERT:
                chain = [_certificate(reader, version)]
            elif tag == _SECRET_KEY and store_type == "JCEKS":
                _JavaStream(reader).skip_stream()  # a sealed secret key: no certificate
                chain = []
            else:
                raise _Corrupt(f"unknown entry type {tag}")
        except _Corrupt as exc:
            raise _Corrupt(f"entry {alias!r}: {exc}") from None
        if alias in aliases:
            raise _Corrupt(f"alias {alias!r} appears twice")
        aliases.add(alias)
        if chain:
            entries.append((alias, chain))
    if reader.remaining() < DIGEST_BYTES:
        raise _Corrupt("truncated: no digest after the entries")
    return entries, reader.position


def _certificate(reader: _Reader, version: int) -> tuple[str, bytes]:
    cert_type = reader.utf() if version == 2 else ""
    return cert_type, reader.take(reader.u32())


class _Reader:
    """Big-endian reads that never go past the end (``_Corrupt`` instead)."""

    __slots__ = ("data", "position")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.position = 0

    def remaining(self) -> int:
        return len(self.data) - self.position

    def take(self, size: int) -> bytes:
        if size < 0 or size > self.remaining():
            raise _Corrupt(f"truncated at byte {self.position} (needs {size} more, {self.remaining()} left)")
        start = self.position
        self.position += size
        return self.data[start : self.position]

    def u8(self) -> int:
        return self.take(1)[0]

    def peek(self) -> int:
        if not self.remaining():
            raise _Corrupt(f"truncated at byte {self.position}")
        return self.data[self.position]

    def u16(self) -> int:
        return int(struct.unpack(">H", self.take(2))[0])

    def u32(self) -> int:
        return int(struct.unpack(">I", self.take(4))[0])

    def bounded_count(self) -> int:
        count = self.u32()
        if count > self.remaining():
            raise _Corrupt(f"claims {count} items with {self.remaining()} bytes left")
        return count

    def utf(self) -> str:
        """Java's ``writeUTF``: a two-byte length, then modified UTF-8 (close enough
        to UTF-8 for names; anything undecodable is replaced, not fatal)."""
        return self.take(self.u16()).decode("utf-8", "replace")


# Java object serialisation (the "Java Object Serialization Specification", chapter
# 6), as much as it takes to find where one serialised object ends.
_STREAM_MAGIC = b"\xac\xed\x00\x05"
TC_NULL, TC_REFERENCE, TC_CLASSDESC, TC_OBJECT, TC_STRING, TC_ARRAY = 0x70, 0x71, 0x72, 0x73, 0x74, 0x75
TC_ENDBLOCKDATA, TC_BLOCKDATA, TC_BLOCKDATALONG, TC_LONGSTRING = 0x78, 0x77, 0x7A, 0x7C
SC_WRITE_METHOD, SC_SERIALIZABLE = 0x01, 0x02
_DESCRIPTOR_CODES = (TC_NULL, TC_REFERENCE, TC_CLASSDESC)  # what may stand where a class descriptor does
_BASE_HANDLE = 0x7E0000
_PRIMITIVE_BYTES = {"B": 1, "Z": 1, "C": 2, "S": 2, "I": 4, "F": 4, "J": 8, "D": 8}
_MAX_DEPTH = 32  # a SealedObject nests two deep; anything far deeper is not one


class _ClassDesc:
    __slots__ = ("fields", "flags", "name", "superclass")

    def __init__(self, name: str) -> None:
        self.name = name
        self.flags = 0
        self.fields: list[str] = []  # type codes, in stream order
        self.superclass: _ClassDesc | None = None


class _JavaStream:
    """Skips one serialisation stream holding one object.  Only what a
    ``SealedObject`` and its likes are made of is understood (objects, class
    descriptors, strings, arrays, block data, references); anything else, such as
    proxy classes or enums, is _Corrupt."""

    def __init__(self, reader: _Reader) -> None:
        self.reader = reader
        self.handles: list[_ClassDesc | None] = []

    def skip_stream(self) -> None:
        if self.reader.take(4) != _STREAM_MAGIC:
            raise _Corrupt("sealed key is not a Java serialisation stream")
        self._content(0)

    def _content(self, depth: int) -> _ClassDesc | None:
        if depth > _MAX_DEPTH:
            raise _Corrupt("serialised object nested too deeply")
        reader = self.reader
        code = reader.u8()
        if code in _DESCRIPTOR_CODES:
            return self._descriptor(code, depth)
        if code == TC_OBJECT:
            desc = self._class_desc(depth)
            self.handles.append(None)
            self._class_data(desc, depth)
            return None
        if code == TC_STRING:
            self.handles.append(None)
            reader.take(reader.u16())
            return None
        if code == TC_LONGSTRING:
            self.handles.append(None)
            reader.take(int(struct.unpack(">Q", reader.take(8))[0]))
            return None
        if code == TC_ARRAY:
            desc = self._class_desc(depth)
            self.handles.append(None)
            size = reader.bounded_count()
            element = desc.name[1:2] if desc is not None else ""
            if element in _PRIMITIVE_BYTES:
                reader.take(size * _PRIMITIVE_BYTES[element])
            else:
                for _ in range(size):
                    self._content(depth + 1)
            return None
        if code == TC_BLOCKDATA:
            reader.take(reader.u8())
            return None
        if code == TC_BLOCKDATALONG:
            reader.take(reader.u32())
            return None
        raise _Corrupt(f"unsupported serialisation code 0x{code:02x} at byte {reader.position - 1}")

    def _reference(self) -> _ClassDesc | None:
        handle = self.reader.u32() - _BASE_HANDLE
        if not 0 <= handle < len(self.handles):
            raise _Corrupt(f"serialisation reference to unknown handle {handle}")
        return self.handles[handle]

    def _class_desc(self, depth: int) -> _ClassDesc | None:
        code = self.reader.u8()
        if code not in _DESCRIPTOR_CODES:
            raise _Corrupt(f"unsupported class descriptor 0x{code:02x}")
        return self._descriptor(code, depth)

    def _descriptor(self, code: int, depth: int) -> _ClassDesc | None:
        """The class descriptor that ``code`` (one of ``_DESCRIPTOR_CODES``) begins."""
        if code == TC_NULL:
            return None
        if code == TC_REFERENCE:
            return self._reference()
        return self._class_desc_body(depth)

    def _class_desc_body(self, depth: int) -> _ClassDesc:
        reader = self.reader
        desc = _ClassDesc(reader.utf())
        reader.take(8)  # serialVersionUID
        self.handles.append(desc)  # the handle comes before the fields' strings
        desc.flags = reader.u8()
        for _ in range(reader.u16()):
            type_code = chr(reader.u8())
            reader.take(reader.u16())  # the field's name
            if type_code in "L[":
                self._content(depth + 1)  # the field's class name: a string or a reference
            elif type_code not in _PRIMITIVE_BYTES:
                raise _Corrupt(f"unknown field type {type_code!r}")
            desc.fields.append(type_code)
        self._annotations(depth)
        desc.superclass = self._class_desc(depth + 1)
        return desc

    def _annotations(self, depth: int) -> None:
        while self.reader.peek() != TC_ENDBLOCKDATA:
            self._content(depth + 1)
        self.reader.u8()

    def _class_data(self, desc: _ClassDesc | None, depth: int) -> None:
        hierarchy = []
        while desc is not None:
            hierarchy.append(desc)
            desc = desc.superclass
        for cls in reversed(hierarchy):  # the topmost serialisable superclass first
            if not cls.flags & SC_SERIALIZABLE:
                raise _Corrupt(f"class {cls.name} is not plainly serialisable")
            for type_code in cls.fields:
                if type_code in _PRIMITIVE_BYTES:
                    self.reader.take(_PRIMITIVE_BYTES[type_code])
                else:
                    self._content(depth + 1)
            if cls.flags & SC_WRITE_METHOD:
                self._annotations(depth)
