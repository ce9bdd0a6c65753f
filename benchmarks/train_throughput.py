"""Training throughput: images/s of a training step of MobileNetV2 at 224 px (whole network
trainable, the fine-tuning stage) and of the seed-003 CNN at 48 px gray, against the data
loader alone on the same crops with the training augmentation (the loader must not be the
bottleneck: >= 3x the step), and the loader without augmentation against a naive one that
decodes each crop file per batch (the usual Dataset.__getitem__ with cv2.imread), both
ending in normalised batches on the device. Per device present (cpu; cuda when there is one).
Prints one JSON object per device.

    .venv/bin/python -m benchmarks.train_throughput [--home DATA_ROOT] [--steps 6]

Without --home it renders the tiny demo data, ingests and auto-labels it into a temporary
data root and snapshots a dataset version (about 20 s).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from models.data import Augment, Faces, decode_crops, iterate_batches, load_faces
from models.device import torch_device
from models.networks import ModelConfig, build_model, normalize
from models.settings import AUTrainingSettings, EmotionTrainingSettings, TrainingSettings
from warehouse import Warehouse
from warehouse.versions import read_manifest, snapshot_dataset_version


def demo_root(tmp: Path) -> Path:
    from ferlab.demodata import generate_demo_data
    from labeling.detection.autolabel import autolabel, select_images
    from labeling.detection.detectors import load_detector
    from warehouse.sources.disfa import ingest_disfa
    from warehouse.sources.fer2013 import ingest_fer2013

    sources = generate_demo_data(tmp / "sources", seed=0, size="tiny")
    wh = Warehouse(tmp / "home")
    ingest_disfa(wh, sources / "disfa", show_progress=False)
    ingest_fer2013(wh, sources / "fer2013.csv", show_progress=False)
    images = select_images(wh)
    autolabel(wh, images, load_detector("yunet"))
    return wh.home


def repeat_to(faces: Faces, n: int) -> Faces:
    """The crops repeated to n samples (a steady-state measure needs more than the tiny demo)."""
    idx = np.resize(np.arange(len(faces)), n)
    return Faces(
        faces.task,
        faces.labels,
        np.ascontiguousarray(faces.images[idx]),
        faces.targets[idx],
        faces.groups[idx],
        faces.splits[idx],
        [faces.crop_ids[i] for i in idx],
    )


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def loader_rate(faces: Faces, mc: ModelConfig, device: torch.device, batch: int, augment: bool) -> float:
    """images/s of batches -> device -> normalise (-> augment), nothing else."""
    aug, gen = Augment(), torch.Generator().manual_seed(0)
    idx = np.arange(len(faces))
    start = time.perf_counter()
    for x, y in iterate_batches(faces, idx, batch, device, shuffle=True):
        x = normalize(x, mc)
        if augment:
            x = aug(x, y, gen)
    sync(device)
    return len(idx) / (time.perf_counter() - start)


def naive_loader_rate(
    root: Path, paths: list[str], mc: ModelConfig, device: torch.device, batch: int
) -> float:
    """The baseline: decode and resize every crop file when its batch is drawn."""
    start = time.perf_counter()
    for s in range(0, len(paths), batch):
        imgs = []
        for p in paths[s : s + batch]:
            flag = cv2.IMREAD_GRAYSCALE if mc.channels == 1 else cv2.IMREAD_COLOR
            img = cv2.resize(cv2.imread(str(root / p), flag), (mc.image_size, mc.image_size))
            imgs.append(
                img[None] if mc.channels == 1 else cv2.cvtColor(img, cv2.COLOR_BGR2RGB).transpose(2, 0, 1)
            )
        normalize(torch.from_numpy(np.stack(imgs)).to(device), mc)
    sync(device)
    return len(paths) / (time.perf_counter() - start)


def step_rate(
    faces: Faces, settings: TrainingSettings, device: torch.device, batch: int, steps: int
) -> float:
    """images/s of training steps (forward, loss, backward, Adam) on batches already on the device."""
    mc = settings.network()
    model = build_model(mc).to(device)
    if hasattr(model, "freeze_backbone"):
        model.freeze_backbone(-1)  # the fine-tuning stage: every layer trains
    model.train()
    idx = np.arange(len(faces))
    criterion = settings.criterion(faces.targets[idx], device)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    use_amp = device.type == "cuda"
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp)
    x, y = next(iterate_batches(faces, idx[:batch], batch, device))
    x = normalize(x, mc)
    timings = []
    for i in range(steps + 2):  # two warm-up steps
        sync(device)
        start = time.perf_counter()
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
            loss = criterion(model(x), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        sync(device)
        if i >= 2:
            timings.append(time.perf_counter() - start)
    return batch / float(np.median(timings))


def bench_device(root: Path, version: str, device: torch.device, steps: int) -> dict:
    manifest = read_manifest(Warehouse(root), version)
    out: dict = {"device": str(device), "torch_threads": torch.get_num_threads()}
    cases = [
        ("mobilenet_v2_224", AUTrainingSettings(loss="bce"), 32),
        ("fer2013_cnn_48", EmotionTrainingSettings(architecture="fer2013_cnn"), 64),
    ]
    for name, settings, batch in cases:
        mc = settings.network()
        faces = load_faces(root, manifest, settings.task, mc.image_size, mc.channels, cache=False)
        many = repeat_to(faces, 512 if device.type == "cpu" else 4096)
        column = "gray_media_path" if mc.channels == 1 else "media_path"
        rows = manifest.filter(np.isin(manifest["crop_id"].to_numpy(zero_copy_only=False), faces.crop_ids))
        paths = list(np.resize(np.array(rows[column].to_pylist()), min(len(many), 512)))
        step = step_rate(many, settings, device, batch, steps)
        loader = loader_rate(many, mc, device, batch, augment=False)
        augmented = loader_rate(many, mc, device, batch, augment=True)
        naive = naive_loader_rate(root, paths, mc, device, batch)
        start = time.perf_counter()
        decode_crops(root, paths, [str(i) for i in range(len(paths))], mc.image_size, mc.channels)
        decode_once = len(paths) / (time.perf_counter() - start)
        out[name] = {
            "batch": batch,
            "train_step_images_per_s": round(step, 1),
            "loader_images_per_s": round(loader, 1),
            "augmented_loader_images_per_s": round(augmented, 1),
            "augmented_loader_over_step": round(augmented / step, 1),
            "naive_loader_images_per_s": round(naive, 1),
            "loader_over_naive": round(loader / naive, 1),
            "one_time_decode_images_per_s": round(decode_once, 1),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--home", type=Path, help="a data root with ingested, auto-labeled crops")
    parser.add_argument("--steps", type=int, default=6, help="timed training steps per model (median)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.home or demo_root(Path(tmp))
        version = snapshot_dataset_version(Warehouse(root), include_flagged=True).version
        devices = [torch.device("cpu")] + ([torch_device("cuda")] if torch.cuda.is_available() else [])
        for device in devices:
            result = bench_device(root, version, device, args.steps)
            result.update(benchmark="train_throughput", cpus=os.cpu_count(), machine=platform.machine())
            print(json.dumps(result))


if __name__ == "__main__":
    main()
