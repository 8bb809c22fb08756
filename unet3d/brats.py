"""Finding BraTS cases on disk, and telling which release or task they are.

Releases name the same MRI sequences differently; this package calls them t1, t1ce, t2, flair
(the legacy port's names), whatever the files say:

| sequence | 2017 TCGA        | 2018-2021 | 2023+  | MSD Task01 (one 4D file) | preprocessed |
|----------|------------------|-----------|--------|--------------------------|--------------|
| T1       | `_t1`            | `_t1`     | `-t1n` | channel 1                | `t1`         |
| T1 + Gd  | `_t1Gd`          | `_t1ce`   | `-t1c` | channel 2                | `t1ce`       |
| T2       | `_t2`            | `_t2`     | `-t2w` | channel 3                | `t2`         |
| FLAIR    | `_flair`         | `_flair`  | `-t2f` | channel 0                | `flair`      |
| labels   | `_GlistrBoost*`  | `_seg`    | `-seg` (`-gtv` MEN-RT) | `labelsTr/`  | `truth`      |

The conventions themselves (file names, case ids, label values, regions) are data in
`unet3d.conventions`; `find_cases` finds the files and `detect_convention` decides which entry a
folder follows.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from unet3d.conventions import CONVENTIONS, DEFAULT_CONVENTION, Convention, get_convention
from unet3d.errors import InputError
from unet3d.io import Geometry, read_image_set, read_nifti, read_nifti_channels
from unet3d.logs import get_logger

#: Channel order of preprocessed data and of the store (the legacy port's BraTS config).
MODALITIES: tuple[str, ...] = CONVENTIONS["brats2020"].modalities

NIFTI_EXTENSIONS = (".nii.gz", ".nii")

DEFAULT = CONVENTIONS[DEFAULT_CONVENTION]

#: Folders of the Medical Segmentation Decathlon layout (4D images, labels apart).
MSD_IMAGES, MSD_LABELS = ("imagesTr", "imagesTs"), "labelsTr"


def case_file_name(case: str, key: str, convention: str = "brats2020") -> str:
    """File name of modality (or "seg") `key` of `case` under a convention."""
    return get_convention(convention).case_file(case, key)

# Tokens that end a file name (before the extension), lower-cased, mapped to what they hold.
# Longer tokens first so that "t1ce" is not read as "t1".
_TOKENS: dict[str, str] = {
    "glistrboost_manuallycorrected": "label",
    "glistrboost": "label",
    "segm": "label",
    "seg": "label",
    "gtv": "label",
    "truth": "label",
    "t1ce": "t1ce",
    "t1gd": "t1ce",
    "t1c": "t1ce",
    "t1n": "t1",
    "t1": "t1",
    "t2w": "t2",
    "t2f": "flair",
    "t2": "t2",
    "flair": "flair",
}
_TOKEN_PATTERN = re.compile(r"(?:^|[_\-.])(" + "|".join(_TOKENS) + r")$")
# The names this package gives modality files (brats/preprocess.py: t1.nii.gz; the validation
# run of brats/predict.py: data_t1.nii.gz), which say nothing about the release.
_OWN_NAMES = {token: {token, f"data_{token}"} for token in _TOKENS}
# When a folder holds two label files, the manually corrected one wins (2017 TCGA releases).
_LABEL_PRIORITY = {"glistrboost_manuallycorrected": 2}


def _tokens(convention: Convention) -> set[str]:
    """The name endings of a convention's modality files, e.g. {"t1n", "t1c", "t2w", "t2f"}."""
    return {suffix.lstrip("_-").lower() for key, suffix in convention.files.items()
            if key != "seg"}


