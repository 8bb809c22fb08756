"""Whole-case validation during training: the Dice it logs is the one brats/evaluate.py gives on
the same predictions, and the best model follows it."""

import csv
import dataclasses
import json

import numpy as np
import pytest

from helpers import run_script
from unet3d.validation import DICE_KEYS


def csv_rows(path):
    with open(path, newline="") as stream:
        return list(csv.DictReader(stream))


def test_the_logged_dice_is_evaluate_pys(trained, synthetic_brats, tmp_path):
    """The best epoch's logged Dice equals brats/evaluate.py's on the predictions the best model
    wrote at the end, scored against the original label files (to 1e-6)."""
    rows = csv_rows(trained.training_log)
    assert len(rows) == 3 and all(0 <= float(row[key]) <= 1 for row in rows for key in DICE_KEYS)
    best = max(rows, key=lambda row: float(row["val_dice_mean"]))
    result = run_script("evaluate.py", "--prediction_dir", f"{trained.run_dir}/validation/predictions",
                        "--truth_dir", str(synthetic_brats), "--output_dir",
                        str(tmp_path / "scores"), "--nooverlays", "--skip_missing")
    assert result.returncode == 0, result.stderr[-2000:]
    scores = csv_rows(tmp_path / "scores" / "scores.csv")
    assert len(scores) == 2
    for region in ("wt", "tc", "et"):
        evaluated = np.mean([float(row[f"{region}_dice"]) for row in scores])
        assert evaluated == pytest.approx(float(best[f"val_dice_{region}"]), abs=1e-6)


def test_the_best_model_is_the_epoch_of_the_best_validation_dice(trained):
    with open(f"{trained.model_file}.run/state.json") as stream:
        state = json.load(stream)
    values = [row["val_dice_mean"] for row in state["history"]]
    assert state["monitor"] == "val_dice_mean" and state["mode"] == "max"
    assert state["best"] == max(values)
    summary = {row["statistic"]: row for row in csv_rows(f"{trained.run_dir}/validation/summary.csv")}
    means = [float(summary["mean"][f"{region}_dice"]) for region in ("wt", "tc", "et")]
    assert np.mean(means) == pytest.approx(max(values), abs=1e-6)


def test_the_final_validation_is_replaced_whole_and_redone_for_a_new_best_model(
        trained, tmp_path, monkeypatch):
    """A final validation killed half-way leaves the previous one whole (no mix of two models'
    predictions), and is redone on the next run, unless the folder holds that model's."""
    from unet3d import recipes, validation
    from unet3d.data import DataStore
    from unet3d.splits import load_keys
    from unet3d.training import RunResult

    config = dataclasses.replace(trained, run_dir=str(tmp_path / "run"))
    out = tmp_path / "run" / "validation"

    def contents():
        return {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    with DataStore(config.data_file) as store:
        config = dataclasses.replace(config, convention=store.convention.name)
        cases = load_keys(config.validation_keys_file, store)
        recipes.finish_run(config, store, cases, None, RunResult([], 3, 0))
        first = contents()
        assert json.loads(first["validated.json"])["epochs_done"] == 3
        assert len([name for name in first if name.startswith("predictions/")]) == 2
        monkeypatch.setattr(validation, "evaluate_folder", killed)
        with pytest.raises(KeyboardInterrupt):  # the run was extended: killed while validating
            recipes.finish_run(config, store, cases, None, RunResult([], 4, 3))
        assert contents() == first
        assert [p.name for p in (tmp_path / "run").iterdir()] == ["validation"]
        recipes.finish_run(config, store, cases, None, RunResult([], 3, 3))  # that model's: kept
        monkeypatch.undo()
        recipes.finish_run(config, store, cases, None, RunResult([], 4, 4))
        assert json.loads(contents()["validated.json"])["epochs_done"] == 4
