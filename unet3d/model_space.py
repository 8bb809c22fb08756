"""The model's space: how a case's native volumes become network input, and the exact way back.

`to_model_space` brings one case's arrays, on their native grid, to the space the network sees
(and the data store holds; `prepare_case` reads the case's files first); `to_native_space` puts an
array of that space (a prediction) back on the case's native grid. Both follow a `ModelSpace`, which the data store records and the model
card carries, so training, prediction and validation transform a case the same way:

- the paper (`ModelSpace()`): crop to the brain's bounding box at native resolution; each
  modality z-scored over the case's own brain voxels, clipped to [-5, 5] and rescaled to [0, 1],
  0 outside the brain. The way back places the crop in its box (0 elsewhere): exact.
- the legacy port (`ModelSpace(image_shape=(128, 128, 128))`): the brain box (including the
  tumour, padded by one voxel) resampled to `image_shape`, stretching each brain; the way back
  resamples to the box (linear for probabilities, nearest neighbour for labels).

Arrays are indexed (x, y, z); images are channels-last float32 (x, y, z, c).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from unet3d.errors import InputError
from unet3d.conventions import ConventionLike, as_convention, check_label_values
from unet3d.io import Geometry, read_image_set, to_sitk

#: z-scores are clipped to [-CLIP, CLIP] before rescaling to [0, 1] (the paper).
CLIP = 5.0


@dataclass(frozen=True)
class ModelSpace:
    """How cases are brought to the model's space.

    image_shape: None crops each brain at native resolution (the paper); a shape (x, y, z)
        resamples every brain box to it (the legacy port).
    crop_to_brain: crop to the brain's bounding box (False: keep the whole grid).
    normalize: z-score each modality over the brain, clip to [-clip, clip], rescale to [0, 1].
    clip: the z-score clip.
    """

    image_shape: tuple[int, int, int] | None = None
    crop_to_brain: bool = True
    normalize: bool = True
    clip: float = CLIP


@dataclass(frozen=True)
class CaseInfo:
    """Where a case in the model's space came from.

    shape: the extent of the case in the model's space, (x, y, z).
    crop_start, crop_stop: the box of the native grid it was cropped from.
    original: the native grid (write predictions on it to overlay the input).
    resampled: True for the legacy space (the box was resampled to `shape`).
    """

    subject_id: str
    shape: tuple[int, int, int]
    crop_start: tuple[int, int, int]
    crop_stop: tuple[int, int, int]
    original: Geometry
    resampled: bool


def brain_mask(images: Sequence[np.ndarray]) -> np.ndarray:
    """Brain mask of skull-stripped images: voxels non-zero in any modality."""
    mask = images[0] != 0
    for image in images[1:]:
        mask |= image != 0
    return mask


def bounding_box(mask: np.ndarray, pad: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Bounding box of the True voxels: (start, stop) int arrays, stop exclusive.

    `pad` voxels are added on each side, limited to the array. An empty mask gives the whole array.
    """
    shape = np.asarray(mask.shape)
    if not mask.any():
        return np.zeros(len(shape), dtype=int), shape.copy()
    start, stop = [], []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        present = np.flatnonzero(mask.any(axis=other))
        start.append(present[0])
        stop.append(present[-1] + 1)
    start = np.maximum(np.asarray(start) - pad, 0)
    stop = np.minimum(np.asarray(stop) + pad, shape)
    return start, stop


def crop(array: np.ndarray, start: Sequence[int], stop: Sequence[int]) -> np.ndarray:
    """array[start:stop] over the first three axes."""
    return array[tuple(slice(int(a), int(b)) for a, b in zip(start, stop))]


def restore_to_original(array: np.ndarray, start: Sequence[int],
                        original_shape: Sequence[int], fill: float = 0) -> np.ndarray:
    """Inverse of `crop`: place a cropped (x, y, z[, c]) array back on the original grid.

    Voxels outside the crop box get `fill`. `restore_to_original(crop(a, s, e), s, a.shape)`
    equals `a` wherever `a` is inside [s, e).
    """
    out = np.full(tuple(original_shape) + array.shape[3:], fill, dtype=array.dtype)
    out[tuple(slice(int(a), int(a) + n) for a, n in zip(start, array.shape[:3]))] = array
    return out


