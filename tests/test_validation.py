"""Whole-case validation during training: the Dice it logs is the one brats/evaluate.py gives on
the same predictions, and the best model follows it."""

import csv
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
    assert len(rows) == 3 and all(row[key] for row in rows for key in DICE_KEYS)
    best = max(rows, key=lambda row: float(row["val_dice_mean"]))
    result = run_script("evaluate.py", "--prediction_dir", f"{trained.run_dir}/validation/predictions",
                        "--truth_dir", str(synthetic_brats), "--output_dir",
                        str(tmp_path / "scores"), "--nooverlays")
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
