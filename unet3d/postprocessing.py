"""Network outputs -> BraTS label maps, and the BraTS post-processing.

- `probabilities_to_labels`: region probabilities -> labels of the convention
  (`unet3d.conventions.decode`: for WT/TC/ET, ET -> the ET label, TC minus ET -> NCR/NET, WT
  minus TC -> ED), or one channel per label by the legacy port's rule (`get_prediction_labels`:
  argmax + 1, 0 below the threshold), or a softmax over background and the labels by argmax
  (Isensee et al. 2017).
- `remove_small_enhancing`: a tiny predicted enhancing tumour becomes necrosis, for the
  conventions that name such a rule (`Convention.small_et`; BraTS scores an empty ET as perfect
  on cases without one).
- `without_postoperative`: no resection cavity on a pre-operative scan.

Probabilities are float32 (x, y, z, k), label maps uint8 (x, y, z).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from unet3d.conventions import DEFAULT_CONVENTION, ConventionLike, as_convention
from unet3d.errors import InputError
from unet3d.labels import regions_to_labels


def get_prediction_labels(prediction: np.ndarray, threshold: float = 0.5,
                          labels: Sequence[int] | None = None) -> list[np.ndarray]:
    """The legacy rule, per sample of a batch (n, x, y, z, k) of one channel per label:
    argmax + 1, 0 where the largest probability is below `threshold`, then channel i -> labels[i]
    (default i + 1). Returns a list of n uint8 (x, y, z) label maps."""
    prediction = np.asarray(prediction)
    values = np.asarray(labels if labels is not None else range(1, prediction.shape[-1] + 1))
    if len(values) != prediction.shape[-1]:
        raise InputError(f"{len(values)} labels for {prediction.shape[-1]} output channels")
    lookup = np.concatenate([[0], values]).astype(np.uint8)
    maps = []
    for sample in prediction:
        index = np.argmax(sample, axis=-1) + 1
        index[np.max(sample, axis=-1) < threshold] = 0
        maps.append(lookup[index])
    return maps


def probabilities_to_labels(probabilities: np.ndarray, target: str = "regions",
                            convention: ConventionLike = DEFAULT_CONVENTION,
                            threshold: float = 0.5) -> np.ndarray:
    """Label map, uint8 (x, y, z), from probabilities (x, y, z, k): the convention's regions
    (`target="regions"`, decoded in order), one channel per label value (`target="labels"`,
    the legacy rule) or background and one channel per label value (`target="classes"`: the
    argmax, `threshold` unused)."""
    convention = as_convention(convention)
    if target == "regions":
        return regions_to_labels(probabilities, convention, threshold)
    if target == "labels":
        return get_prediction_labels(probabilities[np.newaxis], threshold, convention.values)[0]
    if target == "classes":
        lookup = np.array((0, *convention.values), dtype=np.uint8)
        return lookup[np.argmax(probabilities, axis=-1)]
    raise InputError(f"unknown target {target!r}: one of regions, labels, classes")


def remove_small_enhancing(label_map: np.ndarray, convention: ConventionLike = DEFAULT_CONVENTION,
                           min_voxels: int = 200) -> np.ndarray:
    """BraTS post-processing: if fewer than `min_voxels` voxels hold the enhancing label of the
    convention's rule (`small_et` = (enhancing, replacement), e.g. (4, 1): ET becomes NCR/NET),
    give them the replacement (BraTS scores an empty ET as perfect on cases without one). A
    convention without the rule (meningioma, metastases, MEN-RT) is returned unchanged. Returns a
    new uint8 map."""
    out = label_map.copy()
    rule = as_convention(convention).small_et
    if rule is None:
        return out
    enhancing, replacement = rule
    voxels = out == enhancing
    if 0 < voxels.sum() < min_voxels:
        out[voxels] = replacement
    return out


def without_postoperative(probabilities: np.ndarray, target: str,
                          convention: ConventionLike) -> np.ndarray:
    """Probabilities (x, y, z, k) of a pre-operative scan: the outputs of what only surgery makes
    (a resection cavity, `Convention.postoperative_only`) set to 0, so that decoding gives the
    voxels under it the label they would have without it. Returns a new array (or the input
    when the convention has no such label)."""
    convention = as_convention(convention)
    after = set(convention.postoperative_only)
    if target == "regions":
        channels = [k for k, region in enumerate(convention.regions)
                    if set(region.labels) <= after]
    else:  # labels; classes after the background channel
        first = 1 if target == "classes" else 0
        channels = [first + k for k, value in enumerate(convention.values) if value in after]
    if not channels:
        return probabilities
    out = probabilities.copy()
    out[..., channels] = 0
    return out
