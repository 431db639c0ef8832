"""certscope: certificate observability for Prometheus."""

__version__ = "0.1.0"
