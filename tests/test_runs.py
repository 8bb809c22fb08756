"""A training run's folder: its files, resuming only the same run, starting over, recipes apart."""

import dataclasses
import json

import pytest

from helpers import paper_run
from unet3d.config import PRESETS, preset
from unet3d.plain_settings import to_plain
from unet3d.errors import InputError
from unet3d.recipes import check_config
from unet3d.runs import check_run_cases, claim_run, with_run_files
from unet3d.training import checkpoint_dir


def started(config, settings=True, history=()) -> None:
    """Leave the state of a run of `config` with 3 epochs done (settings recorded, or not, as
    unet3d 0.1 did)."""
    state = {"epochs_done": 3, "history": list(history), "best": None, "callbacks": []}
    if settings:
        state["settings"] = to_plain(config)
    folder = checkpoint_dir(config.model_file)
    folder.mkdir(parents=True)
    (folder / "state.json").write_text(json.dumps(state))


def test_the_run_files_go_to_the_run_folder_unless_placed(tmp_path):
    config = with_run_files(preset("paper", run_dir=str(tmp_path / "r"), training_log="x.csv"))
    assert config.model_file == str(tmp_path / "r" / "model.keras")
    assert config.training_keys_file == str(tmp_path / "r" / "training_ids.pkl")
    assert config.training_log == "x.csv"  # the port's flags still place files
    assert {preset(name).run_dir for name in PRESETS} == {
        f"runs/{name}" for name in PRESETS}  # recipes never share a folder


def test_a_run_of_other_settings_is_refused_naming_the_differences(tmp_path):
    config = with_run_files(preset("paper", run_dir=str(tmp_path / "run")))
    started(config)
    assert claim_run(config)["epochs_done"] == 3  # the same command resumes
    claim_run(dataclasses.replace(config, n_epochs=500, workers=0, data_file="moved.h5"))
    with pytest.raises(InputError) as error:
        claim_run(dataclasses.replace(config, patch_shape=(64, 64, 64), loss="dice"))
    message = str(error.value)
    assert "patch_shape [128, 128, 128] -> [64, 64, 64]" in message
    assert "loss bce_dice -> dice" in message and "3 epochs done" in message
    assert "--run_dir" in message and "--overwrite" in message
    # a loaded model keeps its layers' precision: another one cannot resume the run
    with pytest.raises(InputError, match="precision auto -> float32"):
        claim_run(dataclasses.replace(config, precision="float32"))


def test_a_model_file_elsewhere_cannot_take_over_a_run_folder(tmp_path):
    """The run folder records whose checkpoint it holds: a command giving another --model_file
    into it (which would rewrite its logs and validation) is refused."""
    config = with_run_files(preset("paper", run_dir=str(tmp_path / "run")))
    claim_run(config)
    started(config)
    elsewhere = dataclasses.replace(config, model_file=str(tmp_path / "elsewhere.keras"))
    with pytest.raises(InputError, match="model_file .*run/model.keras -> .*elsewhere.keras"):
        claim_run(elsewhere)
    placed = with_run_files(preset("paper", run_dir=str(tmp_path / "port"),
                                   model_file=str(tmp_path / "port_model.keras")))
    assert claim_run(placed) is None  # the port's way: a model file outside the run folder
    started(placed)
    assert claim_run(placed)["epochs_done"] == 3  # found through the folder's record
    with pytest.raises(InputError, match="loss bce_dice -> dice"):
        claim_run(dataclasses.replace(placed, loss="dice"))


def test_a_run_on_other_cases_is_refused(tmp_path):
    config = with_run_files(preset("paper", run_dir=str(tmp_path / "run")))
    state = {"epochs_done": 3, "settings": {"split": {"training": ["a", "b", "c"],
                                                      "validation": ["d"]}}}
    check_run_cases(state, ["a", "b", "c"], ["d"], config)
    check_run_cases(None, ["x"], ["y"], config)  # a new run
    with pytest.raises(InputError, match="other cases .*training cases: 3 recorded, 3 now "
                                         r"\(2 differ\)"):
        check_run_cases(state, ["a", "b", "x"], ["d"], config)


def test_overwrite_starts_the_run_over_and_keeps_what_is_outside(tmp_path):
    config = with_run_files(preset("paper", run_dir=str(tmp_path / "run"),
                                   validation_keys_file=str(tmp_path / "shared_ids.pkl")))
    started(config)
    run = tmp_path / "run"
    for name in ("model.keras", "model.keras.json", "training.log", "training_ids.pkl",
                 "run.log", "validation/scores.csv"):
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_text("x")
    (tmp_path / "shared_ids.pkl").write_text("x")
    claim_run(dataclasses.replace(config, patch_shape=(64, 64, 64), overwrite=True))
    assert sorted(p.name for p in run.iterdir()) == ["run.json", "run.log"]
    assert (tmp_path / "shared_ids.pkl").exists()  # a split placed elsewhere may be shared
    mistaken = tmp_path / "results"  # --training_log naming a folder by mistake
    (mistaken / "keep.txt").parent.mkdir()
    (mistaken / "keep.txt").write_text("x")
    claim_run(dataclasses.replace(config, training_log=str(mistaken), overwrite=True))
    assert (mistaken / "keep.txt").exists()  # only files and the run's own folders go


def test_overwrite_is_refused_with_several_workers(tmp_path, monkeypatch):
    config = with_run_files(preset("paper", run_dir=str(tmp_path / "run"), overwrite=True))
    check_config(config)
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["a:1", "b:1"]},
                                                "task": {"type": "worker", "index": 0}}))
    with pytest.raises(InputError, match="--overwrite with several workers"):
        check_config(config)


def test_a_run_of_unet3d_0_1_resumes_unless_it_chose_its_model_by_another_score(tmp_path):
    config = with_run_files(preset("paper", run_dir=str(tmp_path / "run")))
    started(config, settings=False, history=[{"epoch": 0, "loss": 1.0, "val_loss": 0.9}])
    with pytest.raises(InputError, match="validation patches .unet3d 0.1's val_loss. -> cases"):
        claim_run(config)
    claim_run(dataclasses.replace(config, validation="patches"))


@pytest.mark.slow
def test_runs_in_one_folder(store_path, tmp_path, monkeypatch):
    """A second command with another patch size into a run is refused and changes nothing;
    raising --n_epochs extends it; another recipe in the same working folder keeps to its own
    run folder and leaves this one untouched."""
    from unet3d.recipes import train

    monkeypatch.chdir(tmp_path)
    paper = dataclasses.replace(paper_run(tmp_path, store_path, patch_shape=(32, 32, 32),
                                          batch_size=2, steps_per_epoch=2, n_epochs=1,
                                          n_base_filters=2),
                                run_dir="runs/paper", model_file=None, training_log=None)
    train(paper)
    files = {p: p.read_bytes() for p in (tmp_path / "runs" / "paper").rglob("*") if p.is_file()}
    with pytest.raises(InputError, match=r"patch_shape \[32, 32, 32\] -> \[16, 16, 16\]"):
        train(dataclasses.replace(paper, patch_shape=(16, 16, 16)))
    assert {p: p.read_bytes() for p in files} == files
    unet = preset("unet", data_file="data.h5", patch_shape=(16, 16, 16), n_epochs=1,
                  n_base_filters=2, batch_size=2, precision="float32", workers=0, verbose=0)
    train(unet)
    assert {p: p.read_bytes() for p in files} == files
    assert (tmp_path / "runs" / "unet" / "model.keras").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.h5", "runs"]
    extended = train(dataclasses.replace(paper, n_epochs=2))
    assert extended.resumed_from == 1 and extended.epochs_done == 2
