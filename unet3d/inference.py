"""Inference over a volume: sliding windows with Gaussian weights, one whole-volume pass, and
test-time augmentation. Pure array functions around a predictor; no files, no settings files.

- `sliding_window_inference(image, predictor, patch_shape, step=0.5, weighting="gaussian")`:
  windows of `patch_shape` every `step * patch_shape` voxels (the last one flush with the end),
  each window's probabilities weighted by a Gaussian centred on it (or constant weights), summed
  into one output buffer and divided by the summed weights. Windows go through the model
  `batch_size` at a time, so memory is the output buffers plus one batch, whatever the volume.
- `whole_volume_inference`: a fully convolutional model once over the whole (padded) volume.
- Test-time augmentation (`tta`): "mirror" averages the 8 flips of the spatial axes, "permute" the
  legacy port's 48 cube permutations; each prediction is mapped back by the exact inverse before
  averaging in probability space.
- `predict_volume(model, image, config)`: either of the two, as a `PredictConfig` says.

Arrays are channels-last: an image is float32 (x, y, z, channels), probabilities float32
(x, y, z, outputs); a predictor maps a batch (b, x, y, z, channels) to (b, x, y, z, outputs).
"""

from __future__ import annotations

import itertools
from typing import Callable, Sequence

import keras
import numpy as np

from unet3d.augment import generate_permutation_keys, permute_data, reverse_permute_data
from unet3d.config import TTA_MODES, WEIGHTINGS, PredictConfig
from unet3d.errors import InputError
from unet3d.model import model_divisors

Predictor = Callable[[np.ndarray], np.ndarray]
#: nnU-Net's Gaussian: sigma = 1/8 of the window on each axis.
SIGMA_SCALE = 1.0 / 8


# --------------------------------------------------------------------------------------------
# Windows and weights.


def gaussian_importance_map(patch_shape: Sequence[int], sigma_scale: float = SIGMA_SCALE
                            ) -> np.ndarray:
    """Weights of one window: float32 (px, py, pz), a Gaussian centred on the window with sigma
    `sigma_scale * patch_shape` per axis, 1 at the centre and positive everywhere."""
    axes = []
    for n in patch_shape:
        x = (np.arange(n) - (n - 1) / 2) / (n * sigma_scale)
        axes.append(np.exp(-0.5 * x * x))
    weights = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    return (weights / weights.max()).astype(np.float32)


def window_corners(volume_shape: Sequence[int], patch_shape: Sequence[int], step: float = 0.5
                   ) -> np.ndarray:
    """First corners of the sliding windows: int (n_windows, 3), the first axis slowest.

    Per axis, windows are about `step * patch` apart or closer: the fewest evenly spaced windows
    from 0 to `size - patch` (the last flush with the end) whose spacing does not exceed it,
    rounded to whole voxels (so a gap may exceed it by less than one voxel). Every
    size must be >= the patch size (pad smaller volumes first).
    """
    if not 0 < step <= 1:
        raise InputError(f"step {step}: the window step is a fraction of the window in (0, 1]")
    positions = []
    for n, p in zip(volume_shape, patch_shape):
        if n < p:
            raise InputError(f"volume {tuple(volume_shape)} is smaller than the window "
                             f"{tuple(patch_shape)}: pad it first")
        count = int(np.ceil((n - p) / (p * step))) + 1
        positions.append(np.round(np.linspace(0, n - p, count)).astype(int))
    grid = np.meshgrid(*positions, indexing="ij")
    return np.stack(grid, axis=-1).reshape(-1, 3)


def check_patch_shape(patch_shape: Sequence[int]) -> tuple[int, int, int]:
    shape = tuple(int(n) for n in patch_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise InputError(f"patch shape {tuple(patch_shape)}: need three positive sizes")
    return shape


def _pad_to(image: np.ndarray, shape: Sequence[int]) -> tuple[np.ndarray, tuple[slice, ...]]:
    """Zero-pad (x, y, z, c) `image` evenly on both sides to at least `shape`; returns the padded
    array and the slices that cut the original back out."""
    before = [max(s - n, 0) // 2 for n, s in zip(image.shape[:3], shape)]
    after = [max(s - n, 0) - b for n, s, b in zip(image.shape[:3], shape, before)]
    region = tuple(slice(b, b + n) for b, n in zip(before, image.shape[:3]))
    if not any(before) and not any(after):
        return image, region
    return np.pad(image, list(zip(before, after)) + [(0, 0)]), region


# --------------------------------------------------------------------------------------------
# Test-time augmentation.

Transform = tuple[Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray], np.ndarray]]


