"""The saved split of a store's cases into training and validation (the port's keys files).

The split is drawn once with a seed and saved as two pickled lists of case indices, which every
later run reuses, so a resumed or repeated run trains and validates on the same cases.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Sequence

import numpy as np

from unet3d.config import PAPER
from unet3d.data import DataFile, DataStore, open_store
from unet3d.errors import InputError
from unet3d.atomic import atomic_write
from unet3d.logs import get_logger


def load_keys(path: str | os.PathLike, store: DataStore | None = None) -> list[int]:
    """The case indices saved in the keys file `path` (checked to be cases of `store` when
    given); `InputError` naming the file when it is missing, unreadable or of another store."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: keys file not found (training writes it when it draws the "
                         "split)")
    try:
        with open(path, "rb") as f:
            keys = [int(k) for k in pickle.load(f)]
    except Exception as error:  # noqa: BLE001 - any unreadable file gets the same advice
        raise InputError(f"{path}: cannot read the split ({error}); restore it from a copy, "
                         "or delete it to let training draw a new split") from None
    bad = [k for k in keys if store is not None and not 0 <= k < store.n_cases]
    if bad:
        raise InputError(f"{path}: case indices {bad[:5]} are not in {store.path} "
                         f"({store.n_cases} cases): the split belongs to another store")
    return keys


def save_keys(keys: Sequence[int], path: Path) -> None:
    """Write the case indices `keys` to the keys file `path` (atomically)."""
    with atomic_write(path) as tmp, open(tmp, "wb") as f:
        pickle.dump([int(k) for k in keys], f)


def get_validation_split(data_file: DataFile, training_file: str | os.PathLike,
                         validation_file: str | os.PathLike, data_split: float = PAPER.data_split,
                         overwrite: bool = False, seed: int = 0, save: bool = True
                         ) -> tuple[list[int], list[int]]:
    """Split the store's cases into training and validation indices, saved to two pickle files.

    The cases are shuffled with `seed` and the first int(n * data_split) go to training, as in the
    port (which did not seed). Existing keys files are reused unless `overwrite`; they are checked
    against the store. `save=False` draws the same split without writing it (the non-chief
    workers of a multi-host run). Returns (training indices, validation indices).
    """
    store = open_store(data_file)
    training_file, validation_file = Path(training_file), Path(validation_file)
    log = get_logger()
    if training_file.exists() and validation_file.exists() and not overwrite:
        training, validation = load_keys(training_file, store), load_keys(validation_file, store)
        if set(training) & set(validation):
            raise InputError(f"{training_file} / {validation_file} overlap: they belong to "
                             "different splits; delete them (or pass overwrite=True) to split "
                             "again")
        log.info("reusing the split in %s (%d training) and %s (%d validation)",
                 training_file, len(training), validation_file, len(validation))
        return training, validation
    if not 0 < data_split <= 1:
        raise InputError(f"data_split={data_split}: the training fraction is in (0, 1]")
    order = np.random.default_rng(seed).permutation(store.n_cases).tolist()
    n_training = int(store.n_cases * data_split)
    training, validation = order[:n_training], order[n_training:]
    if not training or (data_split < 1 and not validation):
        raise InputError(f"{store.path}: {store.n_cases} case(s) with data_split={data_split} "
                         f"leave {len(training)} for training and {len(validation)} for "
                         "validation; add cases or change data_split")
    if not save:
        return training, validation
    save_keys(training, training_file)
    save_keys(validation, validation_file)
    log.info("new split (seed %d): %d training cases -> %s, %d validation -> %s",
             seed, len(training), training_file, len(validation), validation_file)
    return training, validation
