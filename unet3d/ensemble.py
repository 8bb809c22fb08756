"""Ensembles: several models of the same settings predicting as one (the fold models of a
cross-validation, `unet3d.folds`), their probabilities averaged.

- `model_files`: the `.keras` files named by paths (a file, a folder of fold runs
  `fold_<k>/model.keras`, or a folder of `.keras` files).
- `check_same_settings`: the models' cards must agree on what they are (modalities, targets,
  convention, window, model space, preprocessing, spacing, inference); a mismatch is refused
  naming the two models and the setting.
- `average`: one predictor averaging the predictors' outputs on each batch of windows, so the
  memory stays that of one model's windows (never every model's whole output at once); the
  windows' weighting, TTA and the native-space steps then run once, on the mean.
- `ensemble_model`: one Keras model whose output is the models' mean (for export).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Sequence

import keras
import numpy as np

from unet3d.errors import InputError
from unet3d.inference import Predictor
from unet3d.model.card import ModelCard

#: The card fields an ensemble's models must share (the others record where each came from).
SHARED_SETTINGS = ("model", "modalities", "target", "convention", "labels", "patch_shape",
                   "space", "preprocessing", "spacing", "outputs", "inference")


def model_files(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """The model files `paths` name, in order: a `.keras` file is itself; a folder holds fold
    runs (`fold_<k>/model.keras`, by fold) or else `.keras` files (sorted by name). `InputError`
    for a path that is neither or names no model."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files = []
    for path in map(Path, paths):
        if path.is_dir():
            folds = sorted(path.glob("fold_*/"), key=lambda p: (len(p.name), p.name))
            untrained = [str(fold) for fold in folds if not (fold / "model.keras").is_file()]
            if untrained:
                raise InputError(f"{', '.join(untrained)}: no model.keras: train the fold "
                                 "(its --fold command), or name the models to use")
            found = [fold / "model.keras" for fold in folds] or sorted(path.glob("*.keras"))
            if not found:
                raise InputError(f"{path} holds no model: neither fold runs "
                                 "(fold_<k>/model.keras) nor .keras files")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise InputError(f"model file {path} not found: train one with "
                             "brats/train_isensee2017.py or give --model_file")
    return files


def check_same_settings(cards: dict[Path, ModelCard]) -> None:
    """`InputError` naming the first two models (`cards`: file -> card) that differ in a
    `SHARED_SETTINGS` field: their averaged probabilities would not mean one thing."""
    def shown(value):
        return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value

    (first, reference), *others = cards.items()
    for path, card in others:
        for name in SHARED_SETTINGS:
            mine, theirs = getattr(reference, name), getattr(card, name)
            if mine != theirs:
                raise InputError(f"{first} and {path} differ in {name} ({shown(mine)} vs "
                                 f"{shown(theirs)}): an ensemble needs models trained with the "
                                 "same settings")


def average(predictors: Sequence[Predictor]) -> Predictor:
    """A predictor returning the mean of `predictors`' outputs on each batch (the one predictor
    itself for one)."""
    if len(predictors) == 1:
        return predictors[0]

    def predict_batch(batch: np.ndarray) -> np.ndarray:
        total = np.array(predictors[0](batch), dtype=np.float32)
        for run in predictors[1:]:
            total += run(batch)
        return total / np.float32(len(predictors))
    return predict_batch


def ensemble_model(models: Sequence[keras.Model]) -> keras.Model:
    """One model whose output is the mean of `models`' outputs (the first's input shape); the
    one model itself for one."""
    if len(models) == 1:
        return models[0]
    inputs = keras.Input(models[0].input_shape[1:], name="image")
    for index, model in enumerate(models):
        model.name = f"member_{index}"  # each a distinct layer of the ensemble
    mean = keras.layers.Average(name="ensemble_mean", dtype="float32")(
        [model(inputs) for model in models])
    return keras.Model(inputs, mean, name="ensemble")