def _flip(axes: tuple[int, ...]) -> Transform:
    def apply(batch: np.ndarray) -> np.ndarray:
        return np.flip(batch, axis=axes) if axes else batch
    return apply, apply


def _permutation(key) -> Transform:
    def forward(batch: np.ndarray) -> np.ndarray:
        return np.stack([permute_data(sample, key) for sample in batch])

    def inverse(batch: np.ndarray) -> np.ndarray:
        return np.stack([reverse_permute_data(sample, key) for sample in batch])
    return forward, inverse


def tta_transforms(mode: str = "none") -> list[Transform]:
    """(forward, inverse) pairs acting on batches (b, x, y, z, c) for test-time augmentation:
    "none" the identity, "mirror" the 8 flips of the spatial axes, "permute" the 48 cube
    permutations (cubic windows only). `inverse(forward(b))` equals `b` exactly."""
    if mode == "none":
        return [_flip(())]
    if mode == "mirror":
        return [_flip(axes) for r in range(4) for axes in itertools.combinations((1, 2, 3), r)]
    if mode == "permute":
        return [_permutation(key) for key in sorted(generate_permutation_keys())]
    raise InputError(f"unknown test-time augmentation {mode!r}: choose one of {', '.join(TTA_MODES)}")


def predict_with_tta(predictor: Predictor, batch: np.ndarray, transforms: Sequence[Transform]
                     ) -> np.ndarray:
    """Mean over `transforms` of inverse(predictor(forward(batch))): float32 (b, x, y, z, k)."""
    total = None
    for forward, inverse in transforms:
        output = inverse(np.asarray(predictor(np.ascontiguousarray(forward(batch))), np.float32))
        if output.shape[:4] != batch.shape[:4]:
            raise InputError(f"the model maps inputs {batch.shape[1:4]} to {output.shape[1:4]}; "
                             "a segmentation model must keep the spatial shape")
        total = output.copy() if total is None else total + output
    return total / len(transforms)


# --------------------------------------------------------------------------------------------
# Inference over a volume.


def model_predictor(model: keras.Model) -> Predictor:
    """A predictor calling `model` on one batch (deep-supervision models: the full-resolution
    output). A model built under a tf.distribute strategy of several replicas, or called while a
    Keras distribution is in effect (training's, on JAX), is called directly: Keras' predict
    would split each batch over the replicas and workers."""
    strategy = getattr(model, "distribute_strategy", None)
    direct = strategy is not None and type(strategy).__name__ not in (
        "_DefaultDistributionStrategy", "OneDeviceStrategy")
    direct = direct or keras.distribution.distribution() is not None

    def predict_batch(batch: np.ndarray) -> np.ndarray:
        batch = batch.astype(np.float32, copy=False)
        output = model(batch, training=False) if direct else model.predict_on_batch(batch)
        if isinstance(output, dict):
            output = output["segmentation"]
        return np.asarray(keras.ops.convert_to_numpy(output), dtype=np.float32)
    return predict_batch


def _as_predictor(model: keras.Model | Predictor) -> Predictor:
    return model_predictor(model) if isinstance(model, keras.Model) else model


