"""models.networks and models.checkpoint: shapes, weights, freezing, checkpoints, ONNX. Small images
(32-64 px) and one forward per big model keep this fast on two CPU cores."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from models.checkpoint import export_onnx, load_checkpoint, onnx_predict, save_checkpoint
from models.device import torch_device
from models.networks import (
    BACKBONES,
    PACKAGED_MOBILENET_V2,
    PACKAGED_SOURCE,
    Fer2013CNN,
    MobileNetV1,
    ModelConfig,
    TransferNet,
    WithProbabilities,
    build_model,
    count_parameters,
    normalize,
)
from warehouse.errors import ConfigError

AUS = ["AU1", "AU2", "AU4", "AU6", "AU9", "AU12", "AU25", "AU26"]
EMOTIONS = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]


def au_config(arch: str = "mobilenet_v2", size: int = 64, **kw) -> ModelConfig:
    kw.setdefault("weights", "packaged" if arch == "mobilenet_v2" else "")
    return ModelConfig("au", arch, AUS, image_size=size, **kw)


def fer_config(**kw) -> ModelConfig:
    return ModelConfig("emotion", "fer2013_cnn", EMOTIONS, image_size=48, channels=1, weights="", **kw)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize(
    ("arch", "size", "n_features", "n_blocks"),
    [
        ("mobilenet_v2", 64, 1280, 19),
        ("mobilenet_v1", 64, 1024, 14),
        ("densenet121", 64, 1024, 5),
        ("densenet201", 32, 1920, 5),
    ],
)
def test_backbone_shapes(arch, size, n_features, n_blocks):
    model = build_model(au_config(arch, size, weights=""))
    assert isinstance(model, TransferNet) and model.weights_source == "random init"
    assert model.n_features == n_features and len(model.blocks) == n_blocks
    # The blocks cover the backbone exactly once (what "fine-tune the last N blocks" relies on).
    block_params = [id(p) for b in model.blocks for p in b.parameters()]
    assert sorted(block_params) == sorted(id(p) for p in model.features.parameters())
    model.eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        z = model.embed(x)
        logits = model(x)
    assert z.shape == (2, n_features)
    assert logits.shape == (2, len(AUS))
    torch.testing.assert_close(model.head_forward(z), logits, rtol=0, atol=0)


def test_fer2013_cnn_shape():
    model = build_model(fer_config())
    assert isinstance(model, Fer2013CNN)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    dense = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [c.out_channels for c in convs] == [32, 64, 128] and convs[0].in_channels == 1
    assert [(d.in_features, d.out_features) for d in dense] == [(128 * 6 * 6, 132), (132, 7)]
    assert model(torch.randn(3, 1, 48, 48)).shape == (3, 7)


def test_packaged_mobilenet_v2_weights():
    from warehouse.packaged_weights import weight_path

    packaged = build_model(au_config("mobilenet_v2"))
    random = build_model(au_config("mobilenet_v2", weights=""))
    assert packaged.weights_source == PACKAGED_SOURCE
    file_state = torch.load(weight_path(PACKAGED_MOBILENET_V2), map_location="cpu", weights_only=True)
    ours = packaged.state_dict()
    feature_keys = [k for k in file_state if k.startswith("features.")]
    assert len(feature_keys) == len([k for k in ours if k.startswith("features.")])
    assert all(torch.equal(ours[k], file_state[k]) for k in feature_keys)
    assert not torch.equal(ours["features.0.0.weight"], random.state_dict()["features.0.0.weight"])


def test_packaged_weights_missing_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("FERLAB_WEIGHTS", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=PACKAGED_MOBILENET_V2):
        build_model(au_config("mobilenet_v2"))


def test_packaged_only_for_mobilenet_v2():
    for arch in ("mobilenet_v1", "densenet121", "densenet201"):
        with pytest.raises(ValueError, match="only for mobilenet_v2"):
            au_config(arch, weights="packaged")
    with pytest.raises(ValueError, match="only for mobilenet_v2"):
        ModelConfig("emotion", "fer2013_cnn", EMOTIONS, image_size=48, channels=1)


def test_mobilenet_v1_parameter_counts():
    # Howard et al. 2017, Table 6 (with the 1000-class classifier): alpha 1 -> 4.2M, 0.75 -> 2.6M,
    # 0.5 -> 1.3M, 0.25 -> 0.5M. Keras' MobileNet reports 4,253,864 at alpha 1, which counts the
    # BatchNorm moving mean/variance (21,888 numbers, buffers in torch): 4,231,976 parameters here;
    # without the classifier 3,206,976 (Keras include_top=False: 3,228,864 - 21,888).
    full = {a: count_parameters(MobileNetV1(a, num_classes=1000)) for a in (1.0, 0.75, 0.5, 0.25)}
    assert full[1.0] == 4_231_976
    assert count_parameters(MobileNetV1(1.0, num_classes=0)) == 3_206_976
    for alpha, paper in ((1.0, 4.2e6), (0.75, 2.6e6), (0.5, 1.3e6), (0.25, 0.5e6)):
        assert abs(full[alpha] - paper) / paper < 0.07, (alpha, full[alpha])
    # Width scales the (dominant) pointwise convs quadratically.
    backbone = {a: count_parameters(MobileNetV1(a, num_classes=0)) for a in (1.0, 0.5)}
    assert 3.5 < backbone[1.0] / backbone[0.5] < 4.1
    model = build_model(au_config("mobilenet_v1", alpha=0.5))
    assert model.n_features == 512
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, len(AUS))


def _bn_stats(modules) -> list[torch.Tensor]:
    return [m.running_mean.clone() for b in modules for m in b.modules() if isinstance(m, nn.BatchNorm2d)]


def test_freeze_backbone():
    model = build_model(au_config("mobilenet_v2"))
    head = {id(p) for p in model.head.parameters()}

    model.freeze_backbone(0)
    assert {id(p) for p in model.parameters() if p.requires_grad} == head
    model.train()
    assert not any(m.training for b in model.blocks for m in b.modules()) and model.head.training
    frozen_before = _bn_stats(model.blocks)
    x = torch.randn(4, 3, 64, 64)
    z_all = model.embed(x)
    # Frozen BatchNorm keeps its statistics, so the pooled features are a fixed function of each image
    # (the same alone or in a batch): what stage 1 caches.
    assert all(torch.equal(a, b) for a, b in zip(frozen_before, _bn_stats(model.blocks)))
    torch.testing.assert_close(model.embed(x[:1]), z_all[:1], rtol=1e-4, atol=1e-5)

    model.freeze_backbone(2)
    last_two = {id(p) for b in model.blocks[-2:] for p in b.parameters()}
    assert {id(p) for p in model.parameters() if p.requires_grad} == head | last_two
    assert model.training and model.blocks[-1].training and not model.blocks[-3].training
    frozen_before, trainable_before = _bn_stats(model.blocks[:-2]), _bn_stats(model.blocks[-2:])
    loss = model(x).sum()
    loss.backward()
    assert all(torch.equal(a, b) for a, b in zip(frozen_before, _bn_stats(model.blocks[:-2])))
    assert not all(torch.equal(a, b) for a, b in zip(trainable_before, _bn_stats(model.blocks[-2:])))
    assert all(p.grad is None for b in model.blocks[:-2] for p in b.parameters())
    assert model.blocks[-1][0].weight.grad is not None

    model.freeze_backbone(-1)
    assert all(p.requires_grad for p in model.parameters())
    model.train()
    assert all(m.training for m in model.modules())
    model.eval()
    assert not any(m.training for m in model.modules())


def test_normalize():
    config = au_config("mobilenet_v2", weights="")
    x = torch.tensor([0, 128, 255], dtype=torch.uint8).view(1, 3, 1, 1).expand(2, 3, 4, 4).contiguous()
    y = normalize(x, config)
    assert y.dtype == torch.float32 and y.shape == (2, 3, 4, 4)
    expect = (torch.tensor([0, 128, 255]) / 255.0 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor(
        [0.229, 0.224, 0.225]
    )
    torch.testing.assert_close(y[0, :, 0, 0], expect)
    gray = torch.full((1, 1, 4, 4), 51, dtype=torch.uint8)
    assert normalize(gray, config).shape == (1, 3, 4, 4)
    fer = normalize(gray, fer_config())
    assert fer.shape == (1, 1, 4, 4) and torch.allclose(fer, torch.full_like(fer, 0.2))
    assert normalize(torch.full((1, 3, 4, 4), 51, dtype=torch.uint8), fer_config()).shape == (1, 1, 4, 4)
    with pytest.raises(TypeError):
        normalize(x.float(), config)


def test_with_probabilities():
    model = build_model(fer_config()).eval()
    x = torch.randn(3, 1, 48, 48)
    p = WithProbabilities(model, "emotion")(x)
    torch.testing.assert_close(p.sum(1), torch.ones(3))
    q = WithProbabilities(model, "au")(x)
    torch.testing.assert_close(q, torch.sigmoid(model(x)))


def test_checkpoint_round_trip(tmp_path, monkeypatch):
    config = au_config("mobilenet_v2")
    model = build_model(config)
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 3, 64, 64))  # move the BatchNorm statistics off their file values
    model.eval()
    extra = {"thresholds": [0.5] * 8, "dataset_version": "abc", "epochs": (1, 2)}
    path = save_checkpoint(tmp_path / "ckpt" / "model.pt", model, config, extra)
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]  # no temp file left behind

    # Rebuilding must not need the packaged weights file.
    monkeypatch.setenv("FERLAB_WEIGHTS", str(tmp_path / "nowhere"))
    loaded, config2, extra2 = load_checkpoint(path)
    assert config2 == config and config2.to_dict() == config.to_dict()
    assert extra2 == {"thresholds": [0.5] * 8, "dataset_version": "abc", "epochs": [1, 2]}
    assert not loaded.training and loaded.weights_source == PACKAGED_SOURCE
    ours, theirs = model.state_dict(), loaded.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))

    with pytest.raises(TypeError, match="JSON"):
        save_checkpoint(tmp_path / "bad.pt", model, config, {"x": np.float32(1)})
    # The checkpoint is a plain weights_only dict.
    raw = torch.load(path, weights_only=True)
    assert {"state_dict", "config", "extra"} <= set(raw)


def test_onnx_matches_torch(tmp_path):
    for config, batch in ((au_config("mobilenet_v2"), 3), (fer_config(), 5)):
        model = build_model(config)
        model.train()  # export must use eval mode and give the mode back
        path = export_onnx(model, config, tmp_path / f"{config.architecture}.onnx")
        assert model.training
        x = torch.randn(batch, config.channels, config.image_size, config.image_size)  # batch != export's 2
        with torch.no_grad():
            expect = WithProbabilities(model.eval(), config.task)(x).numpy()
        got = onnx_predict(path, x.numpy())
        assert got.shape == (batch, len(config.labels))
        diff = float(np.abs(got - expect).max())
        print(f"{config.architecture}: ONNX max abs diff {diff:.2e}")
        assert diff < 1e-4


def _v1_state(alpha: float) -> dict[str, torch.Tensor]:
    return MobileNetV1(alpha, num_classes=1000).state_dict()


def test_weights_files(tmp_path):
    full = _v1_state(0.25)
    torch.save(full, tmp_path / "v1_full.pth")
    torch.save(
        {k.removeprefix("features."): v for k, v in full.items() if k.startswith("features.")},
        tmp_path / "v1_features.pth",
    )
    for name in ("v1_full.pth", "v1_features.pth"):
        model = build_model(au_config("mobilenet_v1", alpha=0.25, weights=str(tmp_path / name)))
        assert re.fullmatch(rf"file {name} sha256 [0-9a-f]{{12}}", model.weights_source)
        assert torch.equal(model.state_dict()["features.3.pw.conv.weight"], full["features.3.pw.conv.weight"])

    # A full torchvision DenseNet state dict (the format of torchvision's files).
    dense = torchvision.models.densenet121(weights=None).state_dict()
    torch.save(dense, tmp_path / "densenet121.pth")
    model = build_model(au_config("densenet121", weights=str(tmp_path / "densenet121.pth")))
    assert torch.equal(model.state_dict()["features.conv0.weight"], dense["features.conv0.weight"])

    with pytest.raises(FileNotFoundError, match="missing.pth"):
        build_model(au_config("densenet121", weights=str(tmp_path / "missing.pth")))
    with pytest.raises(ValueError, match="does not fit"):  # alpha 0.25 weights, alpha 1 model
        build_model(au_config("mobilenet_v1", weights=str(tmp_path / "v1_full.pth")))
    with pytest.raises(ValueError, match="does not fit"):  # another architecture's weights
        build_model(au_config("mobilenet_v2", weights=str(tmp_path / "v1_features.pth")))
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="weights_only"):
        build_model(au_config("densenet121", weights=str(tmp_path / "junk.pth")))


def test_config_dict_round_trip():
    config = au_config("mobilenet_v1", alpha=0.5, dropout=0.3)
    assert ModelConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown"):
        ModelConfig.from_dict({**config.to_dict(), "typo": 1})
    with pytest.raises(ValueError):
        ModelConfig("au", "resnet50", AUS, weights="")
    assert set(BACKBONES) == {"mobilenet_v2", "mobilenet_v1", "densenet121", "densenet201"}


def test_torch_device():
    assert torch_device("cpu") == torch.device("cpu")
    assert torch_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA"):
            torch_device("cuda")
