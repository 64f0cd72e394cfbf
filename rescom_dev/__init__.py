"""Developer support shared by tests, benchmarks and scripts (never imported by the shipped packages).

- :mod:`rescom_dev.onnx_models`: tiny ONNX models built with ``onnx.helper`` and model repositories holding them.
- :mod:`rescom_dev.images`: synthetic images and their encoding.
- :mod:`rescom_dev.servers`: the service on a free 127.0.0.1 port, in a thread (uvicorn) or as a subprocess
  (``python -m service``), ready when handed over and stopped afterwards.
- :mod:`rescom_dev.prometheus`: samples out of ``GET /metrics``.
- :mod:`rescom_dev.browser`: the system Chromium for the demo page.

Benchmarks and scripts put the repository root on ``sys.path`` (as they do for ``rescom``) and import from here;
pytest finds it through ``pythonpath = ["."]``. Nothing here imports torch.
"""
