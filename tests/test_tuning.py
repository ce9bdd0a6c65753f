"""Seed 004's Bayesian hyper-parameter search (models.tuning, `ferlab tune`, the `*_tuning` assets):
3 trials of the seed-003 CNN on the small demo's FER-2013 faces write the trials table, the best
trial is the lowest validation loss, and the best settings load and train in one command. The
search never sees the version's test faces."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ferlab import cli
from models.data import Faces
from models.pipeline import latest_model_id, load_run
from models.settings import AUTrainingSettings, EmotionTrainingSettings, load_settings
from models.tuning import TuningSettings, read_trials, search_space, tune, tuning_split
from warehouse import Warehouse
from warehouse.errors import ConfigError

# The test budget: the 48 px gray CNN, 2-3 epochs a trial, TPE after 2 random trials.
BASE = EmotionTrainingSettings(architecture="fer2013_cnn", device="cpu")
SEARCH = TuningSettings(trials=3, min_epochs=2, max_epochs=3, startup_trials=2, prune_warmup_epochs=1)


@pytest.fixture(scope="module")
def home(tmp_path_factory, fer2013_root) -> Path:
    """The small demo's FER-2013 faces (train / val / test from its Usage column), snapshotted."""
    return fer2013_root.copy(tmp_path_factory.mktemp("tuning") / "home")


@pytest.fixture(scope="module")
def version(fer2013_root) -> str:
    return fer2013_root.version


@pytest.fixture(scope="module")
def result(home, version):
    return tune(Warehouse(home), version, BASE, SEARCH)


@pytest.mark.slow
def test_three_trials_write_their_table_and_the_best_is_the_lowest_loss(result):
    trials = read_trials(result.directory).to_pylist()
    print(
        f"\n{len(trials)} trials in {result.seconds:.0f} s; best {result.best_trial}: {result.best_value:.4f}"
    )
    for t in trials:
        print(f"  {t}")
    assert len(trials) == 3 == len(result.trials)
    assert [t["trial"] for t in trials] == [0, 1, 2]
    complete = [t for t in trials if t["state"] == "complete"]
    assert complete and all(np.isfinite(t["value"]) for t in complete)
    best = min(complete, key=lambda t: t["value"])
    assert best["trial"] == result.best_trial and best["value"] == pytest.approx(result.best_value)
    assert [t["trial"] for t in trials if t["best"]] == [result.best_trial]
    # the seed-004 space, as far as the CNN has it: no dropout layer, nothing frozen
    searched = {"class_weight_mu", "epochs", "batch_size", "lr", "weight_decay"}
    assert set(result.best_params) == searched and searched <= set(trials[0])
    assert {"dropout", "finetune_blocks", "dense_layers"} <= set(result.skipped)
    for t in trials:
        assert SEARCH.min_epochs <= t["epochs"] <= SEARCH.max_epochs and 1 <= t["epochs_run"] <= t["epochs"]
        assert t["batch_size"] in SEARCH.batch_sizes
    report = (result.directory / "report.md").read_text()
    assert "## Trials" in report and f"{result.best_value:.4f}" in report
    assert "--from-settings" in report and (result.directory / "history.png").is_file()


@pytest.mark.slow
def test_the_best_settings_load_and_train_in_one_command(home, version, result):
    best = load_settings(result.best_settings_path)
    assert best == result.best_settings and isinstance(best, EmotionTrainingSettings)
    p = result.best_params
    assert best.scratch_epochs == p["epochs"] and best.scratch_lr == p["lr"]
    assert best.class_weight_mu == p["class_weight_mu"] and best.batch_size == p["batch_size"]
    assert best.weight_decay == p["weight_decay"]
    assert (
        best.replace(
            **{
                f: getattr(BASE, f)
                for f in ("scratch_epochs", "scratch_lr", "class_weight_mu", "batch_size", "weight_decay")
            }
        )
        == BASE
    )
    command = result.train_command().split()[1:]  # "ferlab train emotion --from-settings ... --version V"
    assert cli.main(["--home", str(home), *command, "--no-eval"]) == 0
    run = load_run(Warehouse(home), latest_model_id(Warehouse(home), "emotion", version))
    assert run.settings() == best and run.checkpoint.is_file()
    # the same faces, split and seed: the trained model reaches the best trial's own validation loss
    own = next(t["trial_loss"] for t in result.trials if t["best"])
    assert run.info["folds"][0]["best_val_loss"] == pytest.approx(own, abs=1e-3)


