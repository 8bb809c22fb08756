"""BraTS conventions: modality and label names of every release, and finding cases on disk.

Releases name the same four MRI sequences differently:

| sequence | 2017 TCGA        | 2018-2021 | 2023+  | preprocessed (this package) |
|----------|------------------|-----------|--------|-----------------------------|
| T1       | `_t1`            | `_t1`     | `-t1n` | `t1`                        |
| T1 + Gd  | `_t1Gd`          | `_t1ce`   | `-t1c` | `t1ce`                      |
| T2       | `_t2`            | `_t2`     | `-t2w` | `t2`                        |
| FLAIR    | `_flair`         | `_flair`  | `-t2f` | `flair`                     |
| labels   | `_GlistrBoost*`  | `_seg`    | `-seg` | `truth`                     |

Labels: 1 necrosis / non-enhancing core, 2 oedema, enhancing tumour 4 (3 from BraTS 2023 on).
"""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from unet3d.errors import InputError

#: Channel order of preprocessed data and of the store (the legacy port's BraTS config).
MODALITIES: tuple[str, ...] = ("t1", "t1ce", "flair", "t2")

#: Foreground label values (necrosis, oedema, enhancing tumour) per label convention.
LABELS: dict[str, tuple[int, int, int]] = {"brats2020": (1, 2, 4), "brats2023": (1, 2, 3)}

#: File-name suffix of each modality and of the label map, per naming convention.
SUFFIXES: dict[str, dict[str, str]] = {
    "brats2020": {"t1": "_t1", "t1ce": "_t1ce", "t2": "_t2", "flair": "_flair", "seg": "_seg"},
    "brats2023": {"t1": "-t1n", "t1ce": "-t1c", "t2": "-t2w", "flair": "-t2f", "seg": "-seg"},
}

NIFTI_EXTENSIONS = (".nii.gz", ".nii")


def case_file_name(case: str, key: str, naming: str = "brats2020") -> str:
    """File name of modality (or "seg") `key` of `case` under a naming convention."""
    if naming not in SUFFIXES:
        raise InputError(f"unknown naming {naming!r}; choose one of {sorted(SUFFIXES)}")
    return f"{case}{SUFFIXES[naming][key]}.nii.gz"

# Tokens that end a file name (before the extension), lower-cased, mapped to what they hold.
# Longer tokens first so that "t1ce" is not read as "t1".
_TOKENS: dict[str, str] = {
    "glistrboost_manuallycorrected": "label",
    "glistrboost": "label",
    "segm": "label",
    "seg": "label",
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
_BRATS2023_TOKENS = {"t1n", "t1c", "t2w", "t2f"}
# When a folder holds two label files, the manually corrected one wins (2017 TCGA releases).
_LABEL_PRIORITY = {"glistrboost_manuallycorrected": 2}


@dataclass
class Case:
    """One BraTS case found on disk: its name, modality files and optional label file."""

    name: str
    directory: Path
    images: dict[str, Path] = field(default_factory=dict)
    label: Path | None = None
    naming: str = "brats2020"

    @property
    def labels(self) -> tuple[int, int, int]:
        """Foreground label values of this case's release (ET is 3 from BraTS 2023 on)."""
        return LABELS[self.naming]

    def check(self, modalities: tuple[str, ...] = MODALITIES) -> None:
        """Raise `InputError` naming the case and the missing files if a modality is absent."""
        missing = [m for m in modalities if m not in self.images]
        if missing:
            example = ", ".join(case_file_name(self.name, m, self.naming) for m in missing)
            raise InputError(
                f"case {self.name} ({self.directory}): missing modality {', '.join(missing)}; "
                f"expected a file named like {example}. Add it or move the case out of the folder.")

    def files(self, modalities: tuple[str, ...] = MODALITIES) -> tuple[Path, ...]:
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
    tokens = set()
    for path, what, token in files:
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
    naming = "brats2023" if tokens & _BRATS2023_TOKENS else "brats2020"
    return Case(name=name, directory=directory, images=images, label=label, naming=naming)


def find_cases(root: str | os.PathLike) -> list[Case]:
    """Find the BraTS cases under `root`, of any release naming, sorted by name.

    A folder holding modality files is one case named after the folder (nested `HGG/` and `LGG/`
    folders of BraTS 2018 are searched too). A folder holding several files of one modality is a
    flat layout: its files are grouped into cases by the name before the modality suffix. Cases
    without a label file are returned with `label=None` (they can be predicted, not trained on).
    Missing modalities are not checked here: call `Case.check`.

    Raises `InputError` when `root` does not exist or holds no case.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: no such folder; pass the folder that holds the BraTS cases")
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
        if not any(what != "label" for _, what, _, _ in classified):
            continue
        modality_counts = Counter(what for _, what, _, _ in classified if what != "label")
        if max(modality_counts.values()) == 1:
            cases.append(_case_from_files(directory.name, directory,
                                          [(p, w, t) for p, w, t, _ in classified]))
            continue
        groups: dict[str, list[tuple[Path, str, str]]] = {}
        for path, what, token, prefix in classified:
            groups.setdefault(prefix.rstrip("_-."), []).append((path, what, token))
        for prefix, files in sorted(groups.items()):
            if any(what != "label" for _, what, _ in files):
                cases.append(_case_from_files(prefix or directory.name, directory, files))
    if not cases:
        raise InputError(
            f"{root}: no BraTS cases found. Expected one folder per case holding "
            "<case>_t1.nii.gz, <case>_t1ce.nii.gz, <case>_t2.nii.gz, <case>_flair.nii.gz (and "
            "<case>_seg.nii.gz for training), or the BraTS 2023 names <case>-t1n.nii.gz, "
            "<case>-t1c.nii.gz, <case>-t2w.nii.gz, <case>-t2f.nii.gz, <case>-seg.nii.gz")
    names: dict[str, Case] = {}
    for case in cases:
        if case.name in names:
            raise InputError(f"case name {case.name} appears twice: in {names[case.name].directory} "
                             f"and {case.directory}; rename one of the folders")
        names[case.name] = case
    return sorted(cases, key=lambda case: case.name)
