"""Predicting cases of a data store (the validation run), on each case's native grid.

- `predict_store_case`: the probabilities of one store case, put back on its native grid.
- `to_native_grid`: any volume of a store case on its native grid.
- `predict_store_cases`: the port's validation run, the cases of a keys file into
  `<output_dir>/<case>/{data_<modality>,truth,prediction}.nii.gz`.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Callable

import keras
import numpy as np

from unet3d.config import PredictConfig
from unet3d.data import DataStore
from unet3d.errors import InputError
from unet3d.inference import Predictor, predict_volume
from unet3d.io import write_nifti
from unet3d.logs import get_logger
from unet3d.model import ModelCard
from unet3d.model_space import to_native_space
from unet3d.prediction import network, write_prediction
from unet3d.splits import load_keys



def predict_store_case(model: keras.Model | Predictor, store: DataStore, index: int,
                       config: PredictConfig, image: np.ndarray | None = None,
                       divisor: int | None = None) -> np.ndarray:
    """Probabilities (x, y, z, k) of store case `index` (its `image` when already read) on the
    case's native grid (`DataStore.native_grid`), by `model` (a Keras model, or a predictor
    with the `divisor` of its network)."""
    image = store.read_image(index) if image is None else image
    return to_native_grid(predict_volume(model, image, config, divisor), store, index)


def to_native_grid(volume: np.ndarray, store: DataStore, index: int) -> np.ndarray:
    """A volume of store case `index` (x, y, z[, k]) put on the case's native grid (the stored
    grid of legacy-layout stores)."""
    info = store.case_info(index)
    return volume if info is None else to_native_space(volume, info)


def predict_store_cases(model: keras.Model, card: ModelCard, config: PredictConfig,
                        data_file: str | os.PathLike, keys_file: str | os.PathLike,
                        output_dir: str | os.PathLike, output_label_map: bool = True,
                        progress: Callable[[str], None] | None = None) -> list[str]:
    """The port's validation run: for each case index saved in `keys_file`, write
    `<output_dir>/<subject id>/` with `data_<modality>.nii.gz` (the normalised input),
    `truth.nii.gz` and `prediction.nii.gz` (the label map; without `output_label_map`,
    `prediction_<output>.nii.gz` probability maps instead), on the case's native grid (stores in
    the port's layout, which do not record it: the stored grid). `model`, `card`, `config` as
    `load_for_prediction` returns them. Returns the case folders written."""
    progress = progress or get_logger().info
    with DataStore(data_file) as store:
        if store.space != card.space:
            remedy = ("give the store it was trained on" if card.training is not None else
                      "give --image_shape as the model's store was written, or that store")
            raise InputError(f"{data_file} holds cases in another model space ({store.space}) "
                             f"than the model's ({card.space}): {remedy}")
        indices = load_keys(keys_file, store)
        run = network(model, config)
        return [_store_case(run, card, config, store, index, Path(output_dir),
                            output_label_map, f"[{count}/{len(indices)}]", progress)
                for count, index in enumerate(indices, start=1)]


def _store_case(network: tuple[Predictor, int], card: ModelCard, config: PredictConfig, store: DataStore,
                index: int, output_dir: Path, output_label_map: bool,
                counter: str, progress: Callable[[str], None]) -> str:
    """One case of `predict_store_cases`; returns its folder."""
    start = time.monotonic()
    image, geometry = store.read_image(index), store.native_grid(index)
    folder = output_dir / store.subject_ids[index].replace(" ", "_")
    run, divisor = network
    probabilities = predict_store_case(run, store, index, config, image, divisor)
    volumes = {f"data_{m}": image[..., c] for c, m in enumerate(card.modalities)}
    if store.has_truth:
        volumes["truth"] = store.read_truth(index)
    volumes = {name: to_native_grid(volume, store, index) for name, volume in volumes.items()}
    for name, volume in volumes.items():
        write_nifti(volume, geometry, folder / f"{name}.nii.gz")
    if output_label_map:
        write_prediction(probabilities, geometry, folder / "prediction.nii.gz", card,
                         dataclasses.replace(config, probabilities=False),
                         card.entry.session(store.subject_ids[index]))
    else:
        for k, name in enumerate(card.output_names):
            write_nifti(probabilities[..., k], geometry, folder / f"prediction_{name}.nii.gz")
    progress(f"{counter} {store.subject_ids[index]}: {time.monotonic() - start:.1f} s -> {folder}")
    return str(folder)
