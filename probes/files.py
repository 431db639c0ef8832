"""The ``files`` probe: certificates in files on this host.

Targets are file paths found from ``paths`` (literal files, directories walked
recursively, and globs where ``**`` spans directories), minus ``exclude``.  Each
file is one target; its certificates are numbered by position (``index``).

The walk never follows a directory symlink back into a directory it has already
visited, skips Kubernetes volume bookkeeping entries (``..data``,
``..2024_01_01...``) that would count every mounted Secret twice, and stops at
``max_files``.  Reading never blocks: a FIFO is reported, not opened for reading,
and a file larger than ``max_file_size`` is refused before it is read.

A file whose device, inode, size, mtime, mode and owner are unchanged since it was
parsed is not read or parsed again.  ``targets()`` already checks this for every file
it has a result for, and hands those results back in ``Discovery.unchanged``, so that
a round over an unchanged tree costs the walk and one ``stat`` per file, without a
``run()`` per file (the scheduler's side of it is in ``exporter.scheduler``).
"""

from __future__ import annotations

import errno
import logging
import operator
import os
import re
import stat
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import ClassVar

from probes import files_workers
from probes.certparse import Parsed, bundle_observations, parse_container, shared
from probes.context import ProbeContext
from probes.cpu_slots import available_cpus
from probes.credentials import read_secret
from probes.expect import EXPECT_REASONS, Expect, unmet_expectation
from probes.located import located_result, parse_located
from probes.reasons import Reason
from probes.result import Discovery, ProbeResult, SourceError, failed
from probes.settings import ByteSize, ProbeDefaults, path_field

_GLOB_CHARS = re.compile(r"[*?\[]")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Pkcs12Password:
    """Where the PKCS#12 password comes from; never inline in the config."""

    password_file: str | None = path_field()
    password_env: str | None = None


@dataclass(frozen=True)
class FilesSettings:
    paths: tuple[str, ...]
    exclude: tuple[str, ...] = ()
    follow_symlinks: bool = True
    max_file_size: ByteSize = ByteSize(16 * 1024 * 1024)
    max_files: int = 200_000
    # A listed path that does not exist is an error unless this is set (the
    # embedded default lists paths of several distributions).
    ignore_missing: bool = False
    pkcs12: Pkcs12Password | None = None
    # JKS/JCEKS store password (probes/keystore.py); when unset, pkcs12's is used.
    keystore: Pkcs12Password | None = None
    expect: Expect | None = None  # checked on every leaf certificate

    def validate(self) -> list[tuple[str, str]]:
        problems: list[tuple[str, str]] = []
        if not self.paths:
            problems.append(("paths", "at least one path is required"))
        for index, path in enumerate(self.paths):
            if not path.startswith("/"):
                problems.append((f"paths[{index}]", f"must be absolute, got {path!r}"))
        # A glob whose class cannot compile ("[z-a]") would raise in every round.
        for name, patterns in (("paths", self.paths), ("exclude", self.exclude)):
            for index, pattern in enumerate(patterns):
                try:
                    _pattern_regex(pattern)
                except re.error as exc:
                    problems.append((f"{name}[{index}]", f"not a valid glob ({exc.msg})"))
        if self.max_files < 1:
            problems.append(("max_files", "must be at least 1"))
        if self.pkcs12 and self.pkcs12.password_file and self.pkcs12.password_env:
            problems.append(("pkcs12", "set password_file or password_env, not both"))
        if self.keystore and self.keystore.password_file and self.keystore.password_env:
            problems.append(("keystore", "set password_file or password_env, not both"))
        return problems


# What says a file is unchanged since it was parsed: its device, inode, size,
# mtime_ns, mode and uid.  Mode and owner because chmod and chown change neither size
# nor mtime, and key exposure depends on them.  Packed into 48 bytes (81 B in all,
# against 264 B for a tuple of six ints, per file kept), built and compared in C.  A
# value out of 64-bit range (an mtime after 2262) keeps the tuple: the same file
# gives the same kind of identity every time, and a bytes never equals a tuple.
_Identity = bytes | tuple[int, ...]
_PACKED_IDENTITY = struct.Struct("=QQqqQQ")


