"""The compressed HDF5 data store (PyTables, Blosc).

Layout written by `write_data_to_file` (root attribute `format` = "unet3d-store-1"):

| node          | type                | shape                  |                                       |
|---------------|---------------------|------------------------|---------------------------------------|
| `/data`       | EArray uint16/f32   | (N, X, Y, Z, C)        | channels-last, chunks (1, 32, 32, 32, C) |
| `/truth`      | EArray uint8        | (N, X, Y, Z)           | raw label values; absent if unlabelled |
| `/affine`     | EArray float64      | (N, 4, 4)              | RAS voxel-to-world of the stored grid |
| `/subject_ids`| Array bytes (utf-8) | (N,)                   | when ids were given                   |
| `/cases`      | Table               | N rows                 | crop box and original grid per case   |

Default mode (the paper's): each case is cropped to its brain bounding box at its native
resolution, each modality z-scored over the case's own brain voxels, clipped to [-5, 5] and rescaled
to [0, 1] with 0 outside the brain; values are stored as uint16 (x 1/65535: steps of 1.5e-5, finer
than float16, and integers convert to float32 faster on reading). Cases have different sizes: case i
fills `[0:shape_i]` of its slab (`DataStore.case_shape(i)`), the rest is zero padding that
compresses to nothing and is never read. `/cases` records the crop box and the original grid so a
prediction maps back exactly to the original file (`restore_to_original`).

Legacy mode (`image_shape` given) crops to the non-zero bounding box padded by one voxel and
resamples every case to `image_shape`, stretching each brain, as the legacy port did.

Stores in the legacy port's layout (float32 (N, C, X, Y, Z) `/data`, (N, 1, X, Y, Z) `/truth`,
Blosc level 5, default chunks) open and read through `DataStore` too.

Writes are atomic (a temporary file beside the target, renamed when complete) and memory does not
grow with the number of cases (one case in memory at a time). `DataStore` opens its own HDF5
handle in every process that uses it, so it is safe to pass to worker processes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import SimpleITK as sitk
import tables

from unet3d.brats import LABELS, MODALITIES, find_cases
from unet3d.errors import InputError
from unet3d.io import (Geometry, check_label_values, publish, read_image_set, temporary_path,
                       to_sitk)
from unet3d.logs import get_logger
from unet3d.preprocessing import brain_mask, read_settings

FORMAT = "unet3d-store-1"
#: Edge of the cubic chunks of `/data` and `/truth`: a random 128^3 patch touches at most 5^3.
CHUNK_EDGE = 32
#: Codec of the store: Blosc with LZ4 and byte shuffle (bench/store.py compares the others).
FILTERS = tables.Filters(complevel=5, complib="blosc:lz4", shuffle=True)
#: Filters of the legacy port's layout (Blosc, level 5, default chunks).
LEGACY_FILTERS = tables.Filters(complevel=5, complib="blosc")
#: z-scores are clipped to [-CLIP, CLIP] before rescaling to [0, 1] (the paper).
CLIP = 5.0


# --------------------------------------------------------------------------------------------
# Pure array functions: bounding boxes, crop and its inverse, normalisation, legacy resampling.


def bounding_box(mask: np.ndarray, pad: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Bounding box of the True voxels: (start, stop) int arrays, stop exclusive.

    `pad` voxels are added on each side, limited to the array. An empty mask gives the whole array.
    """
    shape = np.asarray(mask.shape)
    if not mask.any():
        return np.zeros(len(shape), dtype=int), shape.copy()
    start, stop = [], []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        present = np.flatnonzero(mask.any(axis=other))
        start.append(present[0])
        stop.append(present[-1] + 1)
    start = np.maximum(np.asarray(start) - pad, 0)
    stop = np.minimum(np.asarray(stop) + pad, shape)
    return start, stop


def crop(array: np.ndarray, start: Sequence[int], stop: Sequence[int]) -> np.ndarray:
    """array[start:stop] over the first three axes."""
    return array[tuple(slice(int(a), int(b)) for a, b in zip(start, stop))]


