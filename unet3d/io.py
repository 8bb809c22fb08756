"""NIfTI input and output with SimpleITK, in the (x, y, z) voxel order nibabel users know.

Reads check that a file is complete (`check_complete`: ITK reads missing voxels as zeros);
writes go through `unet3d.atomic` and are checked against their header before they are
published.

SimpleITK returns arrays indexed (z, y, x); every array this package hands out or takes is indexed
(x, y, z), like the legacy port (nibabel) and like BraTS' 240 x 240 x 155 shape. Image geometry
travels as a `Geometry`; `Geometry.affine` is the RAS voxel-to-world matrix nibabel would report.
"""

from __future__ import annotations

import errno
import gzip
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from unet3d.atomic import atomic_write
from unet3d.errors import InputError, OutputError

# Largest difference in spacing/origin (mm) and direction cosines still counted as the same grid.
GRID_TOLERANCE = 1e-3


@dataclass(frozen=True)
class Geometry:
    """Voxel grid of an image: shape (x, y, z), spacing and origin in mm, direction cosines.

    `direction` holds the 3x3 ITK direction matrix row-major (LPS world convention, as
    SimpleITK reports it).
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]

    @classmethod
    def of(cls, image: sitk.Image) -> "Geometry":
        return cls(
            shape=tuple(int(n) for n in image.GetSize()),
            spacing=tuple(float(s) for s in image.GetSpacing()),
            origin=tuple(float(o) for o in image.GetOrigin()),
            direction=tuple(float(d) for d in image.GetDirection()),
        )

    @property
    def affine(self) -> np.ndarray:
        """4x4 RAS voxel-to-world matrix (the nibabel / NIfTI sform convention)."""
        direction = np.asarray(self.direction).reshape(3, 3)
        lps = np.eye(4)
        lps[:3, :3] = direction * np.asarray(self.spacing)[None, :]
        lps[:3, 3] = self.origin
        return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps

    def same_grid(self, other: "Geometry", tolerance: float = GRID_TOLERANCE) -> bool:
        return (
            self.shape == other.shape
            and np.allclose(self.spacing, other.spacing, atol=tolerance)
            and np.allclose(self.origin, other.origin, atol=tolerance)
            and np.allclose(self.direction, other.direction, atol=tolerance)
        )

    def cropped(self, start: Sequence[int], stop: Sequence[int]) -> "Geometry":
        """Geometry of the sub-grid [start, stop) (voxel indices, may reach outside the grid)."""
        start = np.asarray(start, dtype=float)
        direction = np.asarray(self.direction).reshape(3, 3)
        origin = np.asarray(self.origin) + direction @ (start * np.asarray(self.spacing))
        shape = tuple(int(b - a) for a, b in zip(start, stop))
        return Geometry(shape, self.spacing, tuple(float(o) for o in origin), self.direction)

    def describe(self) -> str:
        return (f"shape {self.shape}, spacing {tuple(round(s, 4) for s in self.spacing)}, "
                f"origin {tuple(round(o, 3) for o in self.origin)}")


def geometry_from_affine(affine: np.ndarray, shape: Sequence[int]) -> Geometry:
    """The `Geometry` of a grid of `shape` whose RAS voxel-to-world matrix is `affine` (the
    inverse of `Geometry.affine`)."""
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(affine, dtype=float)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    direction = lps[:3, :3] / spacing[None, :]
    return Geometry(tuple(int(n) for n in shape), tuple(float(s) for s in spacing),
                    tuple(float(o) for o in lps[:3, 3]), tuple(float(d) for d in direction.ravel()))


def read_nifti(path: str | os.PathLike, dtype: np.dtype | None = None,
               check_finite: bool = True) -> tuple[np.ndarray, Geometry]:
    """Read a NIfTI file. Returns (array indexed (x, y, z), geometry).

    Raises `InputError` naming the file when it cannot be read, is truncated
    (`check_complete`), is not 3D, or (with `check_finite`) holds NaN or infinite voxels.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    check_complete(path)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        first_line = str(error).strip().splitlines()[-1] if str(error).strip() else ""
        raise InputError(f"{path}: cannot read this NIfTI file (corrupt or truncated?): "
                         f"{first_line}") from None
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{path}: expected a 3D single-channel image, got "
                         f"{image.GetDimension()}D with {image.GetNumberOfComponentsPerPixel()} "
                         "component(s)")
    array = sitk.GetArrayFromImage(image).transpose(2, 1, 0)
    if check_finite and np.issubdtype(array.dtype, np.floating):
        # ITK's NIfTI reader turns NaN voxels into 0, so look at the stored values themselves.
        bad = max(int((~np.isfinite(array)).sum()), non_finite_voxels(path))
        if bad:
            raise InputError(f"{path}: {bad} voxels are NaN or infinite; "
                             "fix or re-export this image before using it")
    if dtype is not None:
        array = array.astype(dtype, copy=False)
    return np.ascontiguousarray(array), Geometry.of(image)


