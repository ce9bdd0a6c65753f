"""Training data: subject-exclusive folds, validation splits, batch augmentation, the crop cache."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from models.data import (
    Augment,
    Faces,
    decode_crops,
    group_kfold,
    iterate_batches,
    same_label_partner,
    validation_split,
)


def test_group_kfold_tests_every_group_once_and_never_trains_on_it():
    groups = np.array([f"s{i % 7}" for i in range(200)] + ["big"] * 60)
    folds = group_kfold(groups, k=3)
    tested = np.concatenate([test for _, test in folds])
    assert sorted(tested) == list(range(len(groups)))
    for train, test in folds:
        assert not set(groups[train]) & set(groups[test])
    sizes = [len(test) for _, test in folds]
    assert max(sizes) - min(sizes) <= 60  # balanced by samples, largest group first
    # deterministic, and independent of row order
    shuffled = np.random.default_rng(0).permutation(len(groups))
    again = group_kfold(groups[shuffled], k=3)
    assert [sorted(set(groups[shuffled][t])) for _, t in again] == [sorted(set(groups[t])) for _, t in folds]
    with pytest.raises(ValueError, match="at least 3 groups"):
        group_kfold(np.array(["a", "b", "a"]), k=3)


def test_validation_split_holds_out_people_when_it_can():
    groups = np.array([f"s{i % 5}" for i in range(100)])
    train, val, how = validation_split(groups, np.arange(100))
    assert not set(groups[train]) & set(groups[val]) and "held-out groups" in how
    two = np.array(["a", "b"] * 50)
    train, val, how = validation_split(two, np.arange(100))
    assert len(val) > 0 and len(train) + len(val) == 100 and "only 2 training groups" in how


def test_augment_keeps_shape_and_labels_and_joins_only_twins():
    gen = torch.Generator().manual_seed(0)
    y = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    partner = same_label_partner(y, gen)
    assert partner.tolist() == [1, 0, 2, 3]  # twins swap; samples without a twin keep themselves
    x = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1).expand(4, 3, 8, 8).clone()
    joined = Augment(flip=0.0, zoom_out=0.0, half_join=1.0)(x.clone(), y, gen)
    assert joined[0, 0, 0, :4].eq(0).all() and joined[0, 0, 0, 4:].eq(1).all()  # left of 0, right of its twin
    assert torch.equal(joined[2], x[2])
    flipped = Augment(flip=1.0, zoom_out=0.0, half_join=0.0)(
        x[:, :, :, :].clone() + torch.arange(8.0), y, gen
    )
    assert flipped[0, 0, 0, 0] == 7 and flipped[0, 0, 0, 7] == 0
    zoomed = Augment(flip=0.0, zoom_out=1.0, min_scale=0.5, half_join=0.0)(torch.rand(4, 3, 16, 16), y, gen)
    assert zoomed.shape == (4, 3, 16, 16) and torch.isfinite(zoomed).all()


def test_degrade_makes_gray_low_resolution_faces_and_is_off_by_default():
    y = torch.zeros(64, 2)
    x = torch.rand(64, 3, 32, 32)
    plain = Augment()(x.clone(), y, torch.Generator().manual_seed(1))
    off = Augment(degrade=0.0)(x.clone(), y, torch.Generator().manual_seed(1))
    assert torch.equal(plain, off)  # the default draws no extra random numbers
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    norm = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    quiet = dict(flip=0.0, zoom_out=0.0, half_join=0.0, brightness=0.0, contrast=0.0)
    out = Augment(degrade=1.0, mean=mean, std=std, degrade_px=(8, 8), **quiet)(
        norm.clone(), y, torch.Generator().manual_seed(0)
    )
    px = out * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)
    assert out.shape == x.shape and torch.isfinite(out).all() and px.min() >= -1e-5 and px.max() <= 1 + 1e-5
    gray = (px[:, 0] - px[:, 1]).abs().amax((1, 2)) < 1e-5
    blurred = (px[:, :, 1:] - px[:, :, :-1]).abs().mean((1, 2, 3)) < 0.5 * (
        x[:, :, 1:] - x[:, :, :-1]
    ).abs().mean()
    assert 16 < gray.sum() < 48 and 32 < blurred.sum() < 64  # half gray, three quarters at 8 px
    untouched = Augment(degrade=0.5, **quiet)(x.clone(), y, torch.Generator().manual_seed(0))
    same = (untouched == x).flatten(1).all(1)
    assert 16 < same.sum() < 48  # about half the batch degraded


def test_crops_decode_once_into_a_reusable_memmap(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(5):
        cv2.imwrite(str(tmp_path / f"c{i}.png"), rng.integers(0, 255, (224, 224, 3), dtype=np.uint8))
        paths.append(f"c{i}.png")
    ids = [f"id{i}" for i in range(5)]
    first = decode_crops(tmp_path, paths, ids, 64, 3, cache_dir=tmp_path / "cache")
    assert isinstance(first, np.memmap) and first.shape == (5, 3, 64, 64)
    (tmp_path / "c0.png").unlink()  # a second load reads the cache, not the files
    again = decode_crops(tmp_path, paths, ids, 64, 3, cache_dir=tmp_path / "cache")
    assert np.array_equal(first, again)
    with pytest.raises(OSError, match="cannot read crop"):
        decode_crops(tmp_path, paths, ids, 32, 3)  # another size is decoded anew: the file is gone
    faces = Faces(
        "au", ["AU1"], again, np.zeros((5, 1), np.float32), np.array(["a"] * 5), np.array(["train"] * 5), ids
    )
    batches = list(iterate_batches(faces, np.arange(5), 2, torch.device("cpu"), shuffle=True))
    assert [len(x) for x, _ in batches] == [2, 2, 1] and batches[0][0].dtype == torch.uint8
