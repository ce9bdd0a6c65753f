"""The seeds' networks (seeds 000/002 for AUs, 003 for emotions; see the README's papers).

- `TransferNet`: an ImageNet-style backbone without its classifier -> global average pooling ->
  BatchNorm1d -> ReLU -> Dropout -> Linear(K), logits out (seeds 000/001/002; sigmoid for AUs,
  softmax for emotions, applied by the loss or by `WithProbabilities`). Backbones: torchvision
  MobileNetV2 (ImageNet weights from the packaged file by default), our MobileNet-v1 (Howard et al.
  2017, width multiplier alpha), torchvision DenseNet-121 / DenseNet-201. Only MobileNetV2 has
  pretrained weights offline (warehouse.packaged_weights); the others start from random init unless the user
  gives a weights file, and `weights_source` says which, for the reports.
- `Fer2013CNN`: seed 003's small CNN for 48x48 gray FER-2013 faces.

Models take already-normalised float input (`normalize` turns uint8 NCHW batches into it).
"""

from __future__ import annotations

import hashlib
import re
from collections import OrderedDict
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from models.tasks import get_task

BACKBONES = ("mobilenet_v2", "mobilenet_v1", "densenet121", "densenet201")
ARCHITECTURES = (*BACKBONES, "fer2013_cnn")

PACKAGED_MOBILENET_V2 = "mobilenet_v2-b0353104.pth"
PACKAGED_SOURCE = "ImageNet (packaged torchvision MobileNet_V2 IMAGENET1K_V1)"
RANDOM_SOURCE = "random init"
# What an architecture starts from unless told otherwise: the packaged ImageNet file where one
# exists, random init for the others (the seed-003 CNN is trained from scratch).
DEFAULT_WEIGHTS = {"mobilenet_v2": "packaged"}
# (image size, channels) an architecture was designed for: seed 003's 48 px gray faces for its
# CNN, 224 px RGB for the ImageNet backbones.
NATIVE_INPUT = {"fer2013_cnn": (48, 1)}
BACKBONE_INPUT = (224, 3)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# ITU-R BT.601 luma, what OpenCV's BGR2GRAY uses: RGB input for a gray model.
_LUMA = (0.299, 0.587, 0.114)


@dataclass
class ModelConfig:
    """Everything needed to rebuild a model; saved (as a plain dict) inside every checkpoint.

    `weights`: "packaged" = the packaged ImageNet MobileNetV2 file (mobilenet_v2 only), "" = random
    init, anything else = the path of a state dict loaded strictly into the backbone (the whole model
    for fer2013_cnn). `alpha` is the width multiplier of mobilenet_v1 (also torchvision's width_mult
    of mobilenet_v2, which must stay 1.0 with the packaged weights). `dropout` is the TransferNet
    head's; the seed-003 CNN has none. `channels`: 3 (RGB) for the backbones; 1 (gray, the seed's
    input) or 3 for fer2013_cnn."""

    task: str
    architecture: str
    labels: list[str]
    image_size: int = 224
    channels: int = 3
    alpha: float = 1.0
    dropout: float = 0.2
    weights: str = "packaged"

    def __post_init__(self) -> None:
        self.labels = [str(label) for label in self.labels]
        self.image_size = int(self.image_size)
        self.channels = int(self.channels)
        self.alpha = float(self.alpha)
        self.dropout = float(self.dropout)
        self.weights = str(self.weights)
        task = get_task(self.task)
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture {self.architecture!r}: expected one of {ARCHITECTURES}")
        if not self.labels:
            raise ValueError("labels is empty: the model needs at least one output")
        if len(self.labels) < task.min_outputs:
            raise ValueError(
                f"a {task.name} model needs at least {task.min_outputs} outputs, not {self.labels}"
            )
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"labels repeat: {self.labels}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout {self.dropout}: expected 0 <= p < 1")
        if self.alpha <= 0:
            raise ValueError(f"alpha {self.alpha}: expected > 0")
        if self.architecture == "fer2013_cnn":
            if self.channels not in (1, 3):
                raise ValueError(f"fer2013_cnn takes 1 (gray) or 3 channels, not {self.channels}")
            if self.image_size < 8:
                raise ValueError(
                    f"fer2013_cnn needs image_size >= 8 (three 2x2 poolings), not {self.image_size}"
                )
        else:
            if self.channels != 3:
                raise ValueError(
                    f"{self.architecture} takes 3-channel input (normalize() repeats gray images), "
                    f"not channels={self.channels}"
                )
            if self.image_size < 32:
                raise ValueError(f"{self.architecture} downsamples 32x: image_size must be >= 32")
        if self.weights == "packaged":
            if self.architecture != "mobilenet_v2":
                raise ValueError(
                    f"weights='packaged' exists only for mobilenet_v2 (ImageNet, {PACKAGED_MOBILENET_V2}); "
                    f"{self.architecture} has no pretrained weights offline: use weights='' (random init) "
                    "or the path of a state dict"
                )
            if self.alpha != 1.0:
                raise ValueError(f"the packaged MobileNetV2 weights are for alpha 1.0, not {self.alpha}")

    @property
    def n_outputs(self) -> int:
        return len(self.labels)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (what checkpoints and model_runs store)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown ModelConfig fields {unknown}; known: {sorted(known)}")
        return cls(**data)