def normalize_modality(image: np.ndarray, mask: np.ndarray, clip: float = CLIP) -> np.ndarray:
    """The paper's intensity normalisation of one (x, y, z) modality. Returns float32.

    z-score over the voxels of `mask`, clip to [-clip, clip], rescale to [0, 1]; 0 outside `mask`.
    Raises `InputError` if the modality is constant inside the mask.
    """
    values = image[mask].astype(np.float64)
    mean, std = values.mean(), values.std()
    if not std > 0:
        raise InputError("the image is constant inside the brain (standard deviation 0)")
    out = (np.clip((image - mean) / std, -clip, clip) + clip) / (2 * clip)
    out[~mask] = 0
    return out.astype(np.float32)


#: Relative difference of voxel spacing (per axis) below which a case is used at its own spacing.
SPACING_TOLERANCE = 0.01


def spacing_grid(geometry: Geometry, spacing: Sequence[float] | None) -> Geometry:
    """The grid on which a case of `geometry` meets a model trained at voxel size `spacing`
    (mm): `geometry` itself when `spacing` is None or within `SPACING_TOLERANCE` of its own,
    else the grid covering the same field of view edge to edge (same origin corner and
    direction) with the number of voxels per axis nearest to that spacing."""
    if spacing is None or np.allclose(geometry.spacing, spacing, rtol=SPACING_TOLERANCE, atol=0):
        return geometry
    extent = np.asarray(geometry.shape) * np.asarray(geometry.spacing)
    shape = np.maximum(np.rint(extent / np.asarray(spacing)), 1).astype(int)
    return resampled_grid(geometry, np.zeros(3, dtype=int), np.asarray(geometry.shape), shape)


def resampled_grid(geometry: Geometry, start: np.ndarray, stop: np.ndarray,
                   image_shape: Sequence[int]) -> Geometry:
    """The grid of `image_shape` voxels covering the box [start, stop) of `geometry` edge to edge."""
    spacing_in = np.asarray(geometry.spacing)
    spacing_out = spacing_in * (stop - start) / np.asarray(image_shape)
    direction = np.asarray(geometry.direction).reshape(3, 3)
    first_centre = spacing_in * (start - 0.5) + spacing_out * 0.5
    origin = np.asarray(geometry.origin) + direction @ first_centre
    return Geometry(tuple(int(n) for n in image_shape), tuple(float(s) for s in spacing_out),
                    tuple(float(o) for o in origin), geometry.direction)


def resample(array: np.ndarray, geometry: Geometry, target: Geometry,
             interpolator: int = sitk.sitkLinear) -> np.ndarray:
    """Resample an (x, y, z) array from `geometry` onto the grid `target` (0 outside)."""
    image = to_sitk(array, geometry)
    reference = sitk.Image([int(n) for n in target.shape], image.GetPixelID())
    reference.SetSpacing(target.spacing)
    reference.SetOrigin(target.origin)
    reference.SetDirection(target.direction)
    out = sitk.Resample(image, reference, sitk.Transform(), interpolator, 0.0)
    return sitk.GetArrayFromImage(out).transpose(2, 1, 0)


def stored_grid(info: CaseInfo) -> Geometry:
    """The grid of a case in the model's space (the resampled box, or the crop box)."""
    start, stop = np.asarray(info.crop_start), np.asarray(info.crop_stop)
    if info.resampled:
        return resampled_grid(info.original, start, stop, info.shape)
    return info.original.cropped(start, stop)


