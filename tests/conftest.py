"""Shared fixtures: small synthetic BraTS cases written once per test session. (Helpers that
tests import are in helpers.py.)"""

from pathlib import Path

import pytest

from helpers import SMALL_SHAPE, paper_run
from unet3d.brats import MODALITIES, find_cases
from unet3d.data import write_data_to_file
from unet3d.synthetic import make_synthetic_brats


@pytest.fixture(scope="session")
def synthetic_brats(tmp_path_factory) -> Path:
    """Four labelled synthetic cases of 64x64x48 (BraTS 2020 naming); case 4 has no ET."""
    root = tmp_path_factory.mktemp("synthetic") / "brats"
    make_synthetic_brats(root, n_cases=4, shape=SMALL_SHAPE, seed=7)
    return root


@pytest.fixture(scope="session")
def cases(synthetic_brats):
    """The `synthetic_brats` cases, found as a user's folder would be."""
    return find_cases(synthetic_brats)


@pytest.fixture(scope="session")
def store_path(cases, tmp_path_factory) -> Path:
    """A labelled paper-layout store of the `synthetic_brats` cases (brain-cropped, so the four
    cases differ in shape)."""
    path = tmp_path_factory.mktemp("store") / "data.h5"
    write_data_to_file([c.files() for c in cases], path, subject_ids=[c.name for c in cases],
                       modalities=MODALITIES)
    return path


@pytest.fixture(scope="session")
def trained(store_path, tmp_path_factory):
    """A tiny model trained by the paper recipe with 32^3 patches, 3 short epochs, 2 of the 4
    cases validated whole after each; returns its (resolved) `TrainConfig`."""
    import keras

    from unet3d.recipes import train
    from unet3d.runs import with_run_files

    config = paper_run(tmp_path_factory.mktemp("trained"), store_path, patch_shape=(32, 32, 32),
                       batch_size=2, steps_per_epoch=3, n_epochs=3, n_base_filters=4,
                       data_split=0.5, initial_learning_rate=5e-3)
    try:
        train(config)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    return with_run_files(config)

