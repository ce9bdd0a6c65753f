"""Where the data root is: one resolver for the CLI, the Dagster resources and the labeling tools."""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "FERLAB_HOME"
DEFAULT_HOME = Path("var")


def configured_data_root() -> Path | None:
    """$FERLAB_HOME when it is set (and not empty), else None."""
    home = os.environ.get(HOME_ENV)
    return Path(home) if home else None


def data_root(explicit: str | Path | None = None) -> Path:
    """The data root: `explicit` when given (a --home flag, a resource's field), else
    $FERLAB_HOME, else ./var. Nothing is created or checked here."""
    if explicit:
        return Path(explicit)
    return configured_data_root() or DEFAULT_HOME
