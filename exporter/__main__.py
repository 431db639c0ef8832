"""``python -m exporter`` and the ``certscope`` command (``run``).

Nothing is imported before the guard: a worker process started with ``spawn`` runs
its parent's main module again (as ``__mp_main__``), and a files worker should not
import the whole daemon before its first file (about 0.5 s on the benchmark machine,
``probes.files_workers``)."""

import sys


def run() -> int:
    from exporter.cli import main

    return main()


if __name__ == "__main__":
    sys.exit(run())
