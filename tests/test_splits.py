"""The saved training/validation split (unet3d.splits, the port's keys files)."""

import pickle
import warnings

import pytest

from helpers import split_files as keys
from unet3d.brats import MODALITIES
from unet3d.data import write_data_to_file
from unet3d.errors import InputError
from unet3d.splits import get_validation_split


@pytest.fixture(scope="module")
def big_store_path(cases, tmp_path_factory):
    """12 cases: the 4 synthetic cases written three times."""
    path = tmp_path_factory.mktemp("generator_big") / "data.h5"
    files = [c.files() for c in cases] * 3
    write_data_to_file(files, path, subject_ids=[f"case{i}" for i in range(len(files))],
                       modalities=MODALITIES)
    return path


def test_validation_split_is_seeded_and_saved_as_pickled_int_lists(big_store_path, tmp_path):
    t0, v0 = get_validation_split(big_store_path, *keys(tmp_path, "s0"), data_split=0.75, seed=0)
    assert len(t0) == 9 and len(v0) == 3
    assert sorted(t0 + v0) == list(range(12))
    with open(tmp_path / "training_s0.pkl", "rb") as f:
        saved_training = pickle.load(f)
    with open(tmp_path / "validation_s0.pkl", "rb") as f:
        saved_validation = pickle.load(f)
    assert type(saved_training) is list and all(type(k) is int for k in saved_training)
    assert saved_training == t0 and saved_validation == v0
    # same seed, new files: same split; other seeds: other orders
    assert get_validation_split(big_store_path, *keys(tmp_path, "s0b"), data_split=0.75,
                                seed=0) == (t0, v0)
    others = [get_validation_split(big_store_path, *keys(tmp_path, f"s{s}"), data_split=0.75,
                                   seed=s) for s in (1, 2)]
    assert all(o[0] + o[1] != t0 + v0 for o in others)
    assert others[0][0] + others[0][1] != others[1][0] + others[1][1]


def test_validation_split_reuses_existing_files(big_store_path, tmp_path):
    first = get_validation_split(big_store_path, *keys(tmp_path), seed=0)
    assert get_validation_split(big_store_path, *keys(tmp_path), seed=5) == first
    assert get_validation_split(big_store_path, *keys(tmp_path), seed=5, data_split=0.5) == first
    redrawn = get_validation_split(big_store_path, *keys(tmp_path), seed=5, overwrite=True)
    assert redrawn != first
    assert get_validation_split(big_store_path, *keys(tmp_path), seed=0) == redrawn


def test_validation_split_rejects_files_of_another_store(store_path, tmp_path):
    training, validation = keys(tmp_path)
    for bad_training, bad_validation, message in [([0, 1, 9], [2], "belongs to another store"),
                                                  ([0, 1, 2], [2], "overlap")]:
        with open(training, "wb") as f:
            pickle.dump(bad_training, f)
        with open(validation, "wb") as f:
            pickle.dump(bad_validation, f)
        with pytest.raises(InputError, match=message):
            get_validation_split(store_path, training, validation)
    training.write_bytes(b"not a pickle")
    with pytest.raises(InputError, match="cannot read"):
        get_validation_split(store_path, training, validation)
    # overwrite=True draws a fresh split instead
    t, v = get_validation_split(store_path, training, validation, overwrite=True)
    assert sorted(t + v) == [0, 1, 2, 3]


def test_failed_split_write_leaves_no_partial_file(store_path, tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(pickle, "dump", boom)
    with pytest.raises(OSError):
        get_validation_split(store_path, *keys(tmp_path))
    assert list(tmp_path.iterdir()) == []


def test_writing_a_split_uses_no_deprecated_api(store_path, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        get_validation_split(store_path, *keys(tmp_path))


def test_validation_split_bad_fractions(store_path, tmp_path):
    with pytest.raises(InputError):
        get_validation_split(store_path, *keys(tmp_path), data_split=0.0)
    with pytest.raises(InputError):
        get_validation_split(store_path, *keys(tmp_path), data_split=0.1)  # no training case
    t, v = get_validation_split(store_path, *keys(tmp_path, "all"), data_split=1.0)
    assert sorted(t) == [0, 1, 2, 3] and v == []
