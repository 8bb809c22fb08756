"""Whole-case validation during training, scored as `brats/evaluate.py` scores.

`CaseValidation` (a Keras callback) predicts the validation cases whole after an epoch (every
`every` epochs and after the last one) as brats/predict.py does (`unet3d.prediction`:
sliding windows, the probabilities put back on each case's native grid, then labelled), puts the
stored truth on the same grid and computes the Dice of each of the convention's regions with
`unet3d.case_metrics` (`region_masks`, `dice`): the numbers `evaluate.py` gives for the same
predictions. It adds `val_dice_<region>` (`val_dice_wt`, `val_dice_tc`, `val_dice_et`, and
`val_dice_rc` ... where the convention has them; means over the cases) and their mean
`val_dice_mean` to the epoch's logs, which the checkpoint uses to keep the best model.

`write_validation` writes the validation cases' predictions, their truths and the evaluation's
reports into a folder (the run's `validation/`), as nnU-Net does at the end of training.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Sequence

import keras
import numpy as np

from unet3d.config import PredictConfig
from unet3d.data import DataStore
from unet3d.case_metrics import dice, region_masks
from unet3d.evaluation import Evaluation, evaluate_folder
from unet3d.atomic import atomic_folder
from unet3d.io import write_nifti
from unet3d.conventions import ConventionLike, as_convention
from unet3d.labels import REGION_NAMES
from unet3d.logs import get_logger
from unet3d.prediction import predicted_labels
from unet3d.store_prediction import predict_store_case, to_native_grid

#: The record of which model `write_validation` predicted with.
VALIDATED = "validated.json"


def dice_keys(regions: Sequence[str] = REGION_NAMES) -> tuple[str, ...]:
    """What the validation adds to an epoch's logs: the mean Dice of each of the convention's
    regions and their mean (`val_dice_wt`, ..., `val_dice_mean`)."""
    return tuple(f"val_dice_{region}" for region in regions) + ("val_dice_mean",)


#: The keys of the 2017-2023 conventions (regions WT, TC, ET).
DICE_KEYS = dice_keys()


def predict_case(model: keras.Model, store: DataStore, case: int, config: PredictConfig,
                 target: str, convention: ConventionLike) -> tuple[np.ndarray, np.ndarray]:
    """(prediction, truth) label maps of store case `case` on its native grid
    (`DataStore.native_grid`): the prediction as brats/predict.py makes it (probabilities put on
    the grid, then labelled), the truth as the store holds it (the original labels for stores at
    native resolution; for resampled stores, the stored labels resampled back)."""
    probabilities = predict_store_case(model, store, case, config)
    convention = as_convention(convention)
    session = convention.session(store.subject_ids[case])
    return (predicted_labels(probabilities, target, convention, config, session),
            to_native_grid(store.read_truth(case), store, case))


def score_cases(model: keras.Model, store: DataStore, cases: Sequence[int],
                config: PredictConfig, target: str, convention: ConventionLike) -> list[dict]:
    """One row per case: {"case": subject id, "wt_dice": ..., ...}, the Dice of each of the
    convention's training regions."""
    convention = as_convention(convention)
    rows = []
    for case in cases:
        prediction, truth = predict_case(model, store, case, config, target, convention)
        truth_masks = region_masks(truth, convention, f"{store.path} case {case}",
                                   convention.regions)
        pred_masks = region_masks(prediction, convention, f"the prediction of case {case}",
                                  convention.regions)
        rows.append({"case": store.subject_ids[case],
                     **{f"{region}_dice": dice(truth_masks[region], pred_masks[region])
                        for region in convention.region_names}})
    return rows


def mean_dice(rows: Sequence[dict]) -> dict[str, float]:
    """The `dice_keys` of `score_cases`' rows."""
    regions = [key[:-len("_dice")] for key in rows[0] if key.endswith("_dice")]
    means = {f"val_dice_{region}": float(np.mean([row[f"{region}_dice"] for row in rows]))
             for region in regions}
    return {**means, "val_dice_mean": float(np.mean(list(means.values())))}


class CaseValidation(keras.callbacks.Callback):
    """Adds the whole-case Dice (`dice_keys`) to the logs of every `every`-th epoch and of the
    last (`n_epochs`); the seconds it took go to `seconds` (per validated case)."""

    def __init__(self, store: DataStore, cases: Sequence[int], config: PredictConfig,
                 target: str, convention: ConventionLike, every: int, n_epochs: int):
        super().__init__()
        self.store, self.cases, self.config = store, list(cases), config
        self.target, self.convention = target, as_convention(convention)
        self.every, self.n_epochs = int(every), int(n_epochs)
        self.seconds: list[float] = []

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if logs is None or ((epoch + 1) % self.every and epoch + 1 != self.n_epochs):
            return
        if self.model.stop_training:  # a NaN loss stopped the epoch: it is not kept
            return
        start = time.monotonic()
        rows = score_cases(self.model, self.store, self.cases, self.config, self.target,
                           self.convention)
        self.seconds.append((time.monotonic() - start) / len(self.cases))
        logs.update(mean_dice(rows))


def write_validation(model: keras.Model, store: DataStore, cases: Sequence[int],
                     config: PredictConfig, target: str, convention: ConventionLike,
                     out_dir: str | Path, training_log: str | Path | None = None,
                     about: dict | None = None) -> Evaluation:
    """Predict the validation `cases` with `model` into `out_dir/predictions/<case>.nii.gz` (on
    each case's native grid), write their truths to `out_dir/truths/<case>_seg.nii.gz`, and score
    them with `evaluate_folder` into `out_dir` (scores.csv, summary.csv, boxplot.png and, with
    `training_log`, loss_graph.png); `about` (which model was validated) goes to
    `out_dir/validated.json`. The folder is filled beside `out_dir` and takes its place when
    complete: a killed run leaves the previous one whole. Returns the `Evaluation`."""
    with atomic_folder(out_dir) as tmp:
        for count, case in enumerate(cases, start=1):
            name = store.subject_ids[case].replace(" ", "_")
            prediction, truth = predict_case(model, store, case, config, target, convention)
            grid = store.native_grid(case)
            write_nifti(prediction, grid, tmp / "predictions" / f"{name}.nii.gz", dtype=np.uint8)
            write_nifti(truth, grid, tmp / "truths" / f"{name}_seg.nii.gz", dtype=np.uint8)
            get_logger().info(f"[{count}/{len(cases)}] validation case {name} predicted")
        evaluation = evaluate_folder(tmp / "predictions", tmp / "truths", tmp,
                                     convention=convention, training_log=training_log,
                                     overlays=False)
        (tmp / VALIDATED).write_text(json.dumps(about or {}, indent=1) + "\n")
    return evaluation


def validated(out_dir: str | Path) -> dict | None:
    """What `write_validation` recorded in `out_dir` (None when it holds no validation)."""
    path = Path(out_dir) / VALIDATED
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
