"""Neighbours without all pairs: k-NN uniqueness through faiss (exact below a size, IVF above),
near-duplicate hashes through multi-index hashing (exactly the pairs brute force finds), and the
embedding pass through ONNX Runtime (the same numbers as torch)."""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import pytest

import labeling.curation.review as review
import warehouse.hamming as hamming
import warehouse.sources.scraped as scraped
from labeling.curation.review import knn_uniqueness
from warehouse.hamming import HammingIndex, hamming_pairs
from warehouse.store import Warehouse


# ---- k-NN uniqueness --------------------------------------------------------------------------
def _brute_uniqueness(z: np.ndarray, k: int) -> np.ndarray:
    out = np.full(len(z), np.nan)
    ok = np.flatnonzero(~np.isnan(z).any(1))
    zn = z[ok] / np.maximum(np.linalg.norm(z[ok], axis=1, keepdims=True), 1e-12)
    d = 1 - zn @ zn.T
    np.fill_diagonal(d, np.inf)
    out[ok] = np.sort(d, axis=1)[:, min(k, len(ok) - 1) - 1]
    return out


def _clusters(rng, n: int, dim: int = 16) -> np.ndarray:
    centres = rng.normal(size=(max(4, n // 100), dim))
    return centres[rng.integers(0, len(centres), n)] + rng.normal(scale=0.3, size=(n, dim))


@pytest.mark.parametrize("exact_up_to", [review.EXACT_UP_TO, 0])  # flat; IVF probing every cell
def test_knn_uniqueness_leaves_out_its_own_match_among_duplicates(exact_up_to, monkeypatch):
    monkeypatch.setattr(review, "EXACT_UP_TO", exact_up_to)
    rng = np.random.default_rng(0)
    z = rng.normal(size=(200, 8))
    z[10:16] = z[9]  # seven copies: more than k + 1, so another copy can come before its own row
    z[20] = z[21]
    z[30] = np.nan
    z[40] = 0.0  # a zero vector: distance 1 to every face, as before
    for k in (1, 3, 8):
        got = knn_uniqueness(z, k)
        assert np.isnan(got[30]) and np.allclose(got, _brute_uniqueness(z, k), atol=1e-12, equal_nan=True)
    assert np.allclose(knn_uniqueness(z, 3)[9:16], 0.0, atol=1e-12)
    assert knn_uniqueness(z, 8)[20] > 0  # its one copy is its first neighbour, not its 8th


def test_knn_uniqueness_caps_k_and_needs_two_rows():
    z = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [np.nan, 1.0]])
    assert np.allclose(knn_uniqueness(z, k=10)[:3], [2.0, 1.0, 2.0]) and np.isnan(knn_uniqueness(z)[3])
    assert np.isnan(knn_uniqueness(z[2:], k=3)).all()  # one readable row: no neighbour
    assert knn_uniqueness(np.empty((0, 4))).shape == (0,)


def test_knn_uniqueness_ivf_finds_the_neighbours_of_clustered_faces(monkeypatch):
    rng = np.random.default_rng(1)
    z = _clusters(rng, 3000)
    z[7] = np.nan
    exact = knn_uniqueness(z)
    monkeypatch.setattr(review, "EXACT_UP_TO", 0)  # the IVF index on a small set
    approx = knn_uniqueness(z)
    assert np.isnan(approx[7]) and np.array_equal(approx, knn_uniqueness(z), equal_nan=True)  # same each run
    ok = ~np.isnan(exact)
    assert (approx[ok] >= exact[ok] - 1e-9).all()  # a missed neighbour only makes a face look farther
    assert np.mean(np.isclose(approx[ok], exact[ok])) > 0.99


def test_knn_uniqueness_searches_every_cell_where_the_probed_ones_are_short(monkeypatch):
    rng = np.random.default_rng(2)
    z = _clusters(rng, 1500)
    z[-3:] = rng.normal(size=(3, 16)) * 0.01 + 40 * rng.normal(size=16)  # three faces of their own
    monkeypatch.setattr(review, "EXACT_UP_TO", 0)
    monkeypatch.setattr(review, "IVF_PROBES", 1)
    k = 6  # more than their own cell holds
    assert np.allclose(knn_uniqueness(z, k)[-3:], _brute_uniqueness(z, k)[-3:], atol=1e-9)


# ---- near-duplicate hashes ----------------------------------------------------------------
def _flip(rng, h: int, bits: int) -> int:
    return h ^ sum(1 << int(b) for b in rng.choice(64, bits, replace=False))


def _planted(rng, n: int, max_bits: int, of: np.ndarray | None = None) -> np.ndarray:
    """n random hashes, the last 60 copies of 20 hashes of `of` (default: the first 60 of these)
    at 0, max_bits and max_bits + 1 bits."""
    h = rng.integers(0, 2**64, n, dtype=np.uint64, endpoint=False)
    src = h if of is None else of
    for k, bits in enumerate((0, max_bits, max_bits + 1)):
        h[n - 60 + 20 * k : n - 40 + 20 * k] = [_flip(rng, int(x), bits) for x in src[20 * k : 20 * k + 20]]
    return h


def _brute(a: np.ndarray, b: np.ndarray, max_bits: int, upper: bool) -> set[tuple[int, int, int]]:
    d = np.bitwise_count(a[:, None] ^ b[None, :])
    i, j = np.nonzero(d <= max_bits)
    return {(x, y, int(d[x, y])) for x, y in zip(i.tolist(), j.tolist()) if not upper or y < x}


@pytest.mark.parametrize("max_bits", [0, 1, 3, 6, 10])
def test_indexed_hamming_pairs_equal_brute_force(max_bits, monkeypatch):
    rng = np.random.default_rng(max_bits)
    a = _planted(rng, 3000, max_bits)
    b = _planted(rng, 1000, max_bits, of=a)
    assert HammingIndex(a, max_bits).chunks is not None  # the index, not a scan
    for blocks in ((1 << 22, 1 << 16), (50, 97)):  # one piece; many small pieces and query blocks
        monkeypatch.setattr(hamming, "_PAIR_BLOCK", blocks[0])
        monkeypatch.setattr(hamming, "_QUERY_BLOCK", blocks[1])
        for other, upper in ((a, True), (b, False)):
            i, j, d = hamming_pairs(a, other, max_bits, upper=upper)
            got = list(zip(i.tolist(), j.tolist(), d.tolist()))
            expected = _brute(a, other, max_bits, upper)
            assert set(got) == expected and len(got) == len(expected)  # each pair once
            assert got == sorted(got)
            # the planted pairs at 0 and max_bits are in, those at max_bits + 1 out
            m = len(other) - 60
            pairs = {(x, y) if upper else (y, x) for x, y, _ in expected}
            assert all((m + k, k) in pairs for k in range(40))
            assert not any((m + k, k) in pairs for k in range(40, 60))


def test_hamming_index_with_a_crowded_bucket_and_tiny_inputs(monkeypatch):
    rng = np.random.default_rng(5)
    a = rng.integers(0, 2**64, 2000, dtype=np.uint64, endpoint=False)
    a[500:900] = a[0]  # 401 copies: one key holds them all
    a[900:1000] = [_flip(rng, int(a[0]), 2) for _ in range(100)]
    monkeypatch.setattr(hamming, "_PAIR_BLOCK", 64)  # smaller than the crowded bucket
    for max_bits in (0, 6):
        i, j, d = hamming_pairs(a, a, max_bits, upper=True)
        assert set(zip(i.tolist(), j.tolist(), d.tolist())) == _brute(a, a, max_bits, True)
        assert len(i) == len(_brute(a, a, max_bits, True))
    for n in (0, 1, 5):  # scanned (fewer hashes than lookups), or nothing to compare
        x = a[:n]
        assert set(zip(*(v.tolist() for v in hamming_pairs(x, a, 6)))) == _brute(x, a, 6, False)
        assert set(zip(*(v.tolist() for v in hamming_pairs(a, x, 6)))) == _brute(a, x, 6, False)


def _stored_images(wh: Warehouse, ids: list[str], hashes: np.ndarray) -> None:
    rows = [
        {
            "image_id": i,
            "source": "scraped",
            "source_uri": f"old/{i}.png",
            "width": 64,
            "height": 64,
            "media_path": f"media/{i}.png",
            "phash": int(h),
        }
        for i, h in zip(ids, hashes)
    ]
    wh.append("images", pa.Table.from_pylist(rows, schema=scraped.TABLES["images"].schema))


def test_near_duplicates_of_a_batch_stream_the_stored_hashes(tmp_path, monkeypatch):
    rng = np.random.default_rng(3)
    wh = Warehouse(tmp_path / "wh")
    old = _planted(rng, 900, 6)
    old_ids = [f"old{n:04d}" for n in range(len(old))]
    _stored_images(wh, old_ids, old)
    new = np.array([_flip(rng, int(old[n]), n % 8) for n in range(0, 400, 4)], dtype=np.uint64)
    new[-1] = new[0]
    new_ids = [f"new{n:04d}" for n in range(len(new))]
    # a pair stored before the other way round is not added again
    known = pa.table(
        {"image_id": [old_ids[0]], "duplicate_of": [new_ids[0]], "distance": pa.array([0], pa.int16())}
    )
    wh.append("near_duplicates", known)
    monkeypatch.setattr(scraped, "_STORED_BLOCK", 100)  # several blocks of stored hashes
    got = scraped._near_duplicate_pairs(wh, new_ids, new, 6).to_pylist()
    expected = {(new_ids[a], new_ids[b], d) for a, b, d in _brute(new, new, 6, True)}
    expected |= {(new_ids[a], old_ids[b], d) for a, b, d in _brute(new, old, 6, False)}
    expected.discard((new_ids[0], old_ids[0], int(np.bitwise_count(new[0] ^ old[0]))))
    assert {(r["image_id"], r["duplicate_of"], r["distance"]) for r in got} == expected
    assert len(got) == len(expected) and (new_ids[-1], new_ids[0], 0) in expected


# ---- embeddings through ONNX Runtime ------------------------------------------------------------
def _predictor(tmp_path, backend: str, architecture: str = "mobilenet_v2"):
    import torch

    from models.checkpoint import save_checkpoint
    from models.networks import ModelConfig, build_model
    from models.predict import Predictor

    checkpoint = tmp_path / "model" / "model.pt"
    if not checkpoint.is_file():
        torch.manual_seed(0)
        size, channels = (48, 1) if architecture == "fer2013_cnn" else (64, 3)
        config = ModelConfig(
            "au", architecture, ["AU1", "AU2"], image_size=size, channels=channels, weights=""
        )
        model = build_model(config)
        for m in model.modules():  # BatchNorm statistics other than the identity
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
        save_checkpoint(checkpoint, model, config)
    from models.checkpoint import load_checkpoint

    _, config, _ = load_checkpoint(checkpoint)
    # predictions' model.onnx is not needed to embed: the onnx backend opens it, so give it one
    onnx = tmp_path / "model" / "model.onnx"
    if not onnx.is_file():
        from models.checkpoint import export_onnx

        export_onnx(load_checkpoint(checkpoint)[0], config, onnx)
    return Predictor(tmp_path, "m1", config, checkpoint, onnx, backend=backend, device="cpu")


def _faces(tmp_path, n: int = 6) -> list[str]:
    from PIL import Image

    rng = np.random.default_rng(4)
    paths = []
    for k in range(n):
        name = f"face{k}.png"
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / name)
        paths.append(name)
    return paths