def _identity(info: os.stat_result) -> _Identity:
    fields = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_mode, info.st_uid)
    try:
        return _PACKED_IDENTITY.pack(*fields)
    except struct.error:
        return fields


class FilesProbe:
    kind: ClassVar[str] = "files"
    source_reasons: ClassVar[tuple[Reason, ...]] = (
        Reason.NOT_FOUND,
        Reason.PERMISSION_DENIED,
        Reason.READ_ERROR,
        Reason.BROKEN_SYMLINK,
        Reason.SYMLINK_LOOP,
        Reason.NOT_REGULAR_FILE,
        Reason.FILE_TOO_LARGE,
        Reason.EMPTY_FILE,
        Reason.NO_CERTIFICATE,
        Reason.PARSE_ERROR,
        Reason.MALFORMED_CERTIFICATE,
        Reason.DUPLICATE_CERTIFICATE,
        Reason.BAD_PASSWORD,
        Reason.KDF_TOO_EXPENSIVE,
        Reason.DEADLINE_EXCEEDED,
        Reason.TOO_MANY_FILES,
        *EXPECT_REASONS,
        Reason.INTERNAL_ERROR,
    )
    # 100,000 files times 15 reasons would be 1.5 million series of zeros.
    target_reasons: ClassVar[tuple[Reason, ...]] = ()
    concurrent_targets: ClassVar[bool] = False
    keeps_last_good: ClassVar[bool] = False

    def __init__(self, settings: FilesSettings, defaults: ProbeDefaults | None = None) -> None:
        self.settings = settings
        self._excludes = [_pattern_regex(p) for p in settings.exclude]
        # path -> (identity, result): an unchanged file costs a stat, not a parse.
        self._cache: dict[str, tuple[_Identity, ProbeResult]] = {}
        self._batch: files_workers.WorkerParse | None = None  # new files being parsed in workers

    def close(self) -> None:
        """Called by the scheduler when the daemon stops or reloads: a batch in
        worker processes stops after the chunks already started."""
        batch = self._batch
        if batch is not None:
            batch.cancel()

    # -- discovery -------------------------------------------------------------

    def targets(self) -> Discovery:
        found: dict[str, None] = {}  # ordered set
        errors: list[SourceError] = []
        limit = self.settings.max_files
        for pattern in self.settings.paths:
            for path in self._expand(pattern, errors):
                if path in found or (self._excludes and self._excluded(path)):
                    continue
                if len(found) >= limit:
                    errors.append(
                        SourceError(
                            Reason.TOO_MANY_FILES,
                            pattern,
                            f"{pattern}: more than max_files={limit} files; the rest are not watched",
                        )
                    )
                    break
                found[path] = None
            if len(found) >= limit and errors and errors[-1].reason is Reason.TOO_MANY_FILES:
                break
        # Forget cached parses of files that are gone, so memory follows the tree.
        for stale in self._cache.keys() - found.keys():
            del self._cache[stale]
        self._parse_new_in_workers(found)
        up = not any(e.reason is Reason.PERMISSION_DENIED and e.item in self.settings.paths for e in errors)
        return Discovery(tuple(found), tuple(errors), up, unchanged=self._unchanged())

    def _parse_new_in_workers(self, found: dict[str, None]) -> None:
        """Many files never parsed (a first round over a large tree): parse them in
        one worker process per CPU (``probes.files_workers``) into the cache, which
        ``_unchanged`` then hands to the round.  Any failure of the workers only
        leaves the files to ``run()``."""
        new = [path for path in found if path not in self._cache]
        if len(new) < files_workers.MIN_FILES:
            return  # every later round: no cgroup files read
        workers = min(available_cpus(), files_workers.MAX_WORKERS)
        if workers < 2:
            return
        started = time.monotonic()
        parsed = 0
        log.info("files: parsing %d new files in %d worker processes", len(new), workers)
        batch: files_workers.WorkerParse | None = None
        try:
            # Starting workers can fail too (no /dev/shm for their queue's lock).
            batch = self._batch = files_workers.WorkerParse(self.settings, new, workers)
            for chunk in batch.results():
                for path, (identity, result) in chunk.items():
                    self._cache[path] = (identity, _with_shared_facts(result))
                parsed += len(chunk)
        except Exception as exc:  # noqa: BLE001 - a worker died, or its result did not come back
            if batch is None or not batch.cancelled:
                log.warning("files: parsing in worker processes failed (%s: %s); parsing here", type(exc).__name__, exc)
        finally:
            self._batch = None
        log.info(
            "files: %d of %d new files parsed in %d worker processes in %.1f s",
            parsed,
            len(new),
            workers,
            time.monotonic() - started,
        )

    def take_cached(self, path: str) -> tuple[_Identity, ProbeResult] | None:
        """The cache entry ``run()`` left for ``path``, removed (for a worker)."""
        return self._cache.pop(path, None)

    def _unchanged(self) -> dict[str, ProbeResult]:
        """The cached result of every file whose identity is still the one it was
        parsed with: what ``run()`` would return for it, for the price of a stat.
        (Equal identities imply a regular file within max_file_size, as when it was
        parsed; any other case, and a failing stat, is left to ``run()``.)"""
        unchanged: dict[str, ProbeResult] = {}
        read_metadata = os.stat if self.settings.follow_symlinks else os.lstat
        for path, (identity, result) in self._cache.items():
            try:
                info = read_metadata(path)
            except OSError:
                continue
            if _identity(info) == identity:
                unchanged[path] = result
        return unchanged

    def _excluded(self, path: str) -> bool:
        return any(rx.match(path) for rx in self._excludes)

    def _expand(self, pattern: str, errors: list[SourceError]) -> Iterator[str]:
        if not _GLOB_CHARS.search(pattern):
            if os.path.isdir(pattern):
                yield from self._walk(pattern, None, errors)
            elif os.path.lexists(pattern) or not self.settings.ignore_missing:
                # Missing or broken files are still targets: run() reports why.
                yield os.path.normpath(pattern)
            return
        root = _static_prefix(pattern)
        if os.path.isdir(root):
            yield from self._walk(root, _pattern_regex(pattern), errors)

    def _walk(self, root: str, match: re.Pattern[str] | None, errors: list[SourceError]) -> Iterator[str]:
        """Depth-first walk yielding non-directory entries (matched, if ``match``)."""
        visited: set[tuple[int, int]] = set()
        excludes = bool(self._excludes)
        stack = [os.path.normpath(root)]
        while stack:
            directory = stack.pop()
            try:
                info = os.stat(directory)
            except OSError:
                continue
            if (info.st_dev, info.st_ino) in visited:
                continue  # a symlink back into the tree
            visited.add((info.st_dev, info.st_ino))
            try:
                with os.scandir(directory) as entries:
                    children = sorted(entries, key=_entry_name)
            except OSError as exc:
                errors.append(
                    SourceError(_reason_for(exc, directory), directory, f"{directory}: cannot list ({exc.strerror})")
                )
                continue
            subdirectories = []
            for entry in children:
                if entry.name.startswith(".."):
                    continue  # Kubernetes volume bookkeeping: ..data, ..2024_...
                path = entry.path
                if excludes and self._excluded(path):
                    continue
                try:
                    is_dir = entry.is_dir(follow_symlinks=self.settings.follow_symlinks)
                except OSError:
                    is_dir = False
                if is_dir:
                    subdirectories.append(path)
                elif match is None or match.match(path):
                    yield path
            stack.extend(reversed(subdirectories))

    # -- probing ---------------------------------------------------------------

    def run(self, target: str, ctx: ProbeContext) -> ProbeResult:
        started = time.monotonic()
        try:
            info = os.stat(target) if self.settings.follow_symlinks else os.lstat(target)
        except OSError as exc:
            reason = _reason_for(exc, target)
            return failed(reason, started, _describe(reason, target, exc), errors=[_error(reason, target, exc)])
        if not stat.S_ISREG(info.st_mode):
            what = "a directory" if stat.S_ISDIR(info.st_mode) else _file_type(info.st_mode)
            message = f"{target}: not a regular file ({what})"
            return failed(
                Reason.NOT_REGULAR_FILE,
                started,
                message,
                errors=[SourceError(Reason.NOT_REGULAR_FILE, target, message)],
            )
        if info.st_size > self.settings.max_file_size:
            message = f"{target}: {info.st_size} bytes is over max_file_size={self.settings.max_file_size}"
            return failed(
                Reason.FILE_TOO_LARGE, started, message, errors=[SourceError(Reason.FILE_TOO_LARGE, target, message)]
            )

        identity = _identity(info)
        cached = self._cache.get(target)
        if cached is not None and cached[0] == identity:
            return cached[1]  # its duration is that of the parse it saved
        with ctx.phase("file.read") as phase:
            try:
                data = read_regular_file(target, self.settings.max_file_size)
            except OSError as exc:
                reason = _reason_for(exc, target)
                phase.fail(reason, _describe(reason, target, exc))
                return failed(reason, started, _describe(reason, target, exc), errors=[_error(reason, target, exc)])
            phase.set("certscope.file.size", len(data))
        with ctx.phase("parse") as phase:
            # Keystores and kubeconfigs first (told by content), then certparse's formats.
            located = parse_located(
                data, target, keystore_password=self._keystore_password, max_file_size=self.settings.max_file_size
            )
            if located is not None:
                result = located_result(located, target, started, self.settings.expect)
                block_types: tuple[str, ...] = ("PRIVATE KEY",) if located.holds_private_key else ()
            else:
                parsed = parse_container(data, target, pkcs12_password=self._pkcs12_password, deadline=ctx.deadline)
                result = container_result(parsed, target, started, self.settings.expect)
                block_types = parsed.other_blocks
            phase.set("certscope.certificates", len(result.certificates))
        exposure = key_exposure(block_types, info, target)
        if exposure:
            result = replace(result, key_exposure=exposure)
        if located is None or not located.depends_on:  # a file's references may change under it
            self._cache[target] = (identity, result)
        return result

    def _pkcs12_password(self) -> bytes | None:
        source = self.settings.pkcs12
        if source is None:
            return None
        return read_secret(source.password_env, source.password_file, "pkcs12.password")

    def _keystore_password(self) -> bytes | None:
        source = self.settings.keystore
        if source is None:
            return self._pkcs12_password()
        return read_secret(source.password_env, source.password_file, "keystore.password")


