"""The expression synthesizer: sources, AU directions seen by dlib, detectability, determinism."""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest

from ferlab.synth import (
    EMOTION_AUS,
    RENDERABLE_AUS,
    contact_sheet,
    emotion_aus,
    identity_variants,
    load_source_faces,
    render,
)
from ferlab.synth.landmarks import detect_landmarks, face_frame
from warehouse.packaged_weights import weight_path


@pytest.fixture(scope="module")
def faces():
    return load_source_faces()


@pytest.fixture(scope="module")
def astronaut(faces):
    return next(f for f in faces if f.identity == "astronaut")


def test_sources_load(faces):
    # t1.jpg's faces are numbered left to right; t1_1 and t1_4 are turned nearly to profile
    assert [f.identity for f in faces] == ["astronaut", "t1_0", "t1_2", "t1_3", "t1_5"]
    for f in faces:
        h, w, c = f.image.shape
        assert h == w and c == 3 and f.image.dtype == np.uint8 and 200 <= h <= 320
        assert f.landmarks.shape == (68, 2) and f.landmarks.dtype == np.float32
        assert np.all((f.landmarks >= 0) & (f.landmarks < h))
        assert all(0 <= v <= 5 for v in f.base_aus.values())
        assert f.mouth_patch is not None and f.mouth_patch.ndim == 3
    # the astronaut smiles with teeth in the photo: neutralized, what is left is small
    assert all(v < 2 for v in next(f for f in faces if f.identity == "astronaut").base_aus.values())


def test_turned_faces_are_left_out(faces):
    from ferlab.synth.faces import MAX_SOURCE_YAW, _default_photos, _faces_in, head_yaw

    photos = dict(_default_photos())
    yaws = [head_yaw(lm) for _, lm in _faces_in(photos["t1"])]
    assert len(yaws) == 6
    turned = [i for i, y in enumerate(yaws) if abs(y) > MAX_SOURCE_YAW]
    assert turned == [1, 4] and min(abs(yaws[i]) for i in turned) > MAX_SOURCE_YAW + 0.1
    assert all(abs(head_yaw(f.landmarks)) < MAX_SOURCE_YAW - 0.1 for f in faces)


def test_intensity_zero_is_the_source(astronaut):
    img, lm = render(astronaut, {})
    assert np.array_equal(img, astronaut.image) and np.allclose(lm, astronaut.landmarks)
    img, lm = render(astronaut, dict.fromkeys(RENDERABLE_AUS, 0.0))
    assert np.array_equal(img, astronaut.image)
    img, _ = render(astronaut, {12: 0.05})  # tiny intensity: tiny change
    assert np.abs(img.astype(int) - astronaut.image).mean() < 0.5


def _measures(lm: np.ndarray) -> dict[str, float]:
    lm = lm.astype(np.float64)
    ex, ey, u = face_frame(lm)
    p = np.stack([(lm - lm[27]) @ ex, (lm - lm[27]) @ ey], -1) / u  # face units, y down
    eye_y = p[36:48, 1].mean()
    lip_line = 0.5 * (p[62, 1] + p[66, 1])
    return {
        "inner_brow_up": eye_y - 0.5 * (p[21, 1] + p[22, 1]),
        "outer_brow_up": eye_y - 0.5 * (p[17, 1] + p[26, 1]),
        "brow_up": eye_y - p[17:27, 1].mean(),
        "inner_brow_dist": p[22, 0] - p[21, 0],
        "eye_open": float(np.mean(p[[41, 40, 47, 46], 1] - p[[37, 38, 43, 44], 1])),
        "corner_lift": lip_line - 0.5 * (p[48, 1] + p[54, 1]),
        "mouth_width": p[54, 0] - p[48, 0],
        "gap": float(np.mean(p[[67, 66, 65], 1] - p[[61, 62, 63], 1])),
        "lip_thickness": (p[57, 1] - p[51, 1]) - float(np.mean(p[[67, 66, 65], 1] - p[[61, 62, 63], 1])),
        "chin": p[8, 1],
        "nose_to_lip": p[51, 1] - p[33, 1],
    }


# AU -> (measure, sign of its change, face region where the image must change most)
EXPECTED = {
    1: [("inner_brow_up", +1)],
    2: [("outer_brow_up", +1)],
    4: [("brow_up", -1), ("inner_brow_dist", -1)],
    5: [("eye_open", +1)],
    6: [("eye_open", -1)],
    9: [("nose_to_lip", -1)],
    12: [("corner_lift", +1)],
    15: [("corner_lift", -1)],
    20: [("mouth_width", +1)],
    23: [("lip_thickness", -1)],
    25: [("gap", +1)],
    26: [("gap", +1), ("chin", +1)],
}
# where the image must change most (band, compared with a band the AU leaves alone)
REGION = {1: ("brows", "mouth"), 2: ("brows", "mouth"), 4: ("brows", "mouth"), 5: ("eyes", "mouth")}
REGION |= {6: ("eyes", "forehead"), 9: ("nose", "chin")}


