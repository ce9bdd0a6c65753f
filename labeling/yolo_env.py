"""Ultralytics without a network: call `prepare_ultralytics_offline()` before any
`import ultralytics` (../shared/STACK.md, "Ultralytics offline").

Ultralytics reads its environment once, at import: where its settings live, whether it may
go online, whether it may pip-install missing packages. Its `check_font` also downloads
Arial.ttf from GitHub unless the file is already in its config folder.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

FONT_NAME = "Arial.ttf"


def default_config_dir() -> Path:
    """<data root>/ultralytics when $FERLAB_HOME is set, else a per-user temp folder: never
    ~/.config, which a data platform should not write to behind the user's back."""
    home = os.environ.get("FERLAB_HOME")
    if home:
        return Path(home).expanduser() / "ultralytics"
    return Path(tempfile.gettempdir()) / f"ferlab-ultralytics-{os.getuid()}"


def _install_font(folder: Path) -> None:
    """Put matplotlib's DejaVuSans where ultralytics looks for Arial.ttf."""
    target = folder / FONT_NAME
    if target.is_file():
        return
    from matplotlib import font_manager

    source = Path(font_manager.findfont("DejaVu Sans", fallback_to_default=True))
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{FONT_NAME}.{os.getpid()}.tmp"
    shutil.copyfile(source, tmp)
    os.replace(tmp, target)  # parallel workers may race here: the rename keeps it whole


def prepare_ultralytics_offline(config_dir: Path | None = None) -> None:
    """Make ultralytics work with zero network calls; idempotent.

    Sets YOLO_OFFLINE=1, YOLO_AUTOINSTALL=0 and YOLO_CONFIG_DIR (`config_dir`, else the
    variable already set, else `default_config_dir()`), installs the font, and turns the
    settings' `sync` (usage analytics) off."""
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_AUTOINSTALL"] = "0"
    if config_dir is not None:
        os.environ["YOLO_CONFIG_DIR"] = str(config_dir)
    elif not os.environ.get("YOLO_CONFIG_DIR"):
        os.environ["YOLO_CONFIG_DIR"] = str(default_config_dir())
    folder = Path(os.environ["YOLO_CONFIG_DIR"]).expanduser() / "Ultralytics"
    _install_font(folder)

    already = "ultralytics.utils" in sys.modules
    import cv2

    opencv_threads = cv2.getNumThreads() if not already else cv2.getNumberOfCPUs()
    from ultralytics import utils

    _keep_thread_settings(opencv_threads)

    if already and folder != utils.USER_CONFIG_DIR:
        # Imported before us: its config folder is fixed; give that one the font too.
        _install_font(Path(utils.USER_CONFIG_DIR))
    if utils.SETTINGS.get("sync", True):
        utils.SETTINGS.update(sync=False)


def _keep_thread_settings(opencv_threads: int) -> None:
    """ultralytics turns OpenCV's threads off at import, and sets torch to cpu_count - 1
    threads whenever it selects a CPU device (one thread on 2 cores, process-wide: a model
    trained after a detection ran at half speed). Keep the process' own settings."""
    import cv2
    import torch
    from ultralytics.utils import torch_utils

    torch_utils.NUM_THREADS = torch.get_num_threads()
    cv2.setNumThreads(opencv_threads)