_entry_name = operator.attrgetter("name")


def _with_shared_facts(result: ProbeResult) -> ProbeResult:
    """A result from a worker, its certificates' facts shared with every other
    holder of the same certificate (an intermediate in thousands of files is kept
    once, as when the daemon parses it itself)."""
    facts = [shared(o.cert) for o in result.certificates]
    if all(kept is o.cert for kept, o in zip(facts, result.certificates, strict=True)):
        return result
    return replace(
        result, certificates=tuple(replace(o, cert=kept) for kept, o in zip(facts, result.certificates, strict=True))
    )


def key_exposure(block_types: tuple[str, ...], info: os.stat_result, path: str) -> tuple[str, ...]:
    """Why an unencrypted private key in this file is exposed, judged from its PEM
    block types and the file's metadata (the key is never decoded): readable by
    group or others, or owned by another user than its directory."""
    if not any(t.endswith("PRIVATE KEY") and not t.startswith("ENCRYPTED") for t in block_types):
        return ()
    causes = []
    if info.st_mode & stat.S_IROTH:
        causes.append("other_readable")
    if info.st_mode & stat.S_IRGRP:
        causes.append("group_readable")
    try:
        if os.stat(os.path.dirname(path) or ".").st_uid != info.st_uid:
            causes.append("owner_mismatch")
    except OSError:
        pass
    return tuple(causes)


