"""Losses: hand-computed values (plain python floats), finite-difference gradients, edge cases."""

from __future__ import annotations

import math

import pytest
import torch

from models.losses import LOSSES, bce, emotion_class_weights, lsep, pr_loss

LOGITS = [[1.0, -0.5, 2.0, 0.1], [0.3, 0.2, -1.0, 1.5], [-2.0, 0.7, 0.4, -0.3]]
TARGETS = [[1, 0, 1, 0], [0, 1, 0, 0], [1, 1, 0, 1]]


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _lsep_hand(logits: list[list[float]], targets: list[list[int]]) -> float:
    """The definition term by term: log(1 + sum_{v not in Y} sum_{u in Y} exp(f_v - f_u))."""
    total = 0.0
    for f, y in zip(logits, targets):
        pos = [f[u] for u in range(len(f)) if y[u] == 1]
        neg = [f[v] for v in range(len(f)) if y[v] == 0]
        if pos and neg:
            total += math.log(1.0 + sum(math.exp(fv - fu) for fv in neg for fu in pos))
    return total / len(logits)


def _pr_hand(logits: list[list[float]], targets: list[list[int]], eps: float = 1e-7) -> float:
    tp = fp = fn = 0.0
    for f, y in zip(logits, targets):
        for x, t in zip(f, y):
            p = _sigmoid(x)
            tp += t * p
            fp += (1 - t) * p
            fn += t * (1 - p)
    precision = tp / (tp + fp + eps)
    recall = tp / (tp + fn + eps)
    return 1.0 - precision * recall


def _t(rows, dtype=torch.float64, grad=False) -> torch.Tensor:
    return torch.tensor(rows, dtype=dtype, requires_grad=grad)


def test_losses_registry():
    assert {"bce": bce, "lsep": lsep, "pr": pr_loss} == LOSSES


def test_lsep_equals_hand_computation():
    got = lsep(_t(LOGITS, torch.float32), _t(TARGETS, torch.float32))
    assert got.dim() == 0
    assert got.item() == pytest.approx(_lsep_hand(LOGITS, TARGETS), rel=1e-6)


def test_lsep_single_sample_by_hand():
    # pos {0, 2}, neg {1}: log(1 + e^(-0.5-1) + e^(-0.5-2))
    expected = math.log(1 + math.exp(-1.5) + math.exp(-2.5))
    assert lsep(_t([[1.0, -0.5, 2.0]]), _t([[1, 0, 1]])).item() == pytest.approx(expected, rel=1e-12)


def test_lsep_large_logits_stable():
    logits = [[100.0, -100.0, 50.0], [-80.0, 90.0, 0.0]]
    targets = [[0, 1, 0], [1, 0, 0]]
    got = lsep(_t(logits), _t(targets)).item()
    # log(1 + e^200 + e^150) ~ 200 and log(1 + e^170 + e^80) ~ 170: exp() itself would overflow
    expected = ((200 + math.log1p(math.exp(-50))) + (170 + math.log1p(math.exp(-90)))) / 2
    assert got == pytest.approx(expected, rel=1e-9)


def test_lsep_no_positive_or_no_negative_contributes_zero_with_zero_gradient():
    logits = _t([[0.5, -1.0, 2.0], [1.0, 2.0, 3.0], [-1.0, 0.2, 0.4]], grad=True)
    targets = _t([[1, 0, 0], [0, 0, 0], [1, 1, 1]])
    loss = lsep(logits, targets)
    loss.backward()
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1.5) + math.exp(1.5)) / 3, rel=1e-12)
    assert torch.isfinite(logits.grad).all()
    assert torch.equal(logits.grad[1:], torch.zeros(2, 3, dtype=torch.float64))
    assert logits.grad[0].abs().sum() > 0


def test_lsep_all_degenerate_batch_is_zero():
    logits = _t([[0.5, -1.0], [1.0, 2.0]], grad=True)
    loss = lsep(logits, _t([[0, 0], [1, 1]]))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(logits.grad, torch.zeros(2, 2, dtype=torch.float64))


def test_lsep_gradcheck():
    targets = _t(TARGETS + [[0, 0, 0, 0], [1, 1, 1, 1]])
    logits = _t(LOGITS + [[0.1, 0.2, 0.3, 0.4], [-0.4, 0.3, 0.2, 0.1]], grad=True)
    assert torch.autograd.gradcheck(lambda x: lsep(x, targets), (logits,), eps=1e-6, atol=1e-6)


def test_pr_loss_equals_hand_computation():
    got = pr_loss(_t(LOGITS, torch.float32), _t(TARGETS, torch.float32))
    assert got.dim() == 0
    assert got.item() == pytest.approx(_pr_hand(LOGITS, TARGETS), rel=1e-6)