# --------------------------------------------------------------------------------------------------
# MobileNet-v1 (Howard et al. 2017, "MobileNets", Table 1): a 3x3 stride-2 stem, then 13
# depthwise-separable blocks (3x3 depthwise conv -> BN -> ReLU -> 1x1 pointwise conv -> BN -> ReLU).
# The width multiplier alpha thins every layer: int(c * alpha) channels, as Keras' MobileNet does.

_V1_BLOCKS = (
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (1024, 2),
    (1024, 1),
)


def _conv_bn_relu(cin: int, cout: int, kernel: int, stride: int, groups: int = 1) -> nn.Sequential:
    # No conv bias: the BatchNorm right after it has its own shift.
    return nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
            bn=nn.BatchNorm2d(cout),
            relu=nn.ReLU(inplace=True),
        )
    )


class DepthwiseSeparable(nn.Sequential):
    """3x3 depthwise conv (one filter per channel, the stride) -> BN -> ReLU, then 1x1 pointwise
    conv mixing channels -> BN -> ReLU (Howard et al. 2017, Fig. 3)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__(
            OrderedDict(
                dw=_conv_bn_relu(cin, cin, 3, stride, groups=cin),
                pw=_conv_bn_relu(cin, cout, 1, 1),
            )
        )


class MobileNetV1(nn.Module):
    """MobileNet-v1; `features` ends with int(1024 * alpha) channels at 1/32 of the input size.
    `num_classes=0` leaves out the classifier (what TransferNet uses)."""

    def __init__(self, alpha: float = 1.0, num_classes: int = 1000, dropout: float = 0.001) -> None:
        # dropout 0.001 before the classifier: Keras' MobileNet default.
        super().__init__()

        def width(c: int) -> int:
            return max(1, int(c * alpha))

        layers: list[nn.Module] = [_conv_bn_relu(3, width(32), 3, 2)]
        cin = width(32)
        for cout, stride in _V1_BLOCKS:
            layers.append(DepthwiseSeparable(cin, width(cout), stride))
            cin = width(cout)
        self.features = nn.Sequential(*layers)
        self.out_channels = cin
        self.classifier = (
            nn.Sequential(nn.Dropout(dropout), nn.Linear(cin, num_classes)) if num_classes else None
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1)
        return self.classifier(x) if self.classifier is not None else x


# --------------------------------------------------------------------------------------------------
# Loading weights


def _sha12(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()[:12]


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise FileNotFoundError(
            f"weights file {path} does not exist (ModelConfig.weights: '' = random init, "
            "'packaged' = ImageNet MobileNetV2, or the path of a state dict)"
        )
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(
            f"{path} is not a state dict that torch.load(weights_only=True) can read: {e}"
        ) from e
    # Our own checkpoints (models.checkpoint) wrap the state dict.
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict) or not data or not all(isinstance(v, Tensor) for v in data.values()):
        raise ValueError(f"{path} does not hold a state dict (a dict of parameter name -> tensor)")
    # nn.DataParallel / DistributedDataParallel prefix every key with "module.".
    if all(k.startswith("module.") for k in data):
        data = {k.removeprefix("module."): v for k, v in data.items()}
    return data


# Old torchvision DenseNet files name the layers "norm.1" ... (see torchvision.models.densenet).
_DENSENET_LEGACY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)
# A full model's classifier (torchvision, our MobileNetV1) or head (a TransferNet): not backbone.
_HEAD_PREFIXES = ("classifier.", "head.", "fc.")


def _load_into_features(features: nn.Module, path: Path) -> str:
    """Load a full-model (`features.*` + classifier) or features-only state dict strictly into the
    backbone; return the `weights_source` text."""
    state = _read_state_dict(path)
    if any(k.startswith("features.") for k in state):
        other = [k for k in state if not k.startswith("features.") and not k.startswith(_HEAD_PREFIXES)]
        if other:
            raise ValueError(f"{path}: keys outside the backbone and its classifier: {other[:5]}")
        state = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
    state = {(_DENSENET_LEGACY.sub(r"\1\2", k)): v for k, v in state.items()}
    _load_strict(features, state, path)
    return f"file {path.name} sha256 {_sha12(path)}"


def _load_strict(module: nn.Module, state: dict[str, Tensor], path: Path) -> None:
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatch = [
        f"{k}: {tuple(v.shape)} in file, {tuple(own[k].shape)} in model"
        for k, v in state.items()
        if k in own and v.shape != own[k].shape
    ]
    if missing or unexpected or mismatch:
        raise ValueError(
            f"{path} does not fit the {type(module).__name__}: {len(missing)} missing keys {missing[:3]}, "
            f"{len(unexpected)} unexpected keys {unexpected[:3]}, {len(mismatch)} shape mismatches {mismatch[:3]}"
        )
    module.load_state_dict(state, strict=True)


# --------------------------------------------------------------------------------------------------
# The transfer-learning network


class TransferNet(nn.Module):
    """backbone features -> GAP -> BatchNorm1d -> ReLU -> Dropout(p) -> Linear(K); logits out.

    `blocks` are the backbone's blocks in order (views on `features`, not extra modules): stage 2
    of the seeds' training fine-tunes "all or the last N" of them (`freeze_backbone`)."""

    def __init__(
        self,
        features: nn.Sequential,
        blocks: list[nn.Module],
        n_features: int,
        n_outputs: int,
        dropout: float = 0.2,
        final_relu: bool = False,
        weights_source: str = RANDOM_SOURCE,
    ) -> None:
        super().__init__()
        self.features = features
        # A plain list: nn.Module does not register it, so the blocks' parameters are owned (and
        # named in the state dict) only once, by `features`.
        self.blocks: list[nn.Module] = list(blocks)
        self.n_features = n_features
        # torchvision's DenseNet `features` ends at a BatchNorm; its forward applies the ReLU.
        self.final_relu = final_relu
        self.head = nn.Sequential(
            OrderedDict(
                bn=nn.BatchNorm1d(n_features),
                relu=nn.ReLU(),
                dropout=nn.Dropout(dropout),
                fc=nn.Linear(n_features, n_outputs),
            )
        )
        self.weights_source = weights_source
        self._n_frozen = 0

    def embed(self, x: Tensor) -> Tensor:
        """Pooled backbone features (N, n_features): the GAP output, what stage 1 caches."""
        f = self.features(x)
        if self.final_relu:
            f = F.relu(f)
        return torch.flatten(F.adaptive_avg_pool2d(f, 1), 1)

    def head_forward(self, z: Tensor) -> Tensor:
        """Logits from pooled features."""
        return self.head(z)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.embed(x))

    def freeze_backbone(self, trainable_last_blocks: int = 0) -> None:
        """0 = the whole backbone frozen (stage 1: only the head trains), N = the last N blocks
        trainable, -1 (or N >= len(blocks)) = everything trainable. The head always trains."""
        n = len(self.blocks)
        if trainable_last_blocks < -1:
            raise ValueError(f"trainable_last_blocks {trainable_last_blocks}: expected -1, 0 or N > 0")
        trainable = n if trainable_last_blocks == -1 else min(trainable_last_blocks, n)
        self._n_frozen = n - trainable
        for i, block in enumerate(self.blocks):
            for p in block.parameters():
                p.requires_grad_(i >= self._n_frozen)
        for p in self.head.parameters():
            p.requires_grad_(True)
        self.train(self.training)  # apply the BatchNorm rule below right away

    def train(self, mode: bool = True) -> TransferNet:
        # Frozen blocks stay in eval mode even while the model trains: in train mode their BatchNorm
        # layers would normalise with batch statistics and keep updating running_mean/var, so the
        # "frozen" backbone would still change and its output would depend on the batch. Stage 1
        # caches the pooled features once; they must be a fixed function of the input.
        super().train(mode)
        if mode:
            for block in self.blocks[: self._n_frozen]:
                block.eval()
        return self

    @property
    def n_frozen_blocks(self) -> int:
        return self._n_frozen


