"""Label encodings: BraTS label maps <-> the channels a network is trained on.

Two encodings, both channels-last (the channel axis is appended after the spatial axes):

- raw labels (the legacy port): channel i = (label == labels[i]); with BraTS labels (1, 2, 4)
  that is NCR/NET, ED, ET. `get_multi_class_labels` keeps the port's name.
- nested regions (the paper recipe, nnU-Net's region-based training): WT = every tumour label,
  TC = NCR/NET + ET, ET = ET alone, in that channel order (`REGION_NAMES`).

`labels` is always the BraTS label triple (NCR/NET, ED, ET): (1, 2, 4) up to 2021, (1, 2, 3) from
BraTS 2023 on, which is why no code here assumes ET is 4.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from unet3d.brats import LABELS
from unet3d.errors import InputError

REGION_NAMES = ("wt", "tc", "et")
#: The label values assumed when neither data nor settings name them (BraTS up to 2021).
DEFAULT_LABELS = LABELS["brats2020"]


def check_labels(labels: Sequence[int], count: int | None = None, name: str = "labels"
                 ) -> tuple[int, ...]:
    """`labels` as a tuple, checked to be distinct label values in 1..255 (uint8 label maps),
    `count` of them when given; `InputError` (naming the setting `name`) otherwise."""
    values = tuple(int(v) for v in labels)
    if not values or len(set(values)) != len(values) or not all(0 < v < 256 for v in values):
        raise InputError(f"{name} {','.join(map(str, values))}: label values are distinct "
                         "integers from 1 to 255, e.g. 1,2,4 (BraTS up to 2021) or 1,2,3 (2023)")
    if count is not None and len(values) != count:
        raise InputError(f"{name} {','.join(map(str, values))}: {count} values needed"
                         + (" (NCR/NET, ED, ET)" if count == 3 else ""))
    return values


def brats_regions(labels: Sequence[int] = DEFAULT_LABELS) -> dict[str, tuple[int, ...]]:
    """The label values inside each nested region: {"wt": (1, 2, 4), "tc": (1, 4), "et": (4,)}."""
    ncr, ed, et = check_labels(labels, 3, "region labels")
    return {"wt": (ncr, ed, et), "tc": (ncr, et), "et": (et,)}


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


def labels_to_regions(data: np.ndarray, labels: Sequence[int] = DEFAULT_LABELS) -> np.ndarray:
    """Nested region channels WT, TC, ET of a label map: uint8 (..., x, y, z, 3)."""
    regions = brats_regions(labels)
    out = np.empty((*data.shape, 3), dtype=np.uint8)
    for channel, name in enumerate(REGION_NAMES):
        out[..., channel] = np.isin(data, regions[name])
    return out


def regions_to_labels(regions: np.ndarray, labels: Sequence[int] = DEFAULT_LABELS,
                      threshold: float = 0.5) -> np.ndarray:
    """BraTS label map from WT/TC/ET region probabilities (..., 3): uint8 (...).

    ET -> the ET label; TC outside ET -> NCR/NET; WT outside TC -> ED; a voxel is inside a region
    when its probability is >= `threshold`. Inverts `labels_to_regions` exactly on binary maps.
    """
    ncr, ed, et = check_labels(labels, 3, "region labels")
    if regions.shape[-1] != 3:
        raise InputError(f"region maps need 3 channels (WT, TC, ET); got shape {regions.shape}")
    wt, tc, enhancing = (regions[..., c] >= threshold for c in range(3))
    out = np.zeros(regions.shape[:-1], dtype=np.uint8)
    out[wt] = ed
    out[tc] = ncr
    out[enhancing] = et
    return out


def encode_targets(truth: np.ndarray, target: str, labels: Sequence[int]) -> np.ndarray:
    """`truth` as network targets: `target` is "regions" (WT/TC/ET) or "labels" (one per label)."""
    if target == "regions":
        return labels_to_regions(truth, labels)
    if target == "labels":
        return get_multi_class_labels(truth, len(labels), labels)
    raise InputError(f"unknown target encoding {target!r}: use 'regions' or 'labels'")


def output_names(target: str, labels: Sequence[int]) -> tuple[str, ...]:
    """Names of the network's output channels: wt, tc, et for regions, label_<value> for labels."""
    if target == "regions":
        return REGION_NAMES
    if target == "labels":
        return tuple(f"label_{value}" for value in labels)
    raise InputError(f"unknown target encoding {target!r}: use 'regions' or 'labels'")
