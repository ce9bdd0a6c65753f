"""Label Studio round trip: push N queued faces as tasks (with predictions), annotate them all
through the REST API (one request each, 4 at once), pull them back as human labels; seconds for each step.
Starts its own server (the .venv-labelstudio one) on a free port over a temporary data root.
Prints one JSON object; prints a `skipped:` line and exits 0 when Label Studio is not installed.

    .venv/bin/python -m benchmarks.labelstudio_roundtrip [--tasks 1000]
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import platform
import secrets
import socket
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image

from warehouse import Warehouse
from warehouse.schemas import TABLES


def fill_queue(wh: Warehouse, n: int, model_id: str = "emo-model-1") -> list[str]:
    """n scraped one-face images (24 px random JPEGs) with a weak 'happy' folder label, each face
    queued in review_queue; returns the crop ids, highest priority first. Shared with the tests."""
    tables: dict[str, list[dict]] = {
        k: [] for k in ("images", "detections", "crops", "emotion_labels", "review_queue")
    }
    now = dt.datetime.now(dt.UTC)
    rng = np.random.default_rng(0)
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(buf, "JPEG")
        media = wh.put_media(buf.getvalue(), "jpg")
        image_id, det_id, crop_id = f"img{i:05d}", f"det{i:05d}", f"crop{i:05d}"
        box = {"width": 64, "height": 64}
        tables["images"].append(
            {
                "image_id": image_id,
                "source": "scraped",
                "source_uri": f"/in/{i}.jpg",
                "batch": "b1",
                "media_path": media,
            }
            | box
        )
        tables["detections"].append(
            {"detection_id": det_id, "image_id": image_id, "source_uri": f"/in/{i}.jpg", "label": "face"}
            | {
                "x1": 0.0,
                "y1": 0.0,
                "x2": 60.0,
                "y2": 60.0,
                "score": 0.9,
                "detector": "yunet",
                "weights_sha256": "w",
            }
            | box
        )
        tables["crops"].append(
            {"crop_id": crop_id, "image_id": image_id, "detection_id": det_id, "media_path": media}
            | {"gray_media_path": media, "size": 224, "gray_size": 48, "margin": 0.25, "angle": 0.0}
            | {"face_px": 60.0, "blur": 100.0, "brightness": 120.0, "too_small": False, "too_blurry": False}
        )
        tables["emotion_labels"].append(
            {"image_id": image_id, "emotion": "happy", "label_source": "weak", "annotator": "folder:happy"}
        )
        tables["review_queue"].append(
            {
                "queue": "q1",
                "crop_id": crop_id,
                "image_id": image_id,
                "media_path": media,
                "reason": "uncertain",
            }
            | {"priority": float(n - i), "model_id": model_id, "queued_at": now}
        )
    for name, rows in tables.items():
        wh.append(name, pa.Table.from_pylist(rows, schema=TABLES[name].schema))
    return [c["crop_id"] for c in tables["crops"]]


def _views() -> dict:
    """Hand-made views of a face by both models: sad for sure, AU1 present, AU4 unsure."""
    from labeling.curation.model_view import LabelCall, ModelView
    from labeling.labelstudio.sync import AU_NAMES
    from warehouse.schemas import EMOTIONS

    emotion = tuple(
        LabelCall(e, 0.9 if e == "sad" else 0.01, "present" if e == "sad" else "absent") for e in EMOTIONS
    )
    states = {"AU1": (0.95, "present"), "AU4": (0.5, "unsure")}
    aus = tuple(LabelCall(a, *states.get(a, (0.02, "absent"))) for a in AU_NAMES)
    return {"emotion": ModelView("emotion", "emotion-bench", emotion), "au": ModelView("au", "au-bench", aus)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=1000)
    args = parser.parse_args()
    from labeling.labelstudio.server import find_executable, start_server, stop_server, wait_healthy
    from labeling.labelstudio.sync import (
        LabelStudioClient,
        LabelStudioSettings,
        pull_annotations,
        push_faces,
        queued_faces,
    )
    from warehouse.errors import ConfigError

    try:
        find_executable()
    except ConfigError as exc:
        print(f"skipped: labelstudio_roundtrip: {exc}")
        return
    with tempfile.TemporaryDirectory(prefix="ferlab-bench-ls-") as tmp:
        root = Path(tmp)
        (root / "home").mkdir()
        key, port = secrets.token_hex(20), _free_port()
        proc = start_server(
            root / "var", port, key, root / "ls.log", base_env={**os.environ, "HOME": str(root / "home")}
        )
        try:
            startup = wait_healthy(proc, port, timeout=900, log_path=str(root / "ls.log"))
            client = LabelStudioClient(LabelStudioSettings(url=f"http://127.0.0.1:{port}", api_key=key))
            wh = Warehouse(root / "var")
            crops = fill_queue(wh, args.tasks)
            rows = queued_faces(wh)
            predictions = {c: _views() for c in crops}  # both models' views, as queue_views gives them

            t = time.perf_counter()
            pushed = push_faces(wh, rows, predictions, client=client)
            push_s = time.perf_counter() - t
            t = time.perf_counter()
            again = push_faces(wh, rows, predictions, client=client)
            repush_s = time.perf_counter() - t
            assert pushed.pushed == args.tasks and again.pushed == 0, (pushed, again)

            task_ids = [int(x) for x in wh.read("label_studio_tasks").column("task_id").to_pylist()]
            result = [
                {
                    "from_name": "emotion",
                    "to_name": "image",
                    "type": "choices",
                    "value": {"choices": ["sad"]},
                },
                {
                    "from_name": "aus",
                    "to_name": "image",
                    "type": "choices",
                    "value": {"choices": ["AU1", "AU4"]},
                },
            ]
            t = time.perf_counter()
            # One POST /api/tasks/{id}/annotations/ per task, as curators submit them (the bulk
            # endpoint is not in the Community edition); a few at once.
            with ThreadPoolExecutor(4) as pool:
                list(
                    pool.map(
                        lambda task_id: client.sdk.annotations.create(id=task_id, result=result), task_ids
                    )
                )
            annotate_s = time.perf_counter() - t

            t = time.perf_counter()
            pulled = pull_annotations(wh, client=client)
            pull_s = time.perf_counter() - t
            t = time.perf_counter()
            repulled = pull_annotations(wh, client=client)
            repull_s = time.perf_counter() - t
            assert pulled.annotations == args.tasks and pulled.au_added == 12 * args.tasks, pulled
            assert repulled.au_added + repulled.au_updated + repulled.emotion_added == 0, repulled
        finally:
            stop_server(proc)
    print(
        json.dumps(
            {
                "benchmark": "labelstudio_roundtrip",
                "tasks": args.tasks,
                "server_startup_s": round(startup, 1),
                "push_s": round(push_s, 2),
                "repush_s": round(repush_s, 2),
                "annotate_s": round(annotate_s, 2),
                "pull_s": round(pull_s, 2),
                "repull_s": round(repull_s, 2),
                "labels_written": pulled.emotion_added + pulled.au_added,
                "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
            }
        )
    )


if __name__ == "__main__":
    main()
