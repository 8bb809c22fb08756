"""Evaluation of folders of BraTS segmentations: scores per case and region, summaries, reports.

The regions scored are those of the truths' convention (`unet3d.conventions`: detected, recorded
by brats/preprocess.py, or given), and the scoring edition is the convention's unless one is
given (`unet3d.scoring`: legacy whole-image metrics, the lesion-wise brats2023 and brats2024
evaluators, or the current official package, panoptica).

The metrics of a case are in `unet3d.case_metrics` (whole image, always reported) and
`unet3d.lesion_metrics` (lesion-wise, in the editions that have them).

`evaluate_folder` scores a folder of predictions `<case>.nii.gz` against the BraTS truths and
writes `scores.csv`, `lesion_scores.csv`, `summary.csv`, `boxplot.png`, `lesion_boxplot.png`,
optionally `loss_graph.png` and per-case `overlays/<case>.png` (the figures: `unet3d.plots`).
A truth without a prediction is scored as the official evaluators score it (Dice 0, HD95 the
penalty) unless told to skip it.
"""

from __future__ import annotations

import csv
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from unet3d.brats import (MSD_IMAGES, NIFTI_EXTENSIONS, Case, candidates, classify_file,
                          detect_convention, find_cases)
from unet3d.case_metrics import METRICS, evaluate_masks, mask_box, region_masks
from unet3d.conventions import Convention, ConventionLike, as_convention
from unet3d.errors import InputError
from unet3d.atomic import atomic_write
from unet3d.io import read_nifti
from unet3d.labels import REGION_NAMES
from unet3d.lesion_metrics import lesion_scores, missing_scores, penalty
from unet3d.logs import get_logger
from unet3d.preprocessing import recorded_convention
from unet3d.plots import plot_boxplot, plot_loss_graph, plot_overlay, read_training_log
from unet3d.scoring import STD_DDOF, Edition, get_edition



def score_columns(regions: Sequence[str] = REGION_NAMES) -> tuple[str, ...]:
    """Score columns of `scores.csv` and `summary.csv` after the first: `wt_dice`, `wt_hd95`,
    ... for each scored region of the convention."""
    return tuple(f"{r}_{m}" for r in regions for m in METRICS)


#: The score columns of the 2017-2023 conventions (WT, TC, ET).
SCORE_COLUMNS: tuple[str, ...] = score_columns()

#: Rows of `summary.csv`: mean, standard deviation (sample: divides by n - 1, as the official
#: evaluators), median, 25th/75th percentile.
STATISTICS: tuple[str, ...] = ("mean", f"std (n-{STD_DDOF})", "median", "q1", "q3")
STD = STATISTICS[1]

# Probability maps that brats/predict.py --probabilities writes beside <case>.nii.gz.
_PROBABILITY_MAP = re.compile(r"_([a-z]+|label_\d+)$")


# --------------------------------------------------------------------------- summaries

def _columns(rows: Sequence[Mapping[str, float]]) -> list[str]:
    """The score columns of `rows`, in their order (every key but "case")."""
    return [key for key in rows[0] if key != "case"]


