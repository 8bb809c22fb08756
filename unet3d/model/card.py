"""The model card: everything needed to use a trained model, carried inside its `.keras` file.

A card records the network's inputs (the modalities, in channel order), the window it was trained
on (the training patch), its outputs (the target encoding and the label values), how its training
cases were made (N4 bias correction, the model space: brain crop or the port's resampling,
normalisation; the voxel spacing) and where they came from (the store and its saved split), with
the unet3d version that wrote it and the card's schema version. Prediction, export and the
validation run read everything from it, so a model copied anywhere alone predicts as it did where
it was trained.

Storage: `save_model(model, path, card)` (`unet3d.model.saving`) writes the `.keras` file with the
card as one more member of its zip archive, `unet3d_card.json` (Keras ignores it), and the same
JSON beside the file, `<path>.json`, for people to read. `read_card(path)` reads the card inside
the file. For a file without one, `<path>.json` is read only if it holds the training settings
unet3d 0.1 wrote there (converted; they did not record the N4 settings or the voxel spacing); a
card copy there belongs to a file that was replaced since, and is refused.

Schema versions: 1 (unet3d 0.2), 2 (adds the convention: the BraTS release or task whose labels
and regions the model was trained on), 3 (adds `inference`: how the model predicts by default).
Schema 1 cards are read with the convention of their labels (1, 2, 4: brats2020; 1, 2, 3:
brats2023-gli); schema 1 and 2 cards predict as every model did then (sliding windows, no TTA). A card of a newer schema is refused with
what to do; a card that misses a field, has an unknown one, or a value of the wrong type or out
of range is refused naming the file, never filled with a default.
"""

from __future__ import annotations

import dataclasses
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import unet3d
from unet3d.brats import MODALITIES
from unet3d.config import TARGETS, TTA_MODES, Inference
from unet3d.plain_settings import from_plain, to_plain
from unet3d.conventions import CONVENTIONS, Convention, convention_for_labels, get_convention
from unet3d.errors import InputError
from unet3d.atomic import atomic_write
from unet3d.labels import output_names
from unet3d.model_space import ModelSpace
from unet3d.preprocessing import PreprocessConfig

SCHEMA_VERSION = 3
#: The member of the `.keras` zip archive holding the card.
CARD_MEMBER = "unet3d_card.json"


@dataclasses.dataclass(frozen=True)
class TrainingRecord:
    """Where a model's training cases came from.

    data_file: the data store; training_keys_file, validation_keys_file: its saved split.
    settings: every setting of the training run (`TrainConfig`, as JSON), for people: the program
        reads only the three files above.
    """

    data_file: str
    training_keys_file: str
    validation_keys_file: str
    settings: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class ModelCard:
    """What a trained model is and how its inputs must be made.

    model: the network ("isensee2017", "unet3d"; "external" for a model described by flags).
    modalities: the input channels, in order (e.g. ("t1", "t1ce", "flair", "t2")).
    target: "regions" (outputs: the convention's regions, e.g. WT, TC, ET), "labels" (one
        output per value of `labels`) or "classes" (background, then one per value, a softmax).
    convention: the BraTS release or task of the training truths (`unet3d.conventions`), or
        "labels-A-B-C" for a custom label triple.
    labels: the label values of the training truths (the convention's).
    patch_shape: the training patch, the prediction window; None: trained on whole volumes.
    space: how cases were brought to the model's space (`unet3d.model_space.ModelSpace`).
    preprocessing: the N4 settings of the training cases (`PreprocessConfig`); None: not recorded.
    spacing: the median voxel size (mm) of the training cases' native grids; None: not recorded.
    training: the store and split it was trained on (None for a model described by flags).
    outputs: the output channels' names when it was trained (e.g. wt, tc, et, rc), checked
        against the convention's when read, so that a changed registry entry cannot decode an
        old model wrongly; () for a model described by flags.
    inference: how it predicts unless told otherwise (`unet3d.config.Inference`: whole volume or
        sliding windows of the patch, and the test-time augmentation), its recipe's choice.
    unet3d_version: the version that wrote the card.
    schema_version: the card format (`SCHEMA_VERSION`).
    """

    model: str
    modalities: tuple[str, ...]
    target: str
    convention: str
    labels: tuple[int, ...]
    patch_shape: tuple[int, int, int] | None
    space: ModelSpace
    preprocessing: PreprocessConfig | None
    spacing: tuple[float, float, float] | None
    training: TrainingRecord | None
    outputs: tuple[str, ...] = ()
    inference: Inference = Inference()
    unet3d_version: str = unet3d.__version__
    schema_version: int = SCHEMA_VERSION

    @property
    def entry(self) -> Convention:
        """The convention's entry (for a custom triple, the 2020 regions on its values)."""
        return get_convention(self.convention)

    @property
    def output_names(self) -> tuple[str, ...]:
        """Names of the output channels (wt, tc, et, ... or label_<value>)."""
        return output_names(self.target, self.entry)

    def to_json(self) -> str:
        return json.dumps(to_plain(self), indent=2) + "\n"


