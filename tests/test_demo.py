"""The one-command demo, end to end at a tiny size: every step's output, the table, resuming."""

import csv

import numpy as np
import pytest

from helpers import run_script
from unet3d.brats import find_cases
from unet3d.io import read_nifti

# float32: the mechanics are tested here, and a tiny network in bfloat16 can hit NaN weights
TINY = ["--n_cases", "4", "--n_test", "1", "--shape", "64,64,48", "--patch_shape", "32,32,32",
        "--precision", "float32",
        "--n_epochs", "2", "--steps_per_epoch", "3", "--n_base_filters", "4", "--workers", "0"]


@pytest.mark.slow
def test_demo_runs_every_step_and_resumes(tmp_path):
    work = tmp_path / "demo"
    result = run_script("demo.py", "--work_dir", str(work), *TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    train, test = find_cases(work / "train"), find_cases(work / "test")
    assert len(train) == 3 and len(test) == 1
    assert not {c.name for c in train} & {c.name for c in test}  # held out for real
    for name in ("brats_data.h5", "run/model.keras", "run/model.keras.json", "run/training.log",
                 "demo.log",
                 "evaluation/scores.csv", "evaluation/summary.csv", "evaluation/boxplot.png",
                 "evaluation/loss_graph.png", f"evaluation/overlays/{test[0].name}.png"):
        assert (work / name).is_file(), name
    prediction, geometry = read_nifti(work / "predictions" / f"{test[0].name}.nii.gz")
    _, truth_geometry = read_nifti(test[0].label)
    assert geometry.same_grid(truth_geometry, tolerance=1e-6)
    assert set(np.unique(prediction)) <= {0, 1, 2, 4}
    with open(work / "evaluation" / "scores.csv") as stream:
        rows = list(csv.DictReader(stream))
    assert [row["case"] for row in rows] == [test[0].name]
    for region in ("WT", "TC", "ET"):  # the printed table
        assert any(line.startswith(region + " ") for line in result.stderr.splitlines())
    with open(work / "run" / "training.log") as stream:
        assert len(list(csv.DictReader(stream))) == 2
    # output that is not a terminal gets a line per epoch, no progress bars
    assert "\r" not in result.stdout + result.stderr + (work / "demo.log").read_text()
    assert "epoch 2/2: loss" in (work / "demo.log").read_text()

    # Rerunning with more epochs reuses the data, resumes training and scores the new model.
    again = run_script("demo.py", "--work_dir", str(work), *TINY[:-8], "--n_epochs", "3",
                       *TINY[-6:])
    assert again.returncode == 0, again.stderr[-3000:]
    assert "found in" in again.stderr and "resuming" in again.stderr
    with open(work / "run" / "training.log") as stream:
        assert [int(row["epoch"]) for row in csv.DictReader(stream)] == [0, 1, 2]


def test_demo_refuses_impossible_settings(tmp_path):
    result = run_script("demo.py", "--work_dir", str(tmp_path / "d"), "--n_cases", "2",
                        "--n_test", "2", "--shape", "64,64,48")
    assert result.returncode == 2 and "--n_test" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow  # a script run (the fast tier keeps test_demo_refuses_impossible_settings)
def test_demo_refuses_other_data_settings_in_the_same_folder(tmp_path):
    work = tmp_path / "d"
    (work / "train").mkdir(parents=True)
    (work / "test").mkdir()
    (work / "demo_data.json").write_text('{"n_cases": 4, "n_test": 1, "shape": [64, 64, 48], '
                                         '"seed": 0}\n')
    result = run_script("demo.py", "--work_dir", str(work), "--n_cases", "5", "--n_test", "1",
                        "--shape", "64,64,48")
    assert result.returncode == 2 and "another --work_dir" in result.stderr
