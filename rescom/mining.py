"""Supervised hard positive and negative pair mining over the class-balanced queue (pure functions, no state).

ResCom keeps, for every anchor, only the informative queue pairs: the Qp **least** similar same-class keys
(hard positives) and the Qn **most** similar other-class keys (hard negatives). Easy positives and easy
negatives have near-zero SupCon gradients (∂L/∂l_ip = p_ip − 1/|P(i)|, ∂L/∂l_in = p_in). Mining applies
to the queue only; in-batch pairs are all kept by the loss.

The queue is class-major (flat slot ``j`` belongs to class ``j // K``), so an anchor's own K slots are
``y*K + arange(K)``; negatives are found by masking same-class and unfilled columns, never by materialising
the ``[C, K·(C−1)]`` index table of the official code (≈ 530 MB·K of int64 for C = 8142). Slots that were
never written (``filled`` False) hold random vectors and are never selected.

The returned values are gathered from ``sim`` and keep its autograd graph; indices are computed without
gradient. At large C a differentiable ``sim`` is wasteful (its gradient is a dense ``[B, C*K]`` matrix and
costs another ``B·C·K·d`` matmul), so :class:`~rescom.losses.rescom.ResComLoss` mines on a detached ``sim``
and attaches the gradient to the picked pairs only with :func:`gather_similarity`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

__all__ = [
    "MinedKeys",
    "gather_similarity",
    "hard_negatives",
    "hard_positives",
    "mine_hard_pairs",
    "queue_similarity",
]


class MinedKeys(NamedTuple):
    """Mined queue pairs for a batch of anchors.

    Attributes:
        values: ``[B, Q]`` anchor·key similarities (0 where ``valid`` is False), differentiable w.r.t. ``sim``.
        valid: ``[B, Q]`` bool; False where the anchor has fewer than Q eligible (filled) keys.
        index: ``[B, Q]`` long flat queue slot of each pick (meaningless where ``valid`` is False).
    """

    values: torch.Tensor
    valid: torch.Tensor
    index: torch.Tensor


def queue_similarity(anchors: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Anchor–key similarities ``anchors @ keys.T`` with the keys detached.

    Args:
        anchors: ``[B, d]`` L2-normalised embeddings.
        keys: ``[N, d]`` queue keys (``ClassBalancedQueue.keys_flat()``).

    Returns:
        ``[B, N]`` cosine similarities.
    """
    if anchors.dim() != 2 or keys.dim() != 2 or anchors.shape[1] != keys.shape[1]:
        raise ValueError(
            f"anchors [B, d] and keys [N, d] must share d, got {list(anchors.shape)} and {list(keys.shape)}"
        )
    return anchors @ keys.detach().to(anchors.dtype).T  # [B, N]