def restore_to_original(array: np.ndarray, start: Sequence[int],
                        original_shape: Sequence[int], fill: float = 0) -> np.ndarray:
    """Inverse of `crop`: place a cropped (x, y, z[, c]) array back on the original grid.

    Voxels outside the crop box get `fill`. `restore_to_original(crop(a, s, e), s, a.shape)`
    equals `a` wherever `a` is inside [s, e).
    """
    out = np.full(tuple(original_shape) + array.shape[3:], fill, dtype=array.dtype)
    out[tuple(slice(int(a), int(a) + n) for a, n in zip(start, array.shape[:3]))] = array
    return out


def normalize_modality(image: np.ndarray, mask: np.ndarray, clip: float = CLIP) -> np.ndarray:
    """The paper's intensity normalisation of one (x, y, z) modality. Returns float32.

    z-score over the voxels of `mask`, clip to [-clip, clip], rescale to [0, 1]; 0 outside `mask`.
    Raises `InputError` if the modality is constant inside the mask.
    """
    values = image[mask].astype(np.float64)
    mean, std = values.mean(), values.std()
    if not std > 0:
        raise InputError("the image is constant inside the brain (standard deviation 0)")
    out = (np.clip((image - mean) / std, -clip, clip) + clip) / (2 * clip)
    out[~mask] = 0
    return out.astype(np.float32)


def resampled_grid(geometry: Geometry, start: np.ndarray, stop: np.ndarray,
                     image_shape: Sequence[int]) -> Geometry:
    """The grid of `image_shape` voxels covering the box [start, stop) of `geometry` edge to edge."""
    spacing_in = np.asarray(geometry.spacing)
    spacing_out = spacing_in * (stop - start) / np.asarray(image_shape)
    direction = np.asarray(geometry.direction).reshape(3, 3)
    first_centre = spacing_in * (start - 0.5) + spacing_out * 0.5
    origin = np.asarray(geometry.origin) + direction @ first_centre
    return Geometry(tuple(int(n) for n in image_shape), tuple(float(s) for s in spacing_out),
                    tuple(float(o) for o in origin), geometry.direction)


def resample(array: np.ndarray, geometry: Geometry, target: Geometry,
             interpolator: int = sitk.sitkLinear) -> np.ndarray:
    """Resample an (x, y, z) array from `geometry` onto the grid `target` (0 outside)."""
    image = to_sitk(array, geometry)
    reference = sitk.Image([int(n) for n in target.shape], image.GetPixelID())
    reference.SetSpacing(target.spacing)
    reference.SetOrigin(target.origin)
    reference.SetDirection(target.direction)
    out = sitk.Resample(image, reference, sitk.Transform(), interpolator, 0.0)
    return sitk.GetArrayFromImage(out).transpose(2, 1, 0)


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


@dataclass(frozen=True)
class CaseInfo:
    """Where case `subject_id` of a store came from.

    shape: the stored (valid) extent of the case, (x, y, z).
    crop_start, crop_stop: the box of the original grid it was cropped from.
    original: the original file's grid (write predictions on it to overlay the input).
    resampled: True for legacy-mode stores (the box was resampled to `shape`).
    """

    subject_id: str
    shape: tuple[int, int, int]
    crop_start: tuple[int, int, int]
    crop_stop: tuple[int, int, int]
    original: Geometry
    resampled: bool


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
        self._data.append(slab)
        if self._truth is not None:
            if truth is None:
                raise ValueError(f"case {info.subject_id}: this store holds labels, none given")
            labels = np.zeros((1, *self.spatial_shape), dtype=np.uint8)
            labels[(0, *region)] = truth
            self._truth.append(labels)
        geometry = info.original
        stored_grid = (resampled_grid(geometry, np.asarray(info.crop_start),
                                        np.asarray(info.crop_stop), shape)
                       if info.resampled else geometry.cropped(info.crop_start, info.crop_stop))
        self._affine.append(stored_grid.affine[np.newaxis])
        self._cases.append([(info.subject_id.encode("utf-8"), shape, info.crop_start,
                             info.crop_stop, geometry.shape, geometry.spacing, geometry.origin,
                             geometry.direction)])

    def commit(self, subject_ids: Sequence[str] | None = None) -> Path:
        """Finish the file and move it to `out_file` (replacing any file there)."""
        if subject_ids is not None:
            self._file.create_array(self._file.root, "subject_ids",
                                    obj=[s.encode("utf-8") for s in subject_ids])
        self._file.close()
        publish(self._tmp, self.out_file)
        return self.out_file

    def abort(self) -> None:
        if self._file.isopen:
            self._file.close()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None or self._file.isopen:
            self.abort()


