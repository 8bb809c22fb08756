"""Helpers shared by the tests (imported as `helpers`; fixtures live in conftest.py)."""

from __future__ import annotations

import ast
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
from packaging.requirements import Requirement
from scipy.spatial.distance import cdist

from unet3d.brats import MODALITIES
from unet3d.config import TrainConfig, preset
from unet3d.model import ModelCard, save_model
from unet3d.model_space import ModelSpace

REPO = Path(__file__).resolve().parents[1]
#: The grid of the small synthetic cases of the `synthetic_brats` fixture.
SMALL_SHAPE = (64, 64, 48)


def run_script(script: str, *args: str, timeout: int = 600,
               file_size_limit: int | None = None) -> subprocess.CompletedProcess:
    """Run brats/<script> in a subprocess; returns the CompletedProcess (text output).

    `file_size_limit` (bytes) makes every write past that size in a file fail with EFBIG, as a
    full disk fails them (RLIMIT_FSIZE, with SIGXFSZ ignored so the write returns the error);
    the child then writes no bytecode (Python would publish cut-short .pyc files)."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    if file_size_limit:
        env["PYTHONDONTWRITEBYTECODE"] = "1"

    def limit_file_size() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))

    return subprocess.run([sys.executable, str(REPO / "brats" / script), *args], env=env,
                          capture_output=True, text=True, timeout=timeout,
                          preexec_fn=limit_file_size if file_size_limit else None)


def touch(folder: Path, *names: str) -> None:
    """Create empty files `names` in `folder` (made if needed)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")


def channel_model(n_channels: int = 4, n_outputs: int = 3,
                  spatial: tuple = (None, None, None)) -> keras.Model:
    """A model whose output k is input channel k (a 1x1x1 convolution), fully convolutional
    unless `spatial` fixes its input size."""
    inputs = keras.Input((*spatial, n_channels))
    conv = keras.layers.Conv3D(n_outputs, 1, use_bias=False)
    model = keras.Model(inputs, conv(inputs))
    conv.set_weights([np.eye(n_channels, n_outputs, dtype=np.float32).reshape(1, 1, 1, n_channels,
                                                                              n_outputs)])
    return model


def card_of(**changes) -> ModelCard:
    """A model card of a region model on the four BraTS modalities, 16^3 windows, brain crop,
    N4 not recorded; `changes` replace its fields."""
    values = dict(model="isensee2017", modalities=MODALITIES, target="regions",
                  convention="brats2020", labels=(1, 2, 4),
                  patch_shape=(16, 16, 16), space=ModelSpace(), preprocessing=None, spacing=None,
                  training=None)
    return ModelCard(**{**values, **changes})


def write_model(folder: Path, model: keras.Model, name: str = "model.keras",
                **card_changes) -> Path:
    """Save `model` with the card `card_of(**card_changes)` into `folder`; returns the file."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    save_model(model, path, card_of(**card_changes))
    return path


def setup_keywords() -> dict:
    """The literal keyword arguments of setup.py's `setup(...)` call."""
    tree = ast.parse((REPO / "setup.py").read_text())
    call = next(node for node in ast.walk(tree)
                if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setup")
    keywords = {}
    for keyword in call.keywords:
        try:
            keywords[keyword.arg] = ast.literal_eval(keyword.value)
        except ValueError:  # computed values such as long_description
            pass
    return keywords


def install_requires() -> dict[str, Requirement]:
    return {(r := Requirement(line)).name: r for line in setup_keywords()["install_requires"]}


def split_files(folder: Path, name: str = "a") -> tuple[Path, Path]:
    """(training, validation) keys files of a split named `name` in `folder`."""
    return folder / f"training_{name}.pkl", folder / f"validation_{name}.pkl"


def paper_run(folder: Path, store_path: Path, recipe: str = "paper", **settings) -> TrainConfig:
    """The `recipe` (the paper recipe) training on a copy of the store at `store_path`, the run
    in `folder` (model m.keras, CSV log log.csv), float32, batches made in the training process;
    `settings` replace the recipe's values."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(store_path, folder / "data.h5")
    files = dict(data_file=folder / "data.h5", run_dir=folder, model_file=folder / "m.keras",
                 training_log=folder / "log.csv")
    return preset(recipe, **{name: str(path) for name, path in files.items()},
                  **{"precision": "float32", "workers": 0, "verbose": 0, **settings})


def surface_points(mask: np.ndarray, spacing) -> np.ndarray:
    """Coordinates (mm) of the voxels of a 3D mask with a 6-neighbour outside it (outside the
    image counts as background), found by comparing shifted copies."""
    padded = np.pad(mask, 1)
    inner = padded[1:-1, 1:-1, 1:-1]
    neighbours = [padded[2:, 1:-1, 1:-1], padded[:-2, 1:-1, 1:-1],
                  padded[1:-1, 2:, 1:-1], padded[1:-1, :-2, 1:-1],
                  padded[1:-1, 1:-1, 2:], padded[1:-1, 1:-1, :-2]]
    surface = inner & ~np.logical_and.reduce(neighbours)
    return np.argwhere(surface) * np.asarray(spacing)


def brute_force_hd95(truth, pred, spacing):
    """Pooled 95th percentile of the nearest-surface distances, from all pairwise distances."""
    distances = cdist(surface_points(truth, spacing), surface_points(pred, spacing))
    return np.percentile(np.concatenate([distances.min(axis=1), distances.min(axis=0)]), 95)
