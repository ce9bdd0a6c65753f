"""Inference: one predictor over a trained AU or emotion model, crops in, probabilities out.

    predictor = Predictor.load(wh, model_id)                 # ONNX Runtime on the CPU (default)
    prob = predictor.predict(["media/ab/ab12....png", ...])  # (N, K): sigmoid per AU / softmax
    prob = predictor.predict_arrays([rgb224, ...])           # crops in memory (labeling.analysis.analyze)
    found = predictor.predict_crops(wh, crop_ids)            # by crop id; unreadable crops skipped
    z = predictor.embed(paths)                               # pooled backbone features

Crops are decoded exactly as training decodes them (models.data.decode_crop: the 224 px RGB crop,
or the 48 px gray one for a gray model, resized to the model's input) and normalised by
models.networks.normalize, so a face scores the same here as in its model's evaluation. Batches
stream: the next batch is decoded in threads while the model runs on this one, and memory holds
two batches, whatever the number of crops. The pseudo-labeler, the review queue, `ferlab predict`
and FiftyOne all predict through this class.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from models.checkpoint import load_checkpoint, write_onnx
from models.data import decode_crop, prepare_crop
from models.device import resolve_device
from models.networks import ModelConfig, WithProbabilities, normalize
from models.pipeline import load_run
from warehouse import Warehouse
from warehouse.atomic import atomic_write_bytes
from warehouse.errors import ConfigError
from warehouse.hashing import sha256_file

Backend = Literal["onnx", "torch"]
BACKENDS: tuple[str, ...] = ("onnx", "torch")
EMBED_ONNX_TAG = "embed"  # the embedding's ONNX export: <checkpoint stem>.embed-<checkpoint sha256>.onnx
log = logging.getLogger(__name__)


@dataclass
class CropPredictions:
    """Probabilities of the crops that could be read, in the order asked, and the ones that could not."""

    labels: list[str]
    crop_ids: list[str]
    image_ids: list[str]
    prob: np.ndarray  # (N, K) float32
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (crop_id, why)


class Predictor:
    """A trained model (models.pipeline: model.pt / model.onnx) as a batched predictor.

    Attributes:
        model_id: the model's id.
        task: "au" or "emotion".
        labels: its outputs in order (["AU1", ...] or the emotion names).
        config: the network's ModelConfig (input size and channels, architecture).
        backend: "onnx" (ONNX Runtime) or "torch".
        variant: "fp32", "int8" or "student" (models.compact).
    """

    variant: str = "fp32"

    def __init__(
        self,
        root: Path,
        model_id: str,
        config: ModelConfig,
        checkpoint: Path,
        onnx: Path,
        backend: Backend = "onnx",
        device: str = "auto",
        spin: bool = True,
    ) -> None:
        if backend not in BACKENDS:
            raise ConfigError(f"backend {backend!r}: expected one of {list(BACKENDS)}")
        self.root = Path(root)
        self.model_id = model_id
        self.config = config
        self.task = config.task
        self.labels = list(config.labels)
        self.backend = backend
        self.device = resolve_device(device)
        self._checkpoint = Path(checkpoint)
        self._onnx = Path(onnx)
        self._spin = spin
        self._session = None
        self._torch: torch.nn.Module | None = None
        self._embed_session = None  # the ONNX embedding session; False: torch embeds instead
        if backend == "onnx":
            self._session = self._onnx_session()
        else:
            self._torch_model()

    @classmethod
    def load(
        cls,
        wh: Warehouse,
        model_id: str,
        backend: Backend = "onnx",
        device: str = "auto",
        variant: str = "fp32",
        spin: bool = True,
    ) -> Predictor:
        """The trained model `model_id` of the data root, ready to predict. `variant` (models.compact):
        "fp32" (model.onnx / model.pt), "int8" (model.int8.onnx; ONNX only) or "student" (the
        distilled student.onnx / student.pt). `spin` False: ONNX Runtime's CPU threads sleep
        between runs instead of spinning, which frees the cores for other threads of the process
        (a detector, a decoder) between the model's calls.

        Raises:
            FileNotFoundError: no such model, or the variant's files are missing.
            ConfigError: an unknown backend or variant, int8 with the torch backend, or a device
                this machine lacks.
        """
        from models.compact import variant_files

        run = load_run(wh, model_id)
        try:
            onnx, checkpoint, config = variant_files(run, variant)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if backend == "torch" and checkpoint is None:
            raise ConfigError(f"the {variant} variant of {model_id} is ONNX only: use backend onnx")
        needed = onnx if backend == "onnx" else checkpoint
        if not Path(needed).is_file():
            raise FileNotFoundError(f"model {model_id}: {needed} is missing; make the {variant} model again")
        predictor = cls(
            wh.home,
            model_id,
            config,
            checkpoint or run.checkpoint,
            onnx,
            backend=backend,
            device=device,
            spin=spin,
        )
        predictor.variant = variant
        return predictor

    # ---- the two runtimes ----------------------------------------------------------------------
    def _onnx_session(self):
        import onnxruntime as ort

        options, providers = self._session_settings(ort)
        return ort.InferenceSession(str(self._onnx), sess_options=options, providers=providers)

    def _session_settings(self, ort) -> tuple:
        """ONNX Runtime's session options and providers for this predictor: CUDA first on a cuda
        device, quiet loads, threads that sleep between calls unless `spin`."""
        providers = ["CPUExecutionProvider"]
        if self.device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        options = ort.SessionOptions()
        options.log_severity_level = 3  # no warnings about unused initializers on every load
        if not self._spin:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return options, providers

    def _torch_model(self) -> torch.nn.Module:
        if self._torch is None:
            model, _, _ = load_checkpoint(self._checkpoint, device=self.device)  # weights_only=True
            self._torch = model
        return self._torch

    def _run(self, x_uint8: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(x_uint8)
        if self.backend == "onnx":
            x = normalize(x, self.config).numpy()
            name = self._session.get_inputs()[0].name
            return self._session.run(None, {name: np.ascontiguousarray(x, dtype=np.float32)})[0]
        model = self._torch_model()
        with torch.no_grad():
            x = normalize(x.to(self.device), self.config)
            return WithProbabilities(model, self.task)(x).float().cpu().numpy()

    # ---- decoding, streamed in batches ---------------------------------------------------------
    def _decode_one(self, path: str | Path) -> np.ndarray | str:
        try:
            return decode_crop(self.root / path, self.config.image_size, self.config.channels)
        except OSError as exc:
            return str(exc)

    def _batches(
        self, paths: Sequence[str | Path], batch_size: int
    ) -> Iterator[tuple[int, np.ndarray, list[int], list[tuple[int, str]]]]:
        """(start, uint8 batch of the readable crops, their indices, [(index, why) unreadable])."""
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, not {batch_size}")
        starts = range(0, len(paths), batch_size)
        with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:

            def submit(start: int) -> list[Future]:
                return [pool.submit(self._decode_one, p) for p in paths[start : start + batch_size]]

            pending = submit(0) if len(paths) else []
            for start in starts:
                decoded = [f.result() for f in pending]
                pending = submit(start + batch_size) if start + batch_size < len(paths) else []
                ok = [start + i for i, d in enumerate(decoded) if not isinstance(d, str)]
                bad = [(start + i, d) for i, d in enumerate(decoded) if isinstance(d, str)]
                shape = (0, self.config.channels, self.config.image_size, self.config.image_size)
                images = (
                    np.stack([d for d in decoded if not isinstance(d, str)])
                    if ok
                    else np.empty(shape, np.uint8)
                )
                yield start, images, ok, bad

    # ---- public API ----------------------------------------------------------------------------
    def predict(
        self, media_paths: Sequence[str | Path], batch_size: int = 64, skip_unreadable: bool = False
    ) -> np.ndarray:
        """Probabilities (N, K) float32 of the crop files (paths relative to the data root, or
        absolute): sigmoid per AU, softmax over the emotions.

        Raises:
            OSError: a crop file is missing or unreadable, naming it (with `skip_unreadable`, its
                row is NaN instead and the run goes on).
        """
        out = np.full((len(media_paths), len(self.labels)), np.nan, dtype=np.float32)
        for _, images, ok, bad in self._batches(media_paths, batch_size):
            if bad and not skip_unreadable:
                raise OSError(bad[0][1])
            if ok:
                out[ok] = self._run(images)
        return out

    def predict_arrays(self, crops: Sequence[np.ndarray], batch_size: int = 64) -> np.ndarray:
        """Probabilities (N, K) float32 of crops in memory: (H, W, 3) RGB uint8 (labeling.detection.crops'
        224 px `FaceCrop.rgb`) or (H, W) gray (its 48 px `FaceCrop.gray`, what a gray model reads).
        Prepared as decode_crop prepares a stored crop (models.data.prepare_crop), so a face scores
        here as it does from its file, up to the file's JPEG/PNG encoding."""
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, not {batch_size}")
        out = np.empty((len(crops), len(self.labels)), dtype=np.float32)
        size, channels = self.config.image_size, self.config.channels
        for start in range(0, len(crops), batch_size):
            chunk = crops[start : start + batch_size]
            images = np.stack([prepare_crop(c, size, channels) for c in chunk])
            out[start : start + len(chunk)] = self._run(images)
        return out

    def embed(self, media_paths: Sequence[str | Path], batch_size: int = 64) -> np.ndarray:
        """Pooled backbone features (N, D) float32 (NaN rows for unreadable crops): the transfer
        networks' GAP output, the seed-003 CNN's last conv block average-pooled. What the review
        queue measures uniqueness with.

        The onnx backend runs the embedding sub-network through ONNX Runtime (exported from the
        checkpoint once, cached beside it as `<checkpoint stem>.embed-<its sha256>.onnx`); where
        onnxruntime is missing or the export fails, it says why in the log and runs torch. The
        torch backend runs the checkpoint.

        Raises:
            ValueError: the architecture has no backbone to embed with.
        """
        run = self._embedder()
        rows: list[tuple[list[int], np.ndarray]] = []
        for _, images, ok, _ in self._batches(media_paths, batch_size):
            if ok:
                rows.append((ok, run(images)))
        dim = rows[0][1].shape[1] if rows else 0
        out = np.full((len(media_paths), dim), np.nan, dtype=np.float32)
        for ok, z in rows:
            out[ok] = z
        return out

    def _embedder(self) -> Callable[[np.ndarray], np.ndarray]:
        """uint8 batch -> (N, D) float32 embeddings, through ONNX Runtime where it can be."""
        if self.backend == "onnx":
            if self._embed_session is None:
                self._embed_session = self._onnx_embed_session() or False
            session = self._embed_session
            if session:
                name = session.get_inputs()[0].name

                def run_onnx(images: np.ndarray) -> np.ndarray:
                    x = normalize(torch.from_numpy(images), self.config).numpy()
                    return session.run(None, {name: np.ascontiguousarray(x, dtype=np.float32)})[0]

                return run_onnx
        pooled = _embedding_network(self._torch_model(), self.model_id, self.config)

        def run_torch(images: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                x = normalize(torch.from_numpy(images).to(self.device), self.config)
                return pooled(x).float().cpu().numpy()

        return run_torch

    def _onnx_embed_session(self):
        """An ONNX Runtime session of the embedding sub-network: the cached export beside the
        checkpoint (named by the checkpoint's sha256, so a retrained checkpoint gets its own), else
        exported now and cached. None, with the reason logged, where ONNX Runtime cannot embed.
        ONNX Runtime reads a graph and weights only: loading the file runs no code.

        Raises:
            ValueError: the architecture has no backbone to embed with.
        """
        try:
            import onnxruntime as ort
        except ImportError as exc:
            log.warning(f"{self.model_id}: embeddings through torch: onnxruntime is not installed ({exc})")
            return None
        options, providers = self._session_settings(ort)
        options.intra_op_num_threads = _cpu_count()
        stem = self._checkpoint.stem
        path = self._checkpoint.with_name(f"{stem}.{EMBED_ONNX_TAG}-{sha256_file(self._checkpoint)}.onnx")
        if path.is_file():
            try:
                return ort.InferenceSession(str(path), sess_options=options, providers=providers)
            except Exception as exc:  # onnxruntime's errors have no common base: a damaged file
                log.warning(f"{self.model_id}: exporting the ONNX embedding again: {path.name}: {exc!r}")
        # A CPU copy of its own (weights_only=True): the torch model of this predictor keeps its device.
        model, _, _ = load_checkpoint(self._checkpoint, device="cpu")
        network = _embedding_network(model, self.model_id, self.config)
        try:
            graph = _export_embedding(network, self.config)
            session = ort.InferenceSession(graph, sess_options=options, providers=providers)
        except Exception as exc:  # the exporter's and onnxruntime's errors have no common base
            log.warning(f"{self.model_id}: embeddings through torch: the ONNX export failed ({exc!r})")
            return None
        log.info(f"{self.model_id}: exported the embedding to ONNX ({len(graph) / 2**20:.1f} MB)")
        try:
            atomic_write_bytes(path, graph)
            for stale in path.parent.glob(f"{stem}.{EMBED_ONNX_TAG}-*.onnx"):
                if stale != path:  # an earlier checkpoint's export
                    stale.unlink(missing_ok=True)
        except OSError as exc:  # a read-only model folder: this export serves, uncached
            log.warning(f"{self.model_id}: the ONNX embedding is not cached at {path}: {exc}")
        return session

    @property
    def fingerprint(self) -> str:
        """16 hex digits of the sha256 of the model's exported weights (model.onnx): what a cache
        of its predictions is keyed by, since retraining the same settings reuses the model id."""
        if not hasattr(self, "_fingerprint"):
            digest = hashlib.sha256()
            with open(self._onnx, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
            self._fingerprint = digest.hexdigest()[:16]
        return self._fingerprint

    def media_column(self) -> str:
        """The crops column this model reads: `gray_media_path` (48 px) for a gray model, else `media_path`."""
        return "gray_media_path" if self.config.channels == 1 else "media_path"

    def predict_crops(self, wh: Warehouse, crop_ids: Sequence[str], batch_size: int = 64) -> CropPredictions:
        """Probabilities of stored crops, by crop id. A crop id that is not stored, or whose file
        cannot be read, is skipped with the reason (never the end of the run)."""
        column = self.media_column()
        with wh.connect() as con:
            con.register("wanted", _ids_table(crop_ids))
            found = con.sql(
                f"SELECT w.crop_id, c.image_id, c.{column} AS path FROM wanted w "
                "LEFT JOIN crops c USING (crop_id) ORDER BY w.i"
            ).fetchall()
        skipped = [(cid, "not in the crops table") for cid, _, path in found if path is None]
        known = [(cid, iid, path) for cid, iid, path in found if path is not None]
        prob = self.predict([p for _, _, p in known], batch_size=batch_size, skip_unreadable=True)
        readable = ~np.isnan(prob).any(1) if len(known) else np.zeros(0, bool)
        skipped += [(known[i][0], "unreadable crop file") for i in np.flatnonzero(~readable)]
        keep = np.flatnonzero(readable)
        return CropPredictions(
            labels=self.labels,
            crop_ids=[known[i][0] for i in keep],
            image_ids=[known[i][1] for i in keep],
            prob=prob[keep],
            skipped=skipped,
        )


def _embedding_network(model: torch.nn.Module, model_id: str, config: ModelConfig) -> torch.nn.Module:
    """The part of the network that embeds: the transfer networks' GAP output, or the seed-003
    CNN's last conv block average-pooled.

    Raises:
        ValueError: the architecture has no backbone to embed with.
    """
    if hasattr(model, "embed"):
        return _Embedding(model, model.embed)
    if hasattr(model, "features"):
        return _Embedding(
            model, lambda x: torch.flatten(torch.nn.functional.adaptive_avg_pool2d(model.features(x), 1), 1)
        )
    raise ValueError(f"model {model_id} ({config.architecture}) has no backbone embedding")


class _Embedding(torch.nn.Module):
    """A model's embedding as a module of its own (what is exported to ONNX)."""

    def __init__(self, model: torch.nn.Module, embed: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.model = model
        self._embed = embed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._embed(x)


def _export_embedding(network: torch.nn.Module, config: ModelConfig) -> bytes:
    """The embedding network (eval mode, CPU) as ONNX bytes: input "input" (N, C, S, S) float32,
    already normalised; output "embedding" (N, D); the batch axis is dynamic."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "embed.onnx"
        write_onnx(network.eval(), config, out, "embedding")
        return out.read_bytes()


def _cpu_count() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _ids_table(crop_ids: Sequence[str]):
    import pyarrow as pa

    return pa.table(
        {"i": pa.array(range(len(crop_ids)), pa.int64()), "crop_id": pa.array(list(crop_ids), pa.string())}
    )
