"""The one way a secret (a password, an auth key) is read from the configuration's
``*_env`` / ``*_file`` pair.

Every kind reads its secrets through ``read_secret``, so they all behave alike:

* read at each call, so a rotated secret is picked up without a reload;
* a trailing newline is not part of it (as the step CLI and ``echo`` write files);
* an unset or empty variable, or a file that cannot be read or is empty (or larger
  than 64 KiB), is a ``CredentialUnavailable`` whose message names the variable or
  the file and the config key - never the value.  An empty secret is always a
  mistake in the deployment (a Secret key mounted empty, a variable exported
  before it was filled), so it is reported, not tried.
"""

from __future__ import annotations

import os

MAX_SECRET_BYTES = 64 * 1024


class CredentialUnavailable(ValueError):
    """A configured secret that cannot be used.  The message names the config key and
    the variable or file; it never holds the value."""


def read_secret(env: str | None, path: str | None, what: str) -> bytes | None:
    """The secret configured as ``{what}_env`` (the variable ``env``) or
    ``{what}_file`` (the file ``path``); None when neither is configured.  Raises
    ``CredentialUnavailable`` when the configured one cannot be read or is empty."""
    if env:
        value = os.environ.get(env)
        if value is None:
            raise CredentialUnavailable(f"{what}_env: environment variable {env} is not set")
        secret = value.rstrip("\r\n").encode()
        if not secret:
            raise CredentialUnavailable(f"{what}_env: environment variable {env} is empty")
        return secret
    if path:
        try:
            with open(path, "rb") as handle:
                data = handle.read(MAX_SECRET_BYTES + 1)
        except OSError as exc:
            raise CredentialUnavailable(f"{what}_file: cannot read {path}: {exc.strerror or exc}") from None
        if len(data) > MAX_SECRET_BYTES:
            raise CredentialUnavailable(f"{what}_file: {path} is larger than {MAX_SECRET_BYTES // 1024} KiB")
        secret = data.rstrip(b"\r\n")
        if not secret:
            raise CredentialUnavailable(f"{what}_file: {path} is empty")
        return secret
    return None
