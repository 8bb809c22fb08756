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
