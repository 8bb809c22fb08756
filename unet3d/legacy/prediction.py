"""The legacy port's prediction API (`unet3d/prediction.py` of the Keras-2 port), channels-last.

Thin shims over this package's prediction: `predict`, `patch_wise_prediction` (the port's
edge-padded patch grid with equal weights), `get_prediction_labels` (the port's label rule),
`prediction_to_image` (SimpleITK images instead of nibabel's) and `run_validation_cases` (now on
each case's native grid). All of them are importable from `unet3d.prediction` too, as in the port.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable, Sequence

import keras
import numpy as np
import SimpleITK as sitk

from unet3d.config import PredictConfig
from unet3d.conventions import as_convention
from unet3d.data import DataStore
from unet3d.errors import InputError
from unet3d.inference import check_patch_shape, model_predictor, predict_with_tta, tta_transforms
from unet3d.io import geometry_from_affine, to_sitk
from unet3d.model import ModelCard, load_old_model, read_card
from unet3d.postprocessing import get_prediction_labels
from unet3d.prediction import complete_config
from unet3d.store_prediction import predict_store_cases
from unet3d.utils.patches import compute_patch_indices, get_patch_from_3d_data, reconstruct_from_patches

__all__ = ["predict", "patch_wise_prediction", "get_prediction_labels", "prediction_to_image",
           "run_validation_cases"]


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
    patch_shape = check_patch_shape(patch_shape)
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
                         progress: Callable[[str], None] | None = None) -> list[str]:
    """The port's validation run: for each case index in `validation_keys_file`, write
    `<output_dir>/<subject id>/` with `data_<modality>.nii.gz` (the normalised input),
    `truth.nii.gz` and `prediction.nii.gz` (a label map with `output_label_map`, else
    `prediction_<output>.nii.gz` probability maps). Unlike the port, the files are on each case's
    original grid (`unet3d.store_prediction.predict_store_cases`).

    Windows are the model's training patch (its model card), spaced `patch - overlap` apart with
    equal weights as in the port. A model without a card is taken as the port's: one output per
    label, trained on the store's cases, its windows its input size (the store's whole images
    for a fully convolutional one). Returns the case folders written.
    """
    convention = as_convention(tuple(labels))
    config = PredictConfig(threshold=threshold, tta="permute" if permute else "none",
                           whole_volume=False, weighting="constant", convention=convention.name,
                           modalities=tuple(training_modalities))
    model = load_old_model(model_file, compile=False)
    card = None
    if read_card(model_file) is None:  # the port's: its store's space, windows its input size
        with DataStore(hdf5_file) as store:
            space = store.space
        fixed = tuple(model.input_shape[1:4])
        card = ModelCard(model="external", modalities=tuple(training_modalities),
                         target="labels", convention=convention.name,
                         labels=convention.values,
                         patch_shape=fixed if None not in fixed else space.image_shape,
                         space=space, preprocessing=None, spacing=None, training=None,
                         unet3d_version="unknown")
    card, config = complete_config(model_file, model, config, card)
    if not config.whole_volume:
        window = min(config.patch_shape)
        if not 0 <= overlap < window:
            raise InputError(f"overlap {overlap}: need 0 <= overlap < the window "
                             f"{tuple(config.patch_shape)}")
        config = dataclasses.replace(config, step=(window - overlap) / window)
    return predict_store_cases(model, card, config, hdf5_file, validation_keys_file, output_dir,
                               output_label_map, progress)
