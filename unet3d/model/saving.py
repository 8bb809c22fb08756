"""Saving and loading models: `.keras` files carrying their model card, and HDF5 files where
Keras 3 can read them.

Every custom object of the package (the input size check, the losses and metrics) is registered
with Keras under the package name `unet3d`, so `.keras` files load without `custom_objects`.
"""

from __future__ import annotations

import errno
import os
import zipfile
from pathlib import Path

import keras

import unet3d.losses  # noqa: F401 (registers the losses with Keras)
from unet3d import metrics
from unet3d.errors import InputError, OutputError
from unet3d.atomic import atomic_write
from unet3d.model.card import ModelCard, embed_card, write_card_copy

# Names under which models compiled by the legacy port refer to its losses and metrics.
LEGACY_CUSTOM_OBJECTS = {
    "dice_coefficient": metrics.dice_coefficient,
    "dice_coefficient_loss": metrics.dice_coefficient_loss,
    "dice_coef": metrics.dice_coefficient,
    "dice_coef_loss": metrics.dice_coefficient_loss,
    "weighted_dice_coefficient": metrics.weighted_dice_coefficient,
    "weighted_dice_coefficient_loss": metrics.weighted_dice_coefficient_loss,
}


def load_old_model(model_file: str | os.PathLike, compile: bool = True) -> keras.Model:
    """Load a model saved with `model.save(...)`, compiled (optimizer state included) by default.

    `.keras` files load with every custom object of the package. The legacy port's own HDF5 files
    (Keras 2, channels-first, keras_contrib InstanceNormalization) are rebuilt channels-last with
    their weights, uncompiled (`unet3d.legacy.models.convert_port_model`); other HDF5 files are
    tried with the port's loss and metric names.
    Raises `InputError` naming the file, with what to do, when it is missing or unreadable.
    """
    path = Path(model_file)
    if not path.is_file():
        raise InputError(
            f"model file {path} does not exist: check the path (train a model first to create it)"
        )
    suffix = path.suffix.lower()
    if suffix not in (".keras", ".h5", ".hdf5"):
        raise InputError(
            f"model file {path}: unknown format {suffix!r}; expected a .keras (or legacy .h5) file"
        )
    if suffix != ".keras":
        from unet3d.legacy.models import convert_port_model, is_port_file
        if is_port_file(path):  # Keras 2 HDF5, channels-first: rebuilt channels-last
            return convert_port_model(path)
    try:
        return keras.saving.load_model(path, custom_objects=LEGACY_CUSTOM_OBJECTS, compile=compile)
    except Exception as error:  # Keras raises many types (ValueError, OSError, KeyError, zipfile...)
        if suffix == ".keras":
            remedy = "it is corrupt or truncated: save the model again, or use another checkpoint"
        else:
            remedy = ("it is neither a Keras 3 HDF5 model nor one the Keras-2 port wrote (those "
                      "are converted): save the model as .keras where it was made")
        raise InputError(
            f"cannot load model file {path} ({type(error).__name__}: {error}); {remedy}"
        ) from error


def _check_written(tmp: Path, model_file: str | os.PathLike) -> None:
    """OutputError unless `tmp` is a whole zip archive (every member's checksum read back)."""
    try:
        with zipfile.ZipFile(tmp) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, EOFError) as error:
        bad = str(error)
    if bad is not None:
        raise OutputError(errno.EIO, f"{model_file}: written incompletely ({bad}); the disk is "
                          "probably full (nothing was published under this name): free some "
                          "space and run the command again")


def save_model(model: keras.Model, model_file: str | os.PathLike, card: ModelCard | None = None,
               readable_copy: bool = True) -> None:
    """Save `model` to the `.keras` file `model_file` atomically, with `card` inside it.

    The file is written under a temporary name beside `model_file`, the card added to it, and the
    whole renamed to `model_file`, so `model_file` is always a complete model. With
    `readable_copy`, the card is also written to `<model_file>.json` (see `unet3d.model.card`).
    """
    if card is not None and Path(model_file).suffix != ".keras":
        raise InputError(f"{model_file}: a model card travels inside .keras files only; save the "
                         "model as .keras")
    check = ((lambda tmp: _check_written(tmp, model_file))
             if Path(model_file).suffix == ".keras" else None)
    with atomic_write(model_file, ".keras", check) as tmp:
        model.save(tmp)
        if card is not None:
            embed_card(tmp, card)
    if card is not None and readable_copy:
        write_card_copy(model_file, card)