def container_result(parsed: Parsed, target: str, started: float, expect: Expect | None) -> ProbeResult:
    observations, duplicates = bundle_observations(parsed.certificates, target)
    errors = parsed.errors + duplicates
    if expect is not None:
        for observation in observations:
            unmet = unmet_expectation(observation.cert, expect) if observation.role == "leaf" else None
            if unmet is not None:
                item = f"{target}[{observation.index}]"
                errors += (SourceError(unmet[0], item, f"{item}: {unmet[1]}"),)
    # Duplicates lose nothing, so they are counted but do not fail the file.
    blocking = [e for e in errors if e.reason is not Reason.DUPLICATE_CERTIFICATE]
    if blocking:
        return failed(blocking[0].reason, started, blocking[0].message, errors=errors, certificates=observations)
    return ProbeResult(
        success=True,
        reason=Reason.OK,
        duration_seconds=time.monotonic() - started,
        certificates=observations,
        errors=errors,
    )


def read_regular_file(path: str, limit: int) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes, or ``OSError``.

    Opened without blocking (a FIFO with no writer, or a path swapped for one after
    stat(), would hold the caller forever) and refused unless regular (``/dev/zero``
    never ends); read in chunks up to ``limit`` + 1, so a file that grows while read
    is refused too.  Used for certificate files, the config file and the web config."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        if info.st_size > limit:
            raise OSError(errno.EFBIG, f"{info.st_size} bytes is over the {limit}-byte limit")
        chunks = []
        remaining = limit + 1
        while remaining > 0:
            chunk = os.read(fd, min(remaining, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        data = b"".join(chunks)
        if len(data) > limit:
            raise OSError(errno.EFBIG, f"over the {limit}-byte limit")
        return data
    finally:
        os.close(fd)


def _reason_for(exc: OSError, path: str) -> Reason:
    if exc.errno == errno.ENOENT:
        return Reason.BROKEN_SYMLINK if os.path.islink(path) else Reason.NOT_FOUND
    if exc.errno == errno.ELOOP:
        return Reason.SYMLINK_LOOP
    if exc.errno in (errno.EACCES, errno.EPERM):
        return Reason.PERMISSION_DENIED
    if exc.errno == errno.EFBIG:
        return Reason.FILE_TOO_LARGE
    if exc.errno == errno.EINVAL:
        return Reason.NOT_REGULAR_FILE
    return Reason.READ_ERROR


def _describe(reason: Reason, path: str, exc: OSError) -> str:
    if reason is Reason.BROKEN_SYMLINK:
        return f"{path}: broken symlink (-> {os.readlink(path)})"
    return f"{path}: {exc.strerror or exc}"


def _error(reason: Reason, path: str, exc: OSError) -> SourceError:
    return SourceError(reason, path, _describe(reason, path, exc))


def _file_type(mode: int) -> str:
    checks: list[tuple[Callable[[int], bool], str]] = [
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ]
    return next((name for check, name in checks if check(mode)), "not a file")


def _static_prefix(pattern: str) -> str:
    """The directory part of a glob before its first wildcard: where to walk from."""
    parts = pattern.split("/")
    static: list[str] = []
    for part in parts[:-1]:
        if _GLOB_CHARS.search(part):
            break
        static.append(part)
    return "/".join(static) or "/"


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """Glob -> regex over whole paths: ``*`` and ``?`` stay within one path segment,
    ``**`` spans segments (``a/**/b`` also matches ``a/b``), ``[...]`` is a class."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif char == "*":
            out.append("[^/]*")
            i += 1
        elif char == "?":
            out.append("[^/]")
            i += 1
        elif char == "[":
            end = pattern.find("]", i + 2)
            if end == -1:
                out.append(re.escape(char))
                i += 1
            else:
                body = pattern[i + 1 : end]
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append(f"[{body}]")
                i = end + 1
        else:
            out.append(re.escape(char))
            i += 1
    return re.compile("".join(out) + r"\Z")
