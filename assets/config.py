"""Dagster run configs (and resources) generated from the library's settings classes
(warehouse.settings.Settings subclasses): the fields, their types, defaults and descriptions are
declared once, there."""

from __future__ import annotations

from typing import Any, ClassVar, Literal, TypeVar, get_args, get_origin

from dagster import Config, ConfigurableResource
from pydantic import Field, create_model

from warehouse.settings import Settings


def _config_field(annotation: Any, default: Any) -> tuple[Any, Any]:
    # Dagster's config schema has lists, not tuples; the settings turn the list back into a tuple.
    if get_origin(annotation) is tuple:
        item = get_args(annotation)[0]
        if get_origin(item) is Literal:  # Dagster resolves no Literal inside a list: the settings check it
            item = type(get_args(item)[0])
        return list[item], list(default)
    return annotation, default


def settings_of(config: Config, settings: type[Settings]) -> Settings:
    """The `settings` object held in the fields of `config` (a config with `config_fields(settings)`).

    Raises:
        ConfigError: a value the settings refuse (one line, naming the field).
    """
    return settings(**{n: getattr(config, n) for n in settings.model_fields})


class _FromSettings:
    """What the generated configs and resources share: the settings class their fields come from."""

    settings_type: ClassVar[type[Settings]]

    def settings(self) -> Settings:
        """The run's settings object.

        Raises:
            ConfigError: a value the settings refuse (one line, naming the field).
        """
        return settings_of(self, self.settings_type)


C = TypeVar("C", bound=_FromSettings)


class SettingsConfig(_FromSettings, Config):
    """Base of the configs made by `settings_config`; its fields come from a settings class."""


class SettingsResource(_FromSettings, ConfigurableResource):
    """Base of the resources made by `settings_config(..., base=SettingsResource)`."""


def config_fields(settings: type[Settings]) -> dict[str, tuple[Any, Any]]:
    """The fields of a settings class as Dagster config fields {name: (type, pydantic Field)}: to
    add a second settings class's fields to a config (`settings_config(..., **config_fields(X))`)."""
    fields = {}
    for n, f in settings.model_fields.items():
        annotation, default = _config_field(f.annotation, f.default)
        fields[n] = (annotation, Field(default, description=f.description))
    return fields


def settings_config(
    settings: type[Settings], name: str, *, base: type[C] = SettingsConfig, **extra: Any
) -> type[C]:
    """A Dagster `Config` class (or, with `base=SettingsResource`, a resource to subclass) with the
    fields (types, defaults, descriptions) of `settings`, plus `extra` fields given as (type,
    pydantic Field) pairs; `.settings()` validates it."""
    fields = config_fields(settings)
    config = create_model(name, __base__=base, __doc__=settings.__doc__, **fields, **extra)
    config.settings_type = settings
    return config
