"""Label encodings: BraTS label maps <-> the channels a network is trained on.

Three encodings, all channels-last (the channel axis is appended after the spatial axes):

- raw labels (the legacy port): channel i = (label == labels[i]); with BraTS labels (1, 2, 4)
  that is NCR/NET, ED, ET. `get_multi_class_labels` keeps the port's name.
- classes (Isensee et al. 2017): one-hot over background and each label value, for a softmax:
  channel 0 = background, channel i + 1 = (label == labels[i]); exactly one channel is 1.
- nested regions (the paper recipe, nnU-Net's region-based training): the convention's regions
  in order, e.g. WT, TC, ET up to 2023, WT, TC, ET, RC for brats2024-gli
  (`unet3d.conventions`: `encode` and its exact inverse `decode`).

Wherever a function takes `convention`, a name ("brats2024-gli"), a `Convention` or the label
triple (NCR/NET, ED, ET) of unet3d 0.2 (1, 2, 4 or 1, 2, 3) are accepted
(`unet3d.conventions.as_convention`).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from unet3d.conventions import DEFAULT_CONVENTION, ConventionLike, as_convention, decode, encode
from unet3d.errors import InputError

#: The outputs of the 2017-2023 conventions, in order.
REGION_NAMES = ("wt", "tc", "et")


def brats_regions(convention: ConventionLike = DEFAULT_CONVENTION) -> dict[str, tuple[int, ...]]:
    """The label values inside each training region, in output order: for brats2020
    {"wt": (1, 2, 4), "tc": (1, 4), "et": (4,)}."""
    return {region.name: region.labels for region in as_convention(convention).regions}


def get_multi_class_labels(data: np.ndarray, n_labels: int,
                           labels: Sequence[int] | None = None) -> np.ndarray:
    """One channel per label value, as the legacy port: channel i = (data == labels[i]).

    Args:
        data: integer label map of any shape (..., x, y, z).
        n_labels: number of channels.
        labels: the value of each channel; default 1, 2, ..., n_labels.

    Returns:
        uint8 array (..., x, y, z, n_labels) (channels-last; the port put channels first).
    """
    labels = tuple(range(1, n_labels + 1)) if labels is None else tuple(int(v) for v in labels)
    if len(labels) != n_labels:
        raise InputError(f"n_labels={n_labels} but labels={labels} has {len(labels)} values")
    out = np.empty((*data.shape, n_labels), dtype=np.uint8)
    for channel, value in enumerate(labels):
        np.equal(data, value, out=out[..., channel])
    return out


def labels_to_regions(data: np.ndarray, convention: ConventionLike = DEFAULT_CONVENTION
                      ) -> np.ndarray:
    """The convention's region channels of a label map: uint8 (..., x, y, z, n_regions)."""
    return encode(data, as_convention(convention))


def regions_to_labels(regions: np.ndarray, convention: ConventionLike = DEFAULT_CONVENTION,
                      threshold: float = 0.5) -> np.ndarray:
    """Label map (uint8 (...)) from region probabilities (..., n_regions): each region paints its
    own label, in order (for WT/TC/ET: WT outside TC -> ED, TC outside ET -> NCR/NET, ET -> ET);
    a voxel is inside a region when its probability is >= `threshold`. Inverts
    `labels_to_regions` exactly on binary maps."""
    return decode(regions, as_convention(convention), threshold)


def encode_targets(truth: np.ndarray, target: str, convention: ConventionLike) -> np.ndarray:
    """`truth` as network targets: `target` "regions" (the convention's) or "labels" (one channel
    per label value)."""
    convention = as_convention(convention)
    if target == "regions":
        return encode(truth, convention)
    if target == "labels":
        return get_multi_class_labels(truth, len(convention.values), convention.values)
    if target == "classes":
        labels = get_multi_class_labels(truth, len(convention.values), convention.values)
        background = (labels.sum(axis=-1, dtype=np.uint8) == 0)[..., np.newaxis]
        return np.concatenate([background.astype(np.uint8), labels], axis=-1)
    raise InputError(f"unknown target encoding {target!r}: use one of regions, labels, classes")


def output_names(target: str, convention: ConventionLike) -> tuple[str, ...]:
    """Names of the network's output channels: the region names (wt, tc, et, ...) for regions,
    label_<value> for labels, background and label_<value> for classes."""
    convention = as_convention(convention)
    if target == "regions":
        return convention.region_names
    if target in ("labels", "classes"):
        labels = tuple(f"label_{value}" for value in convention.values)
        return ("background", *labels) if target == "classes" else labels
    raise InputError(f"unknown target encoding {target!r}: use one of regions, labels, classes")
