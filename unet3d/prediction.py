"""Predicting cases with a trained model: what `brats/predict.py` runs.

- `load_for_prediction(model_file, config)`: the model, its model card (`unet3d.model.card`) and
  the `PredictConfig` completed from it (the window is the training patch). A model without a
  card needs the card's facts as settings (`modalities`, `target`, `patch_shape` or
  `whole_volume`); without them it is refused, naming them.
- `predict_cases`: raw or preprocessed BraTS cases -> `<output_dir>/<case>.nii.gz` on each case's
  native grid: the N4 the card records, the model space (`unet3d.model_space`), windows and TTA
  (`unet3d.inference`), labels (`unet3d.postprocessing`), one progress line per case.
- Cases of a data store (the validation split): `unet3d.store_prediction`.

The legacy port's API (`predict`, `patch_wise_prediction`, `get_prediction_labels`,
`prediction_to_image`, `run_validation_cases`) lives in `unet3d.legacy.prediction` and is
importable from here under the port's names.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Callable, Sequence

import keras
import numpy as np

from unet3d.brats import Case, detect_convention, find_cases
from unet3d.config import TTA_MODES, WEIGHTINGS, PredictConfig, check_choices, check_intervals
from unet3d.ensemble import average, check_same_settings, model_files
from unet3d.errors import InputError, OutputError
from unet3d.inference import Predictor, check_patch_shape, predict_volume
from unet3d.atomic import remove_stale_temporaries
from unet3d.io import Geometry, write_nifti
from unet3d.conventions import (CONVENTIONS, Convention, ConventionLike, as_convention,
                                check_translatable, get_convention, same_meaning,
                                translatable, translate)
from unet3d.logs import get_logger
from unet3d.model import ModelCard, load_old_model, model_divisors, read_card
from unet3d.model.card import card_path
from unet3d.model_space import (ModelSpace, resample, spacing_grid, to_model_space,
                                to_native_space)
from unet3d.postprocessing import (probabilities_to_labels, remove_small_enhancing,
                                   without_postoperative)
from unet3d.preprocessing import PreprocessConfig, correct_case, read_preprocess_config
from unet3d.runtimes import predictor

#: The port's names, kept importable from this module (`unet3d.legacy.prediction`).
LEGACY_NAMES = ("predict", "patch_wise_prediction", "get_prediction_labels",
                "prediction_to_image", "run_validation_cases")


def __getattr__(name: str):
    if name in LEGACY_NAMES:
        from unet3d.legacy import prediction as legacy
        return getattr(legacy, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --------------------------------------------------------------------------------------------
# The model, its card and the settings.


def model_card(model_file: str | os.PathLike, model: keras.Model, config: PredictConfig
               ) -> ModelCard:
    """The card of `model_file`, or for a model without one, a card made of `config`'s
    `modalities`, `target` and window (`patch_shape`, `whole_volume`, or the model's fixed input
    size). Raises `InputError` naming what is missing, or a setting that contradicts the card."""
    card = read_card(model_file)
    if card is not None:
        given = (("--modalities", config.modalities, card.modalities),
                 ("--target", config.target, card.target),
                 ("--image_shape", config.image_shape, card.space.image_shape))
        for flag, value, recorded in given:
            if value is not None and (tuple(value) if isinstance(value, list) else value) \
                    != recorded:
                raise InputError(f"{flag} {value} contradicts the model card of {model_file} "
                                 f"({recorded}): leave {flag} out, the card says how the model "
                                 "was trained")
        return card
    fixed = tuple(model.input_shape[1:4])
    window = config.patch_shape or (fixed if None not in fixed else None)
    needed = (("--modalities", config.modalities, "--modalities t1,t1ce,flair,t2"),
              ("--target", config.target, "--target regions"),
              ("--patch_shape (or --whole_volume)", window or config.whole_volume,
               "--patch_shape 128,128,128"))
    missing = [(flag, example) for flag, value, example in needed if not value]
    if missing:
        raise InputError(
            f"{model_file} has no model card (not trained by this version of unet3d, or "
            f"{card_path(model_file).name} was lost): give {', '.join(f for f, _ in missing)} "
            f"as it was trained (e.g. {' '.join(e for _, e in missing)}); add --image_shape if it "
            "was trained on the port's resampled store and --nobias_correction if its training "
            "cases were not N4-corrected")
    convention = as_convention(config.convention)
    return ModelCard(model="external", modalities=tuple(config.modalities), target=config.target,
                     convention=convention.name, labels=convention.values,
                     patch_shape=None if config.whole_volume else tuple(window),
                     space=ModelSpace(config.image_shape), preprocessing=None, spacing=None,
                     training=None, unet3d_version="unknown")


def check_config(config: PredictConfig, divisor: int) -> None:
    """Stop impossible settings before any case is read, saying what to change; `divisor`: what
    the network's input sizes must be multiples of."""
    check_intervals(config)
    check_choices(config)
    if config.patch_shape is not None and not config.whole_volume:
        shape = check_patch_shape(config.patch_shape)
        if any(n % divisor for n in shape):
            raise InputError(f"--patch_shape {','.join(map(str, shape))}: every size must be "
                             f"divisible by {divisor} for this network (e.g. 128,128,128)")
        if config.tta == "permute" and len(set(shape)) != 1:
            raise InputError(f"--tta permute needs a cubic window, not {shape}")
    if config.tta not in TTA_MODES or config.weighting not in WEIGHTINGS:
        raise InputError(f"tta {config.tta!r} / weighting {config.weighting!r}: choose from "
                         f"{TTA_MODES} / {WEIGHTINGS}")


