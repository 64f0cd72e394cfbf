"""Evaluation report and label-shift study of exported models, computed from raw logits (numpy + matplotlib).

- :mod:`rescom.evaluation.shift`: test sets resampled to forward / backward long-tailed or uniform priors.
- :mod:`rescom.evaluation.report`: the numbers (accuracy groups, calibration per prior, confusions, shift study).
- :mod:`rescom.evaluation.plots`: PNG figures (matplotlib Agg; imported on demand).
- :mod:`rescom.evaluation.html`: the self-contained ``report.html``.

Running the model (ONNX Runtime or torch) is the caller's job (``training/evaluate.py``): this package takes
logits, so it imports neither torch nor onnxruntime.
"""

from rescom.evaluation.report import (
    DEFAULT_EM_ALPHA,
    DEFAULT_SHIFT_FACTORS,
    PRIORS,
    SHIFT_METHODS,
    evaluate_logits,
    label_shift_study,
    summarize_shift,
)
from rescom.evaluation.shift import SHIFT_KINDS, ShiftedSet, make_shifted_set, shifted_counts, shifted_prior

__all__ = [
    "DEFAULT_EM_ALPHA",
    "DEFAULT_SHIFT_FACTORS",
    "PRIORS",
    "SHIFT_KINDS",
    "SHIFT_METHODS",
    "ShiftedSet",
    "evaluate_logits",
    "label_shift_study",
    "make_shifted_set",
    "shifted_counts",
    "shifted_prior",
    "summarize_shift",
]