def _mobilenet_v2(config: ModelConfig) -> tuple[nn.Sequential, list[nn.Module], int, bool, str]:
    net = torchvision.models.mobilenet_v2(weights=None, width_mult=config.alpha)
    if config.weights == "packaged":
        from warehouse.packaged_weights import weight_path

        # torchvision's own file (byte-identical to IMAGENET1K_V1): it fits the full model strictly.
        state = torch.load(weight_path(PACKAGED_MOBILENET_V2), map_location="cpu", weights_only=True)
        net.load_state_dict(state, strict=True)
        source = PACKAGED_SOURCE
    elif config.weights:
        source = _load_into_features(net.features, Path(config.weights).expanduser())
    else:
        source = RANDOM_SOURCE
    # Blocks: the stem conv, the 17 inverted residual blocks, the final 1x1 conv.
    return net.features, list(net.features), net.last_channel, False, source


def _mobilenet_v1(config: ModelConfig) -> tuple[nn.Sequential, list[nn.Module], int, bool, str]:
    net = MobileNetV1(alpha=config.alpha, num_classes=0)
    source = (
        _load_into_features(net.features, Path(config.weights).expanduser())
        if config.weights
        else RANDOM_SOURCE
    )
    # Blocks: the stem conv and the 13 depthwise-separable blocks.
    return net.features, list(net.features), net.out_channels, False, source


