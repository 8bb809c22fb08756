"""Shared fixtures: small synthetic BraTS cases written once per test session."""

import os
import sys
from pathlib import Path

import pytest

from unet3d.brats import MODALITIES, find_cases
from unet3d.data import write_data_to_file
from unet3d.synthetic import make_synthetic_brats

REPO = Path(__file__).resolve().parents[1]
SMALL_SHAPE = (64, 64, 48)


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


def run_script(script: str, *args: str):
    """Run brats/<script> in a subprocess; returns the CompletedProcess (text output)."""
    import subprocess

    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, str(REPO / "brats" / script), *args], env=env,
                          capture_output=True, text=True, timeout=600)
