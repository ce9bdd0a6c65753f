"""Checkpoints (atomic torch.save of state dict + config + extra, read back with weights_only=True),
ONNX export of the probability model, ONNX Runtime inference, and device choice.

A checkpoint is a plain dict that `torch.load(weights_only=True)` accepts (tensors, str, numbers,
lists, dicts only): {"state_dict": {name: CPU tensor}, "config": ModelConfig.to_dict(),
"extra": JSON-able dict (the caller's: metrics, thresholds, dataset version ...),
"meta": {"format": 1, "weights_source": ..., "torch": version}}.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from models.device import torch_device
from models.networks import ModelConfig, WithProbabilities, build_model
from warehouse.atomic import atomic_path

CHECKPOINT_FORMAT = 1
# The legacy (TorchScript) exporter goes up to opset 20; the dynamo exporter needs onnxscript, which is
# not installed. 17 is old enough for most runtimes (onnxruntime here reads up to 23) and has every
# op these models use.
ONNX_OPSET = 17
ONNX_INPUT = "input"
ONNX_OUTPUT = "probabilities"


def _unwrap(model: nn.Module) -> nn.Module:
    # torch.compile wraps the module (parameters renamed "_orig_mod.*"); WithProbabilities adds "model.".
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, WithProbabilities):
            model = model.model
        else:
            return model


def save_checkpoint(path: Path, model: nn.Module, config: ModelConfig, extra: dict | None = None) -> Path:
    """Write the model's weights, its config and `extra` to `path` atomically (temp file + rename)."""
    path = Path(path)
    try:
        # Round trip: what comes back is exactly what load_checkpoint will return (tuples -> lists),
        # and numpy scalars etc. fail here, not at load time under weights_only=True.
        extra_plain: dict[str, Any] = json.loads(json.dumps(extra or {}))
    except (TypeError, ValueError) as e:
        raise TypeError(f"checkpoint extra must be a JSON-able dict: {e}") from e
    model = _unwrap(model)
    payload = {
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "config": config.to_dict(),
        "extra": extra_plain,
        "meta": {
            "format": CHECKPOINT_FORMAT,
            "weights_source": str(getattr(model, "weights_source", "")),
            "torch": str(torch.__version__),  # TorchVersion is not a weights_only type
        },
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def load_checkpoint(path: Path, device: str = "cpu") -> tuple[nn.Module, ModelConfig, dict]:
    """(model in eval mode on `device`, its config, the saved extra). Needs no weights file: the
    network is rebuilt with random init and then receives the saved state dict."""
    path = Path(path)
    dev = torch_device(device)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    ckpt = torch.load(path, map_location=dev, weights_only=True)
    if not isinstance(ckpt, dict) or not {"state_dict", "config"} <= set(ckpt):
        raise ValueError(f"{path} is not a checkpoint written by models.checkpoint.save_checkpoint")
    config = ModelConfig.from_dict(ckpt["config"])
    # weights="" : the packaged (or user) weights file may be absent where the checkpoint is used, and
    # the state dict overwrites every parameter and buffer anyway.
    rebuild = ModelConfig.from_dict({**ckpt["config"], "weights": ""})
    model = build_model(rebuild).to(dev)
    model.load_state_dict(ckpt["state_dict"], strict=True)
    source = ckpt.get("meta", {}).get("weights_source")
    if source:
        model.weights_source = source
    return model.eval(), config, dict(ckpt.get("extra", {}))


def export_onnx(model: nn.Module, config: ModelConfig, path: Path) -> Path:
    """Export WithProbabilities(model) (sigmoid / softmax out) in eval mode to `path` atomically.
    Input "input" (N, C, S, S) float32, already normalised (models.networks.normalize); output
    "probabilities" (N, K); the batch axis is dynamic."""
    path = Path(path)
    model = _unwrap(model)
    was_training = model.training
    wrapped = WithProbabilities(model, config.task).eval()
    try:
        write_onnx(wrapped, config, path, ONNX_OUTPUT)
    finally:
        model.train(was_training)
    return path


def write_onnx(network: nn.Module, config: ModelConfig, path: Path, output: str) -> None:
    """Export `network` (in the mode and on the device it is in) to `path` atomically: input
    "input" (N, C, S, S) float32, already normalised; one output named `output`; the batch axis
    is dynamic."""
    param = next(network.parameters())
    dummy = torch.zeros(2, config.channels, config.image_size, config.image_size, device=param.device)
    with atomic_path(path) as tmp, warnings.catch_warnings(), torch.no_grad():
        # The legacy exporter announces its deprecation on every call; it is the one that works
        # offline here (dynamo=True needs onnxscript).
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.onnx.export(
            network,
            (dummy,),
            str(tmp),
            dynamo=False,
            opset_version=ONNX_OPSET,
            input_names=[ONNX_INPUT],
            output_names=[output],
            dynamic_axes={ONNX_INPUT: {0: "batch"}, output: {0: "batch"}},
        )


def onnx_predict(path: Path, x: np.ndarray) -> np.ndarray:
    """Probabilities (N, K) from an exported model on the CPU; `x` is the normalised (N, C, S, S) batch."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return session.run(None, {name: np.ascontiguousarray(x, dtype=np.float32)})[0]
