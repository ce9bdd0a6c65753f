"""labeling.settings: one frozen, validated settings object per labeling run, the `ferlab`
flags derived from it, saved beside the model."""

from __future__ import annotations

import argparse

import pydantic
import pytest

from ferlab.cli import add_settings_flags, main, settings_from_flags
from labeling.detection.settings import AutoLabelSettings
from labeling.student.settings import MODEL_YAML, StudentDetectorSettings
from warehouse.errors import ConfigError


def test_bad_values_are_config_errors_naming_the_field():
    with pytest.raises(ConfigError, match="epochs") as info:
        StudentDetectorSettings(epochs=0)
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="model_yaml"):
        StudentDetectorSettings(model_yaml="yolo11n.pt")
    with pytest.raises(ConfigError, match="init"):
        StudentDetectorSettings(init="imagenet")
    with pytest.raises(ConfigError, match="epoch"):
        StudentDetectorSettings(epoch=3)  # a typo is not silently ignored
    with pytest.raises(ConfigError, match="margin"):
        AutoLabelSettings(margin=-0.1)


def test_settings_are_frozen_and_round_trip(tmp_path):
    settings = StudentDetectorSettings(epochs=3, init="scratch")
    with pytest.raises(pydantic.ValidationError):
        settings.epochs = 4
    path = settings.save(tmp_path)
    assert StudentDetectorSettings.load(path) == settings == StudentDetectorSettings.load(tmp_path)
    # the working default: a YOLO11n started from the packaged YOLO11n-seg
    assert (StudentDetectorSettings().model_yaml, StudentDetectorSettings().init) == (
        MODEL_YAML,
        "yolo11n-seg",
    )


@pytest.mark.parametrize("cls", [StudentDetectorSettings, AutoLabelSettings])
def test_flags_are_the_fields(cls):
    parser = argparse.ArgumentParser()
    add_settings_flags(parser, cls)
    assert settings_from_flags(parser.parse_args([]), cls) == cls()
    name, info = next((n, i) for n, i in cls.model_fields.items() if i.annotation is int)
    changed = settings_from_flags(
        parser.parse_args([f"--{name.replace('_', '-')}", str(info.default + 1)]), cls
    )
    assert getattr(changed, name) == info.default + 1


def test_the_cli_refuses_a_bad_flag_before_any_work(tmp_path, capsys):
    assert main(["--home", str(tmp_path / "home"), "face-detector", "--epochs", "0"]) != 0
    assert "epochs" in capsys.readouterr().err
    assert not (tmp_path / "home").exists()


def test_a_tuple_of_choices_is_a_flag_of_choices(capsys):
    """Bug: `--strategies` (a tuple of Literal) called the Literal as its type, so every value was
    refused; now the choices are listed in --help and checked by argparse."""
    from labeling.curation.settings import ActiveLearningSettings

    parser = argparse.ArgumentParser()
    add_settings_flags(parser, ActiveLearningSettings)
    args = parser.parse_args(["--strategies", "queue", "random"])
    assert settings_from_flags(args, ActiveLearningSettings).strategies == ("queue", "random")
    with pytest.raises(SystemExit):
        parser.parse_args(["--strategies", "queue", "bogus"])
    assert "invalid choice: 'bogus'" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="strategies"):
        ActiveLearningSettings(strategies=("bogus",))
