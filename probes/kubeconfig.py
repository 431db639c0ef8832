"""kubeconfig files: every cluster's CA and every user's client certificate.

kubeadm writes ``admin.conf``, ``super-admin.conf``, ``kubelet.conf``,
``controller-manager.conf`` and ``scheduler.conf`` with client certificates that
expire after a year; when they do, the control plane stops talking to itself.
Each is a YAML (or JSON) document with ``apiVersion: v1`` and ``kind: Config``,
which is how one is recognised, whatever its file name.

Read from it:

* ``clusters[].cluster.certificate-authority-data`` (base64 of PEM) or
  ``certificate-authority`` (a file, relative to the kubeconfig's directory, as
  kubectl resolves it), labelled ``kubeconfig_cluster``;
* ``users[].user.client-certificate-data`` or ``client-certificate``, labelled
  ``kubeconfig_user``.

Client keys (``client-key-data``, ``client-key``) and tokens are never decoded; a
``client-key-data`` only tells that this file holds a private key, for the key
exposure check.  A referenced file that is missing or unreadable is an error of
its own (naming the kubeconfig, the entry and the path); the other entries are
still read.  A result read from referenced files is not reused while the
kubeconfig is unchanged, since the kubelet rotates ``kubelet-client-current.pem``
without touching ``kubelet.conf``.
"""

from __future__ import annotations

import base64
import binascii
import errno
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

import yaml

from probes.certparse import parse_container
from probes.located import Labels, Located
from probes.reasons import Reason
from probes.result import CertFacts, SourceError

CLUSTER_LABEL = "kubeconfig_cluster"
USER_LABEL = "kubeconfig_user"

# Cheap tests before any YAML is parsed: every file of a files probe passes here, so
# a plain substring test comes first and the patterns cannot backtrack across lines.
_YAML_KIND = re.compile(rb"""^["']?kind["']?[ \t]*:[ \t]*["']?Config["']?[ \t]*\r?$""", re.M)
_JSON_KIND = re.compile(rb'"kind"\s*:\s*"Config"')
_API_V1 = re.compile(rb"""["']?apiVersion["']?[ \t]*:[ \t]*["']?v1\b""")
_SNIFF_BYTES = 1 << 20


def looks_like_kubeconfig(data: bytes) -> bool:
    """A YAML or JSON document naming ``kind: Config`` and ``apiVersion: v1``."""
    head = data[:_SNIFF_BYTES]
    if b"Config" not in head or b"-----BEGIN " in head or b"\x00" in head:
        return False  # most files: PEM, binary, or no kind: Config at all
    is_json = head.lstrip()[:1] == b"{"
    kind = _JSON_KIND.search(head) if is_json else _YAML_KIND.search(head)
    return kind is not None and _API_V1.search(head) is not None


def parse_kubeconfig(data: bytes, name: str, *, max_file_size: int) -> Located:
    try:
        document = yaml.safe_load(data)
    except (yaml.YAMLError, RecursionError, ValueError) as exc:
        first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        return Located((), (SourceError(Reason.PARSE_ERROR, name, f"{name}: kubeconfig is not valid YAML ({first})"),))
    if not isinstance(document, dict) or document.get("kind") != "Config" or document.get("apiVersion") != "v1":
        return Located((), (SourceError(Reason.PARSE_ERROR, name, f"{name}: not a kubeconfig (kind: Config, v1)"),))
    base_dir = os.path.dirname(os.path.abspath(name))
    reading = _Reading(name, base_dir, max_file_size)
    holds_key = False
    for section, entry_key, label, data_field, file_field in (
        ("clusters", "cluster", CLUSTER_LABEL, "certificate-authority-data", "certificate-authority"),
        ("users", "user", USER_LABEL, "client-certificate-data", "client-certificate"),
    ):
        for number, entry in enumerate(_entries(document.get(section))):
            entry_name = str(entry.get("name") or f"#{number}")
            body = entry.get(entry_key)
            if not isinstance(body, dict):
                continue  # a user with no credentials, or a malformed entry with nothing to read
            where = f"{name}: {entry_key} {entry_name!r}"
            labels: Labels = ((label, entry_name),)
            if body.get(data_field):
                reading.inline(body[data_field], where, data_field, labels)
            elif body.get(file_field):
                reading.file(str(body[file_field]), where, file_field, labels)
            if entry_key == "user" and body.get("client-key-data"):
                holds_key = True
    return Located(tuple(reading.certificates), tuple(reading.errors), holds_key, tuple(reading.files))


def _entries(section: Any) -> Iterable[Mapping[str, Any]]:
    if isinstance(section, list):
        yield from (entry for entry in section if isinstance(entry, dict))


class _Reading:
    """What has been read so far, and the errors, of one kubeconfig."""

    def __init__(self, name: str, base_dir: str, max_file_size: int) -> None:
        self.name = name
        self.base_dir = base_dir
        self.max_file_size = max_file_size
        self.certificates: list[tuple[CertFacts, Labels]] = []
        self.errors: list[SourceError] = []
        self.files: list[str] = []

    def inline(self, value: Any, where: str, field: str, labels: Labels) -> None:
        try:
            data = base64.b64decode(str(value), validate=True)
        except (binascii.Error, ValueError):
            self.errors.append(SourceError(Reason.PARSE_ERROR, self.name, f"{where}: {field} is not valid base64"))
            return
        self._parse(data, f"{where} {field}", labels)

    def file(self, path: str, where: str, field: str, labels: Labels) -> None:
        # As kubectl does: a relative path is relative to the kubeconfig's directory.
        full = path if os.path.isabs(path) else os.path.join(self.base_dir, path)
        self.files.append(full)
        try:
            with open(full, "rb") as handle:
                data = handle.read(self.max_file_size + 1)
        except OSError as exc:
            reason = {
                errno.ENOENT: Reason.NOT_FOUND,
                errno.EACCES: Reason.PERMISSION_DENIED,
                errno.EPERM: Reason.PERMISSION_DENIED,
            }.get(exc.errno or 0, Reason.READ_ERROR)
            self.errors.append(SourceError(reason, self.name, f"{where}: {field} {full}: {exc.strerror or exc}"))
            return
        if len(data) > self.max_file_size:
            message = f"{where}: {field} {full}: over max_file_size={self.max_file_size}"
            self.errors.append(SourceError(Reason.FILE_TOO_LARGE, self.name, message))
            return
        self._parse(data, f"{where} {field} {full}", labels)

    def _parse(self, data: bytes, item: str, labels: Labels) -> None:
        parsed = parse_container(data, item)
        self.certificates.extend((facts, labels) for facts in parsed.certificates)
        self.errors.extend(parsed.errors)
