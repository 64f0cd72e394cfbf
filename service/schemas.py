"""Pydantic models of the JSON bodies: they validate the JSON form of ``POST /predict`` and document the API.

The hot paths build their responses as plain dicts (no response-model pass); these classes describe them in
the OpenAPI schema.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt

__all__ = ["PredictJSONRequest", "ClassScore", "Prediction", "PredictResponse", "ErrorResponse"]

PRIOR_DOC = (
    "uniform (no shift), train (the training prior), adaptive (EM estimate from recent traffic) or a custom "
    'prior: an object class -> weight such as {"0": 1, "3": 5} (missing classes get 0) or a list of C weights'
)
TEMPERATURE_DOC = (
    "true: the fitted T (and per-class bias b, when the model has one) from the model's metadata (default); "
    "false: raw logits (T = 1, no bias); or a number T > 0 (with b)"
)


class PredictJSONRequest(BaseModel):
    """``POST /predict`` with ``Content-Type: application/json``."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    images: list[str] = Field(
        min_length=1, description="base64-encoded image files (data: URLs are accepted)"
    )
    top_k: StrictInt | None = Field(None, description="classes to return per image, 1..C (default 5)")
    prior: str | dict[str, Any] | list[Any] | None = Field(None, description=PRIOR_DOC)
    temperature: bool | float | str | None = Field(None, description=TEMPERATURE_DOC)
    model: str | None = Field(None, description="model name (optional when one model is served)")
    version: int | str | None = Field(None, description="must equal the served version when given")


class ClassScore(BaseModel):
    """One class and its calibrated probability."""

    label: str
    class_id: int
    score: float


class Prediction(BaseModel):
    """The prediction for one image: the top class, and the ``top_k`` best classes."""

    label: str
    class_id: int
    score: float
    top_k: list[ClassScore]


class Calibration(BaseModel):
    """What the scores were computed with: ``p = softmax(z / T + log π)``."""

    prior: str
    temperature: float


class PredictResponse(BaseModel):
    """``POST /predict`` response: one prediction per image, in request order."""

    model_config = ConfigDict(protected_namespaces=())

    model: str
    version: int
    provider: str
    calibration: Calibration
    predictions: list[Prediction]


class ErrorResponse(BaseModel):
    """Every error: a message saying what was wrong and what is allowed."""

    error: str
