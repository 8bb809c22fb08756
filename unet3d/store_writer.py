"""The data store's file format and its case-by-case writer (`StoreWriter`), which
`unet3d.data.write_data_to_file` drives; `unet3d.data.DataStore` reads it.

Layout (root attribute `format` = "unet3d-store-1"):

| node          | type                | shape                  |                                       |
|---------------|---------------------|------------------------|---------------------------------------|
| `/data`       | EArray uint16/f32   | (N, X, Y, Z, C)        | channels-last, chunks (1, 32, 32, 32, C) |
| `/truth`      | EArray uint8        | (N, X, Y, Z)           | raw label values; absent if unlabelled |
| `/affine`     | EArray float64      | (N, 4, 4)              | RAS voxel-to-world of the stored grid |
| `/subject_ids`| Array bytes (utf-8) | (N,)                   | when ids were given                   |
| `/cases`      | Table               | N rows                 | crop box and original grid per case   |

Writes are atomic: the file appears at its name only when `StoreWriter.commit()` finished it
and read it back (every case row, the last case's voxels); a write the disk refused is an
`OutputError` naming the file, and nothing is published.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import errno

import numpy as np
import tables

from unet3d.errors import OutputError
from unet3d.atomic import publish, temporary_path, write_failure
from unet3d.model_space import CaseInfo, stored_grid

FORMAT = "unet3d-store-1"
#: Edge of the cubic chunks of `/data` and `/truth`: a random 128^3 patch touches at most 5^3.
CHUNK_EDGE = 32
#: Codec of the store: Blosc with LZ4 and byte shuffle (bench/store.py compares the others), and
#: a Fletcher-32 checksum of every chunk, so a corrupt chunk is a read error, never wrong voxels.
FILTERS = tables.Filters(complevel=5, complib="blosc:lz4", shuffle=True, fletcher32=True)


# --------------------------------------------------------------------------------------------
# Per-case record of where the stored volume came from.


class _CaseRow(tables.IsDescription):
    subject_id = tables.StringCol(256, pos=0)
    shape = tables.Int32Col(shape=(3,), pos=1)
    crop_start = tables.Int32Col(shape=(3,), pos=2)
    crop_stop = tables.Int32Col(shape=(3,), pos=3)
    original_shape = tables.Int32Col(shape=(3,), pos=4)
    spacing = tables.Float64Col(shape=(3,), pos=5)
    origin = tables.Float64Col(shape=(3,), pos=6)
    direction = tables.Float64Col(shape=(9,), pos=7)


# --------------------------------------------------------------------------------------------
# Writing.


class StoreWriter:
    """Write a store case by case; the file appears at `out_file` only on `commit()`.

    Used as a context manager: leaving the block by an exception deletes the temporary file.

        with StoreWriter(path, n_channels=4, spatial_shape=(240, 240, 155)) as writer:
            writer.append(image, truth, info)   # image (x, y, z, c), truth (x, y, z)
            writer.commit()
    """

    def __init__(self, out_file: str | os.PathLike, n_channels: int,
                 spatial_shape: Sequence[int], with_truth: bool = True,
                 dtype: np.dtype = np.uint16, attributes: dict | None = None,
                 filters: tables.Filters = FILTERS, chunk_edge: int = CHUNK_EDGE):
        self.out_file = Path(out_file)
        self.out_file.parent.mkdir(parents=True, exist_ok=True)
        self.spatial_shape = tuple(int(n) for n in spatial_shape)
        self.n_channels = int(n_channels)
        dtype = np.dtype(dtype)
        # Integer dtypes quantise images in [0, 1] to their full range (uint16: steps of 1.5e-5).
        self.scale = 1.0 / np.iinfo(dtype).max if dtype.kind == "u" else 1.0
        self._tmp = temporary_path(self.out_file)
        self._file = tables.open_file(str(self._tmp), mode="w")
        chunk = tuple(min(chunk_edge, n) for n in self.spatial_shape)
        root = self._file.root
        self._data = self._file.create_earray(
            root, "data", tables.Atom.from_dtype(np.dtype(dtype)),
            shape=(0, *self.spatial_shape, self.n_channels), filters=filters,
            chunkshape=(1, *chunk, self.n_channels))
        self._truth = None
        if with_truth:
            self._truth = self._file.create_earray(
                root, "truth", tables.UInt8Atom(), shape=(0, *self.spatial_shape),
                filters=filters, chunkshape=(1, *chunk))
        self._affine = self._file.create_earray(root, "affine", tables.Float64Atom(),
                                                shape=(0, 4, 4))
        self._cases = self._file.create_table(root, "cases", _CaseRow)
        root._v_attrs.format = FORMAT
        root._v_attrs.data_scale = self.scale
        for key, value in (attributes or {}).items():
            setattr(root._v_attrs, key, value)

    def append(self, image: np.ndarray, truth: np.ndarray | None, info: CaseInfo) -> None:
        """Append one case: image (x, y, z, c) and truth (x, y, z) no larger than the slab."""
        shape = image.shape[:3]
        if any(n > m for n, m in zip(shape, self.spatial_shape)) or image.shape[3] != self.n_channels:
            raise ValueError(f"case {info.subject_id}: image {image.shape} does not fit the store "
                             f"({self.spatial_shape} x {self.n_channels} channels)")
        region = tuple(slice(0, n) for n in shape)
        slab = np.zeros((1, *self.spatial_shape, self.n_channels), dtype=self._data.dtype)
        if self.scale != 1.0:
            if image.min() < 0 or image.max() > 1:
                raise ValueError(f"case {info.subject_id}: a {self._data.dtype} store holds images "
                                 "normalised to [0, 1]")
            image = np.rint(image / self.scale)
        slab[(0, *region)] = image
        if self._truth is not None and truth is None:
            raise ValueError(f"case {info.subject_id}: this store holds labels, none given")
        geometry = info.original
        try:
            self._data.append(slab)
            if self._truth is not None:
                labels = np.zeros((1, *self.spatial_shape), dtype=np.uint8)
                labels[(0, *region)] = truth
                self._truth.append(labels)
            self._affine.append(stored_grid(info).affine[np.newaxis])
            self._cases.append([(info.subject_id.encode("utf-8"), shape, info.crop_start,
                                 info.crop_stop, geometry.shape, geometry.spacing,
                                 geometry.origin, geometry.direction)])
        except OSError as error:
            raise write_failure(self.out_file, error) from error
        except tables.HDF5ExtError as error:
            raise self._failure(error) from None

    def commit(self, subject_ids: Sequence[str] | None = None) -> Path:
        """Finish the file, read it back (`_check_written`) and move it to `out_file` (replacing
        any file there). Raises `OutputError` when it could not be written whole."""
        n_cases = self._data.nrows
        try:
            if subject_ids is not None:
                self._file.create_array(self._file.root, "subject_ids",
                                        obj=[s.encode("utf-8") for s in subject_ids])
            self._file.close()
            publish(self._tmp, self.out_file, lambda tmp: self._check_written(tmp, n_cases))
        except OSError as error:
            raise write_failure(self.out_file, error) from error
        except tables.HDF5ExtError as error:
            raise self._failure(error) from None
        return self.out_file

    def _failure(self, error: Exception) -> OutputError:
        detail = str(error).strip().splitlines()[-1] if str(error).strip() else ""
        return OutputError(errno.EIO, f"{self.out_file}: could not be written ({detail}); the "
                           "disk is probably full (nothing was published under this name): free "
                           "some space and run the command again")

    def _check_written(self, tmp: Path, n_cases: int) -> None:
        """Open the finished file and read every case row and the last case's voxels back."""
        try:
            with tables.open_file(str(tmp), "r") as written:
                root = written.root
                if root.data.nrows != n_cases or root.cases.nrows != n_cases:
                    raise tables.HDF5ExtError(f"{root.data.nrows} of {n_cases} cases found")
                root.cases.read()
                if n_cases:
                    root.data[n_cases - 1]
                    if self._truth is not None:
                        root.truth[n_cases - 1]
        except (tables.HDF5ExtError, OSError, ValueError) as error:
            raise self._failure(error) from None

    def abort(self) -> None:
        if self._file.isopen:
            self._file.close()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None or self._file.isopen:
            self.abort()
