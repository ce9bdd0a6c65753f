"""Ultralytics without a network: call `prepare_ultralytics_offline()` before any
`import ultralytics`.

Ultralytics reads its environment once, at import: where its settings live, whether it may
go online, whether it may pip-install missing packages, whether it loads .pt files with
`weights_only` (labeling.detection.safe_weights). Its `check_font` also downloads Arial.ttf from GitHub
unless the file is already in its config folder.
"""

from __future__ import annotations

import os
import shutil
import stat
import sys
from pathlib import Path

from warehouse.atomic import atomic_path
from warehouse.errors import StorageError
from warehouse.paths import configured_data_root

FONT_NAME = "Arial.ttf"
OMP_THREADS = "OMP_NUM_THREADS"


def user_cache_dir() -> Path:
    """$XDG_CACHE_HOME (when absolute, as the XDG spec asks), else ~/.cache."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    return Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"


def default_config_dir() -> Path:
    """<data root>/ultralytics when $FERLAB_HOME is set, else <user cache>/ferlab/ultralytics,
    made private (see `private_dir`). Never ~/.config, which a data platform should not write
    to behind the user's back, nor a fixed name in the shared temp folder, which another user
    can create first and fill with settings that redirect ultralytics' runs and weights."""
    home = configured_data_root()
    if home:
        return home.expanduser() / "ultralytics"
    ours = user_cache_dir() / "ferlab"
    private_dir(ours)
    return private_dir(ours / "ultralytics")


def private_dir(folder: Path) -> Path:
    """`folder`, created with mode 0700 when missing (its parents as mkdir makes them). An
    existing one must be a real folder of this user that no one else can write to: anything
    else (a symlink, another owner, group- or world-writable) is a StorageError, since whoever
    controls it decides what the tools that keep their settings there read and write."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        folder.mkdir(mode=0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise StorageError(
            f"{folder}: cannot create ultralytics' settings folder ({exc.strerror or exc}); "
            "set FERLAB_HOME or YOLO_CONFIG_DIR to a folder of your own"
        ) from exc
    info = os.lstat(folder)
    problem = None
    if stat.S_ISLNK(info.st_mode):
        problem = "it is a symbolic link"
    elif not stat.S_ISDIR(info.st_mode):
        problem = "it is not a folder"
    elif info.st_uid != os.geteuid():
        problem = f"it belongs to user id {info.st_uid}, not to you"
    elif info.st_mode & 0o022:
        problem = f"others can write to it (mode {stat.S_IMODE(info.st_mode):o})"
    if problem:
        raise StorageError(
            f"{folder}: refused as ultralytics' settings folder: {problem}, so another user could "
            "redirect where models and runs are read and written; remove it, or set FERLAB_HOME or "
            "YOLO_CONFIG_DIR to a folder of your own"
        )
    return folder


def _install_font(folder: Path) -> None:
    """Put matplotlib's DejaVuSans where ultralytics looks for Arial.ttf."""
    target = folder / FONT_NAME
    if target.is_file():
        return
    from matplotlib import font_manager

    source = Path(font_manager.findfont("DejaVu Sans", fallback_to_default=True))
    folder.mkdir(parents=True, exist_ok=True)
    # parallel workers may race here: the rename keeps it whole
    with atomic_path(target, durable=False) as tmp:
        shutil.copyfile(source, tmp)


def prepare_ultralytics_offline(config_dir: Path | None = None) -> None:
    """Make ultralytics work with zero network calls and load no code from a weights file;
    idempotent.

    Sets YOLO_OFFLINE=1, YOLO_AUTOINSTALL=0, ULTRALYTICS_SAFE_LOAD=1 and YOLO_CONFIG_DIR
    (`config_dir`, else the variable already set, else `default_config_dir()`), installs the
    font, and turns the settings' `sync` (usage analytics) off."""
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_AUTOINSTALL"] = "0"
    os.environ["ULTRALYTICS_SAFE_LOAD"] = "1"
    if config_dir is not None:
        os.environ["YOLO_CONFIG_DIR"] = str(config_dir)
    elif not os.environ.get("YOLO_CONFIG_DIR"):
        os.environ["YOLO_CONFIG_DIR"] = str(default_config_dir())
    folder = Path(os.environ["YOLO_CONFIG_DIR"]).expanduser() / "Ultralytics"
    _install_font(folder)

    already = "ultralytics.utils" in sys.modules
    import cv2

    opencv_threads = cv2.getNumThreads() if not already else cv2.getNumberOfCPUs()
    omp_threads = os.environ.get(OMP_THREADS)
    import torch  # noqa: F401  (before ultralytics: its OpenMP reads OMP_NUM_THREADS once, at load)
    from ultralytics import utils

    _keep_thread_settings(opencv_threads, omp_threads, already)
    _restrict_checkpoint_loading()

    if already and folder != utils.USER_CONFIG_DIR:
        # Imported before us: its config folder is fixed; give that one the font too.
        _install_font(Path(utils.USER_CONFIG_DIR))
    if utils.SETTINGS.get("sync", True):
        utils.SETTINGS.update(sync=False)


def _keep_thread_settings(opencv_threads: int, omp_threads: str | None, already: bool) -> None:
    """ultralytics turns OpenCV's threads off at import, sets torch to cpu_count - 1 threads
    whenever it selects a CPU device (one thread on 2 cores, process-wide: a model trained after
    a detection ran at half speed), and sets OMP_NUM_THREADS=1 when unset, which every process
    started afterwards inherits (Dagster's step workers, a CLI run from here: training on one
    thread). Keep the process' own settings (`omp_threads`: OMP_NUM_THREADS before the import;
    when ultralytics was imported `already`, what it set is left alone)."""
    import cv2
    import torch
    from ultralytics.utils import torch_utils

    torch_utils.NUM_THREADS = torch.get_num_threads()
    cv2.setNumThreads(opencv_threads)
    if omp_threads is None and not already:
        os.environ.pop(OMP_THREADS, None)


def _restrict_checkpoint_loading() -> None:
    """ultralytics reads ULTRALYTICS_SAFE_LOAD once, at import: when it was imported before
    the variable was set, switch on the flag its loader reads at each load. Its restricted
    loader then unpickles .pt files with `weights_only=True` against its allow-list (also for
    the loads it makes on its own, as training's `pretrained=`) and parses model yaml without
    eval. labeling.detection.safe_weights.require_restricted_loading checks it before every load."""
    from ultralytics.nn import tasks

    if hasattr(tasks, "SAFE_LOAD"):
        tasks.SAFE_LOAD = True
