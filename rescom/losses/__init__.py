"""Losses, built by name with :func:`create_loss`.

Training criteria (``forward(outputs, labels) -> dict(loss, loss_cls, loss_con)``):

* ``"rescom"``: :class:`ResComLoss`, L_SBS + λ·L_CB-SCL with the class-balanced queue and hard pair mining.
* ``"balanced_softmax"``: :class:`BalancedSoftmaxLoss`, CE(s + log π, y).
* ``"ce"``: :class:`SoftmaxCrossEntropyLoss`, plain CE.

All three accept the same keyword dict (``class_counts, dim, queue_size, num_positives, num_negatives,
temperature, con_weight, beta``); the baselines ignore the contrastive ones. Component:
``"cb_supcon"`` (:class:`ClassBalancedSupConLoss`, embeddings in, scalar out).
"""

from rescom.losses._registry import SHARED_LOSS_KWARGS, create_loss, list_losses, register_loss
from rescom.losses.logit_adjusted import (
    BalancedSoftmaxLoss,
    SoftmaxCrossEntropyLoss,
    as_class_counts,
    balanced_softmax_loss,
    effective_number_weights,
    log_prior,
)
from rescom.losses.rescom import ResComLoss
from rescom.losses.supcon import ClassBalancedSupConLoss, class_balanced_supcon

__all__ = [
    "SHARED_LOSS_KWARGS",
    "BalancedSoftmaxLoss",
    "ClassBalancedSupConLoss",
    "ResComLoss",
    "SoftmaxCrossEntropyLoss",
    "as_class_counts",
    "balanced_softmax_loss",
    "class_balanced_supcon",
    "create_loss",
    "effective_number_weights",
    "list_losses",
    "log_prior",
    "register_loss",
]
