"""Inference independent of the transport: encoded or decoded images + calibration options -> results.

Used by ``POST /predict`` (FastAPI route and the raw-body fast path) and by KServe v2 ``/infer``; any other
front end (gRPC) calls the same functions with the same arguments: the service state, the leased model
(:meth:`service.registry.ModelRegistry.lease`) and plain values, never a request object.

The one place where the calibration of ``p = softmax(z / T + b + log π)`` is resolved: :func:`parse_calibration`
validates the options before any expensive work and fixes ``T`` and ``b``; :func:`calibrate` looks up ``π``
(uniform, ``π_train``, the adaptive EM estimate ``π_t`` or the client's weights) and applies it.

Calibration and ranking run once per model call, not once per request: :func:`rank_rows` calibrates the whole
call's logits ``[n, C]`` in one vectorised numpy call for the first request of the call that needs a given
``(π, T, b)`` and slices it for the others (the batcher's :class:`~service.batcher.BatchRows` memo). Rows are
calibrated independently, so a row's result does not depend on its neighbours: the answers equal offline
ONNX Runtime + :func:`rescom.calibration.calibrated_probs` either way. Requests whose ``π`` changes from request
to request (the adaptive estimate, the client's own weights) are calibrated alone.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rescom.calibration import calibrated_probs
from service.batcher import BatchRows
from service.errors import PayloadTooLarge
from service.images import INLINE_DECODE_PIXELS, OpenedImage, decode_opened, decoded_pixels, open_images
from service.priors import PriorChoice, parse_prior, parse_temperature, parse_top_k, temperature_class_bias
from service.registry import ServedModel
from service.state import ServiceState

__all__ = [
    "Calibration",
    "parse_calibration",
    "calibrate",
    "calibrate_now",
    "Ranked",
    "rank",
    "rank_rows",
    "rank_rows_now",
    "parse_predict_options",
    "open_request_images",
    "decode_inline",
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
    if calibration.prior.kind == "adaptive":
        pi = await state.registry.adaptive(served.name).estimate(estimator=calibration.prior.estimator)
        return _calibrated(logits, calibration, pi)
    return calibrate_now(served, logits, calibration)


def calibrate_now(served: ServedModel, logits: np.ndarray, calibration: Calibration) -> np.ndarray:
    """:func:`calibrate` for every prior whose ``π`` is known without waiting (all but the adaptive estimate)."""
    if calibration.prior.kind == "adaptive":
        raise ValueError("the adaptive prior's π_t is estimated asynchronously; use calibrate()")
    pi = served.spec.train_prior if calibration.prior.kind == "train" else calibration.prior.weights
    return _calibrated(logits, calibration, pi)  # None = uniform


def _calibrated(logits: np.ndarray, calibration: Calibration, pi: np.ndarray | None) -> np.ndarray:
    return calibrated_probs(
        logits, temperature=calibration.temperature, prior=pi, class_bias=calibration.class_bias
    )  # [n, C]


@dataclass(frozen=True)
class Ranked:
    """Classes of each image ranked by calibrated probability, highest first (stable on ties).

    Attributes:
        classes: class ids ``[n, C]`` int64.
        probs: their probabilities ``[n, C]`` float64, descending along each row.
    """

    classes: np.ndarray
    probs: np.ndarray

    def rows(self, start: int, stop: int) -> Ranked:
        """Rows ``start:stop`` (views, no copy)."""
        return Ranked(self.classes[start:stop], self.probs[start:stop])


def rank(probs: np.ndarray) -> Ranked:
    """Rank the classes of probabilities ``[n, C]``: ``argsort`` descending, stable, and the sorted values."""
    order = np.argsort(-probs, axis=1, kind="stable")  # [n, C]
    return Ranked(order, np.take_along_axis(probs, order, axis=1))  # [n, C], [n, C]


def _shared_key(calibration: Calibration, fitted_temperature: float) -> tuple[object, ...] | None:
    """What makes two requests of one model call share their calibration; ``None`` when it is not shared.

    Every request of a call leases the same model version, so ``π_train`` and the fitted ``b`` are that version's
    arrays: the prior's kind, ``T`` and whether ``b`` is applied identify the calibration. Shared are only the
    uniform and training priors with the fitted ``T`` or ``T = 1`` (at most four keys per call, so requests
    with many different options cannot make each call's rows be calibrated many times over); the adaptive
    estimate, client weights and other temperatures are calibrated per request.
    """
    if calibration.prior.kind not in ("uniform", "train"):
        return None
    if calibration.temperature not in (fitted_temperature, 1.0):
        return None
    return (
        "calibration",
        calibration.prior.kind,
        calibration.temperature,
        calibration.class_bias is not None,
    )


async def rank_rows(
    state: ServiceState, served: ServedModel, answer: BatchRows, calibration: Calibration
) -> Ranked:
    """Calibrate and rank one request's rows of a model call, computing once per call where it can be shared.

    Returns:
        The request's rows ``[k, C]`` of ``rank(softmax(z / T + b + log π))``.
    """
    if calibration.prior.kind == "adaptive":  # never shared: π_t moves from request to request
        return rank(await calibrate(state, served, answer.rows, calibration))
    return rank_rows_now(served, answer, calibration)


def rank_rows_now(served: ServedModel, answer: BatchRows, calibration: Calibration) -> Ranked:
    """:func:`rank_rows` without waiting, for every prior but the adaptive estimate."""
    key = _shared_key(calibration, served.spec.fitted_temperature)
    if key is None or answer.memo is None:
        return rank(calibrate_now(served, answer.rows, calibration))
    whole = answer.memo.get(key)
    if not isinstance(whole, Ranked):  # the first request of this call with this calibration
        whole = rank(calibrate_now(served, answer.batch, calibration))  # [n, C]
        answer.memo[key] = whole
    return whole.rows(answer.start, answer.stop)


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


def parse_predict_options(
    state: ServiceState, served: ServedModel, images: int, top_k: Any, prior: Any, temperature: Any
) -> tuple[int, Calibration]:
    """Check a ``/predict`` request's options and image count before any decoding: ``(k, calibration)``.

    Raises:
        PayloadTooLarge: more than ``max_images_per_request`` images (413).
        Unprocessable, BadRequest: an invalid option (as :func:`parse_calibration`).
    """
    settings = state.settings
    k = parse_top_k(top_k, served.spec, settings.default_top_k)
    calibration = parse_calibration(state, served, prior, temperature)
    if images > settings.max_images_per_request:
        raise PayloadTooLarge(
            f"{images} images in one request; the limit is {settings.max_images_per_request} "
            "(RESCOM_MAX_IMAGES_PER_REQUEST)"
        )
    return k, calibration


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
    k, calibration = parse_predict_options(state, served, len(blobs), top_k, prior, temperature)

    async def prepare() -> np.ndarray:
        opened = open_request_images(state, served, blobs)
        inline = decode_inline(served, opened)
        if inline is not None:
            return inline
        decode = functools.partial(decode_opened, opened, resize=spec.resize, crop=spec.crop)
        return await asyncio.get_running_loop().run_in_executor(
            state.decode_pool, decode
        )  # [n, crop, crop, 3]

    with state.request_stats.timed(served.name, served.version):  # Triton's statistics extension
        answer = await served.batcher.submit_prepared(len(blobs), prepare, settings.request_timeout_s)
        ranked = await rank_rows(state, served, answer, calibration)  # [n, C]
    state.registry.adaptive(served.name).observe(answer.rows)
    return predict_response(served, ranked, k, calibration)


def open_request_images(
    state: ServiceState, served: ServedModel, blobs: Sequence[bytes]
) -> list[OpenedImage]:
    """Read and check the headers of a request's images against the service's limits (no pixel decoded).

    Raises:
        Unprocessable, PayloadTooLarge: as :func:`service.images.open_images`.
    """
    settings = state.settings
    return open_images(
        blobs,
        resize=served.spec.resize,
        max_pixels=settings.max_image_pixels,
        max_decoded_bytes=settings.max_decoded_bytes,
    )


def decode_inline(served: ServedModel, opened: Sequence[OpenedImage]) -> np.ndarray | None:
    """Decode ``opened`` on the calling thread when they hold few pixels (``[n, crop, crop, 3]``), else ``None``.

    A thread hop costs more than decoding under ``INLINE_DECODE_PIXELS`` pixels; larger requests go to the
    decoding pool (the caller's choice, with the images still open).
    """
    if decoded_pixels(opened) > INLINE_DECODE_PIXELS:
        return None
    return decode_opened(opened, resize=served.spec.resize, crop=served.spec.crop)


def predict_response(served: ServedModel, ranked: Ranked, k: int, calibration: Calibration) -> dict[str, Any]:
    """The ``/predict`` JSON body: the top-``k`` classes of each image (:func:`rank` order)."""
    names = served.spec.class_names
    order = ranked.classes[:, :k].tolist()  # [n, k]
    scores = ranked.probs[:, :k].tolist()  # [n, k]
    predictions = []
    for idx, sc in zip(order, scores, strict=True):
        top = [{"label": names[c], "class_id": c, "score": s} for c, s in zip(idx, sc, strict=True)]
        predictions.append({"label": names[idx[0]], "class_id": idx[0], "score": sc[0], "top_k": top})
    return {
        "model": served.name,
        "version": served.version,
        "provider": served.provider,
        "calibration": {"prior": calibration.prior.kind, "temperature": calibration.temperature},
        "predictions": predictions,
    }
