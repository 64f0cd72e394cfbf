"""Inference independent of the transport: encoded or decoded images + calibration options -> results.

Used by ``POST /predict`` (FastAPI route and the raw-body fast path) and by KServe v2 ``/infer``; any other
front end (gRPC) calls the same functions with the same arguments: the service state, the leased model
(:meth:`service.registry.ModelRegistry.lease`) and plain values, never a request object.

The one place where the calibration of ``p = softmax(z / T + b + log π)`` is resolved: :func:`parse_calibration`
validates the options before any expensive work and fixes ``T`` and ``b``; :func:`calibrate` looks up ``π``
(uniform, ``π_train``, the adaptive EM estimate ``π_t`` or the client's weights) and applies it.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rescom.calibration import calibrated_probs
from service.errors import PayloadTooLarge
from service.images import INLINE_DECODE_PIXELS, decode_opened, decoded_pixels, open_images
from service.priors import PriorChoice, parse_prior, parse_temperature, parse_top_k, temperature_class_bias
from service.registry import ServedModel
from service.state import ServiceState

__all__ = [
    "Calibration",
    "parse_calibration",
    "calibrate",
    "infer_pixels",
    "predict_encoded",
    "predict_response",
]


@dataclass(frozen=True)
class Calibration:
    """Validated calibration options of one request.

    Attributes:
        prior: which ``π`` (``uniform``, ``train``, ``adaptive`` or ``custom`` with its weights).
        temperature: ``T``.
        class_bias: ``b`` ``[C]`` (``None`` = 0).
    """

    prior: PriorChoice
    temperature: float
    class_bias: np.ndarray | None


def parse_calibration(state: ServiceState, served: ServedModel, prior: Any, temperature: Any) -> Calibration:
    """Validate the ``prior`` and ``temperature`` options (as sent: text, JSON value or ``None``).

    Raises:
        Unprocessable: an invalid option (422). BadRequest: prior weights whose sum overflows (400).
    """
    spec = served.spec
    choice = parse_prior(prior, spec, state.settings.default_prior)
    t = parse_temperature(temperature, spec)
    return Calibration(choice, t, temperature_class_bias(temperature, spec))


async def calibrate(
    state: ServiceState, served: ServedModel, logits: np.ndarray, calibration: Calibration
) -> np.ndarray:
    """``softmax(z / T + b + log π)`` ``[n, C]`` float64 for logits ``z`` ``[n, C]``."""
    kind = calibration.prior.kind
    pi: np.ndarray | None
    if kind == "adaptive":
        pi = await state.registry.adaptive(served.name).estimate(estimator=calibration.prior.estimator)
    elif kind == "train":
        pi = served.spec.train_prior
    else:
        pi = calibration.prior.weights  # None = uniform
    return calibrated_probs(
        logits, temperature=calibration.temperature, prior=pi, class_bias=calibration.class_bias
    )  # [n, C]


async def infer_pixels(
    state: ServiceState,
    served: ServedModel,
    images: np.ndarray,
    *,
    calibration: Calibration | None,
    timeout_s: float | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Preprocessed images uint8 ``[n, H, W, 3]`` -> (logits ``[n, C]`` float32, probabilities or ``None``).

    ``calibration`` ``None`` skips the probabilities. The logits feed the adaptive prior's window.
    """
    logits = await served.batcher.submit(
        images, timeout_s=state.settings.request_timeout_s if timeout_s is None else timeout_s
    )  # [n, C]
    probs = None if calibration is None else await calibrate(state, served, logits, calibration)
    state.registry.adaptive(served.name).observe(logits)
    return logits, probs


async def predict_encoded(
    state: ServiceState,
    served: ServedModel,
    blobs: Sequence[bytes],
    *,
    top_k: Any = None,
    prior: Any = None,
    temperature: Any = None,
) -> dict[str, Any]:
    """Encoded images -> the ``/predict`` response (calibrated top-k per image, in order).

    Every option and limit is checked before decoding; the headers are read on the event loop, the pixels
    decoded there only for requests under ``INLINE_DECODE_PIXELS`` pixels, else in the decoding pool.

    Raises:
        ServiceError: 413 (image count, pixels, decoded bytes), 422 (undecodable image, invalid option),
            503 (queue full), 504 (deadline).
    """
    settings, spec = state.settings, served.spec
    k = parse_top_k(top_k, spec, settings.default_top_k)
    calibration = parse_calibration(state, served, prior, temperature)
    if len(blobs) > settings.max_images_per_request:
        raise PayloadTooLarge(
            f"{len(blobs)} images in one request; the limit is {settings.max_images_per_request} "
            "(RESCOM_MAX_IMAGES_PER_REQUEST)"
        )

    async def prepare() -> np.ndarray:
        opened = open_images(
            blobs,
            resize=spec.resize,
            max_pixels=settings.max_image_pixels,
            max_decoded_bytes=settings.max_decoded_bytes,
        )
        decode = functools.partial(decode_opened, opened, resize=spec.resize, crop=spec.crop)
        if decoded_pixels(opened) <= INLINE_DECODE_PIXELS:
            return decode()  # a thread hop costs more than decoding this little
        return await asyncio.get_running_loop().run_in_executor(
            state.decode_pool, decode
        )  # [n, crop, crop, 3]

    with state.request_stats.timed(served.name, served.version):  # Triton's statistics extension
        logits = await served.batcher.submit_prepared(
            len(blobs), prepare, settings.request_timeout_s
        )  # [n, C]
        probs = await calibrate(state, served, logits, calibration)  # [n, C]
    state.registry.adaptive(served.name).observe(logits)
    return predict_response(served, probs, k, calibration)


def predict_response(
    served: ServedModel, probs: np.ndarray, k: int, calibration: Calibration
) -> dict[str, Any]:
    """The ``/predict`` JSON body for probabilities ``[n, C]``: top-``k`` classes per image (stable order)."""
    names = served.spec.class_names
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]  # [n, k]
    scores = np.take_along_axis(probs, order, axis=1).tolist()  # [n, k]
    predictions = []
    for idx, sc in zip(order.tolist(), scores, strict=True):
        top = [{"label": names[c], "class_id": c, "score": s} for c, s in zip(idx, sc, strict=True)]
        predictions.append({"label": names[idx[0]], "class_id": idx[0], "score": sc[0], "top_k": top})
    return {
        "model": served.name,
        "version": served.version,
        "provider": served.provider,
        "calibration": {"prior": calibration.prior.kind, "temperature": calibration.temperature},
        "predictions": predictions,
    }
