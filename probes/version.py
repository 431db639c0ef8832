"""certscope's version: the distribution's (pyproject's hatch reads it here), in the
lowest layer so that probes (the HTTP check's User-Agent) and the daemon
(``exporter.__version__``) name the same one without probes importing exporter."""

__version__ = "0.1.0"