def to_model_space(images: Sequence[np.ndarray], truth: np.ndarray | None, geometry: Geometry,
                   subject_id: str, space: ModelSpace = ModelSpace(),
                   names: Sequence[str] | None = None
                   ) -> tuple[np.ndarray, np.ndarray | None, CaseInfo]:
    """Bring one case's arrays to the model's space: (image (x, y, z, c), truth, info).

    images: the modalities, (x, y, z) each, on `geometry`; truth: uint8 (x, y, z) or None.
    space: the crop, resampling and normalisation (see `ModelSpace`).
    names: how errors name the images (file names).
    `to_native_space(array, info)` is the way back.
    """
    names = names or [f"channel {c}" for c in range(len(images))]
    mask = brain_mask(images)
    if not mask.any():
        raise InputError(f"case {subject_id}: every modality is all zero ({', '.join(names)})")
    legacy = space.image_shape is not None
    if space.crop_to_brain:
        box_mask = mask | (truth > 0) if (legacy and truth is not None) else mask
        start, stop = bounding_box(box_mask, pad=1 if legacy else 0)
    else:
        start, stop = np.zeros(3, dtype=int), np.asarray(geometry.shape)
    if space.normalize:
        normalized = []
        for name, image in zip(names, images):
            try:
                normalized.append(normalize_modality(image, mask, space.clip))
            except InputError as error:
                raise InputError(f"case {subject_id}: {name}: {error}") from None
        images = normalized
    if legacy:
        target = resampled_grid(geometry, start, stop, space.image_shape)
        images = [resample(image, geometry, target) for image in images]
        if truth is not None:
            truth = resample(truth, geometry, target, sitk.sitkNearestNeighbor)
    else:
        images = [crop(image, start, stop) for image in images]
        truth = crop(truth, start, stop) if truth is not None else None
    info = CaseInfo(subject_id, tuple(int(n) for n in images[0].shape),
                    tuple(int(n) for n in start), tuple(int(n) for n in stop), geometry,
                    resampled=legacy)
    return np.stack(images, axis=-1), truth, info


def prepare_case(files: Sequence[str | os.PathLike], subject_id: str, n_channels: int,
                 with_truth: bool, convention: ConventionLike, space: ModelSpace = ModelSpace()
                 ) -> tuple[np.ndarray, np.ndarray | None, CaseInfo]:
    """Read one case's files (the modalities, then the label file when `with_truth`) and bring
    it to the model's space: (image, truth, info), as `to_model_space`. Label values outside
    the convention's are an `InputError` naming the file."""
    arrays, geometry = read_image_set(files, subject_id)
    truth = None
    if with_truth:
        truth = arrays[n_channels].astype(np.uint8)
        check_label_values(truth, as_convention(convention),
                           f"case {subject_id}: {Path(files[n_channels]).name}")
    return to_model_space(arrays[:n_channels], truth, geometry, subject_id, space,
                          [Path(f).name for f in files[:n_channels]])


def to_native_space(volume: np.ndarray, info: CaseInfo, fill: float = 0) -> np.ndarray:
    """A (x, y, z[, k]) array in the model's space of a case put on the case's native grid.

    Cropped cases are placed back in their crop box; legacy (resampled) cases are first resampled
    from the resampled grid to the box (linear for floats, nearest neighbour for integers). Voxels
    outside the box get `fill`. Returns an array of shape `info.original.shape (+ (k,))`, dtype
    of `volume`.
    """
    if tuple(volume.shape[:3]) != tuple(info.shape):
        raise InputError(f"case {info.subject_id}: prediction {volume.shape[:3]} is not the "
                         f"case's shape in the model's space {info.shape}")
    if info.resampled:
        box = info.original.cropped(info.crop_start, info.crop_stop)
        interpolator = (sitk.sitkNearestNeighbor if np.issubdtype(volume.dtype, np.integer)
                        else sitk.sitkLinear)
        channels = volume[..., np.newaxis] if volume.ndim == 3 else volume
        channels = np.stack([resample(channels[..., k], stored_grid(info), box, interpolator)
                             for k in range(channels.shape[-1])], axis=-1)
        volume = channels[..., 0] if volume.ndim == 3 else channels
    return restore_to_original(volume, info.crop_start, info.original.shape, fill)