def read_nifti_channels(path: str | os.PathLike, channels: int
                        ) -> tuple[list[np.ndarray], Geometry]:
    """Read a 4D NIfTI file of `channels` 3D volumes (the Decathlon's images). Returns (the
    volumes indexed (x, y, z), their geometry). Raises `InputError` naming the file when it
    cannot be read, is truncated or holds another number of volumes."""
    path = Path(path)
    check_complete(path)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError:
        raise InputError(f"{path}: cannot read this NIfTI file (corrupt or truncated?)") from None
    size = image.GetSize()
    if image.GetDimension() != 4 or size[3] != channels:
        raise InputError(f"{path}: expected a 4D image of {channels} volumes, got size {size}")
    volumes = []
    for k in range(channels):
        volume = sitk.Extract(image, (*size[:3], 0), (0, 0, 0, k))
        volumes.append(np.ascontiguousarray(sitk.GetArrayFromImage(volume).transpose(2, 1, 0)))
    if np.issubdtype(volumes[0].dtype, np.floating) and non_finite_voxels(path):
        # ITK's reader turns NaN into 0: the stored values tell (as in `read_nifti`).
        raise InputError(f"{path}: holds NaN or infinite voxels; fix or re-export it")
    return volumes, Geometry.of(volume)


def nifti_shape(path: str | os.PathLike) -> tuple[int, int, int]:
    """The (x, y, z) size of a NIfTI file, from its header alone."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise InputError(f"{path}: cannot read this NIfTI file (corrupt or truncated?)") from None
    return tuple(int(n) for n in reader.GetSize())


# Bytes per voxel of the NIfTI data types (uint8 ... complex256, rgb, rgba).
_VOXEL_BYTES = {2: 1, 4: 2, 8: 4, 16: 4, 32: 8, 64: 8, 128: 3, 256: 1, 512: 2, 768: 4, 1024: 8,
                1280: 8, 1536: 16, 1792: 16, 2048: 32, 2304: 4}


@dataclass(frozen=True)
class _Header:
    endian: str
    datatype: int
    bitpix: int
    n_voxels: int
    offset: int

    @property
    def size(self) -> int:
        """Bytes the file holds if complete: the header (and extensions), then the voxels (their
        size from the data type, as readers take it; `bitpix` for types this table lacks)."""
        return self.offset + self.n_voxels * _VOXEL_BYTES.get(self.datatype, self.bitpix // 8)


def _read_header(stream) -> _Header | None:
    """The fields of a NIfTI-1 or NIfTI-2 header at the start of `stream` (None if it is not
    one)."""
    header = stream.read(540)
    for endian in "<>":
        if len(header) >= 348 and int(np.frombuffer(header[:4], f"{endian}i4")[0]) == 348:
            dims = np.frombuffer(header[40:56], f"{endian}i2").astype(np.int64)
            return _Header(endian, int(np.frombuffer(header[70:72], f"{endian}i2")[0]),
                           int(np.frombuffer(header[72:74], f"{endian}i2")[0]),
                           int(np.prod(dims[1:1 + max(int(dims[0]), 0)])),
                           int(np.frombuffer(header[108:112], f"{endian}f4")[0]))
        if len(header) == 540 and int(np.frombuffer(header[:4], f"{endian}i4")[0]) == 540:
            dims = np.frombuffer(header[16:80], f"{endian}i8")
            return _Header(endian, int(np.frombuffer(header[12:14], f"{endian}i2")[0]),
                           int(np.frombuffer(header[14:16], f"{endian}i2")[0]),
                           int(np.prod(dims[1:1 + max(int(dims[0]), 0)])),
                           int(np.frombuffer(header[168:176], f"{endian}i8")[0]))
    return None


def _open_nifti(path: Path):
    return gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")


def _gzip_data_size(raw) -> tuple[int, str]:
    """(bytes of data in the gzip members at the start of the binary stream `raw`, what broke
    them off: "" when they end whole). Bytes after the last member are ignored, as readers
    ignore them; each member's checksum is verified."""
    have, buffer = 0, raw.read(1 << 20)
    while buffer[:2] == b"\x1f\x8b":
        member = zlib.decompressobj(16 + zlib.MAX_WBITS)
        while not member.eof:
            if not buffer:
                return have, "its gzip stream is cut short"
            try:
                have += len(member.decompress(buffer))
            except zlib.error as error:
                return have, f"its gzip stream is corrupt ({error})"
            buffer = member.unused_data if member.eof else raw.read(1 << 20)
        buffer = buffer or raw.read(1 << 20)
    return have, ""


