"""Prediction: sliding-window inference, test-time augmentation, labels, native-space output.

The pieces, each usable alone:

- `sliding_window_inference(image, predictor, patch_shape, step=0.5, weighting="gaussian")`:
  windows of `patch_shape` every `step * patch_shape` voxels (the last one flush with the end),
  each window's probabilities weighted by a Gaussian centred on it (or constant weights), summed
  into one output buffer and divided by the summed weights. Windows go through the model
  `batch_size` at a time, so memory is the output buffers plus one batch, whatever the volume.
  `whole_volume_inference` runs a fully convolutional model once over the whole (padded) volume.
- Test-time augmentation (`tta`): "mirror" averages the 8 flips of the spatial axes, "permute" the
  legacy port's 48 cube permutations; each prediction is mapped back by the exact inverse before
  averaging in probability space.
- `probabilities_to_labels`: WT/TC/ET region outputs -> BraTS labels (`regions_to_labels`) or the
  legacy rule for one channel per label (`get_prediction_labels`); `remove_small_enhancing`: the
  BraTS post-processing (a tiny predicted enhancing tumour becomes necrosis).
- `to_native_space`: a prediction in the store's space (brain crop, or the legacy resampled box)
  put back on the original file's grid, so it overlays the input and can be submitted as is.
- `predict_cases`: raw or preprocessed BraTS cases -> `<output_dir>/<case>.nii.gz`, the same
  preprocessing as training, one progress line per case (`brats/predict.py`).
- The legacy port's API: `predict`, `patch_wise_prediction`, `get_prediction_labels`,
  `prediction_to_image`, `run_validation_cases`.

Arrays are channels-last: an image is float32 (x, y, z, channels), probabilities float32
(x, y, z, outputs); a predictor maps a batch (b, x, y, z, channels) to (b, x, y, z, outputs).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import pickle
import time
from pathlib import Path
from typing import Callable, Sequence

import keras
import numpy as np
import SimpleITK as sitk

from unet3d.augment import generate_permutation_keys, permute_data, reverse_permute_data
from unet3d.brats import LABELS, MODALITIES, find_cases
from unet3d.data import (CaseInfo, DataStore, prepare_arrays, resample, resampled_grid,
                         restore_to_original)
from unet3d.errors import InputError
from unet3d.io import Geometry, atomic_write, to_sitk, write_nifti
from unet3d.labels import REGION_NAMES, brats_regions, regions_to_labels
from unet3d.logs import get_logger
from unet3d.model import model_divisors
from unet3d.model.saving import load_old_model
from unet3d.preprocessing import PreprocessConfig, correct_case, read_settings
from unet3d.utils.patches import compute_patch_indices, get_patch_from_3d_data, reconstruct_from_patches

Predictor = Callable[[np.ndarray], np.ndarray]
WEIGHTINGS = ("gaussian", "constant")
TTA_MODES = ("none", "mirror", "permute")
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


def _check_patch_shape(patch_shape: Sequence[int]) -> tuple[int, int, int]:
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
    output)."""
    def predict_batch(batch: np.ndarray) -> np.ndarray:
        output = model.predict_on_batch(batch.astype(np.float32, copy=False))
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
    patch_shape = _check_patch_shape(patch_shape)
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


def whole_volume_inference(image: np.ndarray, model: keras.Model | Predictor, divisor: int = 16,
                           tta: str = "none") -> np.ndarray:
    """Probabilities of a whole (x, y, z, c) image in one pass of a fully convolutional model.

    The image is zero-padded to multiples of `divisor` (16 for the Isensee network: 2 ** 4
    downsamplings) and the output cropped back. Returns float32 (x, y, z, k). Memory grows with
    the volume (all activations of the whole volume at once).
    """
    target = [int(np.ceil(n / divisor)) * divisor for n in image.shape[:3]]
    padded, region = _pad_to(np.asarray(image, dtype=np.float32), target)
    if tta == "permute" and len(set(padded.shape[:3])) != 1:
        raise InputError(f"the 48 permutations need a cubic input; the padded volume is "
                         f"{padded.shape[:3]}: use tta 'mirror' or sliding windows")
    output = predict_with_tta(_as_predictor(model), padded[np.newaxis], tta_transforms(tta))
    return output[0][region]