def sliding_window_inference(image: np.ndarray, model: keras.Model | Predictor,
                             patch_shape: Sequence[int], step: float = 0.5,
                             weighting: str = "gaussian", batch_size: int = 1,
                             tta: str = "none") -> np.ndarray:
    """Probabilities of a whole (x, y, z, c) image from windows of `patch_shape`.

    Args:
        image: float32 (x, y, z, channels); any size (smaller volumes are zero-padded).
        model: a Keras model or a predictor (b, px, py, pz, c) -> (b, px, py, pz, k).
        patch_shape: the window (px, py, pz), e.g. the training patch (128, 128, 128).
        step: window spacing as a fraction of the window (0.5: half-overlapping windows).
        weighting: "gaussian" (nnU-Net's importance map, sigma = window / 8) or "constant".
        batch_size: windows per model call.
        tta: "none", "mirror" (8 flips) or "permute" (48 permutations, cubic windows).

    Returns:
        float32 (x, y, z, k): the weighted mean of the window predictions covering each voxel.
    """
    patch_shape = check_patch_shape(patch_shape)
    if weighting not in WEIGHTINGS:
        raise InputError(f"unknown weighting {weighting!r}: choose one of {', '.join(WEIGHTINGS)}")
    if batch_size < 1:
        raise InputError(f"batch size {batch_size}: need at least 1 window per batch")
    predictor, transforms = _as_predictor(model), tta_transforms(tta)
    padded, region = _pad_to(np.asarray(image, dtype=np.float32), patch_shape)
    weights = (gaussian_importance_map(patch_shape) if weighting == "gaussian"
               else np.ones(patch_shape, dtype=np.float32))
    corners = window_corners(padded.shape[:3], patch_shape, step)
    total, weight_sum = None, np.zeros(padded.shape[:3], dtype=np.float32)
    for first in range(0, len(corners), batch_size):
        group = corners[first:first + batch_size]
        windows = [tuple(slice(c, c + p) for c, p in zip(corner, patch_shape)) for corner in group]
        output = predict_with_tta(predictor, np.stack([padded[w] for w in windows]), transforms)
        if total is None:
            total = np.zeros((*padded.shape[:3], output.shape[-1]), dtype=np.float32)
        for window, probabilities in zip(windows, output):
            total[window] += probabilities * weights[..., None]
            weight_sum[window] += weights
    total /= weight_sum[..., None]
    return total[region]


def whole_volume_inference(image: np.ndarray, model: keras.Model | Predictor,
                           divisor: int | None = None, tta: str = "none") -> np.ndarray:
    """Probabilities of a whole (x, y, z, c) image in one pass of a fully convolutional model.

    The image is zero-padded to multiples of `divisor` (default: the Keras model's own,
    `model_divisors`; 16 for the Isensee network's 4 downsamplings) and the output cropped back.
    Returns float32 (x, y, z, k). Memory grows with the volume (all activations at once).
    """
    if divisor is None:
        if not isinstance(model, keras.Model):
            raise InputError("whole-volume inference with a predictor function needs the divisor "
                             "its network's input sizes must be multiples of")
        divisor = max(model_divisors(model))
    target = [int(np.ceil(n / divisor)) * divisor for n in image.shape[:3]]
    padded, region = _pad_to(np.asarray(image, dtype=np.float32), target)
    if tta == "permute" and len(set(padded.shape[:3])) != 1:
        raise InputError(f"the 48 permutations need a cubic input; the padded volume is "
                         f"{padded.shape[:3]}: use tta 'mirror' or sliding windows")
    output = predict_with_tta(_as_predictor(model), padded[np.newaxis], tta_transforms(tta))
    return output[0][region]


def predict_volume(model: keras.Model | Predictor, image: np.ndarray, config: PredictConfig,
                   divisor: int | None = None) -> np.ndarray:
    """Probabilities (x, y, z, k) of one image (x, y, z, c) in the model's space, by sliding
    windows of `config.patch_shape`, or one whole-volume pass (`config.whole_volume`) padded to
    multiples of `divisor` (see `whole_volume_inference`). What `config` leaves to the model
    (`PredictConfig.resolved`) is sliding windows without TTA here."""
    config = config.resolved()
    if config.whole_volume:
        return whole_volume_inference(image, model, divisor, config.tta)
    if config.patch_shape is None:
        raise InputError("no window: give the patch shape (the model card's training patch) or "
                         "choose the whole-volume pass")
    return sliding_window_inference(image, model, config.patch_shape, config.step,
                                    config.weighting, config.batch_size, config.tta)