def summarize(rows: Sequence[Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """Statistics of the score columns over cases.

    Args:
        rows: one mapping per case holding the same score columns (`wt_dice`, ..., as
            `Evaluation.rows` returns them; "case" is ignored).

    Returns:
        {statistic: {column: value}} for the `STATISTICS` mean, std (sample, n - 1, as the
        official evaluators' summaries: NaN for fewer than two values), median, q1 and q3 (25th
        and 75th percentiles, linear interpolation). NaN scores (lesion-wise scores that the
        panoptica edition leaves undefined: no lesion in truth or prediction) are left out, as
        the official summaries leave them out.
    """
    if not rows:
        raise InputError("no cases to summarize")
    columns = _columns(rows)
    values = np.array([[float(row[column]) for column in columns] for row in rows])
    with warnings.catch_warnings():  # all-NaN columns and single values give NaN, quietly
        warnings.simplefilter("ignore", RuntimeWarning)
        statistics = {"mean": np.nanmean(values, axis=0),
                      STD: np.nanstd(values, axis=0, ddof=STD_DDOF),
                      "median": np.nanmedian(values, axis=0),
                      "q1": np.nanpercentile(values, 25, axis=0),
                      "q3": np.nanpercentile(values, 75, axis=0)}
    return {name: dict(zip(columns, map(float, statistics[name]))) for name in STATISTICS}


@dataclass
class Evaluation:
    """What `evaluate_folder` scored.

    Attributes:
        edition: the scoring edition (`unet3d.scoring.Edition`).
        regions: the scored regions' names, in order.
        scores: whole-image scores, one row per case: {"case": name, "wt_dice": ..., ...}
            (`score_columns`).
        lesions: lesion-wise scores, one row per case and region: {"case", "region", "dice",
            "hd95", NSD columns, "n_tp", "n_fp", "n_fn", and for panoptica "precision", "recall",
            "f1"; `unet3d.lesion_metrics`); empty in the legacy edition.
        missing: the cases whose truth had no prediction (scored as missing, or skipped).
    """

    edition: Edition
    regions: tuple[str, ...]
    scores: list[dict]
    lesions: list[dict]
    missing: list[str]

    @property
    def rows(self) -> list[dict]:
        """One row per case: the whole-image scores and, in lesion-wise editions, the lesion-wise
        ones as `<region>_lesion_<column>` (the columns of `summary.csv`)."""
        lesions: dict[str, list[dict]] = {}
        for row in self.lesions:
            lesions.setdefault(row["case"], []).append(row)
        return [_case_row(row, lesions.get(row["case"], [])) for row in self.scores]


def _case_row(scores: Mapping[str, float], lesions: Sequence[Mapping[str, float]]) -> dict:
    """A case's row of `Evaluation.rows` from its whole-image row and its lesion-wise rows."""
    row = dict(scores)
    for lesion in lesions:
        row.update({f"{lesion['region']}_lesion_{column}": value
                    for column, value in lesion.items() if column not in ("case", "region")})
    return row


def format_summary(evaluation: Evaluation) -> str:
    """A text table over cases of the mean and standard deviation (n - 1) of Dice and HD95 per
    region: whole image and, in lesion-wise editions, lesion-wise."""
    summary = summarize(evaluation.rows)
    mean, std = summary["mean"], summary[STD]
    missing = f", {len(evaluation.missing)} without prediction" if evaluation.missing else ""
    kinds = [("", "whole image")]
    if evaluation.lesions:
        kinds.append(("lesion_", "lesion-wise"))
    lines = [f"{len(evaluation.scores)} case(s){missing}; scoring {evaluation.edition.name}; "
             f"std: sample (n-{STD_DDOF})"]
    for prefix, name in kinds:
        lines.append(f"{name:<12}{'Dice mean':>10}{'(std)':>8}{'HD95 mm mean':>14}{'(std)':>8}")
        for region in evaluation.regions:
            dice_key, hd_key = f"{region}_{prefix}dice", f"{region}_{prefix}hd95"
            lines.append(f"{region.upper():<12}{mean[dice_key]:>10.3f}{std[dice_key]:>8.3f}"
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
    def dice(suffix: str) -> str:
        return " ".join(f"{key[:-len(suffix)].upper()} {value:.3f}" for key, value in row.items()
                        if key.endswith(suffix) and (suffix != "_dice" or "_lesion_" not in key))
    lesion = dice("_lesion_dice")
    get_logger().info(f"[{index}/{n_cases}] {case}: {dice('_dice')}"
                      + (f"; lesion-wise {lesion}" if lesion else ""))


def evaluate_folder(prediction_dir: str | os.PathLike, truth_dir: str | os.PathLike,
                    output_dir: str | os.PathLike, convention: ConventionLike | None = None,
                    scoring: str | None = None, skip_missing: bool = False,
                    training_log: str | os.PathLike | None = None, overlays: bool = True,
                    progress: Callable[[int, int, str, dict], None] | None = None,
                    ) -> Evaluation:
    """Score every prediction of a folder against its truth and write the reports.

    Args:
        prediction_dir: predicted label maps `<case>.nii.gz`, on the grid of the truths (the
            native BraTS grid, as brats/predict.py writes them).
        truth_dir: the truths, in any layout `find_truth_files` knows.
        output_dir: where the reports go (created if needed); every file is written atomically:
            `scores.csv` (whole image, one row per case: case, then `score_columns`),
            `lesion_scores.csv` (lesion-wise editions: one row per case and region),
            `summary.csv` (one row per `STATISTICS`, a column per score of `Evaluation.rows`),
            `boxplot.png` (whole-image Dice and HD95 per region), `lesion_boxplot.png`
            (lesion-wise), `loss_graph.png` (with `training_log`) and `overlays/<case>.png`
            (with `overlays`, for the cases whose truth folder holds a FLAIR image).
        convention: the truths' convention (its scored regions are scored); None: detected
            (`truth_convention`).
        scoring: the scoring edition (`unet3d.scoring.SCORING_EDITIONS`); None: the
            convention's.
        skip_missing: leave out the truths without a prediction (listed in a warning) instead of
            scoring them as the official evaluators do: every Dice, NSD, sensitivity and
            specificity 0, every HD95 the edition's penalty.
        training_log: the CSV log of training (columns epoch, loss and usually val_loss) to plot.
        overlays: whether to draw the per-case overlays.
        progress: called after each case as `progress(index, n_cases, case, row)` with the case's
            row of `Evaluation.rows`; by default a line "[i/n] case: WT 0.912 TC 0.850 ET 0.801"
            (Dice; then the lesion-wise Dice) goes to the package log.

    Returns:
        The `Evaluation`: edition, regions, whole-image and lesion-wise rows in case order, and
        the cases without prediction.

    Raises:
        InputError: no prediction; a prediction without truth; a prediction and its truth on
            different grids; unknown label values; an edition without parameters for the
            convention's task; a missing or unreadable training log.
    """
    output_dir = Path(output_dir)
    predictions = find_prediction_files(prediction_dir)
    found = _truth_cases(Path(truth_dir))
    convention = truth_convention(truth_dir, convention, found)
    edition = get_edition(scoring or convention.scoring)
    if edition.lesions == "dilation":
        edition.rule(convention.task)
    cases = {case.name: case for case in found}
    flairs = {name: case.images["flair"] for name, case in cases.items()
              if "flair" in case.images and case.channels is None}
    without_truth = sorted(set(predictions) - set(cases))
    if without_truth:
        raise InputError(f"no truth in {truth_dir} for the predictions of {len(without_truth)} "
                         f"case(s): {', '.join(without_truth)}; expected <case>/<case>_seg.nii.gz "
                         "or <case>_seg.nii.gz there. Pass the matching --truth_dir or remove "
                         "those predictions")
    missing = sorted(set(cases) - set(predictions))
    if missing:
        what = ("skipped (--skip_missing)" if skip_missing else
                f"scored as missing, as the official evaluators do: Dice 0, HD95 the penalty "
                f"({edition.name}; --skip_missing to leave them out)")
        get_logger().warning(f"{len(missing)} truth(s) without a prediction in {prediction_dir}, "
                             f"{what}: {', '.join(missing)}")
    history = read_training_log(training_log) if training_log is not None else None
    progress = progress or _log_case

    names = sorted(predictions) if skip_missing else sorted(cases)
    evaluation = Evaluation(edition, tuple(region.name for region in convention.scored), [], [],
                            missing)
    for index, case in enumerate(names, start=1):
        flair = flairs.get(case) if overlays else None
        whole, lesions = _score_case(case, predictions.get(case), cases[case].label, convention,
                                     edition, flair, output_dir)
        evaluation.scores.append(whole)
        evaluation.lesions.extend(lesions)
        progress(index, len(names), case, _case_row(whole, lesions))

    write_scores(evaluation.scores, output_dir / "scores.csv")
    write_summary(summarize(evaluation.rows), output_dir / "summary.csv")
    task_penalty = edition.penalty_of(convention.task)
    plot_boxplot(evaluation.scores, output_dir / "boxplot.png", "whole image",
                 task_penalty if isinstance(task_penalty, float) else None)
    lesion_outputs = (output_dir / "lesion_scores.csv", output_dir / "lesion_boxplot.png")
    if evaluation.lesions:
        write_scores(evaluation.lesions, lesion_outputs[0])
        by_case: dict[str, dict] = {}
        for lesion in evaluation.lesions:
            by_case.setdefault(lesion["case"], {"case": lesion["case"]}).update(
                {f"{lesion['region']}_{metric}": lesion[metric] for metric in ("dice", "hd95")})
        plot_boxplot(list(by_case.values()), lesion_outputs[1], f"lesion-wise ({edition.name})")
    else:  # a report of an earlier run with a lesion-wise edition would mislead
        for path in lesion_outputs:
            path.unlink(missing_ok=True)
    if history is not None:
        plot_loss_graph(history, output_dir / "loss_graph.png", title=Path(training_log).name)
    return evaluation


def _score_case(case: str, prediction_path: Path | None, truth_path: Path,
                convention: Convention, edition: Edition, flair_path: Path | None,
                output_dir: Path) -> tuple[dict, list[dict]]:
    """The whole-image scores row and the lesion-wise rows of one case (a missing prediction:
    `prediction_path` None); with `flair_path` and a prediction, its overlay too.

    Everything is computed in the box around the labels of truth and prediction, wide enough
    for the edition's dilations: the regions, their components and surfaces there are those of
    the whole image, and the background outside it counts for the specificity."""
    truth, truth_geometry = read_nifti(truth_path)
    spacing, shape = truth_geometry.spacing, truth.shape
    hd_penalty = penalty(edition, convention.task, shape)
    pred = None
    if prediction_path is not None:
        pred, pred_geometry = read_nifti(prediction_path)
        if not pred_geometry.same_grid(truth_geometry):
            raise InputError(
                f"case {case}: prediction {prediction_path} ({pred_geometry.describe()}) is not "
                f"on the grid of its truth {truth_path} ({truth_geometry.describe()}); write the "
                "predictions in the native space of the cases (as brats/predict.py does)")
    margin = 1 + (edition.rule(convention.task).largest_dilation if edition.lesions == "dilation"
                  else 0)
    box = mask_box((truth != 0) if pred is None else (truth != 0) | (pred != 0), margin)
    truth_masks = region_masks(truth[box], convention, str(truth_path))
    lesion_wise = {}
    if pred is None:
        scores = {region: {"dice": 0.0, "hd95": hd_penalty, "sensitivity": 0.0,
                           "specificity": 0.0} for region in truth_masks}
        if edition.lesions:
            lesion_wise = {region: missing_scores(mask, edition, convention.task, region, spacing,
                                                  shape) for region, mask in truth_masks.items()}
    else:
        pred_masks = region_masks(pred[box], convention, str(prediction_path))
        outside = truth.size - truth[box].size
        scores = evaluate_masks(truth_masks, pred_masks, spacing, hd_penalty, outside)
        if edition.lesions:
            lesion_wise = {region: lesion_scores(truth_masks[region], pred_masks[region], edition,
                                                 convention.task, region, spacing, shape)
                           for region in truth_masks}
        if flair_path is not None:
            _overlay(case, flair_path, truth_path, truth, pred, convention, scores, output_dir)
    row = {"case": case, **{f"{region}_{metric}": scores[region][metric]
                            for region in scores for metric in METRICS}}
    return row, [{"case": case, "region": region, **values}
                 for region, values in lesion_wise.items()]


def _overlay(case: str, flair_path: Path, truth_path: Path, truth: np.ndarray,
             pred: np.ndarray, convention: Convention,
             scores: Mapping[str, Mapping[str, float]], output_dir: Path) -> None:
    flair, _ = read_nifti(flair_path, dtype=np.float32)
    if flair.shape == truth.shape:
        plot_overlay(flair, region_masks(truth, convention), region_masks(pred, convention), case,
                     {region: scores[region]["dice"] for region in scores},
                     output_dir / "overlays" / f"{case}.png")
    else:
        get_logger().warning(f"case {case}: no overlay, {flair_path} (shape {flair.shape}) "
                             f"and {truth_path} (shape {truth.shape}) differ in shape")


# --------------------------------------------------------------------------- reports

def write_scores(rows: Sequence[Mapping[str, float]], path: str | os.PathLike) -> None:
    """Write the per-case rows as CSV (columns case, then the others: region and the scores of
    lesion-wise rows, the score columns of whole-image rows), atomically."""
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