def card_path(model_file: str | os.PathLike) -> Path:
    """The readable copy of a model's card beside it: `<model_file>.json`."""
    model_file = Path(model_file)
    return model_file.with_name(model_file.name + ".json")


def card_from_dict(data: Any, source: str) -> ModelCard:
    """The card of parsed card JSON `data`, checked; `source` names the file in errors."""
    if not isinstance(data, dict) or "schema_version" not in data:
        raise InputError(f"{source}: not a model card (no schema_version)")
    version = data["schema_version"]
    if type(version) is not int or version < 1:
        raise InputError(f"{source}: schema_version {version!r} is not a schema number: the "
                         "card was edited; restore it from a copy of the model")
    if version > SCHEMA_VERSION:
        raise InputError(f"{source}: a model card of schema {version}, written by unet3d "
                         f"{data.get('unet3d_version', '?')}; this unet3d ({unet3d.__version__}) "
                         f"reads schema {SCHEMA_VERSION}: upgrade unet3d")
    if version == 2 and "outputs" not in data:  # before 0.2.0
        data = {**data, "outputs": []}
    if version == 1 and isinstance(data.get("labels"), list) and "convention" not in data:
        data = {**data, "schema_version": 2, "outputs": [],
                "convention": _convention_of_labels(data["labels"], source)}
    if data["schema_version"] == 2 and "inference" not in data:
        data = {**data, "schema_version": SCHEMA_VERSION, "inference": to_plain(Inference())}
    card = from_plain(ModelCard, data, source)
    check_card(card, source)
    return card


def check_card(card: ModelCard, source: str) -> None:
    """Raise `InputError` naming `source` for values no trained model can have."""
    problems = []
    if card.target not in TARGETS:
        problems.append(f"target {card.target!r} is not one of {', '.join(TARGETS)}")
    if card.inference.tta not in TTA_MODES:
        problems.append(f"inference tta {card.inference.tta!r} is not one of "
                        f"{', '.join(TTA_MODES)}")
    unknown = sorted(set(card.modalities) - set(MODALITIES))
    if not card.modalities or unknown or len(set(card.modalities)) != len(card.modalities):
        problems.append(f"modalities {list(card.modalities)} are not distinct modalities of "
                        f"{', '.join(MODALITIES)}")
    for name in ("patch_shape", "spacing"):
        value = getattr(card, name)
        if value is not None and (len(value) != 3 or min(value) <= 0):
            problems.append(f"{name} {list(value)} is not three positive sizes")
    try:
        convention = card.entry
    except InputError:
        problems.append(f"convention {card.convention!r} is not one of {', '.join(CONVENTIONS)}")
    else:
        if tuple(card.labels) != convention.values:
            problems.append(f"labels {list(card.labels)} are not those of convention "
                            f"{card.convention} {list(convention.values)}")
        elif card.outputs and tuple(card.outputs) != card.output_names:
            problems.append(f"its outputs {', '.join(card.outputs)} are not those this unet3d "
                            f"decodes for {card.convention} ({', '.join(card.output_names)}): "
                            f"use the unet3d version that trained it ({card.unet3d_version})")
    if problems:
        raise InputError(f"{source}: not a valid model card: {'; '.join(problems)}")


def _convention_of_labels(labels: list, source: str) -> str:
    """The convention of the label values a card of unet3d 0.2 or 0.1 recorded."""
    try:
        return convention_for_labels(labels).name
    except (InputError, TypeError, ValueError):
        raise InputError(f"{source}: labels {labels!r} are not a BraTS label triple: the card "
                         "was edited; restore it from a copy of the model") from None