@pytest.mark.slow
def test_the_tuning_asset_through_dagster(home, version):
    """`emotion_tuning_job` on the version's partition: the asset's metadata carries the best value,
    the best parameters and the trials table."""
    from dagster import DagsterInstance

    from dagster_project.definitions import defs

    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("dataset_versions", [version])
    config = {
        **BASE.model_dump(exclude_defaults=True),
        **SEARCH.model_dump(exclude_defaults=True),
        "trials": 2,
        "search": ["lr", "epochs"],
        "max_epochs": 2,
    }
    run = defs.resolve_job_def("emotion_tuning_job").execute_in_process(
        instance=instance,
        partition_key=version,
        run_config={
            "resources": {"warehouse": {"config": {"home": str(home)}}},
            "ops": {"emotion_tuning": {"config": config}},
            "loggers": {"console": {"config": {"log_level": "WARNING"}}},
        },
    )
    assert run.success
    meta = run.asset_materializations_for_node("emotion_tuning")[0].metadata
    assert set(meta["best_params"].value) == {"lr", "epochs"}
    assert meta["dagster/row_count"].value == 2 and len(meta["trials"].value.records) == 2
    assert meta["best_value"].value > 0 and Path(meta["best_settings"].value).is_file()


# ---- no test face, ever; the space and the settings ------------------------------------------
def _faces(task: str, groups: list[str], splits: list[str]) -> Faces:
    n = len(groups)
    return Faces(
        task,
        ["a"],
        np.zeros((n, 1, 4, 4), np.uint8),
        np.zeros(n),
        np.array(groups),
        np.array(splits),
        [str(i) for i in range(n)],
    )


def test_the_split_never_holds_a_test_face():
    groups = [f"p{i // 4}" for i in range(40)]  # 10 people of 4 faces
    splits = ["test" if g in ("p0", "p1") else "val" if g == "p2" else "train" for g in groups]
    train, val, _ = tuning_split(_faces("emotion", groups, splits), holdout=True, seed=0)
    assert {splits[i] for i in train} == {"train"} and {splits[i] for i in val} == {"val"}
    train, val, how = tuning_split(_faces("au", groups, splits), holdout=False, seed=0)
    assert "test" not in {splits[i] for i in np.concatenate([train, val])}
    assert len(train) + len(val) == 32 and not {groups[i] for i in train} & {groups[i] for i in val}
    with pytest.raises(ValueError, match="too few"):
        tuning_split(_faces("emotion", groups, ["train"] * 40), holdout=True, seed=0)


def test_the_space_follows_the_network_and_the_task():
    dims, skipped = search_space(AUTrainingSettings(image_size=64), TuningSettings())
    by_name = {d.name: d for d in dims}
    assert "class_weight_mu" in skipped and "dense_layers" in skipped
    assert by_name["epochs"].target == "finetune_epochs" and by_name["lr"].target == "finetune_lr"
    assert by_name["finetune_blocks"].low == 1 and by_name["finetune_blocks"].high > 1
    assert by_name["dropout"].target == "dropout"
    dims, skipped = search_space(BASE, TuningSettings(search=("lr", "dropout")))
    assert [(d.name, d.target) for d in dims] == [("lr", "scratch_lr")] and "dropout" in skipped


def test_tuning_settings_refuse_what_cannot_be_searched():
    with pytest.raises(ConfigError, match="dense_layers cannot be searched"):
        TuningSettings(search=("lr", "dense_layers"))
    with pytest.raises(ConfigError, match="unknown parameter"):
        TuningSettings(search=("momentum",))
    with pytest.raises(ConfigError, match="min_epochs"):
        TuningSettings(min_epochs=5, max_epochs=2)
    assert TuningSettings().trials == 10  # seed 004's budget


def test_the_cli_flags_and_from_settings(tmp_path):
    args = cli.build_parser().parse_args(
        ["tune", "emotion", "--trials", "3", "--search", "lr", "epochs", "--architecture", "fer2013_cnn"]
    )
    assert cli.settings_from_flags(args, TuningSettings) == TuningSettings(trials=3, search=("lr", "epochs"))
    assert cli.training_settings(args) == EmotionTrainingSettings(architecture="fer2013_cnn")
    saved = tmp_path / "best_settings.json"
    saved.write_text(json.dumps({"settings": BASE.replace(scratch_lr=0.003).to_dict()}))
    args = cli.build_parser().parse_args(["train", "emotion", "--from-settings", str(saved), "--seed", "4"])
    assert cli.training_settings(args) == BASE.replace(scratch_lr=0.003, seed=4)  # flags override
    args = cli.build_parser().parse_args(["train", "au", "--from-settings", str(saved)])
    with pytest.raises(ConfigError, match="holds emotion settings, not au"):
        cli.training_settings(args)
