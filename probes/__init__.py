"""The probes: one module per kind (``files``, ``tls``, ``ocsp``, ``crl``,
``kubernetes``, ``ca``) and what they share.  ``probes.kinds`` is the one registry
of kinds.

Importing the package imports nothing else, on purpose: a worker process that parses
files (``probes.files_workers``) imports ``probes.files`` and what it needs, not every
kind (0.3 s instead of 0.8 s on the benchmark machine, paid in each worker before
its first file).
"""