def load_for_prediction(model_file: str | os.PathLike, config: PredictConfig | None = None
                        ) -> tuple[keras.Model, ModelCard, PredictConfig]:
    """(the model, its card, `config` completed from the card), checked to fit together (see
    `complete_config`)."""
    if not Path(model_file).is_file():
        raise InputError(f"model file {model_file} not found: train one with "
                         "brats/train_isensee2017.py or give --model_file")
    model = load_old_model(model_file, compile=False)
    return (model, *complete_config(model_file, model, config or PredictConfig()))


def load_models(model_file: str | os.PathLike | Sequence[str | os.PathLike],
                config: PredictConfig | None = None
                ) -> tuple[list[keras.Model], ModelCard, PredictConfig]:
    """(the models `model_file` names: one file, or an ensemble (several files, a folder of fold
    runs or of `.keras` files, `unet3d.ensemble.model_files`), their card, `config` completed
    from it). The models of an ensemble must share their settings (`check_same_settings`)."""
    loaded = {path: load_for_prediction(path, config) for path in model_files(model_file)}
    check_same_settings({path: card for path, (_, card, _) in loaded.items()})
    (_, card, config), *_ = loaded.values()
    return [model for model, _, _ in loaded.values()], card, config


def complete_config(model_file: str | os.PathLike, model: keras.Model, config: PredictConfig,
                    card: ModelCard | None = None) -> tuple[ModelCard, PredictConfig]:
    """(the card of `model_file` (or `card`), `config` completed from it), checked against
    `model`.

    The window is `config.patch_shape`, else the card's training patch; a model trained on whole
    volumes (no patch) predicts in one whole-volume pass, a model of a fixed input size in
    windows of that size. What `config` leaves to the model (`whole_volume` None, `tta` "auto")
    is the card's `inference` (its recipe's choice, e.g. paper2017: whole volume, mirroring).
    """
    card = card or model_card(model_file, model, config)
    config = config.resolved(card.inference)
    channels = model.input_shape[-1]
    if channels is not None and channels != len(card.modalities):
        raise InputError(f"{model_file} takes {channels} input channels but "
                         f"{len(card.modalities)} modalities are given ({', '.join(card.modalities)})")
    outputs = model.output_shape[-1] if not isinstance(model.output_shape, dict) else None
    if outputs is not None and outputs != len(card.output_names):
        raise InputError(f"{model_file} gives {outputs} output channels, not the "
                         f"{len(card.output_names)} of its target {card.target} "
                         f"({', '.join(card.output_names)})")
    if config.convention is not None:
        check_translatable(card.entry, as_convention(config.convention))
    if config.whole_volume and config.patch_shape is not None:
        raise InputError("--whole_volume and --patch_shape exclude each other: give one")
    window = None if config.whole_volume else (config.patch_shape or card.patch_shape)
    fixed = tuple(model.input_shape[1:4])
    if None not in fixed:
        window = window or (None if config.whole_volume else fixed)
        if window is None or tuple(window) != fixed:
            given = ("--whole_volume" if config.whole_volume else
                     f"--patch_shape {tuple(window)}" if config.patch_shape else
                     f"the model card's patch {tuple(window)}")
            raise InputError(f"{model_file} takes inputs of {fixed} voxels only, so its window "
                             f"is that size, not {given}")
    config = dataclasses.replace(config, patch_shape=window, whole_volume=window is None)
    check_config(config, max(model_divisors(model)))
    return card, config


