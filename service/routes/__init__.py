"""HTTP routes: ``predict`` (``/predict``), ``v2`` (KServe v2), ``models`` (``/v1/models``), ``health``, ``metrics``."""
