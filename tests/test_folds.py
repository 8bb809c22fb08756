"""Cross-validation folds (unet3d.folds) and the out-of-fold evaluation (unet3d.cross_validation)."""

import csv
import json
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest

from helpers import card_of, run_script
from unet3d.config import preset
from unet3d.cross_validation import cross_validate
from unet3d.data import DataStore
from unet3d.errors import InputError
from unet3d.folds import FOLDS_FILE, draw_folds, fold_configs, fold_split, get_folds, read_folds
from unet3d.io import read_nifti
from unet3d.model import save_model
from unet3d.model.card import TrainingRecord
from unet3d.splits import load_keys, save_keys

NAMES = [f"case_{i:02d}" for i in range(11)]


def test_folds_are_disjoint_cover_every_case_once_and_follow_the_seed():
    folds = draw_folds(NAMES, 3, seed=4)
    assert sorted(map(len, folds), reverse=True) == [4, 4, 3]
    assert sorted(case for fold in folds for case in fold) == NAMES  # each case once
    assert draw_folds(NAMES, 3, seed=4) == folds
    assert draw_folds(NAMES, 3, seed=5) != folds
    for k in range(3):
        training, validation = fold_split([[NAMES.index(c) for c in f] for f in folds], k)
        assert not set(training) & set(validation)
        assert sorted(training + validation) == list(range(11))
    with pytest.raises(InputError, match="at least 2 folds"):
        draw_folds(NAMES, 1, 0)
    with pytest.raises(InputError, match="cannot make 12 folds"):
        draw_folds(NAMES, 12, 0)


def test_the_folds_file_is_saved_once_readable_and_reused(store_path, tmp_path):
    path = tmp_path / FOLDS_FILE
    with DataStore(store_path) as store:
        folds = get_folds(store, path, 2, seed=3)
        data = json.loads(path.read_text())  # a person can read it: subject ids per fold
        assert data["folds"] == [[store.subject_ids[i] for i in fold] for fold in folds]
        assert (data["n_folds"], data["seed"]) == (2, 3)
        assert get_folds(store, path, 2, seed=3) == folds  # reused
        with pytest.raises(InputError, match="not --n_folds 2 --seed 4"):
            get_folds(store, path, 2, seed=4)
        data["folds"][1].append(data["folds"][0][0])  # edited: a case in two folds
        path.write_text(json.dumps(data))
        with pytest.raises(InputError, match="not 2 disjoint sets"):
            get_folds(store, path, 2, seed=3)


def test_fold_configs_place_each_fold_in_its_own_run_folder():
    config = preset("paper", run_dir="cv", n_folds=3, fold="all")
    runs = fold_configs(config)
    assert [(run.run_dir, run.fold) for run in runs] == [
        (str(Path("cv") / f"fold_{k}"), str(k)) for k in range(3)]
    assert [run.run_dir for run in fold_configs(preset("paper", run_dir="cv", n_folds=3,
                                                       fold="2"))] == [str(Path("cv/fold_2"))]
    assert fold_configs(preset("paper")) == [preset("paper")]
    for settings, message in ((dict(n_folds=3), "give --fold 0..2"),
                              (dict(n_folds=3, fold="3"), "--fold 3: give a fold 0..2"),
                              (dict(fold="1"), "--fold needs --n_folds"),
                              (dict(n_folds=3, fold="1", model_file="m.keras"),
                               "--model_file with --n_folds")):
        with pytest.raises(InputError, match=message):
            fold_configs(preset("paper", **settings))


def constant_model(regions: tuple) -> keras.Model:
    """A model whose output is `regions` (WT, TC, ET) everywhere."""
    inputs = keras.Input((None, None, None, 4))
    conv = keras.layers.Conv3D(3, 1)
    model = keras.Model(inputs, conv(inputs))
    conv.set_weights([np.zeros((1, 1, 1, 4, 3), np.float32), np.array(regions, np.float32)])
    return model


def fold_runs(folder: Path, store_path: Path, models: list, seed: int = 0) -> list[list[int]]:
    """A cross-validation folder as training writes it (folds.json, fold_<k>/ with the split
    files and a model with its card), with `models[k]` as fold k's model."""
    shutil.copy(store_path, folder / "data.h5")
    with DataStore(folder / "data.h5") as store:
        folds = get_folds(store, folder / FOLDS_FILE, len(models), seed)
    for k, model in enumerate(models):
        run = folder / f"fold_{k}"
        run.mkdir()
        training, validation = fold_split(folds, k)
        save_keys(training, run / "training_ids.pkl")
        save_keys(validation, run / "validation_ids.pkl")
        record = TrainingRecord(str(folder / "data.h5"), str(run / "training_ids.pkl"),
                                str(run / "validation_ids.pkl"), {})
        save_model(model, run / "model.keras", card_of(training=record))
        (run / "model.keras.run").mkdir()
        with DataStore(folder / "data.h5") as store:
            split = {"training": [store.subject_ids[i] for i in training]}
        (run / "model.keras.run" / "state.json").write_text(
            json.dumps({"settings": {"split": split}}))
    return folds