def output_convention(card: ModelCard, config: PredictConfig) -> Convention:
    """The convention whose labels are written: `config.convention`, else the model's."""
    return as_convention(config.convention) if config.convention else card.entry


def input_convention(card: ModelCard, cases: Sequence[Case], input_dir: str | os.PathLike,
                     recorded: Convention | None, progress: Callable[[str], None]) -> None:
    """Check that the cases of `input_dir` (of the `recorded` convention, else the one their
    names say) have the modalities the model takes, and say when they follow another label
    scheme than the model's. `InputError` when modalities are missing."""
    try:
        found = recorded or detect_convention(cases, input_dir)
    except InputError:  # unknown names: the files are found by their modality suffixes
        return
    missing = [m for m in card.modalities if m not in found.modalities]
    if missing:
        raise InputError(f"{input_dir} holds {found.name} cases ({', '.join(found.modalities)}), "
                         f"without {', '.join(missing)}: the model was trained on "
                         f"{card.convention} cases with {', '.join(card.modalities)}; use a model "
                         f"trained on {found.name}")
    fitting = [found] if recorded else [get_convention(name) for name in CONVENTIONS
                                        if all(name in case.candidates for case in cases)]
    if card.entry in fitting or same_meaning(found, card.entry):
        return
    writable = [c.name for c in fitting if translatable(card.entry, c)]
    progress(f"the cases are {' or '.join(c.name for c in fitting)}, the model {card.convention}: their "
             f"predictions have the model's labels ({card.entry.label_text})"
             + (f"; --convention {writable[0]} writes the same tissues with that entry's values"
                if writable else ""))


# --------------------------------------------------------------------------------------------
# Writing.


def predicted_labels(probabilities: np.ndarray, target: str, convention: ConventionLike,
                     config: PredictConfig, session: str | None = None) -> np.ndarray:
    """The label map (uint8) of `probabilities` (x, y, z, k) as brats/predict.py writes it, in
    the model's `convention`: by `config.threshold`, without enhancing tumour below
    `config.min_et_voxels` voxels, without a resection cavity on a "pre-operative" `session`
    (its outputs are dropped before decoding, so the tissues under it keep their labels)."""
    if session == "pre-operative":
        probabilities = without_postoperative(probabilities, target, convention)
    label_map = probabilities_to_labels(probabilities, target, convention, config.threshold)
    if config.min_et_voxels:
        label_map = remove_small_enhancing(label_map, convention, config.min_et_voxels)
    return label_map


