"""Metrics of one case: Dice, HD95, sensitivity and specificity per region of a convention.

Regions are the scored regions of the case's convention (`unet3d.conventions`): up to 2023 whole
tumour (WT, every tumour label), tumour core (TC, NCR/NET + ET) and enhancing tumour (ET); from
2024 also the resection cavity, a cyst or single labels, or the one GTV of MEN-RT. Every metric
compares two boolean masks of one region, truth first, and is computed over the whole image
without smoothing. `unet3d.evaluation` scores folders of cases with them.

Conventions (the BraTS ones; no metric is ever NaN, so CSVs and summaries stay usable):

- Dice `2|T & P| / (|T| + |P|)`: 1 when truth and prediction are both empty, 0 when only one is.
- Sensitivity `|T & P| / |T|`: with an empty truth, 1 if the prediction is empty too, else 0
  (a prediction of a region that is absent is penalised as Dice penalises it).
- Specificity `|~T & ~P| / |~T|`: the same rule on the background, i.e.
  `specificity(t, p) == sensitivity(~t, ~p)`; with a truth covering the whole image (no
  background), 1 if the prediction covers it too, else 0.
- HD95 (mm): the 95th percentile of the distances from each surface voxel of one mask to the
  nearest surface voxel of the other, both directions pooled (as `medpy.metric.binary.hd95` and
  panoptica). 0 when both masks are empty, a penalty when only one is: `HD95_EMPTY` (373.13 mm,
  the diagonal of the BraTS image) unless the scoring edition says otherwise
  (`unet3d.scoring`).
- NSD (lesion-wise editions only, `surface_dice`): the normalised surface Dice at a tolerance in
  mm, the mean of the two directions' shares of surface within it.

The lesion-wise metrics of the 2023-2025 editions are in `unet3d.lesion_metrics`.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from scipy import ndimage

from unet3d.conventions import (DEFAULT_CONVENTION, ConventionLike, Region, as_convention,
                                check_label_values)
from unet3d.errors import InputError
from unet3d.model_space import bounding_box
from unet3d.scoring import EDITIONS

#: HD95 (mm) when exactly one of truth and prediction is empty: the BraTS image diagonal (the
#: penalty of the legacy scoring).
HD95_EMPTY = EDITIONS["legacy"].penalty

#: Metrics per region, in the column order of `scores.csv`.
METRICS: tuple[str, ...] = ("dice", "hd95", "sensitivity", "specificity")


def _pair(truth: np.ndarray, pred: np.ndarray, spacing: Sequence[float] | None = None
          ) -> tuple[np.ndarray, np.ndarray]:
    truth, pred = np.asarray(truth, dtype=bool), np.asarray(pred, dtype=bool)
    if truth.shape != pred.shape:
        raise InputError(f"truth shape {truth.shape} and prediction shape {pred.shape} differ")
    if spacing is not None and len(spacing) != truth.ndim:
        raise InputError(f"spacing {tuple(spacing)}: need one value per axis of shape "
                         f"{truth.shape}")
    return truth, pred


def region_masks(label_map: np.ndarray, convention: ConventionLike = DEFAULT_CONVENTION,
                 name: str = "label map", regions: Sequence[Region] | None = None
                 ) -> dict[str, np.ndarray]:
    """Boolean masks of the regions of an integer label map.

    Args:
        label_map: label values of any shape, e.g. (x, y, z).
        convention: the labels' convention (a name, a `Convention` or a label triple).
        name: how an error names `label_map` (e.g. its file).
        regions: the regions; default the convention's scored regions.

    Returns:
        {"wt": mask, "tc": mask, "et": mask, ...}, bool arrays of `label_map`'s shape.

    Raises:
        InputError: when `label_map` holds values that are not 0 or the convention's labels.
    """
    convention = as_convention(convention)
    check_label_values(label_map, convention, name)
    return {region.name: np.isin(label_map, region.labels)
            for region in (convention.scored if regions is None else regions)}


def dice(truth: np.ndarray, pred: np.ndarray) -> float:
    """Dice `2|T & P| / (|T| + |P|)` of two masks of one shape (nonzero = inside).

    1.0 when both are empty, 0.0 when only one is.
    """
    truth, pred = _pair(truth, pred)
    total = np.count_nonzero(truth) + np.count_nonzero(pred)
    if total == 0:
        return 1.0
    return 2.0 * np.count_nonzero(truth & pred) / total


def sensitivity(truth: np.ndarray, pred: np.ndarray) -> float:
    """True positive rate `|T & P| / |T|` of two masks of one shape (nonzero = inside).

    With an empty truth: 1.0 if the prediction is empty too, else 0.0.
    """
    truth, pred = _pair(truth, pred)
    positives = np.count_nonzero(truth)
    if positives == 0:
        return 0.0 if pred.any() else 1.0
    return np.count_nonzero(truth & pred) / positives


def specificity(truth: np.ndarray, pred: np.ndarray, outside: int = 0) -> float:
    """True negative rate `|~T & ~P| / |~T|` over the whole image, masks of one shape.

    `outside`: background voxels of both beyond the masks' arrays, when they are a crop of the
    image. With no background in the truth: 1.0 if the prediction has none either, else 0.0
    (the sensitivity rule applied to the background: `sensitivity(~truth, ~pred)`).
    """
    truth, pred = _pair(truth, pred)
    negatives = truth.size - np.count_nonzero(truth) + outside
    if negatives == 0:
        return 0.0 if (~pred).any() else 1.0
    return (np.count_nonzero(~truth & ~pred) + outside) / negatives


def surface_voxels(mask: np.ndarray) -> np.ndarray:
    """The voxels of a 3D mask with a 6-connected neighbour outside it (mask minus its 6-connected
    erosion); mask voxels on the array border count as surface. Bool, `mask`'s shape."""
    mask = np.asarray(mask, dtype=bool)
    structure = ndimage.generate_binary_structure(3, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def mask_box(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    """Slices of the bounding box of a mask's True voxels, `margin` voxels wider on each side
    (within the array; `unet3d.model_space.bounding_box`)."""
    start, stop = bounding_box(mask, pad=margin)
    return tuple(slice(int(a), int(b)) for a, b in zip(start, stop))


def surface_distances(truth: np.ndarray, pred: np.ndarray,
                      spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from each surface voxel of one 3D mask to the nearest surface voxel of the
    other: (from every truth surface voxel, from every prediction surface voxel).

    Surfaces are `surface_voxels`; distances are between voxel centres with `spacing` (mm per voxel
    along each axis). Both masks must be non-empty.

    Only the joint bounding box of the masks (plus one voxel) is processed, so BraTS-sized images
    cost little; the result is exactly that of the whole image: every voxel of either mask lies in
    the box and the box has a one-voxel margin of background (or the image border, which the
    erosion treats as background either way), so the surfaces are the same; the exact Euclidean
    distance transform of the complement of one surface gives each voxel its distance to the
    nearest surface voxel, all of which lie in the box, whatever the size of the array around them.
    """
    truth, pred = _pair(truth, pred, spacing)
    box = mask_box(truth | pred, margin=1)
    truth_surface, pred_surface = surface_voxels(truth[box]), surface_voxels(pred[box])
    to_truth = ndimage.distance_transform_edt(~truth_surface, sampling=spacing)
    to_pred = ndimage.distance_transform_edt(~pred_surface, sampling=spacing)
    return to_pred[truth_surface], to_truth[pred_surface]


def hausdorff95(truth: np.ndarray, pred: np.ndarray,
                spacing: Sequence[float] = (1.0, 1.0, 1.0), penalty: float = HD95_EMPTY) -> float:
    """95th percentile Hausdorff distance in mm between two 3D masks of one shape.

    The `surface_distances` of both directions are pooled and their 95th percentile taken
    (`np.percentile`, linear interpolation). 0.0 when both masks are empty, `penalty` (default
    `HD95_EMPTY`) when only one is.
    """
    truth, pred = _pair(truth, pred, spacing)
    has_truth, has_pred = truth.any(), pred.any()
    if not has_truth and not has_pred:
        return 0.0
    if not has_truth or not has_pred:
        return float(penalty)
    return float(np.percentile(np.concatenate(surface_distances(truth, pred, spacing)), 95))


def surface_dice(from_truth: np.ndarray, from_pred: np.ndarray, tolerance: float) -> float:
    """Normalised surface Dice from the two directions' `surface_distances`: the mean of the
    shares of each surface within `tolerance` mm of the other (the definition of the BraTS 2024
    evaluators, from nnU-Net, and of panoptica)."""
    return (np.count_nonzero(from_truth <= tolerance) / from_truth.size
            + np.count_nonzero(from_pred <= tolerance) / from_pred.size) / 2


def evaluate_case(truth_labels: np.ndarray, pred_labels: np.ndarray,
                  spacing: Sequence[float] = (1.0, 1.0, 1.0),
                  convention: ConventionLike = DEFAULT_CONVENTION,
                  names: tuple[str, str] = ("truth", "prediction"),
                  penalty: float = HD95_EMPTY) -> dict[str, dict[str, float]]:
    """Scores of one case per scored region of the convention.

    Args:
        truth_labels: BraTS label map (x, y, z).
        pred_labels: predicted label map of the same shape.
        spacing: voxel size in mm along (x, y, z), for HD95.
        convention: the labels' convention (a name, a `Convention` or a label triple).
        names: how errors name the truth and the prediction (e.g. their files).
        penalty: HD95 (mm) of a region empty in exactly one of truth and prediction.

    Returns:
        {"wt": {"dice": ..., "hd95": ..., "sensitivity": ..., "specificity": ...}, "tc": ...,
        "et": ...}, plain floats.

    Raises:
        InputError: when the shapes differ or a map holds values not of the convention.
    """
    if np.shape(truth_labels) != np.shape(pred_labels):
        raise InputError(f"{names[0]} (shape {np.shape(truth_labels)}) and {names[1]} "
                         f"(shape {np.shape(pred_labels)}) differ in shape")
    return evaluate_masks(region_masks(truth_labels, convention, names[0]),
                          region_masks(pred_labels, convention, names[1]), spacing, penalty)


def evaluate_masks(truth: Mapping[str, np.ndarray], pred: Mapping[str, np.ndarray],
                   spacing: Sequence[float] = (1.0, 1.0, 1.0), penalty: float = HD95_EMPTY,
                   outside: int = 0) -> dict[str, dict[str, float]]:
    """`evaluate_case` of region masks ({"wt": mask, "tc": ..., "et": ...}, as `region_masks`
    returns them), in the order of `truth`'s regions; `outside` as `specificity`'s."""
    return {region: {"dice": dice(truth[region], pred[region]),
                     "hd95": hausdorff95(truth[region], pred[region], spacing, penalty),
                     "sensitivity": sensitivity(truth[region], pred[region]),
                     "specificity": specificity(truth[region], pred[region], outside)}
            for region in truth}