def _card_from_training_settings(settings: dict, source: str) -> ModelCard:
    """The card of the training settings unet3d 0.1 saved beside its models."""
    needed = ("model", "modalities", "target", "labels", "patch_shape", "image_shape",
              "data_file", "training_keys_file", "validation_keys_file")
    missing = [key for key in needed if key not in settings]
    if missing:
        raise InputError(f"{source}: neither a model card nor unet3d 0.1's training settings "
                         f"(no {', '.join(missing)}); delete it and give the prediction flags "
                         "the model needs (--modalities, --target, --patch_shape)")
    image_shape = tuple(settings["image_shape"]) if settings["image_shape"] else None
    patch_shape = settings["patch_shape"] or image_shape  # whole resampled images: the window
    training = TrainingRecord(settings["data_file"], settings["training_keys_file"],
                              settings["validation_keys_file"], settings)
    return ModelCard(model=settings["model"], modalities=tuple(settings["modalities"]),
                     target=settings["target"],
                     convention=_convention_of_labels(settings["labels"], source),
                     labels=tuple(settings["labels"]),
                     patch_shape=tuple(patch_shape) if patch_shape else None,
                     space=ModelSpace(image_shape), preprocessing=None, spacing=None,
                     training=training, unet3d_version="0.1.0")


def _card_inside(model_file: Path) -> str | None:
    """The card member of a `.keras` archive, or None (no card, or not a zip archive)."""
    if not zipfile.is_zipfile(model_file):
        return None
    try:
        with zipfile.ZipFile(model_file) as archive:
            if CARD_MEMBER not in archive.namelist():
                return None
            return archive.read(CARD_MEMBER).decode("utf-8")
    except (zipfile.BadZipFile, OSError, UnicodeDecodeError) as error:
        raise InputError(f"{model_file}: cannot read its model card ({error}); the file is "
                         "corrupt: use another copy or checkpoint") from None


def _load_json(text: str, source: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as error:
        raise InputError(f"{source}: unreadable model card ({error}); restore it from a copy "
                         "of the model") from None


def embedded_card(model_file: str | os.PathLike) -> ModelCard | None:
    """The card inside `model_file`, or None."""
    model_file = Path(model_file)
    text = _card_inside(model_file) if model_file.is_file() else None
    if text is None:
        return None
    source = f"{model_file} ({CARD_MEMBER})"
    return card_from_dict(_load_json(text, source), source)


def read_card(model_file: str | os.PathLike) -> ModelCard | None:
    """The card of `model_file`: the one inside the file; for a file without one, the training
    settings unet3d 0.1 wrote to `<model_file>.json`; else None.

    Raises `InputError` naming the file when a card cannot be read, is of another schema, or is
    a copy beside a file that holds none (the file was replaced after the card was written)."""
    card = embedded_card(model_file)
    beside = card_path(model_file)
    if card is not None or not beside.is_file():
        return card
    data = _load_json(beside.read_text(), str(beside))
    if isinstance(data, dict) and "schema_version" in data:
        raise InputError(f"{beside} is a copy of a model card, but {model_file} holds none: the "
                         "model file was replaced after the card was written (e.g. by a plain "
                         "model.save). Restore the model file, or delete the copy and give the "
                         "settings as flags")
    if not isinstance(data, dict):
        raise InputError(f"{beside}: neither a model card nor unet3d 0.1's training settings")
    return _card_from_training_settings(data, str(beside))


def embed_card(archive: str | os.PathLike, card: ModelCard) -> None:
    """Add `card` to the `.keras` archive `archive` (a file being written: not atomic)."""
    with zipfile.ZipFile(archive, "a") as zipped:
        if CARD_MEMBER in zipped.namelist():
            raise InputError(f"{archive} already holds a model card")
        zipped.writestr(CARD_MEMBER, card.to_json())


def write_card_copy(model_file: str | os.PathLike, card: ModelCard) -> Path:
    """Write the readable copy `<model_file>.json` of `card`, atomically; returns its path."""
    path = card_path(model_file)
    with atomic_write(path, ".json") as tmp:
        tmp.write_text(card.to_json())
    return path
