"""The ResCom training criterion: Siamese Balanced Softmax + λ · class-balanced SupCon with queue mining.

    L = L_SBS + λ · L_CB-SCL

* L_SBS: Balanced Softmax ``CE(s + log π, y)`` on both views (π = n / N, the training class prior).
* L_CB-SCL: class-balanced SupCon (weights w from the effective number with β) over the whole Siamese batch
  plus, for each anchor, its Qp hardest positives and Qn hardest negatives mined from a class-balanced queue
  of K keys per class; temperature τ.
* After the loss is built, the view-1 embeddings (detached) are written to the queue (all ranks' embeddings
  when distributed).

Cost: the queue similarities ``[2b, C*K]`` are computed once, without gradient, and mined in place
(:func:`rescom.mining.mine_class_major`, exact two-stage top-k at large C, row chunks of 16 MB); the gradient
reaches z only through the ``2b·(Qp+Qn)`` picked pairs. λ is the plain attribute ``con_weight`` (a schedule
may set it between steps).

Paper: Zhong et al., "Rebalanced Siamese Contrastive Mining for Long-Tailed Recognition", arXiv 2203.11506.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from rescom.losses._registry import register_loss
from rescom.losses.logit_adjusted import (
    ClassCounts,
    as_class_counts,
    balanced_softmax_loss,
    effective_number_weights,
    log_prior,
)
from rescom.losses.supcon import class_balanced_supcon
from rescom.mining import attach_gradient, mine_class_major, queue_similarity
from rescom.queue import ClassBalancedQueue
from rescom.threads import run_on_threads

__all__ = ["SINGLE_THREAD_MAX_WORK", "ResComLoss"]

SINGLE_THREAD_MAX_WORK = 2**22
MINING_CHUNK_ELEMENTS = 2**22  # [rows, C*K] float similarities mined at a time (16 MB in float32)


@register_loss("rescom")
class ResComLoss(nn.Module):
    """ResCom criterion ``L = L_SBS + λ·L_CB-SCL``, holding the class-balanced queue.

    Buffers (all in ``state_dict``): ``log_prior`` ``[C]`` (log π), ``class_weight`` ``[C]`` (w) and the queue's
    ``queue.keys`` ``[C, K, d]``, ``queue.ptr`` ``[C]``, ``queue.filled`` ``[C, K]``.

    The queue is updated only in training mode (``criterion.train()``); in eval mode ``forward`` just
    computes the loss. When distributed, every rank must call ``forward`` in the same mode at each step,
    because the queue update all-gathers.

    Args:
        class_counts: Training counts n_c ``[C]``; every class needs at least one sample.
        dim: Embedding dimension d of ``outputs["embedding"]``.
        queue_size: K, keys per class (recipe: 10).
        num_positives: Qp, hard queue positives per anchor, ``1 <= Qp <= K`` (recipe: 1). 0 disables them.
        num_negatives: Qn, hard queue negatives per anchor, ``Qn <= K·(C−1)`` (recipe: 400). 0 disables them.
        temperature: τ of the contrastive loss (recipe: 0.2).
        con_weight: λ, weight of L_CB-SCL (recipe: 0.5).
        beta: β of the effective number ``E_c = (1 − β^{n_c})/(1 − β)``, ``0 <= β < 1`` (recipe: 0.999999;
            0 gives unweighted SupCon).
    """

    log_prior: torch.Tensor
    class_weight: torch.Tensor

    def __init__(
        self,
        class_counts: ClassCounts,
        dim: int,
        queue_size: int = 10,
        num_positives: int = 1,
        num_negatives: int = 400,
        temperature: float = 0.2,
        con_weight: float = 0.5,
        beta: float = 0.999999,
    ) -> None:
        super().__init__()
        counts = as_class_counts(class_counts, allow_zero=False)
        num_classes = counts.numel()
        if num_classes < 2:
            raise ValueError(f"ResCom needs at least 2 classes, got {num_classes}")
        for name, value in (("dim", dim), ("queue_size", queue_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        max_neg = queue_size * (num_classes - 1)
        if (
            isinstance(num_positives, bool)
            or not isinstance(num_positives, int)
            or not 0 <= num_positives <= queue_size
        ):
            raise ValueError(
                f"num_positives Qp must be an int in [0, queue_size K={queue_size}], got {num_positives!r}"
            )
        if (
            isinstance(num_negatives, bool)
            or not isinstance(num_negatives, int)
            or not 0 <= num_negatives <= max_neg
        ):
            raise ValueError(
                f"num_negatives Qn must be an int in [0, K·(C−1) = {queue_size}·{num_classes - 1} = {max_neg}], "
                f"got {num_negatives!r}; lower Qn or raise queue_size K"
            )
        if not isinstance(temperature, int | float) or not temperature > 0:
            raise ValueError(f"temperature τ must be a number > 0, got {temperature!r}")
        if not isinstance(con_weight, int | float) or not con_weight >= 0:
            raise ValueError(f"con_weight λ must be a number >= 0, got {con_weight!r}")
        self.num_classes = num_classes
        self.dim = dim
        self.queue_size = queue_size
        self.num_positives = num_positives
        self.num_negatives = num_negatives
        self.temperature = float(temperature)
        self.con_weight = float(con_weight)
        self.beta = float(beta)
        self.register_buffer("log_prior", log_prior(counts))  # [C] log π
        self.register_buffer("class_weight", effective_number_weights(counts, beta))  # [C] w
        self.queue = ClassBalancedQueue(num_classes, dim, queue_size)
        # Up to this many elements of the [2b, C*K] similarity matrix, the loss (forward and backward) runs on
        # one CPU thread. Measured at the CIFAR-100 shape (256 x 1000) on the 2-core machine under load: 2
        # threads cost 382 ms of CPU per loss step before this path, one thread 16-31 ms. The iNaturalist shape
        # (16.7M, a 2 GFLOP matmul) keeps the process's threads.
        self.single_thread_max_work = SINGLE_THREAD_MAX_WORK

    def extra_repr(self) -> str:
        """The hyper-parameters in the module's repr: K, Qp, Qn, τ, λ and β."""
        return (
            f"num_classes={self.num_classes}, dim={self.dim}, K={self.queue_size}, Qp={self.num_positives}, "
            f"Qn={self.num_negatives}, tau={self.temperature}, lambda={self.con_weight}, beta={self.beta}"
        )

    def forward(self, outputs: Mapping[str, torch.Tensor], labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Compute the ResCom loss for a Siamese batch and (in training mode) update the queue.

        Args:
            outputs: ``"logits"`` ``[2b, C]`` and ``"embedding"`` ``[2b, d]`` (L2-normalised); rows are view 1
                then view 2.
            labels: ``[2b]`` classes, ``cat(y, y)``.

        Returns:
            ``dict(loss=L, loss_cls=L_SBS, loss_con=L_CB-SCL)`` of scalar tensors.
        """
        if not isinstance(outputs, Mapping) or "logits" not in outputs or "embedding" not in outputs:
            raise ValueError("outputs must be a mapping with 'logits' [2b, C] and 'embedding' [2b, d]")
        logits, z = outputs["logits"], outputs["embedding"]
        m = labels.shape[0] if labels.dim() == 1 else -1
        if m < 2 or m % 2:
            raise ValueError(f"labels must have shape [2b] (two views, b >= 1), got {list(labels.shape)}")
        if logits.shape != (m, self.num_classes):
            raise ValueError(
                f"outputs['logits'] must have shape [{m}, {self.num_classes}], got {list(logits.shape)}"
            )
        if z.shape != (m, self.dim):
            raise ValueError(f"outputs['embedding'] must have shape [{m}, {self.dim}], got {list(z.shape)}")

        keys = self.queue.keys_flat()  # [C*K, d]
        if self.training:  # backward keeps the keys, and enqueue() below overwrites the buffer in place
            keys = keys.clone()
        filled = self.queue.unfilled_mask_needed()  # [C*K] bool, or None when every slot holds a key

        def terms(logits: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            loss_cls = balanced_softmax_loss(logits, labels, self.log_prior)  # L_SBS over both views
            return loss_cls, self._contrastive(z, labels, keys, filled)

        threads = self._loss_threads(m, logits.device)
        if threads is None:
            loss_cls, loss_con = terms(logits, z)
        else:
            loss_cls, loss_con = run_on_threads(terms, threads, logits, z)
        loss = loss_cls + self.con_weight * loss_con
        if self.training:
            b = m // 2
            self.queue.enqueue(z[:b].detach(), labels[:b])  # view 1 only, after the loss is built
        return {"loss": loss, "loss_cls": loss_cls, "loss_con": loss_con}

    def _contrastive(
        self, z: torch.Tensor, labels: torch.Tensor, keys: torch.Tensor, filled: torch.Tensor | None
    ) -> torch.Tensor:
        """L_CB-SCL over the batch plus each anchor's Qp hard positives and Qn hard negatives from the queue."""
        with torch.no_grad():  # mining only selects; the gradient is attached to the picks below
            index, valid, values = self._mine(z.detach(), labels, keys, filled)  # [2b, Qp+Qn] each
        picked = attach_gradient(z, keys, index, values)  # [2b, Qp+Qn], one backward for both kinds
        qp = self.num_positives
        pos_valid, neg_valid = valid[:, :qp], valid[:, qp:]
        return class_balanced_supcon(
            z,
            labels,
            self.temperature,
            self.class_weight,
            picked[:, :qp],
            pos_valid,
            picked[:, qp:],
            neg_valid,
        )

    def _mine(
        self, z: torch.Tensor, labels: torch.Tensor, keys: torch.Tensor, filled: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Flat slots, validity and similarities of each anchor's Qp hard positives then Qn hard negatives.

        Runs in row chunks of at most ``MINING_CHUNK_ELEMENTS`` similarities (rows are independent), so the
        ``[rows, C*K]`` scratch stays small at large C; a small problem is one chunk.
        """
        rows = max(1, MINING_CHUNK_ELEMENTS // keys.shape[0])
        parts = []
        for start in range(0, z.shape[0], rows):
            sim = queue_similarity(z[start : start + rows], keys)  # [rows, C*K], overwritten by the mining
            pos, neg = mine_class_major(
                sim,
                labels[start : start + rows],
                filled,
                self.queue_size,
                self.num_positives,
                self.num_negatives,
            )  # [rows, Qp], [rows, Qn]
            parts.append([torch.cat([p, n], dim=1) for p, n in zip(pos, neg, strict=True)])
        if len(parts) == 1:
            values, valid, index = parts[0]
        else:
            values, valid, index = (torch.cat(column) for column in zip(*parts, strict=True))
        return index, valid, values

    def _loss_threads(self, rows: int, device: torch.device) -> int | None:
        """One CPU thread for a small problem (see :mod:`rescom.threads`), ``None`` to use the current count."""
        if device.type != "cpu" or torch.get_num_threads() == 1:
            return None
        work = rows * self.num_classes * self.queue_size  # elements of the [2b, C*K] similarity matrix
        return 1 if work <= self.single_thread_max_work else None
