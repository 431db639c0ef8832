"""Many new files parsed at once in worker processes, one per CPU.

A first round over a large tree (a pod starting over 20,000 certificate files)
parses every file, and one Python process does that on one core: the daemon was
ready 1.6-1.8x later than a bare ``cryptography`` loop over the same files.
``parse_in_workers`` spreads the files over worker processes and hands back, per
file, what ``FilesProbe.run`` would have cached: the file's identity when it was
parsed and its result.  The probe puts them into its cache, so the round reuses
them as unchanged files (a ``stat`` each) instead of parsing them again.

The workers are the same ``FilesProbe`` code with the same settings, so a result is
the result ``run()`` gives in the daemon.  What a worker cannot know is left to
the daemon: a file that changes after the worker read it fails the identity check
and is parsed again by ``run()``, and a result cut short by the worker's deadline
(``kdf_too_expensive``, ``deadline_exceeded``) is dropped, for ``run()`` to judge
under the probe's own timeout.  Workers are started with ``spawn`` (never ``fork``:
the daemon has threads) and exit when the batch is done; nothing stays running.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from typing import TYPE_CHECKING

from probes.context import ProbeContext
from probes.reasons import Reason

if TYPE_CHECKING:
    from probes.files import FilesSettings, _Identity
    from probes.result import ProbeResult

# Fewer new files than this are parsed in the daemon: starting the workers (about
# 0.3 s: an interpreter and cryptography each) would cost more than it saves.
MIN_FILES = 2_000
# Each worker holds about 54 MB at its peak (measured over 10,000 files); two halve
# the time to ready on any host with two CPUs or more, and keep a pod under the
# chart's 384 MiB limit on a node of 64 CPUs.
MAX_WORKERS = 2
CHUNK_FILES = 250  # files per task: results stream back while the rest is parsed
WORKER_DEADLINE_SECONDS = 10.0  # per file; the default probe timeout
_CUT_SHORT = frozenset({Reason.KDF_TOO_EXPENSIVE, Reason.DEADLINE_EXCEEDED})

Parsed = dict[str, "tuple[_Identity, ProbeResult]"]


class WorkerParse:
    """One batch of files parsed by ``workers`` processes; ``cancel()`` (from
    another thread: the daemon stopping) drops the chunks not yet started, so
    that stopping waits for one chunk at most."""

    def __init__(self, settings: FilesSettings, paths: Sequence[str], workers: int) -> None:
        self._chunks = [paths[i : i + CHUNK_FILES] for i in range(0, len(paths), CHUNK_FILES)]
        self._settings = settings
        self._pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
        self._futures: list[Future[Parsed]] = []
        self.cancelled = False

    def results(self) -> Iterator[Parsed]:
        """The cache entries of the paths (those ``run()`` would cache), chunk by
        chunk as the workers finish them; the workers have exited at the end."""
        try:
            self._futures = [self._pool.submit(_parse_chunk, self._settings, chunk) for chunk in self._chunks]
            if self.cancelled:  # cancel() came before the futures existed
                self.cancel()
            for future in self._futures:
                yield future.result()  # CancelledError once cancel() has been called
        finally:  # also when the caller stops early: no chunk is left to run
            self._pool.shutdown(wait=True, cancel_futures=True)

    def cancel(self) -> None:
        self.cancelled = True
        for future in self._futures:
            future.cancel()  # those not started; the running ones finish


_worker_probe: list[object] = []  # in a worker: [settings, its FilesProbe]


def _parse_chunk(settings: FilesSettings, paths: Sequence[str]) -> Parsed:
    """In a worker: ``run()`` each file and return what the probe cached."""
    from probes.files import FilesProbe  # here: probes.files imports this module

    if not _worker_probe or _worker_probe[0] != settings:
        _worker_probe[:] = [settings, FilesProbe(settings)]
    probe = _worker_probe[1]
    assert isinstance(probe, FilesProbe)
    parsed: Parsed = {}
    for path in paths:
        probe.run(path, ProbeContext(deadline=time.monotonic() + WORKER_DEADLINE_SECONDS))
        entry = probe.take_cached(path)
        if entry is not None and entry[1].reason not in _CUT_SHORT:
            parsed[path] = entry
    return parsed
