"""Dagster run configs generated from the library's settings classes (warehouse.settings.Settings
subclasses): the fields, their types, defaults and descriptions are declared once, there."""

from __future__ import annotations

from typing import Any, ClassVar, get_args, get_origin

from dagster import Config
from pydantic import Field, create_model

from warehouse.settings import Settings


def _config_field(annotation: Any, default: Any) -> tuple[Any, Any]:
    # Dagster's config schema has lists, not tuples; the settings turn the list back into a tuple.
    if get_origin(annotation) is tuple:
        return list[get_args(annotation)[0]], list(default)
    return annotation, default


class SettingsConfig(Config):
    """Base of the configs made by `settings_config`; its fields come from a settings class."""

    settings_type: ClassVar[type[Settings]]

    def settings(self) -> Settings:
        """The run's settings object.

        Raises:
            ConfigError: a value the settings refuse (one line, naming the field).
        """
        return self.settings_type(**{n: getattr(self, n) for n in self.settings_type.model_fields})


def config_fields(settings: type[Settings]) -> dict[str, tuple[Any, Any]]:
    """The fields of a settings class as Dagster config fields {name: (type, pydantic Field)}: to
    add a second settings class's fields to a config (`settings_config(..., **config_fields(X))`)."""
    fields = {}
    for n, f in settings.model_fields.items():
        annotation, default = _config_field(f.annotation, f.default)
        fields[n] = (annotation, Field(default, description=f.description))
    return fields


def settings_config(settings: type[Settings], name: str, **extra: Any) -> type[SettingsConfig]:
    """A Dagster `Config` class with the fields (types, defaults, descriptions) of `settings`, plus
    `extra` fields given as (type, pydantic Field) pairs; `.settings()` validates it."""
    fields = config_fields(settings)
    config = create_model(name, __base__=SettingsConfig, __doc__=settings.__doc__, **fields, **extra)
    config.settings_type = settings
    return config
