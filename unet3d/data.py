"""The compressed HDF5 data store (PyTables, Blosc).

The layout is in `unet3d/store_writer.py`. Cases are stored in the model's space
(`unet3d.model_space`): cropped to the brain at native resolution and normalised to [0, 1] (the
paper), or resampled to `image_shape` (the legacy port).
Normalised values are stored as uint16 (x 1/65535: steps of 1.5e-5, finer than float16, and
integers convert to float32 faster on reading). Cases have different sizes: case i fills
`[0:shape_i]` of its slab (`DataStore.case_shape(i)`), the rest is zero padding that compresses to
nothing and is never read. `/cases` records the crop box and the original grid, so a prediction
maps back exactly to the original file (`unet3d.model_space.to_native_space`). Root attributes
record what the model card of a model trained on the store needs: `labels`, `modalities`, the
model space (`mode` "crop" or "resample", `cropped`, `normalized`, `clip`: `DataStore.space`)
and, when known, the N4 settings of the files (`preprocessing`, JSON).

Stores in the legacy port's layout (float32 (N, C, X, Y, Z) `/data`, (N, 1, X, Y, Z) `/truth`;
written by `unet3d.legacy.data`) open and read through `DataStore` too.

Writes are atomic (a temporary file beside the target, renamed when complete) and memory does not
grow with the number of cases (one case in memory at a time). `DataStore` opens its own HDF5
handle in every process that uses it, so it is safe to pass to worker processes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import tables

from unet3d.brats import detect_convention, find_cases
from unet3d.conventions import (DEFAULT_CONVENTION, ConventionLike, as_convention,
                                check_same_meaning, recorded)
from unet3d.plain_settings import from_plain, to_plain
from unet3d.errors import InputError
from unet3d.io import Geometry, geometry_from_affine, nifti_shape
from unet3d.logs import get_logger
from unet3d.model_space import CLIP, CaseInfo, ModelSpace, prepare_case
from unet3d.preprocessing import PreprocessConfig, read_preprocess_config
from unet3d.store_writer import FORMAT, StoreWriter

#: The port's names for writing its layout (`unet3d.legacy.data`), importable from here.
LEGACY_NAMES = ("create_data_file", "add_data_to_storage")


def __getattr__(name: str):
    if name in LEGACY_NAMES:
        from unet3d.legacy import data as legacy
        return getattr(legacy, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --------------------------------------------------------------------------------------------
# Writing.


def _channels(files: list[tuple], with_truth: bool, subject_ids: Sequence[str] | None,
              out_file: str | os.PathLike) -> int:
    """The number of image channels of `files` (one tuple per case), checked to be a store."""
    if not files:
        raise InputError(f"{out_file}: no cases to write (the list of files is empty)")
    n_channels = len(files[0]) - int(with_truth)
    if n_channels < 1 or any(len(case) != len(files[0]) for case in files):
        raise InputError(f"{out_file}: every case needs the same number of files (modalities, then "
                         "the label file unless with_truth=False)")
    if subject_ids is not None and len(subject_ids) != len(files):
        raise InputError(f"{out_file}: {len(subject_ids)} subject ids for {len(files)} cases")
    return n_channels


def write_data_to_file(training_data_files: Sequence[Sequence[str | os.PathLike]],
                       out_file: str | os.PathLike, image_shape: Sequence[int] | None = None,
                       truth_dtype: np.dtype = np.uint8, subject_ids: Sequence[str] | None = None,
                       normalize: bool = True, crop: bool = True, *, with_truth: bool = True,
                       labels: ConventionLike = DEFAULT_CONVENTION,
                       modalities: Sequence[str] | None = None,
                       preprocessing: PreprocessConfig | None = None,
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
    labels: the convention of the label files (a name, a `Convention` or the label triple of
        unet3d 0.2, e.g. (1, 2, 3)); values outside it are refused.
    modalities: names of the channels, stored as an attribute.
    preprocessing: how the files were preprocessed (N4), recorded for the model card; None:
        not known.
    progress: called with one line per case.

    Returns `out_file`. Raises `InputError` naming the case and file for bad input.
    """
    if np.dtype(truth_dtype) != np.uint8:
        raise InputError(f"truth_dtype {np.dtype(truth_dtype)} is not supported: labels are uint8")
    files = [tuple(case) for case in training_data_files]
    n_channels = _channels(files, with_truth, subject_ids, out_file)
    names = list(subject_ids) if subject_ids is not None else [
        Path(case[0]).parent.name or f"case_{i}" for i, case in enumerate(files)]
    progress = progress or get_logger().info
    if image_shape is not None:
        image_shape = tuple(int(n) for n in image_shape)
        if len(image_shape) != 3 or min(image_shape) < 1:
            raise InputError(f"image_shape {image_shape} must be three positive sizes (x, y, z)")
        spatial_shape = image_shape
    else:
        spatial_shape = tuple(np.max([nifti_shape(case[0]) for case in files], axis=0))
    space = ModelSpace(image_shape, crop_to_brain=bool(crop), normalize=bool(normalize))
    convention = as_convention(labels)
    attributes = {"labels": list(convention.values), "convention": convention.name,
                  "modalities": list(modalities or []),
                  "mode": "resample" if image_shape is not None else "crop",
                  "normalized": space.normalize, "cropped": space.crop_to_brain,
                  "clip": space.clip}
    if preprocessing is not None:
        attributes["preprocessing"] = json.dumps(to_plain(preprocessing))
    dtype = np.uint16 if normalize else np.float32
    with StoreWriter(out_file, n_channels, spatial_shape, with_truth, dtype, attributes) as writer:
        for index, (case, name) in enumerate(zip(files, names)):
            image, truth, info = prepare_case(case, name, n_channels, with_truth, convention,
                                              space)
            writer.append(image, truth, info)
            progress(f"[{index + 1}/{len(files)}] {name}: stored {info.shape}")
        writer.commit(subject_ids)
    return str(out_file)


