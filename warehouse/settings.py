"""The base of every run's settings object (model training, the student detector, auto-labeling):
frozen, validated once, unknown fields refused, a bad value one ConfigError line naming the field,
saved as JSON beside what the run made and loaded back equal. The `ferlab` flags and the Dagster
configs are generated from the subclasses' fields, so a setting is declared once."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from warehouse.atomic import atomic_write_bytes
from warehouse.errors import ConfigError

SETTINGS_FILE = "settings.json"

# The device a run computes on, the same field in every settings class that has one:
# `device: Device = DEFAULT_DEVICE` (models.device.resolve_device reads it).
DEFAULT_DEVICE = "auto"
Device = Annotated[
    str, Field(min_length=1, description="auto (cuda when present, else cpu) | cpu | cuda[:n]")
]


def describe_validation_error(kind: str, error: ValidationError) -> str:
    """A pydantic error as one line: `kind: field=value: what is wrong; ...`."""
    parts = []
    for e in error.errors():
        where = ".".join(str(x) for x in e["loc"])
        msg = str(e["msg"]).removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            parts.append(f"unknown setting {where!r}")
        elif where:
            parts.append(f"{where}={e['input']!r}: {msg}")
        else:
            parts.append(msg)
    return f"{kind}: " + "; ".join(parts)


class Settings(BaseModel):
    """Frozen, validated settings of one run kind; subclasses declare the fields."""

    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())

    def __init__(self, **data: Any) -> None:
        """Validate `data` into settings.

        Raises:
            ConfigError: an unknown setting, a value of the wrong type or out of range, or values
                that do not go together.
        """
        try:
            super().__init__(**data)
        except ValidationError as e:
            raise ConfigError(describe_validation_error(type(self).__name__, e)) from None

    def replace(self, **changes: Any) -> Self:
        """A validated copy with `changes` (settings themselves never change).

        Raises:
            ConfigError: as the constructor.
        """
        return type(self)(**{**self.model_dump(), **changes})

    def save(self, folder: str | Path) -> Path:
        """Write these settings as folder/settings.json (atomically); return its path."""
        path = Path(folder) / SETTINGS_FILE
        atomic_write_bytes(path, (self.model_dump_json(indent=2) + "\n").encode())
        return path

    @classmethod
    def load(cls, path: str | Path) -> Self:
        """Settings written by `save` (a settings.json or its folder).

        Raises:
            ConfigError: they no longer validate.
            OSError: the file cannot be read.
        """
        path = Path(path)
        if path.is_dir():
            path = path / SETTINGS_FILE
        return cls(**json.loads(path.read_text()))
