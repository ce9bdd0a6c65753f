"""Resources: where the data root and the sources are. Defaults resolve from the environment
at run time, so the same definitions serve `make dev`, tests and a user's own deployment."""

from __future__ import annotations

import os
from pathlib import Path

from dagster import ConfigurableResource

from assets.config import SettingsResource, settings_config
from labeling.detection.settings import AutoLabelSettings
from warehouse import Warehouse
from warehouse.paths import data_root


def default_home() -> Path:
    """The data root when a resource leaves it empty: $FERLAB_HOME, else ./var (warehouse.paths)."""
    return data_root()


# Where a ground-truth face-box CSV (labeling.student.truth) is looked for under the data root: the
# demo (`ferlab demo`) renders its generator's truth there; one dropped there by hand also
# scores the trained face detector.
FACE_TRUTH_CSV = Path("sources") / "truth" / "faces.csv"


def face_truth_csv(home: Path) -> Path | None:
    """<home>/sources/truth/faces.csv when it exists, else None."""
    path = Path(home) / FACE_TRUTH_CSV
    return path if path.is_file() else None


class WarehouseResource(ConfigurableResource):
    """The data root (media, Parquet tables, DuckDB catalog). Empty: $FERLAB_HOME, then ./var."""

    home: str = ""

    def root(self) -> Path:
        """The data root's folder."""
        return Path(self.home) if self.home else default_home()

    def get(self) -> Warehouse:
        return Warehouse(self.root())


class SourcesResource(ConfigurableResource):
    """Where raw sources are dropped. Empty fields fall back to $FERLAB_DISFA_ROOT,
    $FERLAB_FER2013_CSV, $FERLAB_SCRAPED_ROOT, then to <data root>/sources/{disfa,fer2013.csv,scraped}."""

    disfa_root: str = ""
    fer2013_csv: str = ""
    scraped_root: str = ""
    disfa_stride: int = 1  # keep every n-th video frame (DISFA has 4,845 frames per video)

    def _resolve(self, value: str, env: str, default: str) -> Path:
        return Path(value or os.environ.get(env) or default_home() / "sources" / default)

    def disfa(self) -> Path:
        return self._resolve(self.disfa_root, "FERLAB_DISFA_ROOT", "disfa")

    def fer2013(self) -> Path:
        return self._resolve(self.fer2013_csv, "FERLAB_FER2013_CSV", "fer2013.csv")

    def scraped(self) -> Path:
        return self._resolve(self.scraped_root, "FERLAB_SCRAPED_ROOT", "scraped")


class DetectorResource(settings_config(AutoLabelSettings, "DetectorFields", base=SettingsResource)):
    """The production detector, its fields those of labeling.detection.settings.AutoLabelSettings.
    `spec` "auto": the trained YOLO student of this data root when there is one
    (models/face_detector/student.pt), else the teachers (YuNet faces + packaged YOLO11n persons);
    or "yunet", "yolo", "teachers", or a path to a YOLO .pt/.onnx file. `.settings()`: these fields
    as AutoLabelSettings (validated: ConfigError)."""

    def resolve_spec(self, home: Path) -> str:
        from labeling.student.face_detector import resolve_detector

        return resolve_detector(home, self.spec, fallback="teachers")

    def load(self, home: Path):
        from labeling.detection.yolo_env import prepare_ultralytics_offline

        prepare_ultralytics_offline(home / "ultralytics")
        from labeling.detection.detectors import load_detector

        return load_detector(self.resolve_spec(home), device=self.device)


class LabelStudioResource(ConfigurableResource):
    """The Label Studio server (labeling.labelstudio.sync). Empty fields fall back to
    $LABEL_STUDIO_URL (default http://127.0.0.1:8089) and $LABEL_STUDIO_API_KEY, read when the
    client is made; set `api_key` only through `EnvVar("LABEL_STUDIO_API_KEY")` so it never lands
    in the run's configuration."""

    url: str = ""
    api_key: str = ""
    project_title: str = "ferlab faces"

    def client(self):
        from labeling.labelstudio.sync import LabelStudioClient, LabelStudioSettings

        return LabelStudioClient(
            LabelStudioSettings.from_env(url=self.url or None, api_key=self.api_key or None)
        )