def _densenet(config: ModelConfig) -> tuple[nn.Sequential, list[nn.Module], int, bool, str]:
    make = (
        torchvision.models.densenet121
        if config.architecture == "densenet121"
        else torchvision.models.densenet201
    )
    net = make(weights=None)
    source = (
        _load_into_features(net.features, Path(config.weights).expanduser())
        if config.weights
        else RANDOM_SOURCE
    )
    f = net.features
    # Blocks: the stem, then each dense block with the transition (or final norm) after it.
    blocks: list[nn.Module] = [
        nn.Sequential(f.conv0, f.norm0, f.relu0, f.pool0),
        nn.Sequential(f.denseblock1, f.transition1),
        nn.Sequential(f.denseblock2, f.transition2),
        nn.Sequential(f.denseblock3, f.transition3),
        nn.Sequential(f.denseblock4, f.norm5),
    ]
    return f, blocks, net.classifier.in_features, True, source


# --------------------------------------------------------------------------------------------------
# Seed 003


class Fer2013CNN(nn.Module):
    """Seed 003: 3 x [Conv 3x3 -> BatchNorm -> ReLU -> MaxPool 2x2] -> Flatten ->
    Dense(132) -> Dense(n_classes); logits out (softmax in the loss / WithProbabilities).

    The seed gives 32 filters for the first conv and not the others: we double per block (32, 64,
    128), the usual choice. Its convs use "same" padding (48 -> 24 -> 12 -> 6, so Flatten gives
    128 * 6 * 6 = 4608). It names no activation for Dense(132); ReLU, the paper's activation, keeps
    the two Dense layers from collapsing into one linear map. No dropout: the seed has none."""

    def __init__(
        self,
        n_classes: int = 7,
        in_channels: int = 1,
        image_size: int = 48,
        filters: tuple[int, ...] = (32, 64, 128),
        hidden: int = 132,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for cout in filters:
            layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2)]
            cin = cout
        self.features = nn.Sequential(*layers)
        side = image_size
        for _ in filters:
            side //= 2
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(cin * side * side, hidden), nn.ReLU(), nn.Linear(hidden, n_classes)
        )
        self.weights_source = RANDOM_SOURCE

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