class _GatheredSimilarity(torch.autograd.Function):
    """``out[b, q] = anchors[b] · keys[index[b, q]]``; backward to the anchors only, without dense ``[B, N]``."""

    @staticmethod
    def forward(ctx, anchors, keys, index, sim):  # type: ignore[override]
        ctx.save_for_backward(keys, index)
        if sim is not None:
            return sim.gather(1, index)  # [B, Q]
        out = anchors.new_empty(index.shape)  # [B, Q]
        rows = max(1, 2**22 // max(1, index.shape[1] * keys.shape[1]))  # ~16 MB of gathered keys at a time
        for start in range(0, index.shape[0], rows):
            picked = keys[index[start : start + rows]].to(anchors.dtype)  # [rows, Q, d]
            out[start : start + rows] = torch.bmm(picked, anchors[start : start + rows, :, None]).squeeze(-1)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        keys, index = ctx.saved_tensors
        # grad_anchors[b] = Σ_q grad[b, q] · keys[index[b, q]]
        grad_anchors = F.embedding_bag(
            index, keys.to(grad.dtype), per_sample_weights=grad.contiguous(), mode="sum"
        )
        return grad_anchors, None, None, None  # [B, d]


def gather_similarity(
    anchors: torch.Tensor, keys: torch.Tensor, index: torch.Tensor, sim: torch.Tensor | None = None
) -> torch.Tensor:
    """Similarities of the picked anchor–key pairs, differentiable w.r.t. the anchors only.

    Equals ``(anchors @ keys.T).gather(1, index)`` with the keys treated as constants, but its backward costs
    ``O(B·Q·d)`` and allocates ``[B, d]`` (``embedding_bag`` with per-sample weights) instead of a dense
    ``[B, N]`` gradient and a ``B·N·d`` matmul. Not twice differentiable.

    Args:
        anchors: ``[B, d]`` embeddings.
        keys: ``[N, d]`` keys; must not be modified in place before ``backward`` (pass a snapshot).
        index: ``[B, Q]`` long key index per anchor.
        sim: Optional detached ``anchors @ keys.T`` ``[B, N]`` that was already computed for mining; the
            forward then just gathers from it. Without it the values are computed in row chunks.

    Returns:
        ``[B, Q]`` similarities.
    """
    if index.dim() != 2 or index.shape[0] != anchors.shape[0]:
        raise ValueError(f"index must have shape [{anchors.shape[0]}, Q], got {list(index.shape)}")
    if sim is not None and sim.shape != (anchors.shape[0], keys.shape[0]):
        raise ValueError(f"sim must have shape [{anchors.shape[0]}, {keys.shape[0]}], got {list(sim.shape)}")
    return _GatheredSimilarity.apply(
        anchors, keys.detach(), index.long(), None if sim is None else sim.detach()
    )


def _check(sim: torch.Tensor, labels: torch.Tensor, filled: torch.Tensor) -> None:
    if sim.dim() != 2:
        raise ValueError(f"sim must have shape [B, N], got {list(sim.shape)}")
    if labels.shape != (sim.shape[0],):
        raise ValueError(f"labels must have shape [{sim.shape[0]}], got {list(labels.shape)}")
    if filled.shape != (sim.shape[1],) or filled.dtype != torch.bool:
        raise ValueError(
            f"filled must be a bool tensor of shape [{sim.shape[1]}], got {filled.dtype} {list(filled.shape)}"
        )


def hard_positives(
    sim: torch.Tensor, labels: torch.Tensor, filled: torch.Tensor, size_per_class: int, num_positives: int
) -> MinedKeys:
    """The Qp least similar filled same-class keys of each anchor.

    Args:
        sim: ``[B, C*K]`` anchor–queue similarities, class-major columns.
        labels: ``[B]`` anchor classes.
        filled: ``[C*K]`` bool, slots holding a real key.
        size_per_class: K, keys per class.
        num_positives: Qp, with ``0 <= Qp <= K``.

    Returns:
        :class:`MinedKeys` of shape ``[B, Qp]``, ordered from least to most similar.
    """
    _check(sim, labels, filled)
    k = size_per_class
    if k < 1 or sim.shape[1] % k != 0:
        raise ValueError(f"size_per_class K={k} must be >= 1 and divide the number of keys {sim.shape[1]}")
    if not 0 <= num_positives <= k:
        raise ValueError(f"num_positives Qp must be in [0, K={k}], got {num_positives}")
    own = labels.long()[:, None] * k + torch.arange(k, device=sim.device)  # [B, K] the anchor's own slots
    own_sim = sim.gather(1, own)  # [B, K]
    own_filled = filled[own]  # [B, K]
    with torch.no_grad():
        score = own_sim.detach().masked_fill(~own_filled, float("inf"))  # [B, K] unfilled ranked last
        pick = torch.topk(score, num_positives, dim=1, largest=False, sorted=True).indices  # [B, Qp]
    valid = own_filled.gather(1, pick)  # [B, Qp]
    values = torch.where(valid, own_sim.gather(1, pick), 0.0)  # [B, Qp]
    return MinedKeys(values, valid, own.gather(1, pick))


def hard_negatives(
    sim: torch.Tensor,
    labels: torch.Tensor,
    key_labels: torch.Tensor,
    filled: torch.Tensor,
    num_negatives: int,
) -> MinedKeys:
    """The Qn most similar filled other-class keys of each anchor.

    Same-class and unfilled columns are set to −inf in one detached copy of ``sim`` before ``topk``; the
    values are then gathered from ``sim`` itself, so autograd stores only ``[B, Qn]`` indices.

    Args:
        sim: ``[B, N]`` anchor–queue similarities.
        labels: ``[B]`` anchor classes.
        key_labels: ``[N]`` class of every key.
        filled: ``[N]`` bool, slots holding a real key.
        num_negatives: Qn, with ``0 <= Qn <= N``.

    Returns:
        :class:`MinedKeys` of shape ``[B, Qn]``, ordered from most to least similar.
    """
    _check(sim, labels, filled)
    if key_labels.shape != (sim.shape[1],):
        raise ValueError(f"key_labels must have shape [{sim.shape[1]}], got {list(key_labels.shape)}")
    if not 0 <= num_negatives <= sim.shape[1]:
        raise ValueError(
            f"num_negatives Qn must be in [0, {sim.shape[1]}] (the number of keys), got {num_negatives}"
        )
    with torch.no_grad():
        excluded = key_labels[None, :] == labels[:, None]  # [B, N] bool: same class
        excluded |= ~filled[None, :]  # [B, N] bool: or not yet written
        score = sim.detach().masked_fill(excluded, float("-inf"))  # [B, N] the one float copy
        del excluded
        top = torch.topk(score, num_negatives, dim=1, largest=True, sorted=False)  # unsorted is faster
        del score
        order = torch.argsort(top.values, dim=1, descending=True)  # [B, Qn] sort only the picks
        pick = top.indices.gather(1, order)  # [B, Qn]
        valid = top.values.gather(1, order) > float("-inf")  # [B, Qn]
        del top
    values = torch.where(valid, sim.gather(1, pick), 0.0)  # [B, Qn]
    return MinedKeys(values, valid, pick)


def mine_hard_pairs(
    sim: torch.Tensor,
    labels: torch.Tensor,
    key_labels: torch.Tensor,
    filled: torch.Tensor,
    size_per_class: int,
    num_positives: int,
    num_negatives: int,
) -> tuple[MinedKeys, MinedKeys]:
    """Hard positives and hard negatives of each anchor from a class-major queue.

    Args:
        sim: ``[B, C*K]`` anchor–queue similarities (see :func:`queue_similarity`).
        labels: ``[B]`` anchor classes.
        key_labels: ``[C*K]`` class of every key (``j // K``).
        filled: ``[C*K]`` bool, slots holding a real key.
        size_per_class: K.
        num_positives: Qp (``<= K``).
        num_negatives: Qn (``<= C*K``; at most ``K·(C−1)`` can ever be valid).

    Returns:
        ``(positives [B, Qp], negatives [B, Qn])`` as :class:`MinedKeys`.
    """
    positives = hard_positives(sim, labels, filled, size_per_class, num_positives)
    negatives = hard_negatives(sim, labels, key_labels, filled, num_negatives)
    return positives, negatives
