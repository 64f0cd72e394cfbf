"""Export a trained ResCom checkpoint to a Triton-style ONNX model repository (``export/to_onnx.py``)."""
