"""Lesion-wise metrics of one region of one case, as each BraTS scoring edition computes them.

Lesions are the 26-connected components of a region mask (`scipy.ndimage.label`). The editions
and their parameters are data in `unet3d.scoring`; two algorithms serve them:

- `dilation_scores` (brats2023, brats2024): truth lesions that touch after `dilation` iterations
  of the 18-connected structuring element are merged into one (and, where the task says so,
  predicted ones too, after which predicted lesions of at most the threshold are removed); every
  predicted lesion that overlaps a merged truth lesion's dilation is a true positive of it, and
  those lesions together are scored against the (undilated) truth lesion. A truth lesion no
  predicted lesion overlaps is a false negative (Dice 0, HD95 the penalty, NSD 0); a predicted
  lesion that overlaps no dilated truth lesion is a false positive. Truth lesions of at most the
  threshold (mm^3) are left out of the sums and counts (their predicted lesions are not false
  positives). Lesion-wise Dice = sum of lesion Dice / (n_tp + n_fn + n_fp); HD95 = (sum of lesion
  HD95 + penalty * n_fp) / (n_tp + n_fn + n_fp); NSD as Dice (without the n_fp terms where the
  task does not score false positives). Nothing to score: Dice 1, HD95 0, NSD 1.
- `matching_scores` (panoptica): truth and predicted lesions matched one to one, maximising the
  summed Dice over the pairs that overlap (`scipy.optimize.linear_sum_assignment`); unmatched
  truth lesions are false negatives, unmatched predicted ones false positives; Dice, HD95 and NSD
  are means over the matched pairs; no match: Dice 0, HD95 the penalty (panoptica says infinity,
  its parser 373 mm), NSD 0; no lesion on either side: every score NaN (skipped by the summary,
  as by the official one).

Lesion HD95 uses the voxel surfaces of `unet3d.case_metrics` (panoptica's definition; the 2023
and 2024 repositories weight surface elements by area instead, see docs/evaluation.md). The NSD
is the mean of the two directions' shares of surface voxels within the tolerance (the definition
of the 2024 repository and of panoptica).

Every function takes boolean masks of one shape, truth first, and the voxel spacing in mm; the
work is confined to the masks' joint bounding box, so BraTS-sized images cost little.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

from unet3d.case_metrics import mask_box, surface_dice, surface_distances
from unet3d.errors import InputError
from unet3d.scoring import DIAGONAL, Edition, LesionRule, get_edition, nsd_column

#: Lesion counts of every lesion-wise edition, in column order.
COUNTS: tuple[str, ...] = ("n_tp", "n_fp", "n_fn")

_CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)  # 26-connected components
_DILATION = ndimage.generate_binary_structure(3, 2)  # the 18-connected "cross of 2"

# Smallest Dice for two lesions to be matched, and the cost of a pair that cannot be (panoptica).
_MATCH_THRESHOLD = 1e-6
_NO_MATCH = 1.0 + _MATCH_THRESHOLD


def penalty(edition: Edition | str, task: str, shape: Sequence[int]) -> float:
    """The HD95 penalty (mm) of `task` in `edition` on an image of `shape`: a number, or the
    image's diagonal in voxels `|shape|` where the edition says `DIAGONAL` (as the official code
    computes it, whatever the voxel spacing)."""
    edition = get_edition(edition) if isinstance(edition, str) else edition
    value = edition.penalty_of(task)
    if value == DIAGONAL:
        return float(np.linalg.norm(np.asarray(shape, float)))
    return float(value)


def lesions(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """The 26-connected components of a 3D mask: (labels 1..n, 0 outside; n)."""
    labels, count = ndimage.label(mask, structure=_CONNECTIVITY)
    return labels, int(count)


def lesion_scores(truth: np.ndarray, pred: np.ndarray, edition: Edition | str, task: str = "GLI",
                  region: str = "wt", spacing: Sequence[float] = (1.0, 1.0, 1.0),
                  image_shape: Sequence[int] | None = None) -> dict[str, float]:
    """Lesion-wise scores of one region of one case in `edition`.

    Args:
        truth, pred: masks of the region (x, y, z), nonzero inside.
        edition: a lesion-wise edition (`unet3d.scoring.EDITIONS`) or its name.
        task: the BraTS task ("GLI", "MET", ...: `Convention.task`), for its parameters.
        region: the region's name, for thresholds of single regions ("et").
        spacing: voxel size in mm along (x, y, z).
        image_shape: the shape of the image the masks were cut from, for a penalty that is the
            image's diagonal; default the masks' shape.

    Returns:
        {"dice": ..., "hd95": ..., NSD columns ("nsd_0.5", "nsd_1.0"; panoptica "nsd"), "n_tp",
        "n_fp", "n_fn"} and, in the matching edition, "precision", "recall", "f1"; plain floats and ints.

    Raises:
        InputError: shapes or spacing that do not fit, a whole-image edition, an unknown task.
    """
    edition = get_edition(edition) if isinstance(edition, str) else edition
    truth, pred = np.asarray(truth, dtype=bool), np.asarray(pred, dtype=bool)
    if truth.shape != pred.shape or truth.ndim != 3 or len(spacing) != 3:
        raise InputError(f"lesion-wise scores need two 3D masks of one shape and three spacings; "
                         f"got {truth.shape}, {pred.shape} and {tuple(spacing)}")
    hd_penalty = penalty(edition, task, image_shape or truth.shape)
    if edition.lesions == "dilation":
        rule = edition.rule(task)
        margin = rule.largest_dilation + 1
    elif edition.lesions == "matching":
        rule, margin = None, 1
    else:
        raise InputError(f"scoring {edition.name} has no lesion-wise scores")
    if truth.any() or pred.any():  # work in the joint box: the components are the same
        box = mask_box(truth | pred, margin)
        truth, pred = truth[box], pred[box]
    if rule is not None:
        return dilation_scores(truth, pred, rule, region, spacing, hd_penalty,
                               edition.nsd_tolerances)
    return matching_scores(truth, pred, spacing, hd_penalty)


def _surface_scores(truth: np.ndarray, pred: np.ndarray, spacing: Sequence[float],
                    tolerances: Sequence[float | None]) -> tuple[float, list[float]]:
    """HD95 and the NSD at each tolerance (None: the smallest spacing) of two non-empty masks,
    from one computation of their surface distances (`unet3d.case_metrics`)."""
    from_truth, from_pred = surface_distances(truth, pred, spacing)
    hd95 = float(np.percentile(np.concatenate([from_truth, from_pred]), 95))
    return hd95, [surface_dice(from_truth, from_pred, min(spacing) if t is None else t)
                  for t in tolerances]


def _union_box(boxes: Sequence[tuple[slice, ...]]) -> tuple[slice, ...]:
    return tuple(slice(min(box[axis].start for box in boxes), max(box[axis].stop for box in boxes))
                 for axis in range(len(boxes[0])))


def merged_lesions(mask: np.ndarray, dilation: int) -> tuple[np.ndarray, list[tuple[slice, ...]]]:
    """The lesions of a mask with those that touch after `dilation` iterations of the
    18-connected structuring element merged: (labels 1..n of the mask's voxels, 0 elsewhere; the
    bounding box of each merged lesion's dilation, by label)."""
    dilated, _ = lesions(ndimage.binary_dilation(mask, _DILATION, iterations=dilation))
    return np.where(mask, dilated, 0), ndimage.find_objects(dilated)


def dilation_scores(truth: np.ndarray, pred: np.ndarray, rule: LesionRule, region: str,
                    spacing: Sequence[float], hd_penalty: float,
                    tolerances: Sequence[float] = ()) -> dict[str, float]:
    """Lesion-wise scores of the 2023 and 2024 evaluators (see the module docstring).

    Args:
        truth, pred: bool masks of one region, one 3D shape.
        rule: the task's parameters (`unet3d.scoring.LesionRule`).
        region: the region's name (its threshold and dilation may differ from the task's).
        spacing: voxel size in mm.
        hd_penalty: HD95 (mm) of a missed lesion and of a false positive.
        tolerances: NSD tolerances in mm (one column each).

    Returns:
        {"dice", "hd95", "nsd_<t>"..., "n_tp", "n_fp", "n_fn"}.
    """
    voxel = float(np.prod(spacing))
    threshold, dilation = rule.threshold_of(region), rule.dilation_of(region)
    if rule.small_predictions is None:
        pred_labels, n_pred = lesions(pred)
    else:
        pred_labels, boxes = merged_lesions(pred, dilation)
        n_pred = len(boxes)
    pred_sizes = np.bincount(pred_labels.ravel(), minlength=n_pred + 1)
    kept = {None: pred_sizes > 0, "voxels": pred_sizes > threshold,
            "mm3": pred_sizes * voxel > threshold}[rule.small_predictions]
    kept[0] = False
    pred_boxes = ndimage.find_objects(pred_labels, max_label=n_pred)

    merged, truth_boxes = merged_lesions(truth, dilation)
    true_positives, sums = set(), np.zeros(2 + len(tolerances))
    n_tp = n_fn = 0
    for index, box in enumerate(truth_boxes, start=1):
        lesion = merged[box] == index
        reach = ndimage.binary_dilation(lesion, _DILATION, iterations=dilation)
        matched = np.unique(pred_labels[box][reach])
        matched = matched[kept[matched]]
        true_positives.update(matched.tolist())
        if np.count_nonzero(lesion) * voxel <= threshold:
            continue  # too small to score; its predicted components are not false positives
        if matched.size == 0:
            n_fn += 1
            sums[1] += hd_penalty
            continue
        n_tp += 1
        around = _union_box([box, *(pred_boxes[label - 1] for label in matched)])
        truth_lesion = merged[around] == index
        pred_lesion = np.isin(pred_labels[around], matched)
        both = np.count_nonzero(truth_lesion & pred_lesion)
        hd95, nsds = _surface_scores(truth_lesion, pred_lesion, spacing, tolerances)
        sums += [2.0 * both / (np.count_nonzero(truth_lesion) + np.count_nonzero(pred_lesion)),
                 hd95, *nsds]
    n_fp = int(np.count_nonzero(kept)) - len(true_positives)
    scored_fp = n_fp if rule.count_false_positives else 0
    count = n_tp + n_fn + scored_fp
    if count == 0:
        values = [1.0, 0.0, *([1.0] * len(tolerances))]
    else:
        sums[1] += hd_penalty * scored_fp
        values = (sums / count).tolist()
    return {**dict(zip(("dice", "hd95", *map(nsd_column, tolerances)), values)),
            "n_tp": n_tp, "n_fp": n_fp, "n_fn": n_fn}


def matching_scores(truth: np.ndarray, pred: np.ndarray, spacing: Sequence[float],
                    hd_penalty: float) -> dict[str, float]:
    """Lesion-wise scores of the current official package (panoptica; module docstring).

    Returns:
        {"dice", "hd95", "nsd", "n_tp", "n_fp", "n_fn", "precision", "recall", "f1"}; NSD at the
        smallest spacing, as the mean of both directions' shares.
    """
    truth_labels, n_truth = lesions(truth)
    pred_labels, n_pred = lesions(pred)
    truth_sizes = np.bincount(truth_labels.ravel(), minlength=n_truth + 1)
    pred_sizes = np.bincount(pred_labels.ravel(), minlength=n_pred + 1)
    # Voxels shared by each truth and predicted lesion, as a (truth, prediction) table.
    shared = np.bincount(truth_labels.ravel().astype(np.int64) * (n_pred + 1) + pred_labels.ravel(),
                         minlength=(n_truth + 1) * (n_pred + 1)).reshape(n_truth + 1, n_pred + 1)
    scores = 2.0 * shared[1:, 1:] / (truth_sizes[1:, None] + pred_sizes[None, 1:])
    cost = np.where(scores >= _MATCH_THRESHOLD, 1.0 - scores, _NO_MATCH)
    rows, cols = linear_sum_assignment(cost) if cost.size else ((), ())
    matches = [(t + 1, p + 1) for t, p in zip(rows, cols) if cost[t, p] < 1.0]
    n_tp = len(matches)
    n_fp, n_fn = n_pred - n_tp, n_truth - n_tp
    counts = {"n_tp": n_tp, "n_fp": n_fp, "n_fn": n_fn,
              "precision": n_tp / (n_tp + n_fp) if n_pred else float("nan"),
              "recall": n_tp / (n_tp + n_fn) if n_truth else float("nan"),
              "f1": n_tp / (n_tp + (n_fp + n_fn) / 2) if n_truth + n_pred else float("nan")}
    if n_truth + n_pred == 0:
        return {"dice": float("nan"), "hd95": float("nan"), "nsd": float("nan"), **counts}
    if n_tp == 0:
        return {"dice": 0.0, "hd95": hd_penalty, "nsd": 0.0, **counts}
    truth_boxes, pred_boxes = ndimage.find_objects(truth_labels), ndimage.find_objects(pred_labels)
    matched = []
    for t, p in matches:
        around = _union_box([truth_boxes[t - 1], pred_boxes[p - 1]])
        hd95, (nsd,) = _surface_scores(truth_labels[around] == t, pred_labels[around] == p,
                                       spacing, (None,))
        matched.append((scores[t - 1, p - 1], hd95, nsd))
    dice, hd95, nsd = np.mean(matched, axis=0).tolist()
    return {"dice": dice, "hd95": hd95, "nsd": nsd, **counts}


def missing_scores(truth: np.ndarray, edition: Edition | str, task: str = "GLI",
                   region: str = "wt", spacing: Sequence[float] = (1.0, 1.0, 1.0),
                   image_shape: Sequence[int] | None = None) -> dict[str, float]:
    """Lesion-wise scores of a region of a case with no prediction, as the official evaluators
    score it (brats-evaluation's parser): HD95 the penalty, every other column 0 (Dice, NSD,
    the counts, precision, recall, F1), whatever the truth. Arguments as `lesion_scores`."""
    empty = lesion_scores(truth, np.zeros_like(truth, dtype=bool), edition, task, region, spacing)
    hd_penalty = penalty(edition, task, image_shape or np.shape(truth))
    return {column: hd_penalty if column == "hd95" else 0 if column in COUNTS else 0.0
            for column in empty}
