"""ResCom inference service: FastAPI + ONNX Runtime with dynamic batching and prior calibration.

Never imports torch (docs/architecture.md). Entry points: ``python -m service`` (:mod:`service.__main__`) and
``uvicorn service.main:app`` (:func:`service.main.create_app`).
"""
