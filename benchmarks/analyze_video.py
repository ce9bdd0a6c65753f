"""`ferlab analyze` speed on a 640x360 single-face video: end to end (decode -> detect -> track ->
crop -> AU + emotion models -> rows, `labeling.analysis.analyze.analyze`) with the fp32 and the int8 models
(and the distilled students when asked), each against the production detector's bare forward
pass over the same frames, decoded beforehand. Then one run of each again, with timers around each
stage, for where the time goes. Prints one JSON object.

    .venv/bin/python -m benchmarks.analyze_video [--frames 400] [--device auto|cpu|cuda] [--batch 16]
        [--home DIR]        # a data root with production AU and emotion models (`make demo`);
                            # one is made there first when it has none
        [--detector auto]   # auto: the data root's YOLO student when it has one, else YuNet
                            # (YuNet runs on the CPU whatever the device: on a GPU give the student)
        [--distill]         # also make and time the distilled students

Without models a data root is made first from the small demo data (three DISFA people and the
FER-2013 faces, auto-labeled by YuNet) with an AU and an emotion model of the production
architecture and input size (MobileNetV2, 224 px), trained one head epoch: their quality is not
what is measured. The int8 files are made (`quantize_int8`) when the models have none. The video
is `benchmarks.detect_video`'s: the demo's DISFA clip padded to 640x360 with a slow pan.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

import cv2

from benchmarks.detect_video import HEIGHT, WIDTH, bare, build_video, decode_fps, log, read_frames, timed
from labeling.analysis.analyze import AnalysisResult, analyze, resolve_detector
from labeling.analysis.settings import AnalyzeSettings
from labeling.detection.detectors import Detector
from warehouse import Warehouse

SUBJECTS = ["SN001", "SN002", "SN003"]


def build_home(home: Path, sources_dir: Path, device: str, seed: int = 0) -> tuple[str, str]:
    """A data root at `home` from the small demo data (rendered into `sources_dir`) with a
    one-epoch AU model and emotion model (MobileNetV2 at 224 px, the defaults' architecture and
    size), both made production: (AU model id, emotion model id)."""
    from ferlab.demodata import generate_demo_data
    from ferlab.demotruth import ingest_demo_sources
    from models.pipeline import train_model
    from models.registry import decide_promotion
    from models.settings import AUTrainingSettings, EmotionTrainingSettings

    sources = generate_demo_data(sources_dir, seed=seed, size="small")
    wh = Warehouse(home)
    version = ingest_demo_sources(wh, sources, subjects=SUBJECTS, stride=2, scraped=False)
    au = train_model(wh, version, AUTrainingSettings(head_epochs=1, finetune_epochs=0, device=device))
    emo = train_model(wh, version, EmotionTrainingSettings(head_epochs=1, finetune_epochs=0, device=device))
    for model_id in (au.model_id, emo.model_id):
        decide_promotion(wh, model_id)
    return au.model_id, emo.model_id


def production_models(wh: Warehouse) -> tuple[str, str] | None:
    from models.registry import production_model

    au, emo = production_model(wh, "au"), production_model(wh, "emotion")
    return None if au is None or emo is None else (au, emo)


def make_variants(wh: Warehouse, model_ids: tuple[str, ...], device: str, distill_them: bool) -> list[str]:
    """The int8 files (and with `distill_them` the students) of the models, made when missing;
    returns the variants every model has."""
    from models.compact import DistillationSettings, distill, has_variant, quantize_int8
    from models.pipeline import load_run

    def has(model_id: str, variant: str) -> bool:
        return has_variant(load_run(wh, model_id), variant)

    for model_id in model_ids:
        if not has(model_id, "int8"):
            quantize_int8(wh, model_id)
        if distill_them and not has(model_id, "student"):
            distill(wh, model_id, DistillationSettings(epochs=1, device=device))
    return [v for v in ("fp32", "int8", "student") if all(has(m, v) for m in model_ids)]


def measure(
    wh: Warehouse, video: Path, frames: list, detector: Detector, settings: AnalyzeSettings, repeat: int
) -> dict[str, Any]:
    """The variant's end-to-end frames/s (analysis time, models loaded) and the bare detector's,
    alternated `repeat` times, the fastest of each kept (the least disturbed on a shared machine)."""
    n = len(frames)
    run_bare = bare(detector, frames, settings.batch_size)
    analyze(wh, video, settings.replace(max_frames=2 * settings.batch_size), detector=detector)  # warm-up
    t_bare, t_e2e, t_wall = float("inf"), float("inf"), float("inf")
    result: AnalysisResult | None = None
    for _ in range(repeat):
        t_bare = min(t_bare, timed(run_bare))
        started = time.perf_counter()
        result = analyze(wh, video, settings, detector=detector)
        t_wall = min(t_wall, time.perf_counter() - started)
        t_e2e = min(t_e2e, result.seconds)
    assert result is not None and result.frames == n, (result and result.frames, n)
    return {
        "variant": settings.model_variant,
        "bare_detector_fps": round(n / t_bare, 1),
        "end_to_end_fps": round(n / t_e2e, 1),
        "end_to_end_over_bare": round(t_e2e / t_bare, 3),
        "with_model_loading_fps": round(n / t_wall, 1),
        "faces": result.faces,
        "frames_with_faces": result.frames_with_faces,
        "tracks": result.tracks,
    }


class _TimedFuture:
    """A future whose `result()` wait is added to `spent["waiting_on_detector"]`."""

    def __init__(self, future: Future, spent: dict[str, float]) -> None:
        self._future, self._spent = future, spent

    def result(self, timeout: float | None = None) -> Any:
        start = time.perf_counter()
        try:
            return self._future.result(timeout)
        finally:
            self._spent["waiting_on_detector"] += time.perf_counter() - start


@contextmanager
def stage_timers(detector: Detector) -> Iterator[dict[str, float]]:
    """Seconds spent in each stage of `analyze` while the block runs: the detector (in analyze's
    worker thread), and on the main thread the wait for it, the tracker, cropping, and per model
    its preparation (resize, stacking) and its inference. Decoding runs on a thread of its own
    (timed apart: `decode_only_fps`)."""
    import labeling.analysis.analyze as module
    from labeling.analysis.tracking import FaceTracker
    from models.predict import Predictor

    spent: dict[str, float] = defaultdict(float)

    def timing(name: Callable[..., str], fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kw: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kw)
            finally:
                spent[name(*args)] += time.perf_counter() - start

        return wrapper

    def per_model(suffix: str) -> Callable[..., str]:
        return lambda self, *_: f"{self.task}_{suffix}"

    class TimedPool(ThreadPoolExecutor):
        def submit(self, fn: Callable[..., Any], /, *args: Any, **kw: Any) -> Any:
            return _TimedFuture(super().submit(fn, *args, **kw), spent)

    with (
        mock.patch.object(module, "ThreadPoolExecutor", TimedPool),
        mock.patch.object(detector, "detect", timing(lambda *_: "detector", detector.detect)),
        mock.patch.object(module, "crop_faces", timing(lambda *_: "crop", module.crop_faces)),
        mock.patch.object(FaceTracker, "update", timing(lambda *_: "tracker", FaceTracker.update)),
        mock.patch.object(Predictor, "predict_arrays", timing(per_model("all"), Predictor.predict_arrays)),
        mock.patch.object(Predictor, "_run", timing(per_model("inference"), Predictor._run)),
    ):
        yield spent


def profile(wh: Warehouse, video: Path, detector: Detector, settings: AnalyzeSettings) -> dict[str, Any]:
    """One run of `settings` with each stage timed: seconds per stage and its share of the run.
    The detector's time overlaps the main thread's stages, which add up to the run's time."""
    with stage_timers(detector) as spent:
        result = analyze(wh, video, settings, detector=detector)
    total = result.seconds
    main = {k: spent[k] for k in ("waiting_on_detector", "tracker", "crop")}
    for task in ("au", "emotion"):
        main[f"{task}_model"] = spent[f"{task}_inference"]
        main[f"{task}_preparation"] = spent[f"{task}_all"] - spent[f"{task}_inference"]
    main["rows_and_rest"] = total - sum(main.values())
    return {
        "variant": settings.model_variant,
        "frames": result.frames,
        "seconds": round(total, 3),
        "detector_thread_seconds": round(spent["detector"], 3),
        "main_thread_seconds": {k: round(v, 3) for k, v in main.items()},
        "main_thread_share": {k: round(v / total, 3) for k, v in main.items()},
    }


