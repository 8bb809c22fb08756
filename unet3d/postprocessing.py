"""Network outputs -> BraTS label maps, and the BraTS post-processing.

- `probabilities_to_labels`: WT/TC/ET region probabilities -> BraTS labels
  (`unet3d.labels.regions_to_labels`: ET -> the ET label, TC minus ET -> NCR/NET, WT minus TC ->
  ED), or one channel per label by the legacy port's rule (`get_prediction_labels`: argmax + 1, 0
  below the threshold).
- `remove_small_enhancing`: a tiny predicted enhancing tumour becomes necrosis (BraTS scores an
  empty ET as perfect on cases without one).

Probabilities are float32 (x, y, z, k), label maps uint8 (x, y, z).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from unet3d.errors import InputError
from unet3d.labels import DEFAULT_LABELS, regions_to_labels


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
                            labels: Sequence[int] = DEFAULT_LABELS, threshold: float = 0.5
                            ) -> np.ndarray:
    """BraTS label map, uint8 (x, y, z), from probabilities (x, y, z, 3): WT/TC/ET regions
    (`target="regions"`: ET -> labels[2], TC minus ET -> labels[0], WT minus TC -> labels[1]) or
    one channel per label (`target="labels"`, the legacy rule)."""
    if target == "regions":
        return regions_to_labels(probabilities, labels, threshold)
    if target == "labels":
        return get_prediction_labels(probabilities[np.newaxis], threshold, labels)[0]
    raise InputError(f"unknown target {target!r}: 'regions' or 'labels'")


def remove_small_enhancing(label_map: np.ndarray, labels: Sequence[int] = DEFAULT_LABELS,
                           min_voxels: int = 200) -> np.ndarray:
    """BraTS post-processing: if fewer than `min_voxels` voxels are enhancing tumour (labels[2]),
    make them necrosis (labels[0]) (BraTS scores an empty ET as perfect on cases without one).
    Returns a new uint8 map."""
    necrosis, _, enhancing = labels
    out = label_map.copy()
    voxels = out == enhancing
    if 0 < voxels.sum() < min_voxels:
        out[voxels] = necrosis
    return out
