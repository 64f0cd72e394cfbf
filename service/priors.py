"""Request options for calibration (prior, temperature, top_k) and the adaptive prior's state per model.

The maths lives in :mod:`rescom.calibration`; this module only parses and validates what clients send and
keeps the sliding window of recent logits from which the deployment prior ``π_t`` is re-estimated
(:mod:`rescom.label_shift`: EM, MAP-EM, BBSE or RLLS, guarded against estimates that lower held-out likelihood).
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rescom.calibration import normalize_prior
from rescom.label_shift import (
    CONFUSION_ESTIMATORS,
    FALLBACK_ESTIMATOR,
    ShiftEstimate,
    estimate_prior,
    parse_estimator,
)
from service.errors import BadRequest, Unprocessable
from service.model_spec import ModelSpec

__all__ = [
    "PriorChoice",
    "parse_prior",
    "parse_temperature",
    "temperature_class_bias",
    "parse_top_k",
    "AdaptivePrior",
]

PRIOR_HELP = (
    "use uniform, train, adaptive (or adaptive:ESTIMATOR with ESTIMATOR one of em, map_em, bbse, rlls, optionally "
    '+guard), or a JSON object of class -> weight such as {"0": 1, "3": 5}'
)


@dataclass(frozen=True)
class PriorChoice:
    """A validated prior option.

    Attributes:
        kind: ``uniform`` (no shift), ``train`` (``π_train``), ``adaptive`` (label-shift estimate) or ``custom``.
        weights: ``π_t`` ``[C]`` summing to 1 for ``custom``; ``None`` otherwise.
        estimator: for ``adaptive``, the label-shift estimator the request asked for (``adaptive:rlls``);
            ``None`` = the service's ``RESCOM_ADAPTIVE_ESTIMATOR``.
    """

    kind: str
    weights: np.ndarray | None = None
    estimator: str | None = None


def parse_prior(value: Any, spec: ModelSpec, default: str | None = None) -> PriorChoice:
    """Validate a prior option from the query string (a string) or a JSON body (string, object or list).

    Args:
        value: ``None`` (use the default), a keyword, a JSON text, a mapping ``class -> weight`` (class names or
            indices; missing classes get 0) or a list of ``C`` weights.
        spec: the model (for ``C`` and the class names).
        default: the service's default keyword; ``None`` falls back to the model's metadata.

    Raises:
        Unprocessable: unknown keyword, invalid JSON, negative / non-finite / all-zero weights, unknown class.
        BadRequest: weights whose sum overflows float64 (400).
    """
    if value is None:
        return PriorChoice(default or spec.default_prior)
    if isinstance(value, str):
        text = value.strip()
        if text.lower() in ("uniform", "train", "adaptive"):
            return PriorChoice(text.lower())
        if text.lower().startswith("adaptive:"):
            # "+" arrives as a space from a query string that did not encode it (adaptive:em+guard)
            estimator = text[len("adaptive:") :].strip().lower().replace(" ", "+")
            try:
                parse_estimator(estimator)
            except ValueError as err:
                raise Unprocessable(f"prior {value[:80]!r}: {err}") from None
            return PriorChoice("adaptive", estimator=estimator)
        if not text.startswith(("{", "[")):
            raise Unprocessable(f"prior {value[:80]!r} is not understood; {PRIOR_HELP}")
        try:
            value = json.loads(text)
        except json.JSONDecodeError as err:
            raise Unprocessable(
                f"prior is not valid JSON ({err.msg} at position {err.pos}); {PRIOR_HELP}"
            ) from None
        except (ValueError, RecursionError) as err:  # an integer with too many digits; nesting too deep
            reason = "nested too deeply" if isinstance(err, RecursionError) else str(err)[:120]
            raise Unprocessable(f"prior is not valid JSON ({reason}); {PRIOR_HELP}") from None
    if isinstance(value, Mapping | Sequence) and not isinstance(value, str | bytes):
        try:
            with np.errstate(over="ignore", invalid="ignore"):  # an overflowing sum is refused just below
                weights = normalize_prior(value, spec.num_classes, spec.class_names)
        except (ValueError, TypeError, OverflowError) as err:  # OverflowError: an integer beyond float range
            raise Unprocessable(f"invalid prior: {err}") from None
        if not (np.isfinite(weights).all() and abs(float(weights.sum()) - 1.0) < 1e-6):
            raise BadRequest(  # each weight finite, but their sum beyond float64's range (~1.8e308)
                "invalid prior: the weights sum to more than the largest float (1.8e308); scale them down "
                "(only their ratios matter)"
            )
        return PriorChoice("custom", weights)
    raise Unprocessable(
        f"prior must be a string, an object or a list, got {type(value).__name__}; {PRIOR_HELP}"
    )


def parse_temperature(value: Any, spec: ModelSpec) -> float:
    """Resolve the temperature option to ``T``.

    ``None`` or ``true`` use the fitted ``T`` of the model's metadata (1 when none was fitted); ``false`` uses
    ``T = 1`` (raw logits); a number ``> 0`` is used as given.

    Raises:
        Unprocessable: anything else.
    """
    if value is None or value is True:
        return spec.fitted_temperature
    if value is False:
        return 1.0
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("true", "fitted", "default", ""):
            return spec.fitted_temperature
        if text in ("false", "none", "off"):
            return 1.0
        try:
            value = float(text)
        except ValueError:
            raise Unprocessable(
                f"temperature {value[:40]!r} is not understood; use true (fitted T), false (T=1) "
                "or a number > 0"
            ) from None
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            t = float(value)
        except OverflowError:  # an integer beyond float range (from a JSON body)
            t = math.inf
        if math.isfinite(t) and 0.01 <= t <= 100:
            return t
        raise Unprocessable(f"temperature must be between 0.01 and 100, got {value}")
    raise Unprocessable(f"temperature must be true, false or a number, got {type(value).__name__}")


def temperature_class_bias(value: Any, spec: ModelSpec) -> np.ndarray | None:
    """The per-class bias ``b`` ``[C]`` that goes with a temperature option: ``p = softmax(z / T + b + log π)``.

    The model's fitted ``b`` (:attr:`ModelSpec.class_bias`, BCTS; ``None`` = 0 for exports without one), except
    when the option asks for raw logits (``false`` / ``"false"`` / ``"none"`` / ``"off"``, the words
    :func:`parse_temperature` maps to ``T = 1``): then neither ``T`` nor ``b`` is applied. Call it after
    :func:`parse_temperature` has validated ``value``.
    """
    if value is False or (isinstance(value, str) and value.strip().lower() in ("false", "none", "off")):
        return None
    return spec.class_bias


def parse_top_k(value: Any, spec: ModelSpec, default: int) -> int:
    """``top_k`` in ``1..C``; ``None`` gives ``min(default, C)``.

    Raises:
        Unprocessable: not an integer, or out of range.
    """
    if value is None:
        return min(default, spec.num_classes)
    if isinstance(value, bool) or not isinstance(value, int):
        raise Unprocessable(f"top_k must be an integer in 1..{spec.num_classes}, got {value!r}")
    if not 1 <= value <= spec.num_classes:
        raise Unprocessable(
            f"top_k must be in 1..{spec.num_classes} (the model has {spec.num_classes} classes), got {value}"
        )
    return value


class AdaptivePrior:
    """Sliding window of recent logits and an estimate of the deployment prior ``π_t`` for one model.

    Every prediction's logits go into the window (:meth:`observe`, cheap). The estimate is recomputed in a worker
    thread at most once per ``update_every`` new images, warm-started from the previous one, so its cost does
    not grow with traffic. Before anything has been observed ``π_t`` is the estimator's starting point (the
    training prior for ``map_em`` / ``rlls``, uniform for ``em`` / ``bbse``).

    The estimator (:mod:`rescom.label_shift`) is ``em`` (Saerens et al. 2002), ``map_em`` (shrunk toward
    ``π_train`` by the amount of evidence in the window), ``bbse`` or ``rlls`` (the validation split's soft
    confusion matrix, ``calibration.confusion`` of ``rescom.json``), each optionally ``+guard`` (fall back to
    the better fixed prior when the estimate does not raise held-out likelihood). A confusion estimator
    without a confusion matrix falls back to :data:`rescom.label_shift.FALLBACK_ESTIMATOR` (guarded EM).

    Args:
        num_classes: ``C``.
        temperature: ``T`` applied to the logits (the model's fitted temperature).
        window: most recent images kept.
        alpha: symmetric Dirichlet ``α >= 1`` of the ``em`` M-step.
        update_every: new images between two re-estimates.
        class_bias: the model's per-class bias ``b`` ``[C]`` (``None`` = 0): the estimators run on
            ``z / T + b``, the calibrated logits the served posteriors use. The window keeps raw logits, so a
            new version's ``T`` and ``b`` apply to it at the next estimate.
        estimator: default estimator name (``"em"``, the plain Saerens EM, unless given; the service passes
            its ``adaptive_estimator`` setting, default :data:`rescom.label_shift.DEFAULT_ESTIMATOR`).
        train_prior: ``π_train`` ``[C]`` (``None`` = uniform).
        confusion: soft confusion matrix ``M`` ``[C, C]`` (:func:`rescom.label_shift.soft_confusion`) or ``None``.
        n_val: validation images behind ``confusion``.
        map_strength: κ of ``map_em`` in images (``None`` = ``10 · C``).
    """

    def __init__(
        self,
        num_classes: int,
        temperature: float,
        window: int = 2048,
        alpha: float = 2.0,
        update_every: int = 64,
        class_bias: np.ndarray | None = None,
        estimator: str = "em",
        train_prior: np.ndarray | None = None,
        confusion: np.ndarray | None = None,
        n_val: int = 0,
        map_strength: float | None = None,
    ) -> None:
        self.num_classes = num_classes
        self.temperature = temperature
        self.class_bias = class_bias
        self.window = window
        self.alpha = alpha
        self.update_every = update_every
        parse_estimator(estimator)
        self.estimator = estimator
        self.train_prior = (
            np.full(num_classes, 1.0 / num_classes) if train_prior is None else np.asarray(train_prior, float)
        )
        self.confusion = confusion
        self.n_val = n_val
        self.map_strength = map_strength
        self._lock = asyncio.Lock()
        self.reset()

    def reset(self) -> None:
        """Forget the window and the estimates."""
        self._buf = np.zeros((self.window, self.num_classes), dtype=np.float32)  # ring buffer [W, C]
        self._next = 0
        self._filled = 0
        self.n_seen = 0
        self._pending = 0  # images observed since the last estimate of the default estimator
        self._estimate: np.ndarray | None = None
        self._others: dict[str, tuple[int, ShiftEstimate]] = {}  # other estimators: (n_seen at fit, estimate)
        self._last: ShiftEstimate | None = None
        self._iterations = 0
        self._updated_at: float | None = None
        self._generation = getattr(self, "_generation", 0) + 1  # stale results after a reset are dropped

    def resolve(self, estimator: str | None = None) -> str:
        """The estimator that will run for ``estimator`` (``None`` = the default).

        A confusion estimator without a confusion matrix becomes
        :data:`rescom.label_shift.FALLBACK_ESTIMATOR`.

        Raises:
            ValueError: an unknown estimator name.
        """
        name = self.estimator if estimator is None else estimator.strip().lower()
        base, _ = parse_estimator(name)
        if base in CONFUSION_ESTIMATORS and self.confusion is None:
            return FALLBACK_ESTIMATOR
        return name

    def observe(self, logits: np.ndarray) -> None:
        """Add ``[n, C]`` logits of served images to the window."""
        n = logits.shape[0]
        if n >= self.window:
            self._buf[:] = logits[-self.window :]
            self._next, self._filled = 0, self.window
        else:
            end = self._next + n
            if end <= self.window:
                self._buf[self._next : end] = logits
            else:
                split = self.window - self._next
                self._buf[self._next :] = logits[:split]
                self._buf[: n - split] = logits[split:]
            self._next = end % self.window
            self._filled = min(self.window, self._filled + n)
        self.n_seen += n
        self._pending += n

    def _start(self, estimator: str) -> np.ndarray:
        base, _ = parse_estimator(estimator)
        if base in ("map_em", "rlls"):
            return self.train_prior / self.train_prior.sum()
        return np.full(self.num_classes, 1.0 / self.num_classes)

    def current(self) -> np.ndarray:
        """The latest estimate of the default estimator without recomputing (its start before the first)."""
        if self._estimate is None:
            return self._start(self.resolve())
        return self._estimate

    def _fit(self, window: np.ndarray, estimator: str, init: np.ndarray | None) -> ShiftEstimate:
        return estimate_prior(
            window,
            self.train_prior,
            estimator,
            temperature=self.temperature,
            class_bias=self.class_bias,
            confusion=self.confusion,
            n_val=self.n_val,
            em_alpha=self.alpha,
            map_strength=self.map_strength,
            init=init,
        )

    async def estimate(self, force: bool = False, estimator: str | None = None) -> np.ndarray:
        """The target prior ``π_t`` ``[C]``, recomputed only when enough new images arrived.

        It is recomputed when ``update_every`` images arrived since the last estimate (or when ``force`` and
        anything arrived); otherwise, or while another recomputation runs, the latest estimate is returned.

        ``estimator`` (per request) picks another estimator than the default; its estimate is cached the same
        way. Raises ``ValueError`` for an unknown name (see :func:`rescom.label_shift.parse_estimator`).
        """
        name = self.resolve(estimator)
        if name != self.resolve():
            return await self._estimate_other(name, force)
        stale = self._pending >= self.update_every or (
            self._pending > 0 and (force or self._estimate is None)
        )
        if not stale or self._filled == 0:
            return self.current()
        if self._lock.locked() and self._estimate is not None and not force:
            return self._estimate
        async with self._lock:
            if self._pending == 0:  # someone else just did it
                return self.current()
            window = self._window_copy()
            generation, pending = self._generation, self._pending
            result = await asyncio.to_thread(self._fit, window, name, self._estimate)
            if generation == self._generation:
                self._estimate, self._iterations, self._last = result.prior, result.iterations, result
                self._pending -= pending
                self._updated_at = time.time()
            return self.current()

    async def _estimate_other(self, name: str, force: bool) -> np.ndarray:
        cached = self._others.get(name)
        if self._filled == 0:
            return self._start(name)
        if cached is not None and (
            self.n_seen - cached[0] < self.update_every and not (force and self.n_seen > cached[0])
        ):  # still fresh
            return cached[1].prior
        async with self._lock:
            generation, seen = self._generation, self.n_seen
            init = None if cached is None else cached[1].prior
            result = await asyncio.to_thread(self._fit, self._window_copy(), name, init)
            if generation == self._generation:
                self._others[name] = (seen, result)
            return result.prior

    def snapshot(self) -> dict[str, Any]:
        """Public state for ``GET /v1/models/{name}/prior``."""
        last = self._last
        return {
            "window_size": self.window,
            "window_filled": self._filled,
            "n_seen": self.n_seen,
            "pending": self._pending,
            "estimator": self.resolve(),
            "estimator_used": None if last is None else last.method,
            "held_out_log_likelihood": None if last is None or not last.scores else dict(last.scores),
            "dirichlet_alpha": self.alpha,
            "update_every": self.update_every,
            "em_iterations": self._iterations,
            "updated_utc": None
            if self._updated_at is None
            else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self._updated_at)),
        }

    def window_logits(self) -> np.ndarray:
        """A copy of the raw logits in the window, ``[n, C]`` (n <= ``window``), for monitoring."""
        return self._window_copy()

    def _window_copy(self) -> np.ndarray:
        """The window, oldest first (the guard splits it in time)."""
        if self._filled < self.window:
            return self._buf[: self._filled].copy()  # [filled, C]
        return np.concatenate([self._buf[self._next :], self._buf[: self._next]])  # [W, C]
