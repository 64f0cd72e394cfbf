"""Build-time (and run-time) check of the serving image: `python /opt/rescom/verify_serve_image.py cpu|gpu`.

Run time: `docker compose exec api python /opt/rescom/verify_serve_image.py cpu`.

Fails the build when torch is installed or gets imported by the service, when both onnxruntime and
onnxruntime-gpu are installed (they share the `onnxruntime` module: the last one installed wins, silently),
or when the installed ONNX Runtime is not the one RUNTIME asked for.
"""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
import sys


def main(runtime: str) -> None:
    import service.main  # noqa: F401  (the whole app, as `python -m service` imports it)

    assert "torch" not in sys.modules, "the service imported torch"
    assert importlib.util.find_spec("torch") is None, "torch is installed in the serving image"
    installed = {(d.metadata["Name"] or "").lower().replace("_", "-") for d in md.distributions()}
    ort = {"onnxruntime", "onnxruntime-gpu"} & installed
    want = {"cpu": "onnxruntime", "gpu": "onnxruntime-gpu"}[runtime]
    assert ort == {want}, f"RUNTIME={runtime} needs exactly {want}, found {sorted(ort) or 'none'}"

    import onnxruntime

    print(
        f"ok: {want} {md.version(want)} (providers built in: {', '.join(onnxruntime.get_available_providers())}),"
        f" rescom {md.version('rescom')}, no torch"
    )


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "cpu")
