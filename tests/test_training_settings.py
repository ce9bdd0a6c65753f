"""The training settings: validated once with one-line errors, frozen, saved and loaded back equal,
and the only place a setting is declared (the Dagster configs and the CLI flags follow its fields);
task behaviour lives in the task classes, not in `task == ...` branches."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from pydantic import Field, ValidationError

from assets.config import settings_config
from assets.models import AUModelConfig, EmotionModelConfig, LossComparisonConfig
from ferlab.cli import build_parser
from models.settings import (
    SETTINGS,
    AUTrainingSettings,
    EmotionTrainingSettings,
    load_settings,
    settings_from_dict,
)
from models.tasks import TASKS, get_task
from warehouse.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_follow_the_seeds():
    au, emotion = AUTrainingSettings(), EmotionTrainingSettings()
    net = au.network()
    assert (net.architecture, net.image_size, net.weights) == ("mobilenet_v2", 224, "packaged")
    assert au.finetune_lr == 1e-5 and au.folds == 3 and au.protocol == "3-fold"
    assert net.labels == ["AU1", "AU2", "AU4", "AU6", "AU9", "AU12", "AU25", "AU26"]
    assert emotion.folds == 0 and emotion.protocol == "holdout" and emotion.network().weights == "packaged"
    cnn = EmotionTrainingSettings(architecture="fer2013_cnn").network()
    assert (cnn.image_size, cnn.channels, cnn.weights) == (48, 1, "")  # seed 003: 48 px gray, from scratch


@pytest.mark.parametrize(
    "kind, changes, message",
    [
        ("au", {"architecture": "resnet50"}, "architecture='resnet50'"),
        ("au", {"loss": "hinge"}, "loss='hinge'"),
        ("au", {"architecture": "densenet121", "weights": "packaged"}, "exists only for mobilenet_v2"),
        ("emotion", {"architecture": "fer2013_cnn", "weights": "packaged"}, "exists only for mobilenet_v2"),
        ("au", {"alpha": 0.5}, "alpha 1.0"),  # the packaged weights are for the full-width network
        ("au", {"finetune_lr": -1.0}, "finetune_lr=-1.0"),
        ("au", {"folds": 1}, "folds=1"),
        ("emotion", {"folds": 1}, "1 fold"),
        ("au", {"image_size": 16}, "image_size must be >= 32"),
        ("au", {"aus": (1, 1)}, "distinct"),
        ("au", {"epochs": 3}, "unknown setting 'epochs'"),  # one epochs for two stages is gone
        ("emotion", {"loss": "pr"}, "unknown setting 'loss'"),
    ],
)
def test_bad_settings_are_one_clear_line(kind, changes, message):
    with pytest.raises(ConfigError, match=re.escape(message)) as e:
        SETTINGS[kind](**changes)
    assert "\n" not in str(e.value) and str(e.value).startswith(SETTINGS[kind].__name__)


def test_no_silent_switch_to_random_init():
    # asking for random init (or a file) on a backbone without packaged weights is fine
    assert AUTrainingSettings(architecture="densenet121", weights="").network().weights == ""
    # and leaving weights unset gives the architecture's own start, stated in the field's description
    assert AUTrainingSettings(architecture="densenet121").network().weights == ""
    assert "random init for the" in AUTrainingSettings.model_fields["weights"].description


def test_settings_are_frozen_and_copies_are_validated():
    s = AUTrainingSettings()
    with pytest.raises(ValidationError):
        s.loss = "pr"
    faster = s.replace(image_size=112, finetune_epochs=2)
    assert (s.image_size, s.finetune_epochs) == (None, 5) and (faster.image_size, faster.finetune_epochs) == (
        112,
        2,
    )
    with pytest.raises(ConfigError, match="loss"):
        s.replace(loss="hinge")
    assert hash(s) == hash(AUTrainingSettings())  # frozen: usable as a key


@pytest.mark.parametrize(
    "settings",
    [
        AUTrainingSettings(aus=(1, 12), loss="lsep", image_size=96, refit=True, pos_weight=True),
        EmotionTrainingSettings(architecture="fer2013_cnn", scratch_epochs=7, class_weight_mu=None, folds=3),
    ],
    ids=["au", "emotion"],
)
def test_round_trip_through_run_json(tmp_path, settings):
    run_json = tmp_path / "run.json"
    run_json.write_text(json.dumps({"settings": settings.to_dict()}))
    back = load_settings(run_json)
    assert back == settings and type(back) is type(settings)
    assert settings_from_dict(json.loads(json.dumps(settings.to_dict()))) == settings
    with pytest.raises(ConfigError, match="unknown kind"):
        settings_from_dict({"kind": "pose", "settings": {}})


def test_dagster_config_is_derived_from_the_settings_fields():
    for config, settings in (
        (AUModelConfig, AUTrainingSettings),
        (EmotionModelConfig, EmotionTrainingSettings),
    ):
        assert set(config.model_fields) == set(settings.model_fields)
        for name, field in settings.model_fields.items():
            assert config.model_fields[name].description == field.description
        assert config().settings() == settings()  # same defaults
    assert set(LossComparisonConfig.model_fields) == set(AUTrainingSettings.model_fields) | {"losses"}
    assert AUModelConfig(aus=[1, 2], finetune_epochs=1).settings() == AUTrainingSettings(
        aus=(1, 2), finetune_epochs=1
    )
    with pytest.raises(ConfigError, match="exists only for mobilenet_v2"):
        AUModelConfig(architecture="densenet201", weights="packaged").settings()


class _WithNewField(AUTrainingSettings):
    """A settings class with one more field: it must reach the Dagster config and the CLI."""

    warmup_epochs: int = Field(2, ge=0, description="a setting added in one place")


def test_a_new_field_appears_in_the_dagster_config_and_the_cli():
    config = settings_config(_WithNewField, "WithNewFieldConfig")
    assert config.model_fields["warmup_epochs"].description == "a setting added in one place"
    assert config(warmup_epochs=4).settings().warmup_epochs == 4

    import argparse

    from ferlab.cli import add_settings_flags, settings_from_flags

    parser = argparse.ArgumentParser()
    add_settings_flags(parser, _WithNewField)
    args = parser.parse_args(["--warmup-epochs", "5", "--loss", "pr", "--no-augment"])
    settings = settings_from_flags(args, _WithNewField)
    assert (settings.warmup_epochs, settings.loss, settings.augment) == (5, "pr", False)
    assert settings.finetune_lr == 1e-5  # flags not given keep the settings' defaults
    assert "a setting added in one place" in parser.format_help()


def test_cli_train_flags_are_the_settings_fields():
    parser = build_parser()
    for kind, settings_type in SETTINGS.items():
        args = parser.parse_args(["train", kind])
        assert args.settings_type is settings_type
        help_text = parser._subparsers._group_actions[0].choices["train"]._subparsers._group_actions[0]
        flags = {a.dest for a in help_text.choices[kind]._actions} - {
            "help",
            "version",
            "no_eval",
            "from_settings",
        }
        assert flags == set(settings_type.model_fields)
    args = parser.parse_args(["train", "au", "--aus", "1", "12", "--weights", "none", "--image-size", "96"])
    from ferlab.cli import settings_from_flags

    s = settings_from_flags(args, AUTrainingSettings)
    assert s == AUTrainingSettings(aus=(1, 12), weights=None, image_size=96)
    args = parser.parse_args(["train", "emotion", "--class-weight-mu", "none"])
    assert settings_from_flags(args, EmotionTrainingSettings).class_weight_mu is None


def test_tasks_are_types_not_string_branches():
    assert set(TASKS) == set(SETTINGS) == {"au", "emotion"}
    assert get_task("au").headline == "avg_f1" and get_task("emotion").headline == "accuracy"
    with pytest.raises(ConfigError, match="pose"):
        get_task("pose")
    branch = re.compile(r"""\btask\s*[!=]=|==\s*["'](au|emotion)["']|["'](au|emotion)["']\s*if\b""")
    # every package, labeling's rooms included; models/tasks.py is where the tasks are told apart
    packages = ("ferlab", "dagster_project", "assets", "labeling", "models", "warehouse")
    files = sorted(
        p for package in packages for p in (ROOT / package).rglob("*.py") if p != ROOT / "models" / "tasks.py"
    )
    scanned = {p.relative_to(ROOT).as_posix() for p in files}
    assert {"models/settings.py", "assets/models.py", "labeling/curation/review.py"} <= scanned
    assert {"labeling/curation/pseudo.py", "labeling/labelstudio/sync.py"} <= scanned
    assert any(name.startswith("ferlab/cli") for name in scanned)  # ferlab/cli.py or the ferlab/cli/ package
    found = [
        f"{p.relative_to(ROOT)}:{i}: {line.strip()}"
        for p in files
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if branch.search(line)
    ]
    assert found == []


def test_the_loss_belongs_to_the_settings_that_hold_its_fields():
    import numpy as np
    import torch

    from models.settings import AUTrainingSettings, EmotionTrainingSettings

    partial = np.array([[1.0, np.nan], [0.0, 1.0]], np.float32)
    with pytest.raises(ConfigError, match="unknown AUs"):
        AUTrainingSettings(aus=(1, 2), loss="pr").criterion(partial, torch.device("cpu"))
    bce = AUTrainingSettings(aus=(1, 2), pos_weight=True).criterion(
        np.nan_to_num(partial), torch.device("cpu")
    )
    assert float(bce(torch.zeros(2, 2), torch.tensor(np.nan_to_num(partial)))) > 0
    weighted = EmotionTrainingSettings().criterion(np.array([0, 0, 1]), torch.device("cpu"))
    plain = EmotionTrainingSettings(class_weight_mu=None).criterion(np.array([0, 0, 1]), torch.device("cpu"))
    logits, y = torch.randn(3, 7), torch.tensor([0, 0, 1])
    assert not torch.isclose(weighted(logits, y), plain(logits, y))
