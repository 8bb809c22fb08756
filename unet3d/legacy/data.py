"""The legacy port's API for writing its store layout (`unet3d/data.py` of the Keras-2 port):
channels-first float32 `/data` (N, C, X, Y, Z), `/truth` (N, 1, X, Y, Z), `/affine`, Blosc level 5
with PyTables' default chunks. Also importable from `unet3d.data`. `unet3d.data.DataStore` reads
this layout; `write_data_to_file` writes this package's (faster, smaller) one.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import tables

__all__ = ["create_data_file", "add_data_to_storage"]

#: Filters of the legacy port's layout (Blosc, level 5, default chunks).
LEGACY_FILTERS = tables.Filters(complevel=5, complib="blosc")


def create_data_file(out_file: str | os.PathLike, n_channels: int, n_samples: int,
                     image_shape: Sequence[int]):
    """Create a store in the legacy port's layout. Returns (file, data, truth, affine) arrays.

    `/data` is float32 (N, n_channels, *image_shape), `/truth` uint8 (N, 1, *image_shape),
    `/affine` float32 (N, 4, 4), Blosc level 5 with PyTables' default chunks.
    """
    hdf5_file = tables.open_file(str(out_file), mode="w")
    data_shape = (0, int(n_channels), *image_shape)
    truth_shape = (0, 1, *image_shape)
    data = hdf5_file.create_earray(hdf5_file.root, "data", tables.Float32Atom(), shape=data_shape,
                                   filters=LEGACY_FILTERS, expectedrows=n_samples)
    truth = hdf5_file.create_earray(hdf5_file.root, "truth", tables.UInt8Atom(), shape=truth_shape,
                                    filters=LEGACY_FILTERS, expectedrows=n_samples)
    affine = hdf5_file.create_earray(hdf5_file.root, "affine", tables.Float32Atom(),
                                     shape=(0, 4, 4), filters=LEGACY_FILTERS,
                                     expectedrows=n_samples)
    return hdf5_file, data, truth, affine


def add_data_to_storage(data_storage, truth_storage, affine_storage, subject_data: Sequence[np.ndarray],
                        affine: np.ndarray, n_channels: int, truth_dtype: np.dtype = np.uint8) -> None:
    """Append one case to legacy-layout arrays: `subject_data` is the modalities, then the truth."""
    data_storage.append(np.asarray(subject_data[:n_channels])[np.newaxis])
    truth_storage.append(np.asarray(subject_data[n_channels], dtype=truth_dtype)[np.newaxis, np.newaxis])
    affine_storage.append(np.asarray(affine)[np.newaxis])