def _header_shape(path: str | os.PathLike) -> tuple[int, int, int]:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise InputError(f"{path}: cannot read this NIfTI file (corrupt or truncated?)") from None
    return tuple(int(n) for n in reader.GetSize())


def prepare_case(files: Sequence[str | os.PathLike], subject_id: str, n_channels: int,
                 with_truth: bool, labels: Sequence[int], image_shape: Sequence[int] | None,
                 normalize: bool, crop_to_brain: bool) -> tuple[np.ndarray, np.ndarray | None, CaseInfo]:
    """Read one case's files and bring it to the store's space: (image, truth, info)."""
    arrays, geometry = read_image_set(files, subject_id)
    truth = None
    if with_truth:
        truth = arrays[n_channels].astype(np.uint8)
        check_label_values(truth, labels, files[n_channels], subject_id)
    return prepare_arrays(arrays[:n_channels], truth, geometry, subject_id, image_shape,
                          normalize, crop_to_brain, [Path(f).name for f in files[:n_channels]])


def prepare_arrays(images: Sequence[np.ndarray], truth: np.ndarray | None, geometry: Geometry,
                   subject_id: str, image_shape: Sequence[int] | None = None,
                   normalize: bool = True, crop_to_brain: bool = True,
                   names: Sequence[str] | None = None
                   ) -> tuple[np.ndarray, np.ndarray | None, CaseInfo]:
    """Bring one case's arrays to the store's space: (image (x, y, z, c), truth, info).

    images: the modalities, (x, y, z) each, on `geometry`; truth: uint8 (x, y, z) or None.
    image_shape: None crops to the brain at native resolution (the paper); a shape resamples the
        brain box to it (the legacy port). names: how errors name the images (file names).
    """
    names = names or [f"channel {c}" for c in range(len(images))]
    mask = brain_mask(images)
    if not mask.any():
        raise InputError(f"case {subject_id}: every modality is all zero ({', '.join(names)})")
    legacy = image_shape is not None
    if crop_to_brain:
        box_mask = mask | (truth > 0) if (legacy and truth is not None) else mask
        start, stop = bounding_box(box_mask, pad=1 if legacy else 0)
    else:
        start, stop = np.zeros(3, dtype=int), np.asarray(geometry.shape)
    if normalize:
        normalized = []
        for name, image in zip(names, images):
            try:
                normalized.append(normalize_modality(image, mask))
            except InputError as error:
                raise InputError(f"case {subject_id}: {name}: {error}") from None
        images = normalized
    if legacy:
        target = resampled_grid(geometry, start, stop, image_shape)
        images = [resample(image, geometry, target) for image in images]
        if truth is not None:
            truth = resample(truth, geometry, target, sitk.sitkNearestNeighbor)
    else:
        images = [crop(image, start, stop) for image in images]
        truth = crop(truth, start, stop) if truth is not None else None
    info = CaseInfo(subject_id, tuple(int(n) for n in images[0].shape), tuple(int(n) for n in start),
                    tuple(int(n) for n in stop), geometry, resampled=legacy)
    return np.stack(images, axis=-1), truth, info


