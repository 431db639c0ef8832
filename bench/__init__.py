"""The benchmarks (see docs/performance.md).  Run them from the repository root as
modules, ``python -m bench.run`` or ``python -m bench.<scenario>``: the working tree's
``exporter``, ``probes``, ``tests`` and ``bench`` packages are then imported as they are.
What the scripts share is in :mod:`bench.common`."""
