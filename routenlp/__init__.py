"""RouteNLP: shared code (task registry, metrics, portfolio config, stack helpers)."""

__version__ = "0.1.0"