# --------------------------------------------------------------------------------------------
# Network outputs -> BraTS labels.


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
                            labels: Sequence[int] = LABELS["brats2020"], threshold: float = 0.5
                            ) -> np.ndarray:
    """BraTS label map, uint8 (x, y, z), from probabilities (x, y, z, 3): WT/TC/ET regions
    (`target="regions"`: ET -> labels[2], TC minus ET -> labels[0], WT minus TC -> labels[1]) or
    one channel per label (`target="labels"`, the legacy rule)."""
    if target == "regions":
        return regions_to_labels(probabilities, labels, threshold)
    if target == "labels":
        return get_prediction_labels(probabilities[np.newaxis], threshold, labels)[0]
    raise InputError(f"unknown target {target!r}: 'regions' or 'labels'")


def remove_small_enhancing(label_map: np.ndarray, labels: Sequence[int] = LABELS["brats2020"],
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


# --------------------------------------------------------------------------------------------
# Back to the original grid.


def to_native_space(volume: np.ndarray, info: CaseInfo, fill: float = 0) -> np.ndarray:
    """A (x, y, z[, k]) array in the store's space of a case put on the case's original grid.

    Brain-cropped cases are placed back in their crop box; legacy (resampled) cases are first
    resampled from the resampled grid to the box (linear for floats, nearest neighbour for
    integers). Voxels outside the box get `fill`. Returns an array of shape
    `info.original.shape (+ (k,))`, dtype of `volume`.
    """
    if tuple(volume.shape[:3]) != tuple(info.shape):
        raise InputError(f"case {info.subject_id}: prediction {volume.shape[:3]} is not the "
                         f"stored case's shape {info.shape}")
    if info.resampled:
        stored = resampled_grid(info.original, np.asarray(info.crop_start),
                                np.asarray(info.crop_stop), info.shape)
        box = info.original.cropped(info.crop_start, info.crop_stop)
        interpolator = (sitk.sitkNearestNeighbor if np.issubdtype(volume.dtype, np.integer)
                        else sitk.sitkLinear)
        channels = volume[..., np.newaxis] if volume.ndim == 3 else volume
        channels = np.stack([resample(channels[..., k], stored, box, interpolator)
                             for k in range(channels.shape[-1])], axis=-1)
        volume = channels[..., 0] if volume.ndim == 3 else channels
    return restore_to_original(volume, info.crop_start, info.original.shape, fill)


# --------------------------------------------------------------------------------------------
# Predicting cases.


@dataclasses.dataclass
class PredictConfig:
    """How to predict; `predict_config(model_file)` fills it from the model's training settings.

    patch_shape: sliding window; None for one whole-volume pass.
    labels: the BraTS labels written (NCR/NET, ED, ET); None: each case's release convention
        ((1, 2, 3) for BraTS 2023 naming, else (1, 2, 4)).
    image_shape: the legacy resampled store's shape (None: brain crop at native resolution).
    min_et_voxels: remove a predicted enhancing tumour smaller than this (0: off).
    """

    patch_shape: tuple[int, int, int] | None = (128, 128, 128)
    step: float = 0.5
    weighting: str = "gaussian"
    tta: str = "none"
    batch_size: int = 1
    threshold: float = 0.5
    target: str = "regions"
    labels: tuple[int, int, int] | None = None
    image_shape: tuple[int, int, int] | None = None
    modalities: tuple[str, ...] = MODALITIES
    divisor: int = 16
    min_et_voxels: int = 0
    bias_correction: bool = True
    probabilities: bool = False


#: What prediction takes from the training settings saved beside a model.
TRAINED_SETTINGS = ("patch_shape", "image_shape", "target", "modalities")


def settings_path(model_file: str | os.PathLike) -> Path:
    """The training settings saved beside a model: `<model_file>.json`."""
    model_file = Path(model_file)
    return model_file.with_name(model_file.name + ".json")


def save_settings(model_file: str | os.PathLike, settings: dict) -> Path:
    """Write a model's training settings (JSON) to `<model_file>.json`, atomically."""
    path = settings_path(model_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(settings, indent=2, default=list) + "\n")
    return path


def load_settings(model_file: str | os.PathLike) -> dict:
    """The training settings saved beside `model_file` ({} if there are none)."""
    path = settings_path(model_file)
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except ValueError as error:
        raise InputError(f"{path}: unreadable training settings ({error}); delete it and give "
                         "the prediction flags by hand") from None


def predict_config(model_file: str | os.PathLike, **overrides) -> PredictConfig:
    """The `PredictConfig` matching how `model_file` was trained (from `<model_file>.json`, which
    training writes), with `overrides` (None values ignored) applied."""
    settings = load_settings(model_file)
    values = {key: settings[key] for key in TRAINED_SETTINGS if key in settings}
    if settings and values.get("patch_shape") is None:  # trained on whole (resampled) images
        values["patch_shape"] = values.get("image_shape")
    values.update({key: value for key, value in overrides.items() if value is not None})
    fields = {f.name for f in dataclasses.fields(PredictConfig)}
    unknown = set(values) - fields
    if unknown:
        raise InputError(f"unknown prediction settings {sorted(unknown)}")
    for key in ("patch_shape", "image_shape", "labels", "modalities"):
        if values.get(key) is not None:
            values[key] = tuple(values[key])
    return PredictConfig(**values)


def check_config(config: PredictConfig) -> None:
    """Stop impossible settings before any case is read, saying what to change."""
    if config.patch_shape is not None:
        shape = _check_patch_shape(config.patch_shape)
        if any(n % config.divisor for n in shape):
            raise InputError(f"--patch_shape {','.join(map(str, shape))}: every size must be "
                             f"divisible by {config.divisor} for this network (e.g. 128,128,128)")
    if config.tta == "permute" and config.patch_shape is not None \
            and len(set(config.patch_shape)) != 1:
        raise InputError(f"--tta permute needs a cubic window, not {tuple(config.patch_shape)}")
    if not 0 < config.step <= 1:
        raise InputError(f"--step {config.step}: a fraction of the window in (0, 1]")
    if config.batch_size < 1:
        raise InputError(f"--batch_size {config.batch_size}: at least 1 window per model call")
    if config.tta not in TTA_MODES or config.weighting not in WEIGHTINGS:
        raise InputError(f"tta {config.tta!r} / weighting {config.weighting!r}: choose from "
                         f"{TTA_MODES} / {WEIGHTINGS}")


def predict_volume(model: keras.Model | Predictor, image: np.ndarray, config: PredictConfig
                   ) -> np.ndarray:
    """Probabilities (x, y, z, k) of one image (x, y, z, c) in the store's space, by sliding
    windows (`config.patch_shape`) or one whole-volume pass (patch_shape None)."""
    if config.patch_shape is None:
        return whole_volume_inference(image, model, config.divisor, config.tta)
    return sliding_window_inference(image, model, config.patch_shape, config.step,
                                     config.weighting, config.batch_size, config.tta)


def output_names(target: str, labels: Sequence[int]) -> tuple[str, ...]:
    """Names of the output channels: wt, tc, et for regions, label_<value> for labels."""
    if target == "regions":
        return REGION_NAMES
    return tuple(f"label_{value}" for value in labels)


def write_prediction(probabilities: np.ndarray, geometry: Geometry, path: str | os.PathLike,
                     config: PredictConfig) -> np.ndarray:
    """Write the label map of native-space `probabilities` (x, y, z, k) to `path` (uint8, on
    `geometry`), and with `config.probabilities` one float32 map per output beside it
    (`<case>_<name>.nii.gz`). Returns the label map. Every file is written atomically."""
    label_map = probabilities_to_labels(probabilities, config.target, config.labels,
                                        config.threshold)
    if config.min_et_voxels:
        label_map = remove_small_enhancing(label_map, config.labels, config.min_et_voxels)
    path = Path(path)
    if config.probabilities:
        stem = path.name[:-len(".nii.gz")] if path.name.endswith(".nii.gz") else path.stem
        for k, name in enumerate(output_names(config.target, config.labels)):
            write_nifti(probabilities[..., k], geometry, path.with_name(f"{stem}_{name}.nii.gz"),
                        dtype=np.float32)
    write_nifti(label_map, geometry, path, dtype=np.uint8)
    return label_map


def load_model(model_file: str | os.PathLike, n_channels: int, n_outputs: int | None = None
               ) -> keras.Model:
    """The trained model in `model_file`, checked to take `n_channels` input channels (and give
    `n_outputs` output channels when given)."""
    if not Path(model_file).is_file():
        raise InputError(f"model file {model_file} not found: train one with "
                         "brats/train_isensee2017.py or give --model_file")
    model = load_old_model(model_file, compile=False)
    channels = model.input_shape[-1]
    if channels is not None and channels != n_channels:
        raise InputError(f"{model_file} takes {channels} input channels but {n_channels} "
                         "modalities are configured")
    outputs = model.output_shape[-1] if not isinstance(model.output_shape, dict) else None
    if n_outputs is not None and outputs is not None and outputs != n_outputs:
        raise InputError(f"{model_file} gives {outputs} output channels, not the {n_outputs} "
                         "its target needs (WT, TC, ET regions or one per label): check --target "
                         "or the model's <model_file>.json")
    return model


def _describe(label_map: np.ndarray, labels: Sequence[int]) -> str:
    return ", ".join(f"{name.upper()} {int(np.isin(label_map, values).sum()):,} voxels"
                     for name, values in brats_regions(labels).items())


@dataclasses.dataclass
class PredictReport:
    """What `predict_cases` did: cases written, skipped (output already there), failed."""

    done: list[str] = dataclasses.field(default_factory=list)
    skipped: list[str] = dataclasses.field(default_factory=list)
    failed: dict[str, str] = dataclasses.field(default_factory=dict)


def predict_cases(model_file: str | os.PathLike, input_dir: str | os.PathLike,
                  output_dir: str | os.PathLike, config: PredictConfig | None = None,
                  overwrite: bool = False, progress: Callable[[str], None] | None = None
                  ) -> PredictReport:
    """Predict every case under `input_dir` into `<output_dir>/<case>.nii.gz` on its original grid.

    Cases are raw BraTS folders of any release (labels optional and ignored), preprocessed the
    way training data is: N4 bias correction (unless `config.bias_correction` is off or the folder
    was written by brats/preprocess.py), then brain crop and per-case normalisation (or the
    legacy resampling). Existing outputs are skipped unless `overwrite`, so a rerun resumes; a
    failing case is reported and the others go on.
    """
    config = config or predict_config(model_file)
    model = load_model(model_file, len(config.modalities), 3)
    config = dataclasses.replace(config, divisor=max(model_divisors(model)))
    check_config(config)
    progress = progress or get_logger().info
    cases = find_cases(input_dir)
    settings = read_settings(input_dir)  # written by brats/preprocess.py: N4 already done
    # N4 as brats/preprocess.py does by default, unless off or the folder was written by it.
    n4 = PreprocessConfig(modalities=config.modalities)
    if not config.bias_correction or settings is not None:
        n4 = dataclasses.replace(n4, bias_correction=())
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    report = PredictReport()
    for count, case in enumerate(cases, start=1):
        out = output_dir / f"{case.name}.nii.gz"
        if out.exists() and not overwrite:
            report.skipped.append(case.name)
            progress(f"[{count}/{len(cases)}] {case.name}: {out} exists, skipped (--overwrite "
                     "redoes it)")
            continue
        start = time.monotonic()
        try:
            images, _, geometry = correct_case(dataclasses.replace(case, label=None), n4)
            image, _, info = prepare_arrays(list(images.values()), None, geometry, case.name,
                                            config.image_shape, names=[
                                                case.images[m].name for m in config.modalities])
            probabilities = to_native_space(predict_volume(model, image, config), info)
            labels = config.labels or tuple((settings or {}).get("labels", case.labels))
            label_map = write_prediction(probabilities, info.original, out,
                                         dataclasses.replace(config, labels=labels))
        except Exception as error:  # noqa: BLE001 - reported per case, the other cases go on
            message = (str(error) if isinstance(error, InputError) else
                       f"unexpected {type(error).__name__}: {error}")
            report.failed[case.name] = message
            progress(f"[{count}/{len(cases)}] {case.name}: FAILED: {message}")
            if not isinstance(error, InputError):
                get_logger().debug("case %s", case.name, exc_info=True)
            continue
        report.done.append(case.name)
        progress(f"[{count}/{len(cases)}] {case.name}: {time.monotonic() - start:.1f} s, "
                 f"{_describe(label_map, labels)} -> {out}")
    return report


# --------------------------------------------------------------------------------------------
# The legacy port's API (channels-last).


def predict(model: keras.Model, data: np.ndarray, permute: bool = False) -> np.ndarray:
    """The model's output for a batch `data` (n, x, y, z, c); with `permute`, the mean over the
    48 cube permutations, each mapped back exactly. Returns float32 (n, x, y, z, k)."""
    return predict_with_tta(model_predictor(model), np.asarray(data, np.float32),
                            tta_transforms("permute" if permute else "none"))


def patch_wise_prediction(model: keras.Model, data: np.ndarray, overlap: int = 0,
                          batch_size: int = 1, permute: bool = False,
                          patch_shape: Sequence[int] | None = None) -> np.ndarray:
    """The legacy port's patch grid prediction of one case `data` ((1,) x, y, z, c): patches of
    the model's input size (or `patch_shape`) overlapping by `overlap`, edge-padded at the
    borders, averaged with equal weights. Returns float32 (x, y, z, k).

    `sliding_window_inference` (Gaussian weights, windows inside the volume) is the better choice;
    this keeps the port's results."""
    data = np.asarray(data, np.float32)
    data = data[0] if data.ndim == 5 else data
    patch_shape = patch_shape or model.input_shape[1:4]
    if None in tuple(patch_shape):
        raise InputError("the model is fully convolutional (input size None): give patch_shape, "
                         "e.g. the training patch (128, 128, 128)")
    patch_shape = _check_patch_shape(patch_shape)
    indices = compute_patch_indices(data.shape[:3], patch_shape, overlap)
    transforms, predictor = tta_transforms("permute" if permute else "none"), model_predictor(model)
    predictions = []
    for first in range(0, len(indices), batch_size):
        batch = np.stack([get_patch_from_3d_data(data, patch_shape, index)
                          for index in indices[first:first + batch_size]])
        predictions.extend(predict_with_tta(predictor, batch, transforms))
    n_outputs = predictions[0].shape[-1]
    return reconstruct_from_patches(predictions, indices, (*data.shape[:3], n_outputs)
                                    ).astype(np.float32)


def geometry_from_affine(affine: np.ndarray, shape: Sequence[int]) -> Geometry:
    """The `Geometry` of a grid of `shape` whose RAS voxel-to-world matrix is `affine` (the
    inverse of `Geometry.affine`)."""
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(affine, dtype=float)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    direction = lps[:3, :3] / spacing[None, :]
    return Geometry(tuple(int(n) for n in shape), tuple(float(s) for s in spacing),
                    tuple(float(o) for o in lps[:3, 3]), tuple(float(d) for d in direction.ravel()))


def prediction_to_image(prediction: np.ndarray, affine: np.ndarray, label_map: bool = False,
                        threshold: float = 0.5, labels: Sequence[int] | None = None
                        ) -> sitk.Image | list[sitk.Image]:
    """SimpleITK image(s) of a prediction ((1,) x, y, z, k) on the grid of `affine` (RAS, as
    nibabel reports it): a uint8 label map with `label_map` (the legacy rule), the single
    probability map when k == 1, else a list of one probability map per channel."""
    prediction = np.asarray(prediction)
    prediction = prediction[0] if prediction.ndim == 5 else prediction
    geometry = geometry_from_affine(affine, prediction.shape[:3])
    if label_map and prediction.shape[-1] == 1:  # the port: labels[0] above the threshold
        value = labels[0] if labels is not None else 1
        return to_sitk(np.where(prediction[..., 0] > threshold, value, 0).astype(np.uint8),
                       geometry)
    if label_map:
        return to_sitk(get_prediction_labels(prediction[np.newaxis], threshold, labels)[0],
                       geometry)
    images = [to_sitk(prediction[..., k].astype(np.float32), geometry)
              for k in range(prediction.shape[-1])]
    return images[0] if len(images) == 1 else images


def run_validation_cases(validation_keys_file: str | os.PathLike, model_file: str | os.PathLike,
                         training_modalities: Sequence[str], labels: Sequence[int],
                         hdf5_file: str | os.PathLike, output_label_map: bool = False,
                         output_dir: str | os.PathLike = ".", threshold: float = 0.5,
                         overlap: int = 16, permute: bool = False,
                         config: PredictConfig | None = None,
                         progress: Callable[[str], None] | None = None) -> list[str]:
    """The port's validation run: for each case index in `validation_keys_file`, write
    `<output_dir>/<subject id>/` with `data_<modality>.nii.gz` (the normalised input),
    `truth.nii.gz` and `prediction.nii.gz` (a label map with `output_label_map`, else
    `prediction_<output>.nii.gz` probability maps). Unlike the port, the files are on each case's
    original grid (stores that record it; legacy-layout stores keep the stored grid; for
    resampled stores the truth is the stored one resampled back, not the original file).

    Windows are the model's training patch (`config`, default from `<model_file>.json`), spaced
    `patch - overlap` apart with equal weights as in the port, or as `config` sets when given.
    Returns the case folders written.
    """
    progress = progress or get_logger().info
    if config is None:
        config = predict_config(model_file, labels=tuple(labels), threshold=threshold,
                                tta="permute" if permute else None,
                                modalities=tuple(training_modalities))
        if config.patch_shape is not None:
            if not 0 <= overlap < min(config.patch_shape):
                raise InputError(f"overlap {overlap}: need 0 <= overlap < the window "
                                 f"{tuple(config.patch_shape)}")
            step = (min(config.patch_shape) - overlap) / min(config.patch_shape)
            config = dataclasses.replace(config, step=step, weighting="constant")
    config = dataclasses.replace(config, labels=config.labels or tuple(labels))
    path = Path(validation_keys_file)
    if not path.is_file():
        raise InputError(f"{path}: validation keys file not found (training writes it)")
    with open(path, "rb") as stream:
        indices = [int(i) for i in pickle.load(stream)]
    with DataStore(hdf5_file) as store:
        bad = [i for i in indices if not 0 <= i < len(store)]
        if bad:
            raise InputError(f"{path}: case indices {bad[:5]} are not in {hdf5_file} "
                             f"({len(store)} cases): the split belongs to another store")
        model = load_model(model_file, store.n_channels, len(config.labels))
        config = dataclasses.replace(config, divisor=max(model_divisors(model)))
        check_config(config)
        return [_validation_case(model, store, index, Path(output_dir), training_modalities,
                                 output_label_map, config, f"[{count}/{len(indices)}]", progress)
                for count, index in enumerate(indices, start=1)]


def _validation_case(model: keras.Model, store: DataStore, index: int, output_dir: Path,
                     training_modalities: Sequence[str], output_label_map: bool,
                     config: PredictConfig, counter: str, progress: Callable[[str], None]) -> str:
    """One case of `run_validation_cases`; returns its folder."""
    start = time.monotonic()
    image = store.read_image(index)
    info = store.case_info(index)
    folder = output_dir / store.subject_ids[index].replace(" ", "_")
    probabilities = predict_volume(model, image, config)
    volumes = {f"data_{m}": image[..., c] for c, m in enumerate(training_modalities)}
    if store.has_truth:
        volumes["truth"] = store.read_truth(index)
    if info is None:  # legacy layout: the stored grid
        geometry = geometry_from_affine(store.file.root.affine[index], image.shape[:3])
    else:
        geometry = info.original
        volumes = {name: to_native_space(v, info) for name, v in volumes.items()}
        probabilities = to_native_space(probabilities, info)
    for name, volume in volumes.items():
        write_nifti(volume, geometry, folder / f"{name}.nii.gz")
    if output_label_map:
        write_prediction(probabilities, geometry, folder / "prediction.nii.gz", config)
    else:
        for k, name in enumerate(output_names(config.target, config.labels)):
            write_nifti(probabilities[..., k], geometry, folder / f"prediction_{name}.nii.gz")
    progress(f"{counter} {store.subject_ids[index]}: {time.monotonic() - start:.1f} s -> {folder}")
    return str(folder)
