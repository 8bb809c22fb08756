"""A training run's folder: where its files go, resuming only the same run, starting it over.

A run lives in `--run_dir` (`runs/<recipe>` by default, so recipes never share files):

    <run_dir>/model.keras            the best model, its model card inside
    <run_dir>/model.keras.json       a readable copy of the card
    <run_dir>/model.keras.run/       the checkpoint: last.keras and state.json (resuming)
    <run_dir>/training.log           CSV, one row per epoch
    <run_dir>/run.log                the log, a line per epoch
    <run_dir>/training_ids.pkl, validation_ids.pkl   the split
    <run_dir>/validation/            the validation cases' predictions and scores at the end

    <run_dir>/run.json               which model file's checkpoint holds the run's state

`--model_file`, `--training_log` and the keys-file flags still place those files elsewhere (as
the port's scripts did). The run's settings and cases are kept in its state; rerunning with other
settings (other than those marked resumable in `unet3d.config`, such as `n_epochs`) or on other
cases is refused, listing the differences, unless `--overwrite` starts the run over. (`run.log` is
written by the scripts, `unet3d.cli`.)
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Sequence

from unet3d.config import TrainConfig
from unet3d.plain_settings import to_plain
from unet3d.errors import InputError
from unet3d.atomic import atomic_write
from unet3d.logs import get_logger
from unet3d.model.card import card_path
from unet3d.training import RunCheckpoint, checkpoint_dir

#: The run's files in its folder, for the settings that name them.
RUN_FILES = {"model_file": "model.keras", "training_log": "training.log",
             "training_keys_file": "training_ids.pkl",
             "validation_keys_file": "validation_ids.pkl"}
RUN_LOG = "run.log"
RUN_RECORD = "run.json"
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


def claim_run(config: TrainConfig, chief: bool = True) -> dict | None:
    """Let `config` start or resume the run in its folder; returns the state of the run it
    resumes (None for a new run). With `config.overwrite` the run's files are removed first; a
    run of other settings is refused with what to do. Only the `chief` writes. (A run of unet3d
    0.1 recorded no settings: it resumes unless it chose its best model by val_loss and `config`
    would by the whole-case Dice.)"""
    state = None
    if config.overwrite:
        if chief:
            remove_run(config)
    else:
        state = recorded_state(config)
    changed = run_differences(state, config) if state is not None else []
    if changed:
        _refuse(config, state, "other settings", changed)
    if chief:
        Path(config.run_dir).mkdir(parents=True, exist_ok=True)
        with atomic_write(Path(config.run_dir) / RUN_RECORD) as tmp:
            tmp.write_text(json.dumps({"model_file": str(config.model_file)}))
    return state


def run_differences(state: dict, config: TrainConfig) -> list[str]:
    """What keeps `config` from resuming the run of `state` ("name recorded -> now" each)."""
    if state.get("settings") is not None:
        return setting_differences(state["settings"], config)
    validated = any("val_loss" in row for row in state["history"])
    return (["validation patches (unet3d 0.1's val_loss) -> cases"]
            if validated and config.validation == "cases" else [])


def recorded_state(config: TrainConfig) -> dict | None:
    """The state of the run in `config.run_dir` (through its `run.json`) or of the run whose
    best model is `config.model_file`; None when neither has one."""
    record = Path(config.run_dir) / RUN_RECORD
    model_files = [config.model_file]
    if record.exists():
        try:
            model_files.insert(0, json.loads(record.read_text())["model_file"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise InputError(f"{record}: unreadable run record ({error!r}); delete it, or start "
                             "the run over (--overwrite)") from None
    states = (RunCheckpoint.load_state(checkpoint_dir(path)) for path in model_files)
    return next((state for state in states if state is not None), None)


def check_run_cases(state: dict | None, training: Sequence[str], validation: Sequence[str],
                    config: TrainConfig) -> None:
    """Refuse to resume the run of `state` on other cases than it was trained on (`training`,
    `validation`: subject ids of this command's split)."""
    recorded = ((state or {}).get("settings") or {}).get("split") or {}
    differences = [f"{name} cases: {len(recorded[name])} recorded, {len(now)} now "
                   f"({len(set(recorded[name]) ^ set(now))} differ)"
                   for name, now in (("training", training), ("validation", validation))
                   if name in recorded and list(recorded[name]) != list(now)]
    if differences:
        _refuse(config, state, "other cases (--data_file or the keys files)", differences)


def _refuse(config: TrainConfig, state: dict, what: str, differences: list[str]) -> None:
    raise InputError(
        f"{config.run_dir} holds a run of {what} ({state['epochs_done']} epochs done): "
        f"{'; '.join(differences)}. Start a new run elsewhere (--run_dir), or start this one "
        "over (--overwrite)")


def remove_run(config: TrainConfig) -> None:
    """Delete the run's model, card copy, checkpoint, CSV log, record and final validation, and
    its split files when they are in its folder (a split placed elsewhere may be shared). Only
    files and the run's own folders (checkpoint, validation) are removed."""
    run_dir = Path(config.run_dir)
    folders = [checkpoint_dir(config.model_file), run_dir / VALIDATION_DIR]
    files = [Path(config.model_file), card_path(config.model_file), Path(config.training_log),
             run_dir / RUN_RECORD]
    files += [Path(path) for path in (config.training_keys_file, config.validation_keys_file)
              if run_dir.resolve() in Path(path).resolve().parents]
    removed = [path for path in files if path.is_file()] + [path for path in folders
                                                            if path.is_dir()]
    for path in removed:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    if removed:
        get_logger().info("--overwrite: removed %s", ", ".join(map(str, removed)))