def write_prediction(probabilities: np.ndarray, geometry: Geometry, path: str | os.PathLike,
                     card: ModelCard, config: PredictConfig, session: str | None = None
                     ) -> np.ndarray:
    """Write the label map of native-space `probabilities` (x, y, z, k) to `path` (uint8, on
    `geometry`; `predicted_labels` in the model's convention, written in `output_convention`'s
    labels), and with `config.probabilities` one float32 map per output beside it
    (`<case>_<output>.nii.gz`; a pre-operative `session`'s resection cavity map is 0, as its
    label map has none). Returns the label map written. Every file is written atomically."""
    if session == "pre-operative":
        probabilities = without_postoperative(probabilities, card.target, card.entry)
    label_map = translate(predicted_labels(probabilities, card.target, card.entry, config),
                          card.entry, output_convention(card, config))
    names = card.output_names
    path = Path(path)
    if config.probabilities:
        stem = path.name[:-len(".nii.gz")] if path.name.endswith(".nii.gz") else path.stem
        for k, name in enumerate(names):
            write_nifti(probabilities[..., k], geometry, path.with_name(f"{stem}_{name}.nii.gz"),
                        dtype=np.float32)
    write_nifti(label_map, geometry, path, dtype=np.uint8)
    return label_map


def _describe(label_map: np.ndarray, convention: Convention) -> str:
    return ", ".join(f"{region.name.upper()} {int(np.isin(label_map, region.labels).sum()):,} "
                     "voxels" for region in convention.regions)


# --------------------------------------------------------------------------------------------
# Raw or preprocessed cases.


@dataclasses.dataclass
class PredictReport:
    """What `predict_cases` did: cases written, skipped (output already there), failed."""

    done: list[str] = dataclasses.field(default_factory=list)
    skipped: list[str] = dataclasses.field(default_factory=list)
    failed: dict[str, str] = dataclasses.field(default_factory=dict)


def input_preprocessing(card: ModelCard, config: PredictConfig, input_dir: str | os.PathLike,
                        progress: Callable[[str], None]
                        ) -> tuple[PreprocessConfig, Convention | None]:
    """(the N4 the input cases need, the convention of a folder written by preprocess.py).

    The N4 of the model's training cases (the card), brats/preprocess.py's defaults where the
    card does not record it; none for a folder preprocess.py wrote (already corrected) or when
    `config.bias_correction` is off."""
    folder_n4, folder_convention = read_preprocess_config(input_dir)
    n4 = card.preprocessing or PreprocessConfig()
    if card.preprocessing is None and config.bias_correction and folder_n4 is None:
        progress(f"the model card does not record its training cases' N4: the inputs get "
                 f"brats/preprocess.py's default ({', '.join(n4.bias_correction)})")
    if folder_n4 is not None and card.preprocessing not in (None, folder_n4):
        progress(f"warning: {input_dir} was N4-corrected with other settings ({folder_n4}) than "
                 f"the model's training cases ({card.preprocessing})")
    if not config.bias_correction or folder_n4 is not None:
        n4 = dataclasses.replace(n4, bias_correction=())
    return dataclasses.replace(n4, modalities=card.modalities), folder_convention


def _mm(spacing: Sequence[float]) -> str:
    return "x".join(f"{s:.3g}" for s in spacing) + " mm"


def network(model: keras.Model | Sequence[keras.Model], config: PredictConfig
            ) -> tuple[Predictor, int]:
    """(the predictor running `model` on `config.runtime` in `config.precision`
    (`unet3d.runtimes`), the divisor its whole-volume inputs are padded to). For several models
    (an ensemble): their outputs averaged on each batch of windows."""
    models = [model] if isinstance(model, keras.Model) else list(model)
    return (average([predictor(m, config.runtime, config.precision) for m in models]),
            max(max(model_divisors(m)) for m in models))


