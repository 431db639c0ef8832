"""certscope: certificate observability for Prometheus."""

from probes.version import __version__ as __version__