def test_pr_loss_counts_are_pooled_over_the_batch():
    # pooled soft counts differ from the mean of per-sample 1 - P*R: the seed sums over the batch
    logits, targets = [[2.0, -1.0], [0.5, 0.0]], [[1, 0], [0, 1]]
    per_sample = sum(_pr_hand([f], [y]) for f, y in zip(logits, targets)) / 2
    pooled = _pr_hand(logits, targets)
    assert pooled != pytest.approx(per_sample, rel=1e-3)
    assert pr_loss(_t(logits), _t(targets)).item() == pytest.approx(pooled, rel=1e-12)


def test_pr_loss_gradcheck():
    targets = _t(TARGETS)
    logits = _t(LOGITS, grad=True)
    assert torch.autograd.gradcheck(lambda x: pr_loss(x, targets), (logits,), eps=1e-6, atol=1e-6)


def test_pr_loss_all_zero_targets_finite():
    logits = _t([[0.3, -2.0, 5.0], [1.0, 0.0, -1.0]], grad=True)
    loss = pr_loss(logits, torch.zeros(2, 3, dtype=torch.float64))
    loss.backward()
    assert loss.item() == pytest.approx(1.0)
    assert torch.isfinite(logits.grad).all()
    assert torch.equal(logits.grad, torch.zeros(2, 3, dtype=torch.float64))


def test_pr_loss_perfect_prediction_near_zero():
    targets = _t([[1, 0], [0, 1]])
    assert pr_loss(_t([[30.0, -30.0], [-30.0, 30.0]]), targets).item() == pytest.approx(0.0, abs=1e-6)


def test_bce_by_hand_and_pos_weight():
    logits, targets = [[0.5, -1.0], [2.0, 0.0]], [[1, 0], [0, 1]]
    terms = []
    for f, y in zip(logits, targets):
        for x, t in zip(f, y):
            p = _sigmoid(x)
            terms.append(-t * math.log(p) - (1 - t) * math.log(1 - p))
    assert bce(_t(logits), _t(targets)).item() == pytest.approx(sum(terms) / 4, rel=1e-12)

    w = [3.0, 0.5]
    weighted = []
    for f, y in zip(logits, targets):
        for k, (x, t) in enumerate(zip(f, y)):
            p = _sigmoid(x)
            weighted.append(-w[k] * t * math.log(p) - (1 - t) * math.log(1 - p))
    got = bce(_t(logits), _t(targets), pos_weight=torch.tensor(w))
    assert got.item() == pytest.approx(sum(weighted) / 4, rel=1e-6)


def test_bce_masks_unknown_labels():
    """NaN targets (a pseudo-labeled face's AUs between the thresholds) add nothing: the loss is the
    mean over the known labels, and the masked logits get no gradient."""
    logits = _t([[0.5, -1.0, 3.0], [2.0, 0.0, -4.0]]).requires_grad_()
    targets = _t([[1, float("nan"), 0], [float("nan"), 1, float("nan")]])
    known = [(0, 0), (0, 2), (1, 1)]
    w = torch.tensor([2.0, 3.0, 0.5])
    loss = bce(logits, targets, pos_weight=w)
    by_hand = torch.stack(
        [
            bce(logits[i : i + 1, k : k + 1], targets[i : i + 1, k : k + 1], pos_weight=w[k : k + 1])
            for i, k in known
        ]
    ).mean()
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-9)
    loss.backward()
    assert logits.grad[0, 1] == 0 and logits.grad[1, 0] == 0 and logits.grad[1, 2] == 0
    assert all(logits.grad[i, k] != 0 for i, k in known)
    assert torch.isfinite(bce(_t([[1.0]]), _t([[float("nan")]])))  # nothing known: 0, not NaN


@pytest.mark.parametrize("name", ["bce", "lsep", "pr"])
def test_half_precision_logits_give_float32_loss(name):
    logits = torch.tensor(LOGITS, dtype=torch.bfloat16)
    loss = LOSSES[name](logits, torch.tensor(TARGETS))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


def test_bad_shapes_rejected():
    with pytest.raises(ValueError):
        lsep(torch.zeros(2, 3), torch.zeros(2, 4))


def test_emotion_class_weights_seed_004_rule():
    # N_mean = 25: w = 0.4, 1.2, 0.8, 1.6 -> 1/(0.4 mu), 1, 1/(0.8 mu), 1
    got = emotion_class_weights([10, 30, 20, 40])
    assert got.dtype == torch.float32
    assert got.tolist() == pytest.approx([2.5, 1.0, 1.25, 1.0])
    assert emotion_class_weights([10, 30, 20, 40], mu=2.0).tolist() == pytest.approx([1.25, 1.0, 0.625, 1.0])
    assert emotion_class_weights([5, 5, 5]).tolist() == [1.0, 1.0, 1.0]
    assert emotion_class_weights([0, 10]).tolist() == [1.0, 1.0]  # empty class: weight 1, not inf
    with pytest.raises(ValueError):
        emotion_class_weights([1, 2], mu=0)