def test_out_of_fold_evaluation_predicts_each_case_with_the_model_that_did_not_see_it(
        store_path, tmp_path):
    # fold 0's model calls everything enhancing tumour (label 4), fold 1's oedema (label 2):
    # each prediction tells which model made it
    folds = fold_runs(tmp_path, store_path, [constant_model((1, 1, 1)),
                                             constant_model((1, 0, 0))])
    result = cross_validate(tmp_path)
    with DataStore(tmp_path / "data.h5") as store:
        names = [[store.subject_ids[i] for i in fold] for fold in folds]
    assert sorted((row["fold"], row["case"]) for row in result.rows) == sorted(
        (k, case) for k, fold in enumerate(names) for case in fold)
    for k, fold in enumerate(names):
        for case in fold:
            labels = set(np.unique(read_nifti(
                tmp_path / "cross_validation" / f"fold_{k}" / "predictions" / f"{case}.nii.gz")[0]))
            assert labels == {0, (4, 2)[k]}
    with open(tmp_path / "cross_validation" / "scores.csv") as stream:
        rows = list(csv.DictReader(stream))
    assert [(row["case"], int(row["fold"])) for row in rows] == [
        (row["case"], row["fold"]) for row in result.rows]
    with open(tmp_path / "cross_validation" / "folds.csv") as stream:
        per_fold = {row["fold"]: row for row in csv.DictReader(stream)}
    for key in ("0", "1", "all"):
        chosen = [row for row in rows if key == "all" or row["fold"] == key]
        assert int(per_fold[key]["cases"]) == len(chosen)
        assert float(per_fold[key]["wt_dice"]) == pytest.approx(
            np.mean([float(row["wt_dice"]) for row in chosen]))
    assert (tmp_path / "cross_validation" / "summary.csv").exists()
    # fold 0 retrained (now calling oedema): its cases are predicted again, not kept
    save_model(constant_model((1, 0, 0)), tmp_path / "fold_0" / "model.keras",
               card_of(training=TrainingRecord("d", "t", "v", {})))
    cross_validate(tmp_path)
    case = names[0][0]
    assert set(np.unique(read_nifti(tmp_path / "cross_validation" / "fold_0" / "predictions"
                                    / f"{case}.nii.gz")[0])) == {0, 2}


def test_a_fold_that_trained_on_its_own_cases_or_has_no_model_is_refused(store_path, tmp_path):
    fold_runs(tmp_path, store_path, [constant_model((1, 1, 1))] * 2)
    state = tmp_path / "fold_1" / "model.keras.run" / "state.json"
    with DataStore(tmp_path / "data.h5") as store:  # as if fold 1 had trained on every case
        state.write_text(json.dumps({"settings": {"split": {
            "training": list(store.subject_ids)}}}))
    with pytest.raises(InputError, match="fold_1/model.keras trained on cases of fold 1"):
        cross_validate(tmp_path)
    state.unlink()
    with pytest.raises(InputError, match="recorded no training cases"):
        cross_validate(tmp_path)
    (tmp_path / "fold_1" / "model.keras").unlink()
    with pytest.raises(InputError, match="fold 1 has no model"):
        cross_validate(tmp_path)
    assert not (tmp_path / "cross_validation" / "fold_0").exists()  # checked before predicting


@pytest.mark.slow
def test_two_folds_train_then_evaluate_out_of_fold_and_predict_as_an_ensemble(
        store_path, synthetic_brats, tmp_path):
    shutil.copy(store_path, tmp_path / "data.h5")
    train = ["--data_file", str(tmp_path / "data.h5"), "--run_dir", str(tmp_path / "cv"),
             "--n_folds", "2", "--patch_shape", "32,32,32", "--steps_per_epoch", "2",
             "--n_epochs", "1", "--n_base_filters", "4", "--workers", "0",
             "--precision", "float32"]
    result = run_script("train_isensee2017.py", *train, "--fold", "all")
    assert result.returncode == 0, result.stderr[-3000:]
    folds = read_folds(tmp_path / "cv" / FOLDS_FILE)["folds"]
    for k in (0, 1):
        run = tmp_path / "cv" / f"fold_{k}"
        assert (run / "model.keras").exists() and (run / "run.log").exists()
        with DataStore(tmp_path / "data.h5") as store:
            validation = [store.subject_ids[i]
                          for i in load_keys(run / "validation_ids.pkl")]
        assert validation == folds[k]
    rerun = run_script("train_isensee2017.py", *train, "--fold", "1")  # done: nothing to do
    assert rerun.returncode == 0 and "all 1 epochs are done" in rerun.stderr
    missing = run_script("cross_validate.py", "--run_dir", str(tmp_path / "cv"),
                         "--data_file", str(tmp_path / "nothing.h5"))
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    evaluated = run_script("cross_validate.py", "--run_dir", str(tmp_path / "cv"))
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert "all" in evaluated.stderr and (tmp_path / "cv" / "cross_validation" / "summary.csv"
                                          ).exists()
    predicted = run_script("predict.py", "--model_file", str(tmp_path / "cv"), "--input_dir",
                           str(synthetic_brats), "--output_dir", str(tmp_path / "out"),
                           "--nobias_correction")
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    assert "an ensemble of 2 models" in predicted.stderr
    assert len(list((tmp_path / "out").glob("*.nii.gz"))) == 4
