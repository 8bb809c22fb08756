"""Evaluation of folders of BraTS segmentations: scores per case and region, summaries, reports.

The regions scored are those of the truths' convention (`unet3d.conventions`: detected, recorded
by brats/preprocess.py, or given).

The metrics of a case and their conventions (empty masks, the HD95 penalty) are in
`unet3d.case_metrics`.

`evaluate_folder` scores a folder of predictions `<case>.nii.gz` against the BraTS truths and
writes `scores.csv`, `summary.csv`, `boxplot.png`, optionally `loss_graph.png` and per-case
`overlays/<case>.png` (the figures: `unet3d.plots`).
"""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from unet3d.brats import (MSD_IMAGES, NIFTI_EXTENSIONS, Case, candidates, classify_file,
                          detect_convention, find_cases)
from unet3d.case_metrics import HD95_EMPTY, METRICS, evaluate_masks, region_masks
from unet3d.conventions import Convention, ConventionLike, as_convention
from unet3d.errors import InputError
from unet3d.io import atomic_write, read_nifti
from unet3d.labels import REGION_NAMES
from unet3d.logs import get_logger
from unet3d.preprocessing import recorded_convention
from unet3d.plots import plot_boxplot, plot_loss_graph, plot_overlay, read_training_log



def score_columns(regions: Sequence[str] = REGION_NAMES) -> tuple[str, ...]:
    """Score columns of `scores.csv` and `summary.csv` after the first: `wt_dice`, `wt_hd95`,
    ... for each scored region of the convention."""
    return tuple(f"{r}_{m}" for r in regions for m in METRICS)


#: The score columns of the 2017-2023 conventions (WT, TC, ET).
SCORE_COLUMNS: tuple[str, ...] = score_columns()

#: Rows of `summary.csv`: mean, (population) standard deviation, median, 25th/75th percentile.
STATISTICS: tuple[str, ...] = ("mean", "std", "median", "q1", "q3")

# Probability maps that brats/predict.py --probabilities writes beside <case>.nii.gz.
_PROBABILITY_MAP = re.compile(r"_([a-z]+|label_\d+)$")


# --------------------------------------------------------------------------- summaries

def _columns(rows: Sequence[Mapping[str, float]]) -> list[str]:
    """The score columns of `rows`, in their order (every key but "case")."""
    return [key for key in rows[0] if key != "case"]


def _regions(rows: Sequence[Mapping[str, float]]) -> list[str]:
    return [key[:-len("_dice")] for key in _columns(rows) if key.endswith("_dice")]


