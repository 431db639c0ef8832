"""Certificate files the configuration names: globs expanded, files read and loaded.

For the kinds whose targets or issuers are certificate files (``ocsp``, ``crl``),
for trust anchors (``trust.ca_files``) and for ``certscope scan``.  Files are read
through ``probes.files.read_regular_file``: bounded, and never blocking on a FIFO.
"""

from __future__ import annotations

import glob

from cryptography import x509

from probes.files import read_regular_file

# A CA bundle of every public root is under 1 MiB; anything far larger is a mistake.
MAX_CERTIFICATE_FILE = 16 * 1024 * 1024


def expand_paths(patterns: tuple[str, ...]) -> list[str]:
    """Globs (``**`` included) expanded in order; a literal path is kept even when
    missing, so that its absence is reported rather than silently skipped."""
    found: dict[str, None] = {}
    for pattern in patterns:
        if glob.has_magic(pattern):
            found.update(dict.fromkeys(sorted(glob.glob(pattern, recursive=True))))
        else:
            found[pattern] = None
    return list(found)


def load_certificates(path: str) -> list[x509.Certificate]:
    """Certificates of a PEM or DER file (raises OSError or ValueError)."""
    data = read_regular_file(path, MAX_CERTIFICATE_FILE)
    if b"-----BEGIN" in data:
        return x509.load_pem_x509_certificates(data)
    return [x509.load_der_x509_certificate(data)]