def check_complete(path: str | os.PathLike) -> None:
    """InputError naming `path` when the NIfTI file holds less voxel data than its header
    describes, or its gzip stream is corrupt (an interrupted copy, download or write): ITK would
    read the missing voxels as zeros (`incompleteness`)."""
    problem = incompleteness(path)
    if problem:
        raise InputError(f"{path}: truncated or corrupt, {problem} (an interrupted copy, download "
                         "or write?); copy or export it again")


def incompleteness(path: str | os.PathLike) -> str:
    """What is missing from a NIfTI file ("" when it is complete, or not NIfTI at all).

    An uncompressed file is judged by its size. A gzipped one first by the uncompressed size its
    gzip trailer records (a truncated file ends in compressed data instead, which matches with a
    chance of 1 in 2^32); when that differs, by decompressing it whole. A file whose header is
    not NIfTI is left for ITK to judge.
    """
    path = Path(path)
    gzipped = path.name.endswith(".gz")
    with open(path, "rb") as raw:
        try:
            header = _read_header(gzip.GzipFile(fileobj=raw) if gzipped else raw)
        except (EOFError, gzip.BadGzipFile, zlib.error):
            header = None
        if header is None:
            return ""
        if not gzipped:
            have, problem = path.stat().st_size, ""
        else:
            raw.seek(-4, os.SEEK_END)
            if int.from_bytes(raw.read(4), "little") == header.size % 2 ** 32:
                return ""
            raw.seek(0)
            have, problem = _gzip_data_size(raw)
    if have < header.size:
        return (f"{problem + ': ' if problem else ''}{header.size - have} of the {header.size} "
                "bytes its header describes are missing")
    return problem


def non_finite_voxels(path: str | os.PathLike) -> int:
    """Number of NaN or infinite voxels stored in a float32/float64 NIfTI-1 or NIfTI-2 file
    (0 for other data types)."""
    path = Path(path)
    with _open_nifti(path) as stream:
        header = _read_header(stream)
        dtype = None if header is None else {16: "f4", 64: "f8"}.get(header.datatype)
        if dtype is None:
            return 0
        stream.seek(header.offset)
        values = np.frombuffer(stream.read(), dtype=header.endian + dtype)
    return int((~np.isfinite(values)).sum())


def to_sitk(array: np.ndarray, geometry: Geometry) -> sitk.Image:
    """A SimpleITK image of an (x, y, z) array on `geometry`'s grid."""
    if tuple(array.shape) != tuple(geometry.shape):
        raise ValueError(f"array shape {array.shape} does not match geometry shape {geometry.shape}")
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))
    image.SetSpacing(geometry.spacing)
    image.SetOrigin(geometry.origin)
    image.SetDirection(geometry.direction)
    return image


def _check_written_nifti(tmp: Path, path: Path) -> None:
    problem = incompleteness(tmp)
    if problem:
        raise OutputError(errno.EIO, f"{path}: written incompletely, {problem}; the disk is "
                          "probably full (nothing was published under this name): free some "
                          "space and run the command again")


def write_image(image: sitk.Image, path: str | os.PathLike) -> None:
    """Write a SimpleITK image atomically: to a temporary file beside `path`, checked complete
    (ITK may report a failed write on its console only), then renamed."""
    path = Path(path)
    with atomic_write(path, ".nii.gz" if path.name.endswith(".nii.gz") else path.suffix,
                      lambda tmp: _check_written_nifti(tmp, path)) as tmp:
        try:
            sitk.WriteImage(image, str(tmp), useCompression=True)
        except RuntimeError as error:
            raise OutputError(errno.EIO, f"{path}: ITK could not write it "
                              f"({str(error).strip().splitlines()[-1]})") from None


def write_nifti(array: np.ndarray, geometry: Geometry, path: str | os.PathLike,
                dtype: np.dtype | None = None) -> None:
    """Write an (x, y, z) array on `geometry`'s grid as NIfTI, atomically."""
    if dtype is not None:
        array = array.astype(dtype, copy=False)
    write_image(to_sitk(array, geometry), path)


def read_image_set(paths: Sequence[str | os.PathLike], case: str,
                   dtype: np.dtype | None = np.float32) -> tuple[list[np.ndarray], Geometry]:
    """Read the images of one case and check they share one voxel grid.

    Returns (arrays indexed (x, y, z), the common geometry). Raises `InputError` naming the case
    and the files when shapes, spacings, origins or directions differ, or a file is unreadable.
    """
    arrays, first = [], None
    for path in paths:
        array, geometry = read_nifti(path, dtype=dtype)
        if first is None:
            first = (Path(path), geometry)
        elif not geometry.same_grid(first[1]):
            raise InputError(
                f"case {case}: {Path(path).name} ({geometry.describe()}) is not on the grid of "
                f"{first[0].name} ({first[1].describe()}); all modalities and the label map of a "
                "case must share one grid: register or resample them first")
        arrays.append(array)
    if first is None:
        raise InputError(f"case {case}: no files given")
    return arrays, first[1]