def summarize(rows: Sequence[Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """Statistics of the score columns over cases.

    Args:
        rows: one mapping per case holding the same score columns (`wt_dice`, ..., as the
            rows `evaluate_folder` returns; "case" is ignored).

    Returns:
        {statistic: {column: value}} for the `STATISTICS` mean, std (population, ddof=0, so one
        case gives 0), median, q1 and q3 (25th and 75th percentiles, linear interpolation).
    """
    if not rows:
        raise InputError("no cases to summarize")
    columns = _columns(rows)
    values = np.array([[float(row[column]) for column in columns] for row in rows])
    statistics = {"mean": values.mean(axis=0), "std": values.std(axis=0),
                  "median": np.median(values, axis=0),
                  "q1": np.percentile(values, 25, axis=0), "q3": np.percentile(values, 75, axis=0)}
    return {name: dict(zip(columns, map(float, statistics[name]))) for name in STATISTICS}


def format_summary(rows: Sequence[Mapping[str, float]]) -> str:
    """A text table of the mean and standard deviation of Dice and HD95 per region over `rows`."""
    summary = summarize(rows)
    mean, std = summary["mean"], summary["std"]
    lines = [f"{len(rows)} case(s)",
             f"{'region':<8}{'Dice mean':>10}{'(std)':>8}{'HD95 mm mean':>14}{'(std)':>8}"]
    for region in _regions(rows):
        dice_key, hd_key = f"{region}_dice", f"{region}_hd95"
        lines.append(f"{region.upper():<8}{mean[dice_key]:>10.3f}{std[dice_key]:>8.3f}"
                     f"{mean[hd_key]:>14.2f}{std[hd_key]:>8.2f}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- folders

def _nifti_stem(name: str) -> str | None:
    for extension in NIFTI_EXTENSIONS:
        if name.lower().endswith(extension):
            return name[: -len(extension)]
    return None


def _is_image_file(name: str) -> bool:
    found = classify_file(name)
    return found is not None and found[0] != "label"


def _truth_cases(truth_dir: Path) -> list[Case]:
    """The labelled cases of a truth folder, sorted by name (see `find_truth_files`)."""
    if not truth_dir.is_dir():
        raise InputError(f"{truth_dir}: no such folder; pass the folder holding the truths")
    truths: dict[str, Case] = {}
    # Case folders (any BraTS release, or this package's preprocessed <case>/truth.nii.gz).
    if any(_is_image_file(path.name) for path in truth_dir.rglob("*.nii*")) or any(
            (truth_dir / folder).is_dir() for folder in MSD_IMAGES):
        truths = {case.name: case for case in find_cases(truth_dir) if case.label is not None}
    # Label files alone in the folder: <case>_seg.nii.gz, <case>-seg.nii.gz.
    for path in sorted(truth_dir.iterdir()):
        found = classify_file(path.name)
        if path.is_file() and found is not None and found[0] == "label":
            name = found[2].rstrip("_-.")
            if name and name not in truths:
                truths[name] = Case(name, truth_dir, label=path,
                                    candidates=candidates(name, set()))
    if not truths:
        raise InputError(f"{truth_dir}: no truth label files found; expected BraTS case folders "
                         "<case>/<case>_seg.nii.gz (or <case>-seg.nii.gz, or preprocessed "
                         "<case>/truth.nii.gz) or files <case>_seg.nii.gz in the folder itself")
    return [truths[name] for name in sorted(truths)]


def truth_convention(truth_dir: str | os.PathLike, given: ConventionLike | None = None,
                     cases: Sequence[Case] | None = None) -> Convention:
    """The convention of the truths in `truth_dir` (its `cases`, when already found): `given`,
    else the one brats/preprocess.py recorded there, else detected from the cases' names and
    label values (`unet3d.brats.detect_convention`; names fitting none are read as brats2020
    when their labels are its own, with a warning)."""
    if given is not None:
        return as_convention(given)
    recorded = recorded_convention(truth_dir)
    if recorded is not None:
        return recorded
    cases = _truth_cases(Path(truth_dir)) if cases is None else cases
    return detect_convention(cases, truth_dir, scan_labels=True, fallback=True)


def find_truth_files(truth_dir: str | os.PathLike) -> dict[str, Path]:
    """The truth label file of each case under `truth_dir`, {case: path} sorted by case.

    Layouts: BraTS case folders `<case>/<case>_seg.nii.gz` (any release's naming: `-seg` for
    BraTS 2023, `GlistrBoost` for 2017, `HGG/` and `LGG/` sub-folders; found with
    `unet3d.brats.find_cases`), this package's preprocessed `<case>/truth.nii.gz`, or label files
    directly in the folder: `<case>_seg.nii.gz`, `<case>-seg.nii.gz` (or `.nii`).

    Raises:
        InputError: when `truth_dir` does not exist or holds no label file.
    """
    return {case.name: case.label for case in _truth_cases(Path(truth_dir))}


def _is_probability_map(name: str, cases: Mapping[str, Path]) -> bool:
    match = _PROBABILITY_MAP.search(name)
    return match is not None and name[: match.start()] in cases


def find_prediction_files(prediction_dir: str | os.PathLike) -> dict[str, Path]:
    """The predictions `<prediction_dir>/<case>.nii.gz` (or `.nii`), {case: path} sorted by case.

    The probability maps `<case>_{wt,tc,et}.nii.gz` (or `<case>_label_<value>.nii.gz`) that
    brats/predict.py --probabilities writes beside `<case>.nii.gz` are not predictions: skipped.

    Raises:
        InputError: when the folder does not exist, holds no prediction, or two files for a case.
    """
    prediction_dir = Path(prediction_dir)
    if not prediction_dir.is_dir():
        raise InputError(f"{prediction_dir}: no such folder; pass the folder holding the "
                         "predictions <case>.nii.gz (written by brats/predict.py)")
    predictions: dict[str, Path] = {}
    for path in sorted(prediction_dir.iterdir()):
        case = _nifti_stem(path.name)
        if case is None or path.name.startswith(".") or not path.is_file():
            continue
        if case in predictions:
            raise InputError(f"case {case}: two predictions, {predictions[case].name} and "
                             f"{path.name} in {prediction_dir}; keep one of them")
        predictions[case] = path
    predictions = {case: path for case, path in predictions.items()
                   if not _is_probability_map(case, predictions)}
    if not predictions:
        raise InputError(f"{prediction_dir}: no predictions found; expected one label map "
                         "<case>.nii.gz per case, as brats/predict.py writes them")
    return predictions


def _log_case(index: int, n_cases: int, case: str, row: Mapping[str, float]) -> None:
    scores = " ".join(f"{region.upper()} {row[f'{region}_dice']:.3f}" for region in _regions([row]))
    get_logger().info(f"[{index}/{n_cases}] {case}: {scores}")


def evaluate_folder(prediction_dir: str | os.PathLike, truth_dir: str | os.PathLike,
                    output_dir: str | os.PathLike, convention: ConventionLike | None = None,
                    training_log: str | os.PathLike | None = None, overlays: bool = True,
                    progress: Callable[[int, int, str, dict], None] | None = None,
                    ) -> list[dict]:
    """Score every prediction of a folder against its truth and write the reports.

    Args:
        prediction_dir: predicted label maps `<case>.nii.gz`, on the grid of the truths (the
            native BraTS grid, as brats/predict.py writes them).
        truth_dir: the truths, in any layout `find_truth_files` knows. Truths without a prediction
            are skipped with a warning.
        output_dir: where the reports go (created if needed); every file is written atomically:
            `scores.csv` (one row per case: case, then `score_columns`), `summary.csv` (one row
            per `STATISTICS`), `boxplot.png` (Dice and HD95 per region), `loss_graph.png` (with
            `training_log`) and `overlays/<case>.png` (with `overlays`, for the cases whose truth
            folder holds a FLAIR image).
        convention: the truths' convention (its scored regions are scored); None: detected
            (`truth_convention`).
        training_log: the CSV log of training (columns epoch, loss and usually val_loss) to plot.
        overlays: whether to draw the per-case overlays.
        progress: called after each case as `progress(index, n_cases, case, row)`; by default a
            line "[i/n] case: WT 0.912 TC 0.850 ET 0.801" (Dice) goes to the package log.

    Returns:
        One row per case, in case order: {"case": name, "wt_dice": ..., ...} (`score_columns`).

    Raises:
        InputError: no prediction; a prediction without truth; a prediction and its truth on
            different grids; unknown label values; a missing or unreadable training log.
    """
    output_dir = Path(output_dir)
    predictions = find_prediction_files(prediction_dir)
    found = _truth_cases(Path(truth_dir))
    convention = truth_convention(truth_dir, convention, found)
    cases = {case.name: case for case in found}
    truths = {name: case.label for name, case in cases.items()}
    flairs = {name: case.images["flair"] for name, case in cases.items()
              if "flair" in case.images and case.channels is None}
    without_truth = sorted(set(predictions) - set(truths))
    if without_truth:
        raise InputError(f"no truth in {truth_dir} for the predictions of {len(without_truth)} "
                         f"case(s): {', '.join(without_truth)}; expected <case>/<case>_seg.nii.gz "
                         "or <case>_seg.nii.gz there. Pass the matching --truth_dir or remove "
                         "those predictions")
    without_prediction = sorted(set(truths) - set(predictions))
    if without_prediction:
        get_logger().warning(f"{len(without_prediction)} truth(s) without a prediction in "
                             f"{prediction_dir}, skipped: {', '.join(without_prediction)}")
    history = read_training_log(training_log) if training_log is not None else None
    progress = progress or _log_case

    rows = []
    for index, (case, prediction_path) in enumerate(predictions.items(), start=1):
        flair = flairs.get(case) if overlays else None
        rows.append(_score_case(case, prediction_path, truths[case], convention, flair,
                                output_dir))
        progress(index, len(predictions), case, rows[-1])

    write_scores(rows, output_dir / "scores.csv")
    write_summary(summarize(rows), output_dir / "summary.csv")
    plot_boxplot(rows, output_dir / "boxplot.png", HD95_EMPTY)
    if history is not None:
        plot_loss_graph(history, output_dir / "loss_graph.png", title=Path(training_log).name)
    return rows


def _score_case(case: str, prediction_path: Path, truth_path: Path, convention: Convention,
                flair_path: Path | None, output_dir: Path) -> dict:
    """The scores row of one case; with `flair_path`, its overlay too."""
    truth, truth_geometry = read_nifti(truth_path)
    pred, pred_geometry = read_nifti(prediction_path)
    if not pred_geometry.same_grid(truth_geometry):
        raise InputError(
            f"case {case}: prediction {prediction_path} ({pred_geometry.describe()}) is not on "
            f"the grid of its truth {truth_path} ({truth_geometry.describe()}); write the "
            "predictions in the native space of the cases (as brats/predict.py does)")
    truth_masks = region_masks(truth, convention, str(truth_path))
    pred_masks = region_masks(pred, convention, str(prediction_path))
    scores = evaluate_masks(truth_masks, pred_masks, truth_geometry.spacing)
    row = {"case": case, **{f"{region}_{metric}": scores[region][metric]
                            for region in scores for metric in METRICS}}
    if flair_path is not None:
        flair, _ = read_nifti(flair_path, dtype=np.float32)
        if flair.shape == truth.shape:
            plot_overlay(flair, truth_masks, pred_masks, case,
                         {region: scores[region]["dice"] for region in scores},
                         output_dir / "overlays" / f"{case}.png")
        else:
            get_logger().warning(f"case {case}: no overlay, {flair_path} (shape {flair.shape}) "
                                 f"and {truth_path} (shape {truth.shape}) differ in shape")
    return row


# --------------------------------------------------------------------------- reports

def write_scores(rows: Sequence[Mapping[str, float]], path: str | os.PathLike) -> None:
    """Write the per-case rows as CSV (columns case, then the score columns), atomically."""
    path = Path(path)
    columns = ["case", *_columns(rows)]
    with atomic_write(path, ".csv") as tmp, open(tmp, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=columns)
        writer.writeheader()
        writer.writerows({key: row[key] for key in columns} for row in rows)


def write_summary(summary: Mapping[str, Mapping[str, float]], path: str | os.PathLike) -> None:
    """Write `summarize`'s statistics as CSV (columns statistic, then the score columns),
    atomically."""
    path = Path(path)
    columns = list(summary[STATISTICS[0]])
    with atomic_write(path, ".csv") as tmp, open(tmp, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=["statistic", *columns])
        writer.writeheader()
        writer.writerows({"statistic": name, **summary[name]} for name in STATISTICS)
