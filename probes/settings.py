"""What probe settings are made of: the value types the config loader understands
(durations, byte sizes, paths that must exist), trust anchors, the shard of this
replica, and ``ProbeDefaults``: what every probe inherits from the config's
``global`` section, with the process's shared services.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NewType

if TYPE_CHECKING:
    from probes.revocation import RevocationChecker

# Types the config loader understands beyond the builtins (exporter/config.py):
Seconds = NewType("Seconds", float)  # "30s", "5m", "28d" or a number of seconds
ByteSize = NewType("ByteSize", int)  # "16MiB", "512KiB" or a number of bytes


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}


def parse_duration(text: str) -> float:
    """'30s', '5m', '1h30m', '28d' -> seconds.  Raises ValueError."""
    text = text.strip()
    position = 0
    total = 0.0
    for match in _DURATION.finditer(text):
        if match.start() != position:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        position = match.end()
    if not text or position != len(text):
        raise ValueError(f"not a duration: {text!r} (use e.g. 30s, 5m, 1h30m, 28d)")
    return total


def path_field(default: Any = None) -> Any:
    """A settings field naming a file that must exist when the config is loaded."""
    return field(default=default, metadata={"must_exist": True})


@dataclass(frozen=True)
class TrustSettings:
    """Where trust anchors come from: the system store and/or PEM files."""

    system: bool = True
    ca_files: tuple[str, ...] = field(default=(), metadata={"must_exist": True})


@dataclass(frozen=True)
class Shard:
    """This replica's share of the work when several run side by side
    (``--shard.index``/``--shard.count``): a stable hash partition, so a target stays
    on the same replica across restarts and every replica agrees without talking."""

    index: int = 0
    count: int = 1

    def owns(self, key: str) -> bool:
        if self.count <= 1:
            return True
        digest = hashlib.blake2b(key.encode("utf-8", "surrogateescape"), digest_size=8).digest()
        return int.from_bytes(digest, "big") % self.count == self.index


NO_SHARD = Shard()  # one replica does everything


@dataclass(frozen=True)
class ProbeDefaults:
    """Settings a probe inherits from the config's ``global`` section (and the
    command line's shard), and the process's shared services the scheduler hands
    to every probe it builds."""

    trust: TrustSettings = TrustSettings()
    # Networks that URLs taken from certificates may reach (global.egress.allow_networks).
    allow_networks: tuple[str, ...] = ()
    shard: Shard = NO_SHARD
    # The OCSP and CRL caches shared by the probes of the process (not configuration):
    # created by the scheduler, kept across reloads.  None: the probe makes its own.
    revocation: RevocationChecker | None = field(default=None, compare=False, repr=False)
