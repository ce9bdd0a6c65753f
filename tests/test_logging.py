"""Progress goes to one `logging` logger per package: a library call prints nothing and attaches no
handler, the CLI shows our packages' INFO lines (DEBUG with --debug) on stderr, and ferlab's
dagster.yaml has Dagster capture those loggers in the run log."""

from __future__ import annotations

import importlib
import logging
import sys

import numpy as np
import pytest

from ferlab.cli.common import PACKAGES, _StderrHandler, configure_logging


@pytest.fixture
def restore_logging():
    """configure_logging changes process-wide state: put it back for the other tests."""
    loggers = [logging.getLogger(), *(logging.getLogger(name) for name in PACKAGES)]
    saved = [(logger, list(logger.handlers), logger.level) for logger in loggers]
    yield
    for logger, handlers, level in saved:
        logger.handlers[:] = handlers
        logger.setLevel(level)


def _tiny_faces(n: int, settings):
    from models.data import Faces

    net = settings.network()
    rng = np.random.default_rng(0)
    labels = list(settings.task.labels)
    return Faces(
        task="emotion",
        labels=labels,
        images=rng.integers(0, 256, (n, net.channels, net.image_size, net.image_size), dtype=np.uint8),
        targets=np.arange(n) % len(labels),
        groups=np.array([f"g{i % 4}" for i in range(n)]),
        splits=np.array(["train"] * n),
        crop_ids=[f"c{i}" for i in range(n)],
    )


def test_training_logs_each_epoch_to_the_models_logger_and_prints_nothing(caplog, capsys):
    from models.settings import EmotionTrainingSettings
    from models.train import fit

    settings = EmotionTrainingSettings(
        architecture="fer2013_cnn", scratch_epochs=2, batch_size=4, augment=False, device="cpu"
    )
    faces = _tiny_faces(8, settings)
    with caplog.at_level(logging.INFO, logger="models"):
        fit(faces, np.arange(6), np.arange(6, 8), settings)
    epochs = [r for r in caplog.records if r.name == "models.train" and "epoch" in r.getMessage()]
    assert [r.levelno for r in epochs] == [logging.INFO, logging.INFO]
    assert "scratch epoch 2/2: train loss" in epochs[-1].getMessage()
    assert "val loss" in epochs[-1].getMessage() and epochs[-1].getMessage().endswith("s")
    assert capsys.readouterr().out == ""


LIBRARY_MODULES = (
    "models.train",
    "models.pipeline",
    "models.compact",
    "models.registry",
    "models.tuning",
    "labeling.curation.experiment",
    "labeling.analysis.gold",
)


def test_library_modules_attach_no_handler():
    for module in LIBRARY_MODULES:
        importlib.import_module(module)
        assert isinstance(sys.modules[module].log, logging.Logger), module
    for name in [*PACKAGES, *LIBRARY_MODULES]:  # (a CLI run earlier in this process may have added its own)
        assert not [h for h in logging.getLogger(name).handlers if not isinstance(h, _StderrHandler)], name


def test_cli_logging_shows_our_info_on_stderr_and_third_party_warnings_only(capsys, restore_logging):
    configure_logging()
    configure_logging()  # again: replaced, not doubled
    logging.getLogger("models.train").info("finetune epoch 1/5: train loss 0.5")
    logging.getLogger("models.train").debug("head epoch 1/50")
    chatty = logging.getLogger("some_dependency")
    chatty.setLevel(logging.INFO)
    chatty.info("not shown")
    chatty.warning("shown")
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 2
    assert lines[0].endswith("models.train: finetune epoch 1/5: train loss 0.5")
    assert lines[1].endswith("some_dependency: shown")

    configure_logging(debug=True)
    logging.getLogger("labeling.curation.pseudo").debug("a debug line")
    assert capsys.readouterr().err.strip().endswith("labeling.curation.pseudo: a debug line")


def test_main_sets_up_logging(tmp_path, capsys, restore_logging):
    from ferlab.cli import main

    assert main(["--home", str(tmp_path), "weights"]) == 0
    assert "present" in capsys.readouterr().out
    logging.getLogger("models.pipeline").info("progress")
    assert "models.pipeline: progress" in capsys.readouterr().err


def test_ferlab_dagster_yaml_has_dagster_capture_our_loggers():
    import yaml

    from ferlab.demo import DAGSTER_YAML, OLD_DAGSTER_YAMLS

    logs = yaml.safe_load(DAGSTER_YAML)["python_logs"]
    assert {"models", "labeling", "warehouse"} <= set(logs["managed_python_loggers"])
    assert logs["python_log_level"] == "INFO"
    assert DAGSTER_YAML not in OLD_DAGSTER_YAMLS  # a data root with the older one is upgraded
