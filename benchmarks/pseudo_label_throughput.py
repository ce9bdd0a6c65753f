"""Pseudo-labeling throughput: faces/s of models.predict.Predictor (crop files decoded as training
decodes them, normalised, the model run; what pseudo-labeling and the review queue spend their
time on), ONNX Runtime against torch, batch 64, on MobileNetV2 (the AU model's default network) at
the given input size. Per device present (cpu; cuda when there is one). Prints one JSON object.

    .venv/bin/python -m benchmarks.pseudo_label_throughput [--home DATA_ROOT] [--faces 512] [--image-size 224]

The weights do not change the speed: the network is built with random initialisation, saved and
exported as training would, so no model needs training. Without --home it renders the tiny demo
data, ingests and auto-labels it into a temporary data root (about 20 s) for real crop files.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.train_throughput import demo_root
from models.checkpoint import export_onnx, save_checkpoint
from models.networks import build_model
from models.predict import Predictor
from models.settings import AUTrainingSettings
from warehouse import Warehouse


def measure(predictor: Predictor, paths: list[str], batch_size: int, repeats: int = 2) -> float:
    """Best faces/s over `repeats` full passes (after one warm-up batch)."""
    predictor.predict(paths[:batch_size], batch_size=batch_size)
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        prob = predictor.predict(paths, batch_size=batch_size)
        best = max(best, len(paths) / (time.perf_counter() - start))
        assert prob.shape == (len(paths), len(predictor.labels))
    return best


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, help="a data root with crops (default: the tiny demo)")
    parser.add_argument("--faces", type=int, default=512, help="faces per pass (crops repeated)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ferlab-bench-") as tmp:
        home = args.home or demo_root(Path(tmp))
        wh = Warehouse(home, writable=False)
        crops = wh.sql("SELECT media_path FROM crops ORDER BY crop_id").column("media_path").to_pylist()
        paths = list(np.resize(np.array(crops, dtype=object), args.faces))
        config = AUTrainingSettings(image_size=args.image_size, weights="").network()
        model = build_model(config).eval()
        files = Path(tmp) / "model"
        files.mkdir()
        ckpt = save_checkpoint(files / "model.pt", model, config)
        onnx = export_onnx(model, config, files / "model.onnx")
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        result: dict = {
            "benchmark": "pseudo_label_throughput",
            "model": f"{config.architecture} {config.image_size}px, {len(config.labels)} AUs",
            "faces": args.faces,
            "batch_size": args.batch_size,
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(),
        }
        for device in devices:
            for backend in ("onnx", "torch"):
                p = Predictor(Path(home), "au-bench", config, ckpt, onnx, backend=backend, device=device)
                result[f"{device}_{backend}_faces_per_s"] = round(measure(p, paths, args.batch_size), 1)
        cpu_onnx, cpu_torch = result["cpu_onnx_faces_per_s"], result["cpu_torch_faces_per_s"]
        result["cpu_onnx_over_torch"] = round(cpu_onnx / cpu_torch, 2)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