def _predict_case(network: tuple[Predictor, int], card: ModelCard, config: PredictConfig,
                  case: Case, n4: PreprocessConfig, out: Path) -> str:
    """Predict one case into `out` with `network` (see `network`); returns the description of
    the progress line."""
    images, _, geometry = correct_case(dataclasses.replace(case, label=None), n4)
    # At the model's voxel size (the card's spacing): images resampled linearly to it, the
    # probabilities back to the case's own grid, where they become labels.
    grid = spacing_grid(geometry, card.spacing)
    arrays = [image if grid is geometry else resample(image, geometry, grid)
              for image in images.values()]
    image, _, info = to_model_space(arrays, None, grid, case.name, card.space,
                                    names=[case.images[m].name for m in card.modalities])
    run, divisor = network
    probabilities = to_native_space(predict_volume(run, image, config, divisor), info)
    if grid is not geometry:
        probabilities = np.stack([resample(probabilities[..., k], grid, geometry)
                                  for k in range(probabilities.shape[-1])], axis=-1)
    session = card.entry.session(case.name)
    label_map = write_prediction(probabilities, geometry, out, card, config, session)
    resampled = ("" if grid is geometry else
                 f" (predicted at {_mm(grid.spacing)}, the model's voxel size, from "
                 f"{_mm(geometry.spacing)})")
    return (f"{_describe(label_map, output_convention(card, config))}"
            f"{f' ({session})' if session else ''} -> {out}{resampled}")


def predict_cases(model_file: str | os.PathLike | Sequence[str | os.PathLike],
                  input_dir: str | os.PathLike,
                  output_dir: str | os.PathLike, config: PredictConfig | None = None,
                  overwrite: bool = False, progress: Callable[[str], None] | None = None
                  ) -> PredictReport:
    """Predict every case under `input_dir` into `<output_dir>/<case>.nii.gz` on its native grid.

    Cases are raw BraTS folders of any release (labels optional and ignored) or a folder written
    by brats/preprocess.py, brought to the model's space as its training cases were (the card).
    Existing outputs are skipped unless `overwrite`, so a rerun resumes; a failing case is
    reported and the others go on. Several models (`model_file` a list, or a folder of fold
    runs: `load_models`) predict as an ensemble: their probabilities are averaged on each batch
    of windows, before the windows are weighted, augmented and put back on the native grid.
    """
    progress = progress or get_logger().info
    models, card, config = load_models(model_file, config)
    cases = find_cases(input_dir)
    run = network(models, config)
    if len(models) > 1:
        progress(f"an ensemble of {len(models)} models, their probabilities averaged: "
                 f"{', '.join(map(str, model_files(model_file)))}")
    window = ("one whole-volume pass" if config.whole_volume else
              f"sliding windows of {','.join(map(str, config.patch_shape))}")
    progress(f"predicting with {window}, test-time augmentation {config.tta}")
    n4, folder_convention = input_preprocessing(card, config, input_dir, progress)
    input_convention(card, cases, input_dir, folder_convention, progress)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    report = PredictReport()
    for count, case in enumerate(cases, start=1):
        prefix, out = f"[{count}/{len(cases)}] {case.name}", output_dir / f"{case.name}.nii.gz"
        remove_stale_temporaries(out)  # left by a killed run (never counted as done)
        if out.exists() and not overwrite:
            report.skipped.append(case.name)
            progress(f"{prefix}: {out} exists, skipped (--overwrite redoes it)")
            continue
        start = time.monotonic()
        try:
            description = _predict_case(run, card, config, case, n4, out)
        except Exception as error:  # noqa: BLE001 - reported per case, the other cases go on
            expected = isinstance(error, (InputError, OutputError))
            message = str(error) if expected else f"unexpected {type(error).__name__}: {error}"
            report.failed[case.name] = message
            progress(f"{prefix}: FAILED: {message}")
            if not expected:
                get_logger().debug("case %s", case.name, exc_info=True)
            continue
        report.done.append(case.name)
        progress(f"{prefix}: {time.monotonic() - start:.1f} s, {description}")
    return report
