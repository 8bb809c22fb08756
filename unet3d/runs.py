"""A training run's folder: where its files go, resuming only the same run, starting it over.

A run lives in `--run_dir` (`runs/<recipe>` by default, so recipes never share files):

    <run_dir>/model.keras            the best model, its model card inside
    <run_dir>/model.keras.json       a readable copy of the card
    <run_dir>/model.keras.run/       the checkpoint: last.keras and state.json (resuming)
    <run_dir>/training.log           CSV, one row per epoch
    <run_dir>/run.log                the log, a line per epoch
    <run_dir>/training_ids.pkl, validation_ids.pkl   the split
    <run_dir>/validation/            the validation cases' predictions and scores at the end

`--model_file`, `--training_log` and the keys-file flags still place those files elsewhere (as
the port's scripts did). The run's settings are kept in its state; rerunning with other settings
(other than those marked resumable in `unet3d.config`, such as `n_epochs`) is refused, listing
the differences, unless `--overwrite` starts the run over.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

from unet3d.config import TrainConfig, to_plain
from unet3d.errors import InputError
from unet3d.logs import get_logger
from unet3d.model.card import card_path
from unet3d.training import RunCheckpoint, checkpoint_dir

#: The run's files in its folder, for the settings that name them.
RUN_FILES = {"model_file": "model.keras", "training_log": "training.log",
             "training_keys_file": "training_ids.pkl",
             "validation_keys_file": "validation_ids.pkl"}
RUN_LOG = "run.log"
VALIDATION_DIR = "validation"


def with_run_files(config: TrainConfig) -> TrainConfig:
    """`config` with the run's files that no setting placed elsewhere in `config.run_dir`."""
    run_dir = Path(config.run_dir)
    return dataclasses.replace(config, **{name: str(run_dir / file)
                                          for name, file in RUN_FILES.items()
                                          if getattr(config, name) is None})


def setting_differences(recorded: dict, config: TrainConfig) -> list[str]:
    """The settings of `config` that differ from a run's `recorded` ones and may not change
    when it resumes: "name recorded -> now" each."""
    current = to_plain(config)
    fields = [field for field in dataclasses.fields(TrainConfig)
              if not field.metadata["resumable"] and field.name in recorded]
    return [f"{field.name} {recorded[field.name]} -> {current[field.name]}" for field in fields
            if recorded[field.name] != current[field.name]]


def claim_run(config: TrainConfig, chief: bool = True) -> None:
    """Let `config` start or resume the run in its folder: with `config.overwrite` the run's
    files are removed first (by the chief); a run of other settings is refused with what to do.
    (A run of unet3d 0.1 recorded no settings: it resumes unless it chose its best model by
    val_loss and `config` would by the whole-case Dice.)"""
    if config.overwrite:
        if chief:
            remove_run(config)
        return
    state = RunCheckpoint.load_state(checkpoint_dir(config.model_file))
    if state is None:
        return
    if state.get("settings") is not None:
        differences = setting_differences(state["settings"], config)
    else:
        validated = any("val_loss" in row for row in state["history"])
        differences = (["validation patches (unet3d 0.1's val_loss) -> cases"]
                       if validated and config.validation == "cases" else [])
    if differences:
        raise InputError(
            f"{config.run_dir} holds a run of other settings ({state['epochs_done']} epochs "
            f"done): {'; '.join(differences)}. Start a new run elsewhere (--run_dir), or start "
            "this one over (--overwrite)")


def remove_run(config: TrainConfig) -> None:
    """Delete the run's model, card copy, checkpoint, CSV log and final validation, and its
    split files when they are in its folder (a split placed elsewhere may be shared)."""
    run_dir = Path(config.run_dir).resolve()
    paths = [Path(config.model_file), card_path(config.model_file),
             checkpoint_dir(config.model_file), Path(config.training_log),
             Path(config.run_dir) / VALIDATION_DIR]
    paths += [Path(path) for path in (config.training_keys_file, config.validation_keys_file)
              if run_dir in Path(path).resolve().parents]
    removed = [path for path in paths if path.exists()]
    for path in removed:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    if removed:
        get_logger().info("--overwrite: removed %s", ", ".join(map(str, removed)))