@dataclass
class Case:
    """One BraTS case found on disk: its name, modality files and optional label file.

    candidates: the conventions its id and file names fit (`unet3d.conventions`), in order of
        preference; convention: the one its folder follows, set by `detect_convention`.
    channels: for a 4D file holding every modality (the MSD layout), the channel of each.
    problem: what makes the case unusable although its files were found (its folder holds
        another case's files); `check` raises it.
    """

    name: str
    directory: Path
    images: dict[str, Path] = field(default_factory=dict)
    label: Path | None = None
    candidates: tuple[str, ...] = ()
    convention: str | None = None
    channels: dict[str, int] | None = None
    problem: str | None = None

    @property
    def entry(self) -> Convention:
        """Its convention: the one set by `detect_convention`, else the first it fits, else
        brats2020."""
        return get_convention(self.convention or (*self.candidates, DEFAULT_CONVENTION)[0])

    @property
    def labels(self) -> tuple[int, ...]:
        """The label values of this case's convention."""
        return self.entry.values

    @property
    def session(self) -> str | None:
        """"pre-operative" / "post-operative" where the convention's case ids say it."""
        return get_convention(self.convention).session(self.name) if self.convention else None

    def check(self, modalities: Sequence[str] = MODALITIES) -> None:
        """Raise `InputError` naming the case and the files at fault if a modality is absent or
        the case's folder holds another case's files (`problem`)."""
        if self.problem:
            raise InputError(f"case {self.name}: {self.problem}")
        missing = [m for m in modalities if m not in self.images]
        if missing:
            convention = self.entry
            names = ", ".join(convention.case_file(self.name, m) for m in missing
                              if m in convention.files)
            example = f"; expected a file named like {names}" if names else ""
            raise InputError(
                f"case {self.name} ({self.directory}): missing modality {', '.join(missing)}"
                f"{example}. Add it or move the case out of the folder.")

    def files(self, modalities: Sequence[str] = MODALITIES) -> tuple[Path, ...]:
        """Modality files in `modalities` order, then the label file if there is one."""
        self.check(modalities)
        return tuple(self.images[m] for m in modalities) + ((self.label,) if self.label else ())


def _strip_nifti_extension(name: str) -> str | None:
    for extension in NIFTI_EXTENSIONS:
        if name.lower().endswith(extension):
            return name[: -len(extension)]
    return None


def classify_file(name: str) -> tuple[str, str, str] | None:
    """Classify a file name. Returns (what, token, prefix) or None for other files.

    `what` is a modality name or "label"; `token` the matched lower-case name ending; `prefix` the
    file name before it (without the separator), e.g.
    "BraTS20_Training_001_t1ce.nii.gz" -> ("t1ce", "t1ce", "BraTS20_Training_001").
    """
    stem = _strip_nifti_extension(name)
    if stem is None:
        return None
    match = _TOKEN_PATTERN.search(stem.lower())
    if match is None:
        return None
    token = match.group(1)
    prefix = stem[: match.start()]
    return _TOKENS[token], token, prefix


def _case_from_files(name: str, directory: Path, files: list[tuple[Path, str, str]]) -> Case:
    images: dict[str, Path] = {}
    labels: list[tuple[int, Path]] = []
    tokens = set()  # of the modality files named by a release (not this package's, _OWN_NAMES)
    for path, what, token in files:
        if what != "label" and _strip_nifti_extension(path.name).lower() not in _OWN_NAMES[token]:
            tokens.add(token)
        if what == "label":
            labels.append((_LABEL_PRIORITY.get(token, 1), path))
            continue
        if what in images:
            raise InputError(f"case {name} ({directory}): two files for modality {what}: "
                             f"{images[what].name} and {path.name}; keep one of them")
        images[what] = path
    label = None
    if labels:
        labels.sort(key=lambda item: item[0], reverse=True)
        if len(labels) > 1 and labels[0][0] == labels[1][0]:
            raise InputError(f"case {name} ({directory}): two label files: {labels[0][1].name} "
                             f"and {labels[1][1].name}; keep one of them")
        label = labels[0][1]
    return Case(name=name, directory=directory, images=images, label=label,
                candidates=candidates(name, tokens, "folders" if tokens else None))


def candidates(name: str, tokens: set[str], layout: str | None = None) -> tuple[str, ...]:
    """The conventions whose case-id pattern `name` fits and whose modality files use
    `tokens` (the name endings, e.g. {"t1c", "t2f"}; label files are not compared), of
    `layout` when given (without tokens: files of this package's names, any layout)."""
    return tuple(c.name for c in CONVENTIONS.values()
                 if layout in (None, c.layout) and re.fullmatch(c.case_pattern, name)
                 and tokens <= _tokens(c))


def _msd_cases(images: Path) -> list[Case]:
    """The cases of a Medical Segmentation Decathlon images folder (`imagesTr/` or `imagesTs/`):
    `<case>.nii.gz` (4D, every modality), labelled by `../labelsTr/<case>.nii.gz` if it exists."""
    cases = []
    for path in sorted(images.glob("*.nii*")):
        name = _strip_nifti_extension(path.name)
        if name is None or name.startswith("."):
            continue
        label = images.parent / MSD_LABELS / path.name
        found = candidates(name, set(), "msd")
        channels = {m: k for k, m in enumerate(
            get_convention(found[0] if found else "msd-task01").modalities)}
        cases.append(Case(name, images, {m: path for m in channels},
                          label if label.is_file() else None, found, channels=channels))
    return cases