def _band_diff(a: np.ndarray, b: np.ndarray, lm: np.ndarray, band: str) -> float:
    """Mean absolute difference inside a horizontal band of the face."""
    y = {
        "forehead": (lm[19, 1] - 0.5 * (lm[8, 1] - lm[27, 1]) * 0.6, lm[19, 1] - 4),
        "brows": (min(lm[17:27, 1]) - 12, lm[27, 1]),
        "eyes": (lm[27, 1], lm[30, 1]),
        "nose": (lm[27, 1], lm[33, 1]),
        "mouth": (lm[33, 1] + 2, lm[8, 1]),
        "chin": (lm[57, 1] + 3, lm[8, 1]),
    }[band]
    x0, x1 = int(lm[0, 0]), int(lm[16, 0])
    y0, y1 = int(max(0, y[0])), int(y[1])
    return float(np.abs(a[y0:y1, x0:x1].astype(int) - b[y0:y1, x0:x1]).mean())


# dlib misses a few moves on some faces (the astronaut's fringe and faint brows: its brow points
# barely follow AU4; on her neutralized (inpainted) lips the lip points follow neither AU23 nor
# AU9's upper-lip raise; t1_5's downcast eyes are already slits, so AU6 cannot narrow them much
# further: there it shows as cheek raise, lid furrow and crow's feet); the image-region check
# applies to both
DLIB_BLIND = {
    "astronaut": {(4, "brow_up"), (4, "inner_brow_dist"), (9, "nose_to_lip"), (23, "lip_thickness")},
    "t1_5": {(6, "eye_open")},
}


@pytest.mark.parametrize("identity", sorted(DLIB_BLIND))
def test_each_au_moves_the_right_way(faces, identity):
    face = next(f for f in faces if f.identity == identity)
    base_lm = detect_landmarks(face.image)
    assert base_lm is not None
    base = _measures(base_lm)
    for au in RENDERABLE_AUS:
        img, _ = render(face, {au: 4})
        seen = detect_landmarks(img)
        assert seen is not None, f"AU{au}: dlib lost the face"
        now = _measures(seen)
        for name, sign in EXPECTED[au]:
            if (au, name) in DLIB_BLIND[identity]:
                continue
            change = (now[name] - base[name]) * sign
            assert change > 0.015, f"{identity} AU{au}: {name} {base[name]:.3f} -> {now[name]:.3f}"
        region, other = REGION.get(au, ("mouth", "brows"))
        changed = _band_diff(img, face.image, face.landmarks, region)
        assert changed > 2.0 and changed > 2 * _band_diff(img, face.image, face.landmarks, other), au


def test_yunet_finds_every_emotion(faces):
    model = str(weight_path("face_detection_yunet_2023mar.onnx"))
    for face in faces[:3]:
        h, w = face.image.shape[:2]
        det = cv2.FaceDetectorYN.create(model, "", (w, h), 0.6, 0.3, 5000)
        for emotion, weights in EMOTION_AUS.items():
            img, _ = render(face, {au: 5.0 * wt for au, wt in weights.items()})
            _, found = det.detect(cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
            assert found is not None and len(found) >= 1, f"{face.identity} {emotion}"


def test_emotion_aus():
    rng = np.random.default_rng(0)
    assert emotion_aus("neutral", rng) == {}
    for emotion, weights in EMOTION_AUS.items():
        assert set(weights) <= set(RENDERABLE_AUS)
        aus = emotion_aus(emotion, rng)
        assert set(aus) == set(weights)
        assert all(0 <= v <= 5 for v in aus.values())
    assert max(emotion_aus("happy", np.random.default_rng(1)).values()) >= 2
    assert emotion_aus("fear", np.random.default_rng(7)) == emotion_aus("fear", np.random.default_rng(7))


def test_deterministic_and_fast(faces, astronaut):
    aus = {1: 3.3, 2: 2.0, 5: 4.1, 25: 3.0, 26: 2.2}
    a, la = render(astronaut, aus)
    b, lb = render(astronaut, aus)
    assert a.tobytes() == b.tobytes() and la.tobytes() == lb.tobytes()
    v1 = identity_variants(faces[:2], 3, np.random.default_rng(5))
    v2 = identity_variants(faces[:2], 3, np.random.default_rng(5))
    assert [v.identity for v in v1] == [v.identity for v in v2]
    assert all(x.image.tobytes() == y.image.tobytes() for x, y in zip(v1, v2))
    start = time.perf_counter()
    for _ in range(20):
        render(astronaut, aus)
    assert (time.perf_counter() - start) / 20 < 0.1


def test_identity_variants(faces):
    variants = identity_variants(faces, 4, np.random.default_rng(0))
    names = [v.identity for v in variants]
    assert len(names) == 4 * len(faces) == len(set(names))
    assert not set(names) & {f.identity for f in faces}
    for v in variants:
        assert v.image.shape == faces[0].image.shape and v.landmarks.shape == (68, 2)
        le, re = v.landmarks[36:42].mean(0), v.landmarks[42:48].mean(0)
        assert le[0] < re[0]  # dlib order kept (mirrors permute the points)
        img, _ = render(v, {12: 4, 6: 3})
        assert img.shape == v.image.shape
    mirror = next(
        v for v in identity_variants(faces[:1], 9, np.random.default_rng(0)) if v.identity.endswith("_mirror")
    )
    assert np.array_equal(mirror.image, faces[0].image[:, ::-1])


def test_contact_sheet(astronaut, tmp_path):
    path = contact_sheet(astronaut, tmp_path / "sheet.png")
    sheet = cv2.imread(str(path))
    assert sheet is not None and sheet.shape[0] > sheet.shape[1]
    assert sheet.shape[0] // (sheet.shape[1] // 3) == len(RENDERABLE_AUS)
