"""Class-balanced supervised contrastive loss (L_CB-SCL) over the batch plus mined queue keys.

For anchor i with embedding z_i (L2-normalised), temperature τ and contrast set A(i) = every other sample of
the batch (both views; self removed) plus its valid mined queue keys, the SupCon "L_out" loss is

    ℓ_i = −1/|P(i)| · Σ_{p∈P(i)} log [ exp(z_i·z_p/τ) / Σ_{a∈A(i)} exp(z_i·z_a/τ) ]

where P(i) = same-class batch samples (including the other view) plus the valid hard queue positives. Hard
queue negatives only enter the denominator. ResCom weights each anchor by its class:
``L = mean_i w_{y_i} ℓ_i`` with ``w`` from :func:`~rescom.losses.logit_adjusted.effective_number_weights`.
Anchors with no positive at all contribute 0 to the sum but still count in the mean (as in the official
code, whose ``/(|P(i)| + 1e-9)`` gives the same result). No base-temperature factor is applied.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from rescom.losses._registry import register_loss
from rescom.losses.logit_adjusted import ClassCounts, effective_number_weights

__all__ = ["ClassBalancedSupConLoss", "class_balanced_supcon"]


def _mined(
    name: str, sim: torch.Tensor | None, valid: torch.Tensor | None, like: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    m = like.shape[0]
    if sim is None:
        if valid is not None:
            raise ValueError(f"{name}_valid was given without {name}_sim")
        return like.new_zeros(m, 0), torch.zeros(m, 0, dtype=torch.bool, device=like.device)
    if sim.dim() != 2 or sim.shape[0] != m:
        raise ValueError(f"{name}_sim must have shape [{m}, Q], got {list(sim.shape)}")
    if valid is None:
        valid = torch.ones(sim.shape, dtype=torch.bool, device=sim.device)
    if valid.shape != sim.shape or valid.dtype != torch.bool:
        raise ValueError(
            f"{name}_valid must be a bool tensor of shape {list(sim.shape)}, got {valid.dtype} {list(valid.shape)}"
        )
    return sim, valid


def class_balanced_supcon(
    z: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    class_weight: torch.Tensor | None = None,
    pos_sim: torch.Tensor | None = None,
    pos_valid: torch.Tensor | None = None,
    neg_sim: torch.Tensor | None = None,
    neg_valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Class-balanced SupCon over the batch and mined queue keys (see the module docstring).

    Args:
        z: ``[M, d]`` L2-normalised embeddings of all views (M = 2b for two views); any M >= 1.
        labels: ``[M]`` classes.
        temperature: τ > 0.
        class_weight: ``[C]`` per-class weights w; ``None`` means all ones.
        pos_sim: ``[M, Qp]`` similarities to hard queue positives (counted as positives).
        pos_valid: ``[M, Qp]`` bool; invalid columns are left out of numerator and denominator.
        neg_sim: ``[M, Qn]`` similarities to hard queue negatives (denominator only).
        neg_valid: ``[M, Qn]`` bool, like ``pos_valid``.

    Returns:
        Scalar loss ``mean_i w_{y_i} ℓ_i``.
    """
    if z.dim() != 2 or z.shape[0] < 1:
        raise ValueError(f"z must have shape [M, d] with M >= 1, got {list(z.shape)}")
    if labels.shape != (z.shape[0],):
        raise ValueError(f"labels must have shape [{z.shape[0]}], got {list(labels.shape)}")
    if not temperature > 0:
        raise ValueError(f"temperature τ must be > 0, got {temperature!r}")
    m = z.shape[0]
    pos_sim, pos_valid = _mined("pos", pos_sim, pos_valid, z)
    neg_sim, neg_valid = _mined("neg", neg_sim, neg_valid, z)
    num_qp = pos_sim.shape[1]

    self_mask = _self_mask(m, z.device)  # [M, M] cached per shape
    same = (labels[:, None] == labels[None, :]).logical_and_(~self_mask)  # [M, M] batch positives
    inf = float("-inf")
    logits = (
        torch.cat(  # [M, M+Qp+Qn]; −inf leaves self and invalid mined columns out
            [
                (z @ z.T).masked_fill(self_mask, inf),
                pos_sim.to(z.dtype).masked_fill(~pos_valid, inf),
                neg_sim.to(z.dtype).masked_fill(~neg_valid, inf),
            ],
            dim=1,
        )
        / temperature
    )
    if m == 1:  # the only case where a row can be empty: a finite dummy row keeps value and gradient finite
        logits = torch.where(torch.isfinite(logits).any(dim=1, keepdim=True), logits, 0.0)
    log_prob = logits[:, : m + num_qp] - torch.logsumexp(logits, dim=1, keepdim=True)  # [M, M+Qp]
    positive = torch.cat([same, pos_valid], dim=1)  # [M, M+Qp]
    num_pos = positive.sum(dim=1).clamp_min_(1)  # [M]
    per_anchor = -torch.where(positive, log_prob, 0.0).sum(dim=1) / num_pos  # [M] ℓ_i (0 if no positive)
    if class_weight is not None:
        per_anchor = per_anchor * class_weight.to(per_anchor.dtype)[labels]  # [M] w_{y_i} ℓ_i
    return per_anchor.mean()


@functools.lru_cache(maxsize=8)
def _self_mask(m: int, device: torch.device) -> torch.Tensor:
    """``[M, M]`` bool identity (the self-pairs), built once per batch shape and device."""
    return torch.eye(m, dtype=torch.bool, device=device)


@register_loss("cb_supcon")
class ClassBalancedSupConLoss(nn.Module):
    """Module form of :func:`class_balanced_supcon` with the weights w stored as a buffer.

    This is a component (used by ``"rescom"``), not a training criterion: ``forward`` takes embeddings and
    returns a scalar tensor.

    Args:
        class_counts: Training counts n_c ``[C]`` for the weights; ``None`` means no re-weighting.
        temperature: τ (ResCom recipe: 0.2).
        beta: β of the effective number (ResCom recipe: 0.999999; 0 disables re-weighting).
    """

    class_weight: torch.Tensor | None

    def __init__(
        self, class_counts: ClassCounts | None = None, temperature: float = 0.2, beta: float = 0.999999
    ):
        super().__init__()
        if not isinstance(temperature, int | float) or not temperature > 0:
            raise ValueError(f"temperature τ must be a number > 0, got {temperature!r}")
        self.temperature = float(temperature)
        weight = None if class_counts is None else effective_number_weights(class_counts, beta)
        self.register_buffer("class_weight", weight)  # [C] or None

    def forward(
        self,
        z: torch.Tensor,
        labels: torch.Tensor,
        pos_sim: torch.Tensor | None = None,
        pos_valid: torch.Tensor | None = None,
        neg_sim: torch.Tensor | None = None,
        neg_valid: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """See :func:`class_balanced_supcon`."""
        return class_balanced_supcon(
            z, labels, self.temperature, self.class_weight, pos_sim, pos_valid, neg_sim, neg_valid
        )
