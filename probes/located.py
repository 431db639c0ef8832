"""Containers whose certificates have names: Java keystores and kubeconfig files.

A PEM bundle's certificates are told apart by position alone.  A keystore's are
filed under aliases, a kubeconfig's under cluster and user names, and a person
looking for "the kafka broker's certificate" or "the admin user's client
certificate" looks for those names.  So these containers are read into
``Located``: every certificate with the labels naming where it sits
(``keystore_alias``, ``kubeconfig_cluster``, ``kubeconfig_user``), which join that
certificate's series (``CertObservation.labels``).

``parse_located(data, name, ...)`` tells these formats by their content (a
keystore's magic number, a kubeconfig's ``kind: Config``) and returns None for
anything else, which the ``files`` probe then hands to ``certparse``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from probes.certparse import role_in_bundle
from probes.expect import Expect, unmet_expectation
from probes.reasons import Reason
from probes.result import CertFacts, CertObservation, ProbeResult, SourceError

Labels = tuple[tuple[str, str], ...]
PasswordSource = Callable[[], bytes | None]


@dataclass(frozen=True, slots=True)
class Located:
    """What a keystore or kubeconfig holds."""

    certificates: tuple[tuple[CertFacts, Labels], ...]
    errors: tuple[SourceError, ...]
    # The container itself holds a private key in the clear (a kubeconfig's
    # client-key-data), for the key exposure check; never decoded to tell.
    holds_private_key: bool = False
    # Other files the result was read from (a kubeconfig's file references): a
    # result that depends on them cannot be reused because this file is unchanged.
    depends_on: tuple[str, ...] = ()


def parse_located(data: bytes, name: str, *, keystore_password: PasswordSource, max_file_size: int) -> Located | None:
    """``data`` read as a keystore or kubeconfig, or None when it is neither."""
    from probes import keystore, kubeconfig  # here: they import this module

    if keystore.is_keystore(data):
        return keystore.parse_keystore(data, name, keystore_password)
    if kubeconfig.looks_like_kubeconfig(data):
        return kubeconfig.parse_kubeconfig(data, name, max_file_size=max_file_size)
    return None


def located_result(located: Located, target: str, started: float, expect: Expect | None) -> ProbeResult:
    """The ``files`` result of a located container: each certificate numbered by
    position, with its labels; ``expect`` checked on every leaf.  The same
    certificate under two names (a CA imported as a trusted entry and also in a
    key entry's chain) is two locations, not a duplicate."""
    observations = tuple(
        CertObservation(index, role_in_bundle(facts), facts, labels)
        for index, (facts, labels) in enumerate(located.certificates)
    )
    errors = list(located.errors)
    for observation in observations:
        item = f"{target}[{observation.index}]"
        if observation.cert.problems:
            problems = "; ".join(observation.cert.problems)
            errors.append(SourceError(Reason.MALFORMED_CERTIFICATE, item, f"{item}: unreadable fields: {problems}"))
        unmet = (
            unmet_expectation(observation.cert, expect) if expect is not None and observation.role == "leaf" else None
        )
        if unmet is not None:
            errors.append(SourceError(unmet[0], item, f"{item}: {unmet[1]}"))
    if not observations and not errors:
        errors.append(SourceError(Reason.NO_CERTIFICATE, target, f"{target}: no certificate"))
    duration = time.monotonic() - started
    if errors:
        first = errors[0]
        return ProbeResult(False, first.reason, duration, observations, tuple(errors), message=first.message)
    return ProbeResult(True, Reason.OK, duration, observations)