@pytest.mark.parametrize("architecture", ["mobilenet_v2", "fer2013_cnn"])
def test_onnx_embeddings_match_torch_and_are_cached(tmp_path, architecture):
    paths = [*_faces(tmp_path), "missing.png"]
    torch_z = _predictor(tmp_path, "torch", architecture).embed(paths, batch_size=4)
    onnx_predictor = _predictor(tmp_path, "onnx", architecture)
    onnx_z = onnx_predictor.embed(paths, batch_size=4)
    assert onnx_predictor._embed_session  # ONNX Runtime ran, not the torch fallback
    assert onnx_z.shape == torch_z.shape and np.isnan(onnx_z[-1]).all() and np.isfinite(onnx_z[:-1]).all()
    assert np.abs(onnx_z[:-1] - torch_z[:-1]).max() < 1e-3
    cached = list((tmp_path / "model").glob("model.embed-*.onnx"))
    assert len(cached) == 1 and len(cached[0].name) == len("model.embed-.onnx") + 64
    # the next predictor reads the cache: no torch model is loaded
    again = _predictor(tmp_path, "onnx", architecture)
    assert np.array_equal(again.embed(paths, batch_size=4), onnx_z, equal_nan=True) and again._torch is None


def test_onnx_embedding_falls_back_to_torch_and_says_why(tmp_path, monkeypatch, caplog):
    import models.predict as predict

    paths = _faces(tmp_path, 3)
    expected = _predictor(tmp_path, "torch").embed(paths)
    onnx_predictor = _predictor(tmp_path, "onnx")

    def broken(*args, **kwargs):
        raise RuntimeError("no exporter here")

    monkeypatch.setattr(predict, "_export_embedding", broken)
    with caplog.at_level(logging.WARNING, logger="models.predict"):
        got = onnx_predictor.embed(paths)
    assert np.allclose(got, expected, atol=1e-5) and "no exporter here" in caplog.text
    assert not list((tmp_path / "model").glob("model.embed-*.onnx"))


def test_a_damaged_onnx_embedding_cache_is_exported_again(tmp_path):
    paths = _faces(tmp_path, 2)
    good = _predictor(tmp_path, "onnx").embed(paths)
    (cached,) = (tmp_path / "model").glob("model.embed-*.onnx")
    cached.write_bytes(b"not onnx")
    again = _predictor(tmp_path, "onnx")
    assert np.array_equal(again.embed(paths), good) and again._embed_session
    assert cached.read_bytes() != b"not onnx"