def write_store_from_folder(preprocessed_dir: str | os.PathLike, data_file: str | os.PathLike,
                            modalities: Sequence[str] | None = None,
                            image_shape: Sequence[int] | None = None,
                            convention: ConventionLike | None = None,
                            progress: Callable[[str], None] | None = None) -> str:
    """Write the store of every case under a (preprocessed) folder, named by folder.

    The store holds labels if every case has a label file and none if no case has one; a mix is
    an error (keep training and prediction cases in separate folders). `convention` defaults to
    the one recorded by `brats/preprocess.py`, else to the one detected from the cases' names
    and labels (`unet3d.brats.detect_convention`), and `modalities` (the channels, in order) to
    the modalities it preprocessed, else the convention's; the N4 settings it recorded go into
    the store (and from there into the model card).
    """
    cases = find_cases(preprocessed_dir)
    if any(case.channels is not None for case in cases):
        raise InputError(f"{preprocessed_dir}: 4D images (the Decathlon's layout); run "
                         "brats/preprocess.py on it first and build the store from its output")
    labelled = [case.label is not None for case in cases]
    if any(labelled) and not all(labelled):
        missing = [case.name for case in cases if case.label is None]
        raise InputError(f"{preprocessed_dir}: {len(missing)} of {len(cases)} cases have no label "
                         f"file ({', '.join(missing[:5])}{'...' if len(missing) > 5 else ''}); a "
                         "store is all labelled or all unlabelled: move them to another folder")
    preprocessing, in_folder = read_preprocess_config(preprocessed_dir)
    if convention is not None:
        convention = as_convention(convention)
        if in_folder is not None:  # brats/preprocess.py checked the labels against it
            check_same_meaning(convention, in_folder, str(preprocessed_dir))
    else:
        convention = in_folder or detect_convention(cases, preprocessed_dir, scan_labels=True,
                                                   fallback=True)
    modalities = tuple(modalities or (preprocessing.modalities if preprocessing else None)
                       or convention.modalities)
    return write_data_to_file([case.files(tuple(modalities)) for case in cases], data_file,
                              image_shape=image_shape, subject_ids=[case.name for case in cases],
                              with_truth=all(labelled), labels=convention,
                              modalities=modalities,
                              preprocessing=preprocessing, progress=progress)


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
        if "unable to lock" in str(error):
            raise InputError(f"{path}: another process has this store open for writing (HDF5's "
                             "file lock); wait until it has finished (a running brats/"
                             "preprocess.py?) or stop it, then run again") from None
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
        #: The convention of the truths (stores of unet3d 0.2: that of their labels; the port's:
        #: None, brats2020 is assumed).
        self.convention = recorded(getattr(attrs, "convention", None), self.labels)
        self.modalities = (tuple(attrs.modalities) if "modalities" in attrs._v_attrnames else ())
        self.data_scale = float(getattr(attrs, "data_scale", 1.0))
        self._shapes = (root.cases.col("shape").astype(int) if "cases" in root
                        else np.tile(self.spatial_shape, (self.n_cases, 1)))
        # How the cases were brought to the store's space (the port's stores: resampled).
        resampled = self.legacy_layout or getattr(attrs, "mode", "crop") == "resample"
        self.space = ModelSpace(self.spatial_shape if resampled else None,
                                crop_to_brain=bool(getattr(attrs, "cropped", True)),
                                normalize=bool(getattr(attrs, "normalized", True)),
                                clip=float(getattr(attrs, "clip", CLIP)))
        #: The N4 settings of the files the store was written from (None: not recorded).
        self.preprocessing = (from_plain(PreprocessConfig, json.loads(attrs.preprocessing),
                                         f"{self.path} (preprocessing)")
                              if "preprocessing" in attrs._v_attrnames else None)
        #: The median voxel spacing (mm) of the cases' native grids (None: not recorded).
        self.spacing = (tuple(float(s) for s in np.median(root.cases.col("spacing"), axis=0))
                        if "cases" in root and self.n_cases else None)

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
                        resampled=self.space.image_shape is not None)

    def native_grid(self, index: int) -> Geometry:
        """The grid case `index` came on (for legacy-layout stores, which do not record it: the
        stored grid)."""
        info = self.case_info(index)
        if info is None:
            return geometry_from_affine(self.file.root.affine[index], self.case_shape(index))
        return info.original

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


#: A store given by its path or as an open `DataStore`.
DataFile = str | os.PathLike | DataStore


def open_store(data_file: DataFile) -> DataStore:
    """`data_file` itself if it is a `DataStore`, else the store at that path."""
    return data_file if isinstance(data_file, DataStore) else DataStore(data_file)