def write_data_to_file(training_data_files: Sequence[Sequence[str | os.PathLike]],
                       out_file: str | os.PathLike, image_shape: Sequence[int] | None = None,
                       truth_dtype: np.dtype = np.uint8, subject_ids: Sequence[str] | None = None,
                       normalize: bool = True, crop: bool = True, *, with_truth: bool = True,
                       labels: Sequence[int] = LABELS["brats2020"],
                       modalities: Sequence[str] | None = None,
                       progress: Callable[[str], None] | None = None) -> str:
    """Write cases into a data store at `out_file` (atomically; replaces an existing file).

    training_data_files: one tuple per case: the modality files in a fixed order, then the label
        file (omit it and pass `with_truth=False` for unlabelled data).
    image_shape: None (default) keeps each brain at its native resolution, cropped to its
        bounding box (the paper). A shape (x, y, z) resamples every case to it (legacy port).
    truth_dtype: kept for the legacy signature; labels are stored as uint8.
    subject_ids: names of the cases, stored as `/subject_ids`.
    normalize: z-score each modality over the case's brain, clip to [-5, 5], rescale to [0, 1].
    crop: crop to the brain bounding box (otherwise keep the whole grid).
    labels: the foreground label values allowed in label files (BraTS 2023: (1, 2, 3)).
    modalities: names of the channels, stored as an attribute.
    progress: called with one line per case.

    Returns `out_file`. Raises `InputError` naming the case and file for bad input.
    """
    if np.dtype(truth_dtype) != np.uint8:
        raise InputError(f"truth_dtype {np.dtype(truth_dtype)} is not supported: labels are uint8")
    files = [tuple(case) for case in training_data_files]
    if not files:
        raise InputError(f"{out_file}: no cases to write (the list of files is empty)")
    n_channels = len(files[0]) - int(with_truth)
    if n_channels < 1 or any(len(case) != len(files[0]) for case in files):
        raise InputError(f"{out_file}: every case needs the same number of files (modalities, then "
                         "the label file unless with_truth=False)")
    if subject_ids is not None and len(subject_ids) != len(files):
        raise InputError(f"{out_file}: {len(subject_ids)} subject ids for {len(files)} cases")
    names = list(subject_ids) if subject_ids is not None else [
        Path(case[0]).parent.name or f"case_{i}" for i, case in enumerate(files)]
    progress = progress or get_logger().info
    if image_shape is not None:
        image_shape = tuple(int(n) for n in image_shape)
        if len(image_shape) != 3 or min(image_shape) < 1:
            raise InputError(f"image_shape {image_shape} must be three positive sizes (x, y, z)")
        spatial_shape = image_shape
    else:
        spatial_shape = tuple(np.max([_header_shape(case[0]) for case in files], axis=0))
    attributes = {"labels": list(labels), "modalities": list(modalities or []),
                  "mode": "resample" if image_shape is not None else "crop",
                  "normalized": bool(normalize)}
    dtype = np.uint16 if normalize else np.float32
    with StoreWriter(out_file, n_channels, spatial_shape, with_truth, dtype, attributes) as writer:
        for index, (case, name) in enumerate(zip(files, names)):
            image, truth, info = prepare_case(case, name, n_channels, with_truth, labels,
                                               image_shape, normalize, crop)
            writer.append(image, truth, info)
            progress(f"[{index + 1}/{len(files)}] {name}: stored {info.shape}")
        writer.commit(subject_ids)
    return str(out_file)


def write_store_from_folder(preprocessed_dir: str | os.PathLike, data_file: str | os.PathLike,
                            modalities: Sequence[str] = MODALITIES,
                            image_shape: Sequence[int] | None = None,
                            labels: Sequence[int] | None = None,
                            progress: Callable[[str], None] | None = None) -> str:
    """Write the store of every case under a (preprocessed) folder, named by folder.

    The store holds labels if every case has a label file and none if no case has one; a mix is
    an error (keep training and prediction cases in separate folders). `labels` defaults to the
    convention recorded by `brats/preprocess.py`, else to the cases' release naming.
    """
    cases = find_cases(preprocessed_dir)
    labelled = [case.label is not None for case in cases]
    if any(labelled) and not all(labelled):
        missing = [case.name for case in cases if case.label is None]
        raise InputError(f"{preprocessed_dir}: {len(missing)} of {len(cases)} cases have no label "
                         f"file ({', '.join(missing[:5])}{'...' if len(missing) > 5 else ''}); a "
                         "store is all labelled or all unlabelled: move them to another folder")
    if labels is None:
        settings = read_settings(preprocessed_dir) or {}
        labels = tuple(settings.get("labels", cases[0].labels))
    return write_data_to_file([case.files(tuple(modalities)) for case in cases], data_file,
                              image_shape=image_shape, subject_ids=[case.name for case in cases],
                              with_truth=all(labelled), labels=labels, modalities=modalities,
                              progress=progress)


