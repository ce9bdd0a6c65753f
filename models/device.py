"""The one device resolver for torch and ultralytics runs (models, the YOLO student, detectors)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from warehouse.errors import ConfigError

if TYPE_CHECKING:
    import torch


def resolve_device(device: str = "auto") -> str:
    """The device name a run uses: "auto" -> "cuda" when torch sees a GPU, else "cpu"; "cpu",
    "cuda", "cuda:1", "mps" as given. Raises ConfigError for a name torch does not know or a
    CUDA device this machine lacks, so a run fails when it starts, not at its first batch.
    Pass the result to torch.device() where a torch.device is needed."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N") from exc
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (dev.index or 0) >= count:
            have = f"only {count} CUDA device(s)" if count else "no CUDA device"
            raise ConfigError(f"device {device!r} requested but this machine has {have}; use auto or cpu")
    return device


def torch_device(device: str = "auto") -> torch.device:
    """`resolve_device` as a torch.device (raises ConfigError as it does)."""
    import torch

    return torch.device(resolve_device(device))
