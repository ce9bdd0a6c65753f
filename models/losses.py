"""Losses for the multi-label AU head (BCE, LSEP, precision-recall) and seed 004's class weights.

Every loss takes logits (before the sigmoid) and targets in {0, 1} of shape (N, K) and returns a
scalar: the mean over the batch. Half-precision logits (autocast) are computed in float32, since
the pairwise exponentials and the soft-count ratios lose too much in float16.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def _as_float(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Promote half/bfloat16 to float32 (float64 stays float64, for gradcheck)."""
    x = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    if x.dim() != 2 or targets.shape != x.shape:
        raise ValueError(
            f"expected (N, K) logits and targets, got {tuple(x.shape)} and {tuple(targets.shape)}"
        )
    return x, targets.to(device=x.device, dtype=x.dtype)


def positive_weight(targets: np.ndarray) -> np.ndarray:
    """Per label, negatives / positives among the known (non-NaN) targets: `bce`'s `pos_weight`
    against AU imbalance (a label with no positive counts one)."""
    pos = np.nansum(targets, 0)
    known = (~np.isnan(targets)).sum(0)
    return (known - pos) / np.maximum(pos, 1)


def bce(logits: Tensor, targets: Tensor, pos_weight: Tensor | None = None) -> Tensor:
    """Binary cross-entropy `-y log p - (1-y) log(1-p)` with p = sigmoid(logits).

    Averaged over labels and samples (Keras' binary_crossentropy, as the seeds used). `pos_weight`
    (K,) multiplies the positive term per label, e.g. n_neg / n_pos against AU imbalance. A NaN
    target is an unknown label (a pseudo-labeled face whose AU fell between the thresholds): it
    adds nothing to the loss or its gradient, and the mean is over the known labels."""
    x, y = _as_float(logits, targets)
    if pos_weight is not None:
        pos_weight = pos_weight.to(device=x.device, dtype=x.dtype)
    known = ~torch.isnan(y)
    if bool(known.all()):
        return F.binary_cross_entropy_with_logits(x, y, pos_weight=pos_weight, reduction="mean")
    each = F.binary_cross_entropy_with_logits(
        x, torch.where(known, y, torch.zeros_like(y)), pos_weight=pos_weight, reduction="none"
    )
    return (each * known).sum() / known.sum().clamp_min(1)


def lsep(logits: Tensor, targets: Tensor) -> Tensor:
    """Log-Sum-Exp Pairwise loss (Li et al., CVPR 2017; seeds 000/001/002, eq. 1), batch mean of

        l_i = log(1 + sum_{v not in Y_i} sum_{u in Y_i} exp(f_v(x_i) - f_u(x_i)))

    The double sum factorises: sum_v sum_u exp(f_v - f_u) = exp(LSE_{v not in Y} f_v + LSE_{u in Y} -f_u),
    so l_i = softplus(LSE_neg(f) + LSE_pos(-f)): O(K) instead of O(K^2) and stable for any logit size.

    A sample with no positive or no negative label has an empty sum: it contributes 0 (and counts in
    the batch mean). Its rows are replaced by zeros *before* the logsumexp, because logsumexp over
    all -inf gives -inf forward but NaN backward (exp(-inf - -inf)), which `where` cannot mask.
    """
    x, y = _as_float(logits, targets)
    pos = y > 0.5
    neg = ~pos
    valid = (pos.any(dim=1) & neg.any(dim=1)).unsqueeze(1)
    neg_scores = torch.where(valid, x.masked_fill(pos, float("-inf")), torch.zeros_like(x))
    pos_scores = torch.where(valid, (-x).masked_fill(neg, float("-inf")), torch.zeros_like(x))
    s = torch.logsumexp(neg_scores, dim=1) + torch.logsumexp(pos_scores, dim=1)
    per_sample = torch.where(valid.squeeze(1), F.softplus(s), torch.zeros_like(s))
    return per_sample.mean()


def pr_loss(logits: Tensor, targets: Tensor, eps: float = 1e-7) -> Tensor:
    """Precision-recall loss of seed 000/001 (eq. 6): `L_pr = 1 - Precision * Recall`.

    Soft counts from p = sigmoid(logits), **pooled over the whole batch and all labels**, as the
    seed writes them: "TP, FP and FN is calculated as follows: TP = sum y p, FP = sum (1 - y) p,
    FN = sum y (1 - p), where y is the truth label; p is predicted value probability after sigmoid
    functions activation" -- plain sums with no per-label index, giving one Precision = TP/(TP+FP)
    and one Recall = TP/(TP+FN) per batch (a micro-averaged, smoothed P*R). The loss is therefore a
    batch statistic; it is the "mean over the batch" in the sense that it is normalised by batch
    counts, not a sum of per-sample terms.

    `eps` guards the ratios: all-zero targets give TP = FN = 0, so Recall = 0, the loss is 1 and its
    gradient is exactly 0 (finite); TP + FP = sum p > 0 always.
    """
    x, y = _as_float(logits, targets)
    p = torch.sigmoid(x)
    tp = (p * y).sum()
    fp = (p * (1 - y)).sum()
    fn = ((1 - p) * y).sum()
    precision = tp / (tp + fp + eps)
    recall = tp / (tp + fn + eps)
    return 1 - precision * recall


Criterion = Callable[[Tensor, Tensor], Tensor]  # a training loss: (logits, targets) -> scalar

LOSSES: dict[str, Criterion] = {"bce": bce, "lsep": lsep, "pr": pr_loss}


def emotion_class_weights(counts: Sequence[int], mu: float = 1.0) -> Tensor:
    """Seed 004's class-imbalance weights (eq. 1): w_i = N_i / N_mean; the loss weight of class i is
    1 / (w_i * mu) where w_i < 1, else 1 (rare classes up-weighted, frequent ones left at 1).

    A class with no samples gets weight 1 (it has no loss terms to weight; 1/0 would be inf).
    Returns a float32 (C,) tensor for `torch.nn.CrossEntropyLoss(weight=...)`."""
    if mu <= 0:
        raise ValueError(f"mu must be > 0, got {mu}")
    n = torch.as_tensor(list(counts), dtype=torch.float64)
    if n.numel() == 0:
        return torch.zeros(0, dtype=torch.float32)
    if (n < 0).any():
        raise ValueError("counts must be >= 0")
    n_mean = n.mean()
    if n_mean <= 0:
        return torch.ones(n.numel(), dtype=torch.float32)
    w = n / n_mean
    weights = torch.where((w < 1) & (w > 0), 1.0 / (w.clamp_min(1e-12) * mu), torch.ones_like(w))
    return weights.to(torch.float32)
