"""Synthetic BraTS-format cases: NIfTI files under real BraTS names, for tests, demo, benchmarks.

No real BraTS data can be shipped, so this module writes cases that exercise a pipeline the way
real ones do, drawn by `unet3d.synthetic_anatomy.generate_case` (a skull-stripped brain with
tissue contrasts, a bias field, noise and a nested tumour; every 4th case without enhancing
tumour; what a convention adds, `case_features`: a resection cavity, a cyst, several lesions).

Files follow a convention of `unet3d.conventions` (`write_synthetic_case(..., convention=)`):
its case names (`CASE_NAMES`: `BraTS20_Training_001`, `BraTS-GLI-00001-000`, ...), file names,
modalities (t1c alone for MEN-RT; one 4D file for the Decathlon's layout) and label values, each
tissue written as the convention numbers it (MEN-RT: the tumour core is its GTV, the oedema
background). Images are int16, labels uint8, on a 1 mm grid with
the BraTS affine (ITK direction identity, origin (0, -(shape[1] - 1), 0); nibabel reports the RAS
affine diag(-1, -1, 1) with translation (0, shape[1] - 1, 0)).

Cases are deterministic: case k draws from `np.random.default_rng([seed, k])`, so the same seed
gives the same bytes on disk and case k does not depend on how many cases are written.

Example:

```python
from unet3d.synthetic import make_synthetic_brats

case_dirs = make_synthetic_brats("data/synthetic", n_cases=4, shape=(64, 64, 48))
```
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import SimpleITK as sitk

from unet3d.brats import MSD_IMAGES, MSD_LABELS
from unet3d.conventions import Convention, get_convention
from unet3d.errors import InputError
from unet3d.io import Geometry, to_sitk, write_image, write_nifti
from unet3d.synthetic_anatomy import LABEL_KINDS, check_shape, generate_case

#: Shape (x, y, z) of a BraTS image.
DEFAULT_SHAPE: tuple[int, int, int] = (240, 240, 155)

#: The case name of 1-based case `index` per convention (brats2024-gli: `post` is 1 for a
#: post-operative case).
CASE_NAMES: dict[str, str] = {
    "brats2017": "TCGA-02-{index:04d}",
    "brats2018": "Brats18_TCIA01_{index:03d}_1",
    "brats2020": "BraTS20_Training_{index:03d}",
    "brats2021": "BraTS2021_{index:05d}",
    "brats2023-gli": "BraTS-GLI-{index:05d}-000",
    "brats2023-men": "BraTS-MEN-{index:05d}-000",
    "brats2023-met": "BraTS-MET-{index:05d}-000",
    "brats2023-ssa": "BraTS-SSA-{index:05d}-000",
    "brats2023-ped": "BraTS-PED-{index:05d}-000",
    "brats2024-gli": "BraTS-GLI-{index:05d}-{post}00",
    "brats2024-met": "BraTS-MET-{index:05d}-000",
    "brats2024-ped": "BraTS-PED-{index:05d}-000",
    "brats2024-men-rt": "BraTS-MEN-RT-{index:04d}-1",
    "msd-task01": "BRATS_{index:03d}",
}
#: Sub-folder of the cases per convention (BraTS 2018's high-grade gliomas).
CASE_FOLDERS = {"brats2018": "HGG"}

def parse_shape(text: str) -> tuple[int, int, int]:
    """Parse a shape written "X,Y,Z" (e.g. "240,240,155"); raises `InputError` if it is bad."""
    try:
        dims = [int(part) for part in text.split(",")]
    except ValueError:
        raise InputError(f"shape {text!r}: expected three comma-separated integers such as "
                         "240,240,155") from None
    return check_shape(dims)


def case_features(convention: Convention, index: int) -> tuple[str, ...]:
    """What 1-based case `index` of `convention` has besides one tumour: "lesions"
    (metastases), "cyst" (conventions with a cyst label), "cavity" (conventions with a resection
    cavity: odd cases, the post-operative ones of brats2024-gli)."""
    features = []
    if convention.task == "MET":
        features.append("lesions")
    if convention.kind_value("cyst") is not None:
        features.append("cyst")
    if convention.kind_value("cavity") is not None and index % 2 == 1:
        features.append("cavity")
    return tuple(features)


def case_name(index: int, convention: str = "brats2020") -> str:
    """The name of 1-based case `index` under a convention (`CASE_NAMES`):
    `BraTS20_Training_001`, `BraTS-GLI-00001-000`, ..."""
    convention = get_convention(convention)
    return CASE_NAMES[convention.name].format(index=index, post=index % 2)


def convention_labels(label: np.ndarray, convention: Convention) -> np.ndarray:
    """A synthetic label map (`SyntheticCase.label`) numbered as `convention` numbers each
    tissue (`LABEL_KINDS`); a tissue it has no label for is background, except the core of a
    convention with a GTV, which is its GTV."""
    lookup = np.zeros(max(LABEL_KINDS) + 1, dtype=np.uint8)
    gtv = convention.kind_value("gtv")
    for value, kind in LABEL_KINDS.items():
        written = convention.kind_value(kind)
        if written is None and gtv is not None and kind in ("core", "enhancing"):
            written = gtv
        lookup[value] = written or 0
    return lookup[label]


def has_enhancing_tumour(index: int) -> bool:
    """Whether 1-based case `index` has enhancing tumour: all but every 4th case (4, 8, ...)."""
    return index % 4 != 0


def brats_geometry(shape: Sequence[int]) -> Geometry:
    """The BraTS grid of `shape`: 1 mm voxels, ITK direction identity, origin (0, -(y - 1), 0)."""
    shape = check_shape(shape)
    return Geometry(shape=shape, spacing=(1.0, 1.0, 1.0), origin=(0.0, -(shape[1] - 1.0), 0.0),
                    direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or int(seed) != seed or seed < 0:
        raise InputError(f"seed {seed!r}: expected a non-negative integer")
    return int(seed)


def write_synthetic_case(out_dir: str | os.PathLike, index: int,
                         shape: Sequence[int] = DEFAULT_SHAPE, seed: int = 0,
                         convention: str = "brats2020", overwrite: bool = False) -> Path:
    """Draw 1-based case `index` from `np.random.default_rng([seed, index])` and write it.

    Writes `<out_dir>/<case>/` (`<out_dir>/HGG/<case>/` for brats2018) with the int16 images of
    the convention's modalities and the uint8 label map under its names and label values
    (`brats2023` is `brats2023-gli`), or for the Decathlon's layout `<out_dir>/imagesTr/<case>.nii.gz`
    (4D) and `<out_dir>/labelsTr/<case>.nii.gz`. Returns the case folder (the 4D image file).

    Raises:
        InputError: for a bad shape, seed, index or convention, or if the case exists and
            `overwrite` is False.
    """
    convention = get_convention(convention)
    shape = check_shape(shape)
    seed = _check_seed(seed)
    if int(index) != index or index < 1:
        raise InputError(f"case index {index!r}: expected an integer >= 1")
    index = int(index)
    name = case_name(index, convention.name)
    case_dir = _case_path(Path(out_dir), name, convention)
    if case_dir.exists() and not overwrite:
        raise InputError(f"{case_dir}: case folder already exists; pass overwrite=True "
                         "(--overwrite) to replace it or choose another output folder")

    case = generate_case(shape, np.random.default_rng([seed, index]),
                         enhancing=has_enhancing_tumour(index),
                         features=case_features(convention, index))
    geometry = brats_geometry(shape)
    label = convention_labels(case.label, convention)
    if convention.layout == "msd":
        volumes = [to_sitk(case.images[m], geometry) for m in convention.modalities]
        write_image(sitk.JoinSeries(volumes), case_dir)
        write_nifti(label, geometry, Path(out_dir) / MSD_LABELS / case_dir.name, dtype=np.uint8)
        return case_dir
    for key in convention.modalities:
        write_nifti(case.images[key], geometry, case_dir / convention.case_file(name, key),
                    dtype=np.int16)
    write_nifti(label, geometry, case_dir / convention.case_file(name, "seg"), dtype=np.uint8)
    return case_dir


def _case_path(out_dir: Path, name: str, convention: Convention) -> Path:
    if convention.layout == "msd":
        return out_dir / MSD_IMAGES[0] / f"{name}.nii.gz"
    return out_dir / CASE_FOLDERS.get(convention.name, "") / name


def make_synthetic_brats(out_dir: str | os.PathLike, n_cases: int = 8,
                         shape: Sequence[int] = DEFAULT_SHAPE, seed: int = 0,
                         convention: str = "brats2020", overwrite: bool = False,
                         progress: Callable[[int, int, Path, float], None] | None = None,
                         naming: str | None = None) -> list[Path]:
    """Write `n_cases` synthetic BraTS cases (1 to `n_cases`) under `out_dir`.

    Args:
        out_dir: folder to write the case folders into (created if needed).
        n_cases: number of cases, at least 1 (default 8; cases 4 and 8 have no enhancing tumour).
        shape: grid size (x, y, z), each at least 32; default BraTS' (240, 240, 155).
        seed: non-negative integer; case k draws from `np.random.default_rng([seed, k])`.
        convention: a convention of `unet3d.conventions` ("brats2020":
            `BraTS20_Training_001/BraTS20_Training_001_t1ce.nii.gz`, ET = 4; "brats2023-gli":
            `BraTS-GLI-00001-000/BraTS-GLI-00001-000-t1c.nii.gz`, ET = 3; ...).
        overwrite: replace existing case folders instead of refusing.
        progress: called after each case as `progress(index, n_cases, case_dir, seconds)`.
        naming: unet3d 0.2's name of `convention` (it wins when given).

    Returns:
        The case folders, in order.

    Raises:
        InputError: for bad arguments, or (before anything is written) if a case folder exists
            and `overwrite` is False.
    """
    convention = get_convention(naming or convention)
    shape = check_shape(shape)
    seed = _check_seed(seed)
    if isinstance(n_cases, bool) or int(n_cases) != n_cases or n_cases < 1:
        raise InputError(f"n_cases {n_cases!r}: expected an integer >= 1")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir}: output path exists and is not a folder; choose another")
    if not overwrite:
        for index in range(1, int(n_cases) + 1):
            case_dir = _case_path(out_dir, case_name(index, convention.name), convention)
            if case_dir.exists():
                raise InputError(f"{case_dir}: case folder already exists; pass overwrite=True "
                                 "(--overwrite) to replace it or choose another output folder")

    case_dirs = []
    for index in range(1, int(n_cases) + 1):
        start = time.perf_counter()
        case_dir = write_synthetic_case(out_dir, index, shape, seed, convention.name,
                                        overwrite=True)
        case_dirs.append(case_dir)
        if progress is not None:
            progress(index, int(n_cases), case_dir, time.perf_counter() - start)
    return case_dirs