# --------------------------------------------------------------------------------------------
# The legacy port's writing API (its layout: channels-first float32, Blosc level 5).


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


# --------------------------------------------------------------------------------------------
# Reading.


def open_data_file(filename: str | os.PathLike, readwrite: str = "r") -> tables.File:
    """Open a store with PyTables (the legacy API). Raises `InputError` naming the file if it is
    missing or not a readable HDF5 file. Prefer `DataStore` for reading cases."""
    path = Path(filename)
    if not path.is_file():
        raise InputError(f"{path}: data file not found; build it with brats/preprocess.py "
                         "--data_file or write_data_to_file")
    try:
        return tables.open_file(str(path), readwrite)
    except (tables.HDF5ExtError, OSError, ValueError) as error:
        raise InputError(f"{path}: not a readable HDF5 data file ({type(error).__name__}); it may be "
                         "truncated or corrupt: rebuild it") from None


class DataStore:
    """Read cases and patches from a store of either layout, channels-last, in any process.

    The HDF5 handle is opened lazily in the process that reads (a pickled or forked `DataStore`
    opens its own), which avoids the legacy port's "Blosc decompression error" and segfaults.

    image arrays are float32 (x, y, z, channels); truth arrays uint8 (x, y, z) with the raw labels.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._file: tables.File | None = None
        self._pid: int | None = None
        root = self.file.root
        if "data" not in root:
            raise InputError(f"{self.path}: not a data store (no /data node)")
        self.legacy_layout = getattr(root._v_attrs, "format", None) != FORMAT
        data = root.data
        if data.ndim != 5:
            raise InputError(f"{self.path}: /data has shape {data.shape}; expected 5 dimensions")
        self.n_cases = int(data.shape[0])
        if self.legacy_layout:
            self.n_channels, spatial_shape = int(data.shape[1]), data.shape[2:]
        else:
            self.n_channels, spatial_shape = int(data.shape[4]), data.shape[1:4]
        self.spatial_shape = tuple(int(n) for n in spatial_shape)
        self.has_truth = "truth" in root
        self.subject_ids = ([s.decode("utf-8") if isinstance(s, bytes) else str(s)
                             for s in root.subject_ids.read()] if "subject_ids" in root
                            else [f"case {i}" for i in range(self.n_cases)])
        attrs = root._v_attrs
        self.labels = tuple(int(v) for v in attrs.labels) if "labels" in attrs._v_attrnames else None
        self.modalities = (tuple(attrs.modalities) if "modalities" in attrs._v_attrnames else ())
        self.data_scale = float(getattr(attrs, "data_scale", 1.0))
        self._shapes = (root.cases.col("shape").astype(int) if "cases" in root
                        else np.tile(self.spatial_shape, (self.n_cases, 1)))

    @property
    def file(self) -> tables.File:
        """This process's open handle (reopened after a fork)."""
        if self._file is None or self._pid != os.getpid() or not self._file.isopen:
            self._file = open_data_file(self.path, "r")
            self._pid = os.getpid()
        return self._file

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_file"], state["_pid"] = None, None
        return state

    def close(self) -> None:
        if self._file is not None and self._pid == os.getpid() and self._file.isopen:
            self._file.close()
        self._file = None

    def __enter__(self) -> "DataStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    def __len__(self) -> int:
        return self.n_cases

    def case_shape(self, index: int) -> tuple[int, int, int]:
        """The valid (stored) extent of case `index`, (x, y, z)."""
        return tuple(int(n) for n in self._shapes[index])

    def case_info(self, index: int) -> CaseInfo | None:
        """Where case `index` came from (None for legacy-layout stores, which do not record it)."""
        if "cases" not in self.file.root:
            return None
        row = self.file.root.cases[index]
        original = Geometry(tuple(int(n) for n in row["original_shape"]),
                            tuple(float(s) for s in row["spacing"]),
                            tuple(float(o) for o in row["origin"]),
                            tuple(float(d) for d in row["direction"]))
        return CaseInfo(row["subject_id"].decode("utf-8"), self.case_shape(index),
                        tuple(int(n) for n in row["crop_start"]),
                        tuple(int(n) for n in row["crop_stop"]), original,
                        resampled=getattr(self.file.root._v_attrs, "mode", "crop") == "resample")

    def _read_into(self, node: str, index: int, lo: Sequence[int], hi: Sequence[int],
                   out: np.ndarray, offset: Sequence[int]) -> None:
        """Copy voxels [lo, hi) of case `index` of `node` to `out` at `offset` (channels-last)."""
        if not 0 <= index < self.n_cases:
            raise IndexError(f"{self.path}: case index {index} out of range (0..{self.n_cases - 1})")
        array = getattr(self.file.root, node)
        region = tuple(slice(int(l), int(h)) for l, h in zip(lo, hi))
        target = tuple(slice(int(o), int(o) + int(h) - int(l)) for o, l, h in zip(offset, lo, hi))
        try:
            if self.legacy_layout:
                if node == "data":
                    out[target] = np.moveaxis(array[(index, slice(None), *region)], 0, -1)
                else:
                    out[target] = array[(index, 0, *region)]
            else:
                out[target] = array[(index, *region)]
        except Exception as error:  # noqa: BLE001 - HDF5 and Blosc raise several types
            detail = str(error).strip().splitlines()[0] if str(error).strip() else ""
            raise InputError(
                f"{self.path}: case {index} ({self.subject_ids[index]}): cannot read {node} "
                f"({type(error).__name__}: {detail}). The file is corrupt: rebuild it "
                "(brats/preprocess.py --data_file ... --overwrite)") from None

    def read_image(self, index: int) -> np.ndarray:
        """Case `index`'s image, float32 (x, y, z, channels), its valid extent only."""
        shape = self.case_shape(index)
        out = np.empty((*shape, self.n_channels), dtype=np.float32)
        self._read_into("data", index, (0, 0, 0), shape, out, (0, 0, 0))
        if self.data_scale != 1.0:
            out *= self.data_scale
        return out

    def read_truth(self, index: int) -> np.ndarray:
        """Case `index`'s label map, uint8 (x, y, z), its valid extent only."""
        if not self.has_truth:
            raise InputError(f"{self.path}: this store has no labels (it was written for prediction)")
        shape = self.case_shape(index)
        out = np.empty(shape, dtype=np.uint8)
        self._read_into("truth", index, (0, 0, 0), shape, out, (0, 0, 0))
        return out

    def read_patch(self, index: int, corner: Sequence[int], patch_shape: Sequence[int]
                   ) -> tuple[np.ndarray, np.ndarray | None]:
        """A patch of case `index` starting at voxel `corner` (may be negative or reach past the
        case): (image float32 (px, py, pz, channels), truth uint8 (px, py, pz) or None).

        Only the part inside the case is read; the rest is 0 (background).
        """
        shape = self.case_shape(index)
        corner = [int(c) for c in corner]
        patch_shape = [int(p) for p in patch_shape]
        lo = [max(c, 0) for c in corner]
        hi = [min(c + p, n) for c, p, n in zip(corner, patch_shape, shape)]
        image = np.zeros((*patch_shape, self.n_channels), dtype=np.float32)
        truth = np.zeros(patch_shape, dtype=np.uint8) if self.has_truth else None
        if all(h > l for l, h in zip(lo, hi)):
            offset = [l - c for l, c in zip(lo, corner)]
            self._read_into("data", index, lo, hi, image, offset)
            if self.data_scale != 1.0:
                image *= self.data_scale
            if truth is not None:
                self._read_into("truth", index, lo, hi, truth, offset)
        return image, truth