def model_info(wh: Warehouse, model_id: str) -> dict[str, Any]:
    from models.pipeline import load_run

    net = load_run(wh, model_id).info["network"]
    return {
        "id": model_id,
        **{k: net.get(k) for k in ("architecture", "image_size", "channels", "alpha")},
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--frames", type=int, default=400, help="video length (>= 400 asked)")
    parser.add_argument("--batch", type=int, default=16, help="frames per detector call (GPU figure: 64)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda: the detector and the models")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement; the fastest counts")
    parser.add_argument(
        "--home",
        type=Path,
        help="a data root with production AU and emotion models; made there first when it has none "
        "(default: made in a temporary folder)",
    )
    parser.add_argument(
        "--detector", default="auto", help="auto (the data root's student, else yunet) | yunet | a .pt"
    )
    parser.add_argument("--distill", action="store_true", help="also make and time the students")
    args = parser.parse_args()

    from labeling.detection.detectors import load_detector
    from labeling.detection.yolo_env import prepare_ultralytics_offline
    from models.device import resolve_device

    # Ultralytics and the trainers print on stdout, where the JSON goes: all but it to stderr.
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(sys.stderr):
        started = time.perf_counter()
        video = build_video(Path(tmp), args.frames)
        wh = Warehouse(args.home or Path(tmp) / "home")
        models = production_models(wh)
        if models is None:
            models = build_home(wh.home, Path(tmp) / "sources", args.device)
        au_id, emo_id = models
        variants = make_variants(wh, (au_id, emo_id), args.device, args.distill)
        prepared_s = time.perf_counter() - started
        prepare_ultralytics_offline(wh.home / "ultralytics")
        spec = resolve_detector(wh.home, args.detector)
        detector = load_detector(spec, device=args.device)
        frames = read_frames(video, args.frames)
        settings = AnalyzeSettings(
            au_model=au_id,
            emotion_model=emo_id,
            batch_size=args.batch,
            device=args.device,
            detector=spec,
        )
        result: dict[str, Any] = {
            "benchmark": "analyze_video",
            "video": f"{WIDTH}x{HEIGHT} MJPG, {len(frames)} frames, one face",
            "cpus": os.cpu_count(),
            "machine": platform.machine(),
            "device": resolve_device(args.device),
            "batch": args.batch,
            "detector": detector.name,
            "au_model": model_info(wh, au_id),
            "emotion_model": model_info(wh, emo_id),
            "cv2_threads": cv2.getNumThreads(),
            "preparation_s": round(prepared_s, 1),
            "decode_only_fps": decode_fps(video),
        }
        for variant in variants:
            figures = measure(
                wh, video, frames, detector, settings.replace(model_variant=variant), args.repeat
            )
            log(f"{variant}: {figures}")
            result[variant] = figures
        result["profile"] = {
            variant: profile(wh, video, detector, settings.replace(model_variant=variant))
            for variant in variants
        }
        result["int8_at_least_30_fps"] = result.get("int8", {}).get("end_to_end_fps", 0) >= 30
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
