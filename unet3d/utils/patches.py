"""Patch grids over 3D volumes: cut a volume into patches and put predictions back together.

Same semantics as the legacy port's patch functions, but for channels-last arrays: a volume is
(X, Y, Z) or (X, Y, Z, C), a patch is (px, py, pz) or (px, py, pz, C). A patch is named by the
voxel index of its first corner, which may be negative or reach past the end of the volume; the
parts outside the volume are read as edge padding (the nearest voxel repeated) and cropped again
when the patches are put back together.

Typical use:

    indices = compute_patch_indices(image.shape[:3], patch_size=(64, 64, 64), overlap=16)
    patches = [get_patch_from_3d_data(image, (64, 64, 64), index) for index in indices]
    volume = reconstruct_from_patches(predictions, indices, image.shape)
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from unet3d.errors import InputError

IntOrSequence = int | Sequence[int]


def _per_axis(value: IntOrSequence | np.ndarray, name: str) -> np.ndarray:
    """`value` as an int array of 3 entries (an int is repeated for every axis)."""
    array = np.asarray(value)
    if array.ndim == 0:
        array = np.repeat(array, 3)
    if array.shape != (3,):
        raise InputError(f"{name} must be an int or 3 ints (one per spatial axis), got {value!r}")
    if not np.all(np.equal(np.mod(array, 1), 0)):
        raise InputError(f"{name} must hold whole numbers, got {value!r}")
    return array.astype(int)


def _positive(value: IntOrSequence, name: str) -> np.ndarray:
    array = _per_axis(value, name)
    if np.any(array <= 0):
        raise InputError(f"{name} must be positive on every axis, got {tuple(array.tolist())}")
    return array


def get_set_of_patch_indices(start: Sequence[int], stop: Sequence[int],
                             step: Sequence[int]) -> np.ndarray:
    """Corners of a regular grid: start, start + step, ... (< stop) on each of the 3 axes.

    Returns an int array of shape (n_patches, 3) holding every combination, the first axis varying
    slowest (the order of `np.mgrid[...].reshape(3, -1).T`).
    """
    start, stop = _per_axis(start, "start"), _per_axis(stop, "stop")
    step = _positive(step, "step")
    grid = np.mgrid[start[0]:stop[0]:step[0], start[1]:stop[1]:step[1], start[2]:stop[2]:step[2]]
    return grid.reshape(3, -1).T.astype(int)


def compute_patch_indices(image_shape: Sequence[int], patch_size: IntOrSequence,
                          overlap: IntOrSequence, start: IntOrSequence | None = None) -> np.ndarray:
    """First corners of the patches that tile a volume of spatial shape `image_shape` (3 ints).

    Per axis, with step = patch_size - overlap and n = ceil(image / step), the grid starts at
    `start` (default -ceil((step * n - image + overlap) / 2), which centres the grid on the volume)
    and runs in steps of `step` while below image + start. `patch_size`, `overlap` and `start` are
    an int (the same on every axis) or 3 ints.

    Returns an int array of shape (n_patches, 3), the first axis varying slowest.
    """
    if len(image_shape) != 3:
        raise InputError(f"image_shape must be the 3 spatial sizes (X, Y, Z), got {image_shape!r}; "
                         "leave the channel axis out")
    image = _positive(image_shape, "image_shape")
    patch = _positive(patch_size, "patch_size")
    overlap = _per_axis(overlap, "overlap")
    if np.any(overlap < 0) or np.any(overlap >= patch):
        raise InputError(f"overlap {tuple(overlap.tolist())} must be >= 0 and smaller than the "
                         f"patch size {tuple(patch.tolist())} on every axis; lower the overlap")
    step = patch - overlap
    if start is None:
        n_patches = np.ceil(image / step).astype(int)
        overflow = step * n_patches - image + overlap
        start = -np.ceil(overflow / 2).astype(int)
    else:
        start = _per_axis(start, "start")
    stop = image + start
    return get_set_of_patch_indices(start, stop, step)


def get_patch_from_3d_data(data: np.ndarray, patch_shape: IntOrSequence,
                           patch_index: Sequence[int]) -> np.ndarray:
    """The patch of shape `patch_shape` (3 ints) whose first corner is `patch_index` (3 ints).

    `data` is (X, Y, Z) or (X, Y, Z, C); the result is (px, py, pz) or (px, py, pz, C), a new array
    of the same dtype. Parts of the patch outside the volume hold the nearest voxel of the volume
    (as `np.pad(data, ..., mode="edge")` would give); only the region the patch reads is padded.
    `data` is not modified.
    """
    data = np.asarray(data)
    if data.ndim not in (3, 4):
        raise InputError(f"data must be (X, Y, Z) or (X, Y, Z, C), got shape {data.shape}")
    if min(data.shape[:3]) == 0:
        raise InputError(f"data has an empty spatial axis (shape {data.shape}); nothing to read")
    first, last = patch_region(patch_index, patch_shape, data.shape[:3])
    region = data[tuple(slice(f, l) for f, l in zip(first, last))]
    return edge_pad_region(region, first, patch_index, patch_shape)


def patch_region(patch_index: Sequence[int], patch_shape: IntOrSequence,
                 volume_shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """The part [first, last) of a volume that the patch at `patch_index` reads, per axis: its
    overlap with the volume, or the nearest voxel on an axis where it lies wholly outside."""
    patch = _positive(patch_shape, "patch_shape")
    corner = _per_axis(patch_index, "patch_index")
    size = np.asarray(volume_shape[:3], dtype=int)
    first = np.minimum(np.maximum(corner, 0), size - 1)
    last = np.maximum(np.minimum(corner + patch, size), first + 1)
    return first, last


def edge_pad_region(region: np.ndarray, first: Sequence[int], patch_index: Sequence[int],
                    patch_shape: IntOrSequence) -> np.ndarray:
    """The patch at `patch_index` from `region`, the part of the volume starting at `first` that
    `patch_region` names, edge-padded where the patch leaves the volume (a new array)."""
    patch = _positive(patch_shape, "patch_shape")
    corner = _per_axis(patch_index, "patch_index")
    widths = []
    for low, length, start, extent in zip(corner, patch, first, region.shape[:3]):
        before = min(max(start - low, 0), length - extent)
        widths.append((before, length - before - extent))
    widths += [(0, 0)] * (region.ndim - 3)
    if not any(any(pair) for pair in widths):
        return region.copy()
    return np.pad(region, widths, mode="edge")


def reconstruct_from_patches(patches: Sequence[np.ndarray] | np.ndarray,
                             patch_indices: Sequence[Sequence[int]] | np.ndarray,
                             data_shape: Sequence[int], default_value: float = 0) -> np.ndarray:
    """Put patches back together into one volume of shape `data_shape`.

    `patches` holds n patches (px, py, pz) or (px, py, pz, C) matching `data_shape` (X, Y, Z) or
    (X, Y, Z, C); `patch_indices` (n, 3) their first corners. Parts outside the volume are
    cropped, voxels covered by several patches get the mean of their values (equal weights), voxels
    covered by none get `default_value` (default 0). Returns float64 if the patches are float64,
    else float32. Memory: one sum array of `data_shape` (float64) and one count array of (X, Y, Z).
    """
    data_shape = tuple(int(size) for size in data_shape)
    if len(data_shape) not in (3, 4):
        raise InputError(f"data_shape must be (X, Y, Z) or (X, Y, Z, C), got {data_shape}")
    indices = np.asarray(patch_indices, dtype=int)
    if indices.size == 0:
        indices = indices.reshape(0, 3)
    if indices.ndim != 2 or indices.shape[1] != 3:
        raise InputError(f"patch_indices must be (n_patches, 3), got shape {indices.shape}")
    if len(patches) != len(indices):
        raise InputError(f"got {len(patches)} patches but {len(indices)} patch indices; "
                         "pass one index (first corner) per patch")
    total = np.zeros(data_shape, dtype=np.float64)
    count = np.zeros(data_shape[:3], dtype=np.int32)
    dtype = np.float32
    for patch, corner in zip(patches, indices):
        patch = np.asarray(patch)
        if patch.ndim != len(data_shape) or patch.shape[3:] != data_shape[3:]:
            raise InputError(f"patch of shape {patch.shape} does not match data_shape "
                             f"{data_shape}; patches need the same channel axis as the volume")
        if patch.dtype == np.float64:
            dtype = np.float64
        target, source = [], []
        for low, length, size in zip(corner, patch.shape[:3], data_shape[:3]):
            first, last = max(low, 0), min(low + length, size)
            if first >= last:
                break  # the patch lies wholly outside the volume
            target.append(slice(first, last))
            source.append(slice(first - low, last - low))
        else:
            total[tuple(target)] += patch[tuple(source)]
            count[tuple(target)] += 1
    divisor = count if len(data_shape) == 3 else count[..., None]
    np.divide(total, np.maximum(divisor, 1), out=total)
    total[count == 0] = default_value
    return total.astype(dtype, copy=False)


# --------------------------------------------------------------------------- random patches

def foreground_locations(truth: np.ndarray, labels: Sequence[int], max_per_label: int = 10000,
                         rng: np.random.Generator | None = None) -> dict[int, np.ndarray]:
    """Voxel positions of each label value present in `truth` (x, y, z), for oversampling.

    Returns {label: int32 array (n, 3)} with at most `max_per_label` positions per label, drawn
    without replacement by `rng` when there are more (default generator seeded with 0).
    """
    rng = np.random.default_rng(0) if rng is None else rng
    locations = {}
    for label in labels:
        positions = np.argwhere(truth == label).astype(np.int32)
        if len(positions) > max_per_label:
            positions = positions[np.sort(rng.choice(len(positions), max_per_label, replace=False))]
        if len(positions):
            locations[int(label)] = positions
    return locations


def random_patch_corner(rng: np.random.Generator, volume_shape: Sequence[int],
                        patch_shape: Sequence[int],
                        locations: dict[int, np.ndarray] | None = None) -> np.ndarray:
    """First corner (3 ints) of a random patch, nnU-Net style.

    Without `locations` the corner is uniform over the positions that keep the patch inside the
    volume (a patch larger than the volume on an axis is centred on it). With `locations` (from
    `foreground_locations`, non-empty) a label is drawn uniformly among those present, then one of
    its voxels, and the patch is centred on it (clipped to the same range), so rare labels such as
    ET are seen as often as the others.
    """
    shape = _positive(volume_shape, "volume_shape")
    patch = _positive(patch_shape, "patch_shape")
    excess = np.maximum(patch - shape, 0)
    low = -(excess // 2)
    high = shape + excess // 2 + excess % 2 - patch
    if locations:
        keys = sorted(locations)
        positions = locations[keys[int(rng.integers(len(keys)))]]
        voxel = positions[int(rng.integers(len(positions)))]
        return np.clip(voxel - patch // 2, low, high).astype(int)
    return np.array([rng.integers(l, h + 1) for l, h in zip(low, high)], dtype=int)