def find_cases(root: str | os.PathLike) -> list[Case]:
    """Find the BraTS cases under `root`, of any release naming, sorted by name.

    A folder holding modality files is one case named after the folder (nested `HGG/` and `LGG/`
    folders of BraTS 2018 are searched too). A folder holding several files of one modality is a
    flat layout: its files are grouped into cases by the name before the modality suffix (a label
    file alone is a case without modalities). Cases without a label file are returned with
    `label=None` (they can be predicted, not trained on). Missing modalities are not checked
    here: call `Case.check`. A Decathlon folder gives the cases of `imagesTr/` (labelled); its
    `imagesTs/` folder, given itself, gives the unlabelled ones.

    Raises `InputError` when `root` does not exist or holds no case.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: no such folder; pass the folder that holds the BraTS cases")
    if (root / MSD_IMAGES[0]).is_dir():
        return _unique(_msd_cases(root / MSD_IMAGES[0]), root)
    if root.name in MSD_IMAGES:
        return _unique(_msd_cases(root), root)
    cases: list[Case] = []
    for directory, subdirectories, names in os.walk(root):
        subdirectories[:] = sorted(d for d in subdirectories if not d.startswith("."))
        directory = Path(directory)
        classified = []
        for name in sorted(names):
            if name.startswith("."):
                continue
            found = classify_file(name)
            if found is not None:
                classified.append((directory / name, *found))
        if not classified:
            continue
        modality_counts = Counter(what for _, what, _, _ in classified if what != "label")
        if modality_counts and max(modality_counts.values()) == 1:
            case = _case_from_files(directory.name, directory,
                                    [(p, w, t) for p, w, t, _ in classified])
            cases.append(dataclasses.replace(case, problem=_foreign_files(directory, classified)))
            continue
        groups: dict[str, list[tuple[Path, str, str]]] = {}
        for path, what, token, prefix in classified:
            groups.setdefault(prefix.rstrip("_-."), []).append((path, what, token))
        for prefix, files in sorted(groups.items()):  # label files alone: modalities missing
            cases.append(_case_from_files(prefix or directory.name, directory, files))
    return _unique(cases, root)


def _foreign_files(directory: Path, classified: list[tuple[Path, str, str, str]]) -> str | None:
    """What is wrong when a case folder holds another case's files (None when nothing is):
    modality files named after two case ids, or a label file named after a case id (of a BraTS
    release) its images do not have. (Label files of other names, as some releases ship, are the
    case's.)"""
    ids: dict[str, list[str]] = {}
    for path, what, _, prefix in classified:
        if what != "label" and prefix.rstrip("_-."):
            ids.setdefault(prefix.rstrip("_-."), []).append(path.name)
    labels = [(path.name, prefix.rstrip("_-.")) for path, what, _, prefix in classified
              if what == "label" and prefix.rstrip("_-.")]
    foreign = [name for name, case_id in labels
               if ids and case_id not in ids and candidates(case_id, set())]
    if len(ids) <= 1 and not foreign:
        return None
    named = "; ".join(f"{case_id}: {', '.join(names)}" for case_id, names in ids.items())
    return (f"its folder {directory} holds files of several cases ({named}"
            f"{'; label ' + ', '.join(foreign) if foreign else ''}); move each file to its own "
            "case's folder")


def _unique(cases: list[Case], root: Path) -> list[Case]:
    """`cases` sorted by name, without label files alone whose case is found with its images
    (a copy beside the cases); `InputError` when there is none or a name appears twice."""
    imaged = {case.name for case in cases if case.images}
    cases = [case for case in cases if case.images or case.name not in imaged]
    if not cases:
        raise InputError(
            f"{root}: no BraTS cases found. Expected one folder per case holding "
            "<case>_t1.nii.gz, <case>_t1ce.nii.gz, <case>_t2.nii.gz, <case>_flair.nii.gz (and "
            "<case>_seg.nii.gz for training), or the BraTS 2023 names <case>-t1n.nii.gz, "
            "<case>-t1c.nii.gz, <case>-t2w.nii.gz, <case>-t2f.nii.gz, <case>-seg.nii.gz, or the "
            "Decathlon's imagesTr/ and labelsTr/ (docs/real_brats_data.md lists every release)")
    names: dict[str, Case] = {}
    for case in cases:
        if case.name in names:
            raise InputError(f"case name {case.name} appears twice: in {names[case.name].directory} "
                             f"and {case.directory}; rename one of the folders")
        names[case.name] = case
    return sorted(cases, key=lambda case: case.name)


def detect_convention(cases: Sequence[Case], where: str | os.PathLike,
                      given: str | Convention | None = None, scan_labels: bool = False,
                      fallback: bool = False) -> Convention:
    """The convention the `cases` of folder `where` follow, set on each case.

    `given` (a `--convention`) wins. Otherwise the conventions every case fits (by its id and
    file names) are kept, in `CONVENTIONS` order; when several remain (e.g. brats2023-gli and
    brats2024-gli share their names) and `scan_labels`, the label files are read and the first
    convention holding every value seen is chosen, else the first one. With `fallback`, cases
    whose names fit no convention are read as `DEFAULT_CONVENTION` (brats2020) when their label
    values are its own, with a warning (scoring and stores of unet3d 0.2 assumed it).

    Raises `InputError` when the cases fit no common convention: a folder mixing conventions
    (the groups seen are listed) or names fitting none (they are listed, with `--convention`).
    """
    if given is not None:
        convention = get_convention(given)
    else:
        convention = _common_convention(cases, where, scan_labels, fallback)
    for case in cases:
        case.convention = convention.name
    return convention


def _common_convention(cases: Sequence[Case], where, scan_labels: bool,
                       fallback: bool) -> Convention:
    unknown = [case.name for case in cases if not case.candidates]
    if unknown and fallback and _no_release_names(cases) and any(c.label for c in cases) \
            and _label_values(cases, where) <= set(DEFAULT.values):
        get_logger().warning(f"{where}: the names of {len(unknown)} case(s) fit no known BraTS "
                             f"convention (seen: {_listed(unknown)}); read as {DEFAULT.name}, "
                             "whose labels they have (--convention sets another)")
        return DEFAULT
    if unknown:
        raise InputError(
            f"{where}: the names of {len(unknown)} case(s) fit no known BraTS convention "
            f"(seen: {_listed(unknown)}); pass --convention with one of "
            f"{', '.join(CONVENTIONS)} (docs/real_brats_data.md shows a folder of each)")
    common = [name for name in CONVENTIONS if all(name in case.candidates for case in cases)]
    if not common:
        groups: dict[str, list[str]] = {}
        for case in cases:
            groups.setdefault(" or ".join(case.candidates), []).append(case.name)
        raise InputError(f"{where} mixes conventions: " + "; ".join(
            f"{len(names)} case(s) of {group} ({_listed(names, 2)})"
            for group, names in sorted(groups.items()))
            + ". Put each convention's cases in a folder of their own")
    if len(common) > 1 and scan_labels:
        seen = _label_values(cases, where, f"to tell {' from '.join(common)}")
        common = [name for name in common if seen <= set(CONVENTIONS[name].values)] or common
    return CONVENTIONS[common[0]]


def _no_release_names(cases: Sequence[Case]) -> bool:
    """Whether no case's name fits any convention's case-id pattern (whatever its files)."""
    return not any(re.fullmatch(c.case_pattern, case.name)
                   for case in cases for c in CONVENTIONS.values())


def _listed(names: Sequence[str], most: int = 5) -> str:
    return ", ".join(names[:most]) + (", ..." if len(names) > most else "")


def _label_values(cases: Sequence[Case], where, why: str = "") -> set[int]:
    """The label values (without 0) of the cases' label files."""
    labelled = [case for case in cases if case.label is not None]
    if why and labelled:
        get_logger().info(f"{where}: reading {len(labelled)} label file(s) {why} "
                          "(--convention skips this)")
    values: set[int] = set()
    for case in labelled:
        label, _ = read_nifti(case.label, check_finite=False)
        values.update(int(v) for v in np.unique(label) if v != 0)
    return values


def read_case(case: Case, modalities: Sequence[str], dtype=np.float32
              ) -> tuple[list[np.ndarray], np.ndarray | None, Geometry]:
    """Read the `modalities` of a case, in that order, and its label map (None without one).

    Returns (arrays (x, y, z), the label map, the common geometry). Raises `InputError` naming the
    case for a missing modality, files on different grids or unreadable files."""
    case.check(modalities)
    if case.channels is None:
        arrays, geometry = read_image_set(case.files(modalities), case.name, dtype)
        return arrays[:len(modalities)], (arrays[-1] if case.label else None), geometry
    path = case.images[modalities[0]]
    volumes, geometry = read_nifti_channels(path, len(case.channels))
    arrays = [volumes[case.channels[m]].astype(dtype, copy=False) for m in modalities]
    label = None
    if case.label is not None:
        label, label_geometry = read_nifti(case.label, dtype=dtype)
        if not label_geometry.same_grid(geometry):
            raise InputError(f"case {case.name}: {case.label} ({label_geometry.describe()}) is "
                             f"not on the grid of {path} ({geometry.describe()})")
    return arrays, label, geometry
