"""The review queue's measures: k-NN uniqueness against brute force; FiftyOne Brain's uniqueness
and mistakenness on our own embeddings and probabilities, with FiftyOne's real database."""

from __future__ import annotations

import numpy as np
import pytest

from labeling.curation.review import brain_scores, knn_uniqueness


def test_knn_uniqueness_matches_brute_force():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(1300, 16))  # more than one 1024-row block
    z[5] = np.nan  # an unreadable crop
    got = knn_uniqueness(z, k=3)
    ok = np.flatnonzero(~np.isnan(z).any(1))
    zn = z[ok] / np.linalg.norm(z[ok], axis=1, keepdims=True)
    d = 1 - zn @ zn.T
    np.fill_diagonal(d, np.inf)
    assert np.isnan(got[5])
    assert np.allclose(got[ok], np.sort(d, axis=1)[:, 2])


def _clusters(rng) -> np.ndarray:
    z = np.concatenate([rng.normal(c, 0.05, size=(20, 8)) for c in (-1.0, 1.0)])
    z[7] = rng.normal(0, 1, 8) * 5  # one face unlike the others
    return z


@pytest.mark.server  # FiftyOne's database (mongod)
def test_brain_finds_the_outlier_and_the_confidently_wrong_label(tmp_path):
    rng = np.random.default_rng(1)
    z = _clusters(rng)
    labels = ["happy", "sad"]
    truth = np.array([0] * 20 + [1] * 20)
    prob = np.where(truth[:, None] == np.arange(2), 0.8, 0.2)
    prob[12] = [0.02, 0.98]  # labeled happy, the model is sure it is sad
    truth[30] = -1  # no label
    paths = [str(tmp_path / f"{i}.png") for i in range(len(z))]
    uniqueness, mistakenness = brain_scores(paths, z, prob, labels, truth)
    assert int(np.argmax(uniqueness)) == 7 and int(np.argmax(knn_uniqueness(z))) == 7
    assert int(np.nanargmax(mistakenness)) == 12 and np.isnan(mistakenness[30])
    only_unique, none = brain_scores(paths, z)
    assert none is None and int(np.argmax(only_unique)) == 7