# --------------------------------------------------------------------------------------------------


def build_model(config: ModelConfig) -> nn.Module:
    """The network `config` describes, with its weights loaded (see ModelConfig.weights)."""
    if config.architecture == "fer2013_cnn":
        model = Fer2013CNN(config.n_outputs, config.channels, config.image_size)
        if config.weights:
            path = Path(config.weights).expanduser()
            _load_strict(model, _read_state_dict(path), path)
            model.weights_source = f"file {path.name} sha256 {_sha12(path)}"
        return model
    builder = {"mobilenet_v2": _mobilenet_v2, "mobilenet_v1": _mobilenet_v1}.get(
        config.architecture, _densenet
    )
    features, blocks, n_features, final_relu, source = builder(config)
    model = TransferNet(
        features,
        blocks,
        n_features,
        config.n_outputs,
        dropout=config.dropout,
        final_relu=final_relu,
        weights_source=source,
    )
    # NHWC weights: oneDNN's (and cuDNN's) faster convolution path, for NCHW batches too; loaded
    # state dicts are copied into this layout.
    return model.to(memory_format=torch.channels_last)


def normalization(config: ModelConfig) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The (mean, std) `normalize` applies after /255: ImageNet's for the RGB backbones, none
    for fer2013_cnn."""
    return None if config.architecture == "fer2013_cnn" else (IMAGENET_MEAN, IMAGENET_STD)


def normalize(x_uint8: Tensor, config: ModelConfig) -> Tensor:
    """(N, C, H, W) uint8 -> float32 model input on the same device: /255, then ImageNet mean/std
    for the RGB backbones (their pretrained weights expect it), /255 only for fer2013_cnn (seed 003).
    Gray batches for an RGB model are repeated to 3 channels; RGB batches for a gray model are
    turned to luma (BT.601)."""
    if x_uint8.dtype != torch.uint8:
        raise TypeError(f"normalize expects uint8 pixels, got {x_uint8.dtype} (already normalised?)")
    if x_uint8.ndim != 4:
        raise ValueError(f"normalize expects an (N, C, H, W) batch, got shape {tuple(x_uint8.shape)}")
    x = x_uint8.float().div_(255.0)
    c = x.shape[1]
    if c != config.channels:
        if c == 1 and config.channels == 3:
            x = x.expand(-1, 3, -1, -1)
        elif c == 3 and config.channels == 1:
            luma = torch.tensor(_LUMA, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
            x = (x * luma).sum(dim=1, keepdim=True)
        else:
            raise ValueError(f"{c}-channel batch for a {config.channels}-channel model")
    stats = normalization(config)
    if stats is None:
        return x
    mean = torch.tensor(stats[0], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(stats[1], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    if x.is_contiguous() and x.data_ptr() != x_uint8.data_ptr():  # our own copy: in place, no new batch
        return x.sub_(mean).div_(std)
    return (x - mean) / std


class WithProbabilities(nn.Module):
    """`model` plus its task's output activation (`Task.probabilities`: sigmoid per label for "au",
    softmax over the classes for "emotion"). Takes already-normalised float input; what ONNX export
    wraps. Raises ConfigError (a ValueError) for an unknown task name."""

    def __init__(self, model: nn.Module, task: str) -> None:
        super().__init__()
        self.model = model
        self.task = get_task(task).name
        self._activation = get_task(task).probabilities

    def forward(self, x: Tensor) -> Tensor:
        return self._activation(self.model(x))


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (buffers such as BatchNorm running statistics not counted)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
