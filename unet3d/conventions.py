"""Every BraTS release and task as data: file names, label values, regions, scoring.

One entry (`Convention`) per release or task; `CONVENTIONS` holds them all, in the order in which
discovery prefers them when file names alone cannot tell them apart (the older release first).
The facts come from the challenges' releases (see docs/real_brats_data.md for a folder of each):

- file names: the suffix of each modality and of the label file (modalities are named as this
  package's channels: t1, t1ce, t2, flair, whatever the release calls them), the pattern of a
  case id, and the layout ("folders": a case per folder or a flat folder of case files; "msd": the
  Medical Segmentation Decathlon's 4D `imagesTr/<case>.nii.gz` and `labelsTr/<case>.nii.gz`);
- label values with their names and the kind of tissue each is (`KINDS`: how synthetic cases draw
  it, and how one convention's labels are written in another's);
- the nested regions a network is trained on, in output-channel order, and the regions scored;
- the small-enhancing-tumour post-processing (which label becomes which), the labels that cannot
  exist before surgery (a resection cavity), and the scoring edition.

`encode` (labels -> region channels) and `decode` (region channels -> labels) use the regions
alone: a region "paints" its own label, the one label it holds that no later region holds, in
channel order, so `decode(encode(x)) == x` for every entry (`check_convention` proves it for each
entry at import).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Sequence, Union

import numpy as np

from unet3d.errors import InputError
from unet3d.scoring import SCORING_EDITIONS

#: The kinds of labelled tissue.
KINDS = ("core", "oedema", "enhancing", "cavity", "cyst", "gtv")


@dataclass(frozen=True)
class Label:
    """One label value: its value in the files, its name in the release, its kind (`KINDS`)."""

    value: int
    name: str
    kind: str


@dataclass(frozen=True)
class Region:
    """A set of label values scored or trained on as one mask, e.g. WT = {1, 2, 4}."""

    name: str
    labels: tuple[int, ...]


@dataclass(frozen=True)
class Convention:
    """One BraTS release or task (see the module docstring)."""

    name: str
    description: str
    task: str
    files: dict[str, str]
    case_pattern: str
    labels: tuple[Label, ...]
    regions: tuple[Region, ...]
    scored: tuple[Region, ...]
    small_et: tuple[int, int] | None
    scoring: str
    example: str
    layout: str = "folders"
    postoperative_only: tuple[int, ...] = ()
    sessions: dict[str, str] = field(default_factory=dict)

    @property
    def modalities(self) -> tuple[str, ...]:
        """The modalities of a case, in the default channel order."""
        return tuple(key for key in self.files if key != "seg")

    @property
    def values(self) -> tuple[int, ...]:
        """The label values (without 0, background)."""
        return tuple(label.value for label in self.labels)

    @property
    def label_text(self) -> str:
        """The labels for people: "1 NCR/NET, 2 ED, 4 ET"."""
        return ", ".join(f"{label.value} {label.name}" for label in self.labels)

    @property
    def region_names(self) -> tuple[str, ...]:
        """The network's output channels (target "regions"), in order."""
        return tuple(region.name for region in self.regions)

    def kind_value(self, kind: str) -> int | None:
        """The label value of tissue `kind`, or None when this convention has none."""
        return next((label.value for label in self.labels if label.kind == kind), None)

    def case_file(self, case: str, key: str) -> str:
        """File name of modality (or "seg") `key` of `case`."""
        return f"{case}{self.files[key]}.nii.gz"

    def session(self, case: str) -> str | None:
        """The session of a case id ("pre-operative", "post-operative"), when the release
        encodes it (the last digit group of 2024/2025 glioma ids), else None."""
        for digits, name in self.sessions.items():
            if re.search(rf"-{digits}\d*$", case):
                return name
        return None


def _adult(ncr: int, ed: int, et: int, names: tuple[str, str, str]) -> tuple[tuple[Label, ...],
                                                                             tuple[Region, ...]]:
    labels = (Label(ncr, names[0], "core"), Label(ed, names[1], "oedema"),
              Label(et, names[2], "enhancing"))
    return labels, (Region("wt", (ncr, ed, et)), Region("tc", (ncr, et)), Region("et", (et,)))


_FILES_2018 = {"t1": "_t1", "t1ce": "_t1ce", "flair": "_flair", "t2": "_t2", "seg": "_seg"}
_FILES_2023 = {"t1": "-t1n", "t1ce": "-t1c", "flair": "-t2f", "t2": "-t2w", "seg": "-seg"}
_LABELS_2020, _REGIONS_2020 = _adult(1, 2, 4, ("NCR/NET", "ED", "ET"))
_LABELS_2023, _REGIONS_2023 = _adult(1, 2, 3, ("NETC", "SNFH", "ET"))
_RC = Label(4, "RC", "cavity")
_ID_2023 = r"BraTS-{task}-\d{{5}}-\d{{3}}"


def _entry(name, description, task, files, case_pattern, labels, regions, scored=None,
           small_et=None, scoring="legacy", example="", **more) -> Convention:
    return Convention(name, description, task, dict(files), case_pattern, tuple(labels),
                      tuple(regions), tuple(scored or regions), small_et, scoring, example, **more)


_ENTRIES = (
    _entry("brats2017", "BraTS 2017 / TCGA-GBM and TCGA-LGG segmentations (GlistrBoost)", "GLI",
           {"t1": "_t1", "t1ce": "_t1Gd", "flair": "_flair", "t2": "_t2",
            "seg": "_GlistrBoost_ManuallyCorrected"},
           r"TCGA-\w\w-\w{4}.*", _LABELS_2020, _REGIONS_2020, small_et=(4, 1),
           example="TCGA-02-2483/TCGA-02-2483_1998.08.18_{t1,t1Gd,t2,flair,"
                   "GlistrBoost_ManuallyCorrected}.nii.gz"),
    _entry("brats2018", "BraTS 2017-2019 challenge releases (HGG/ and LGG/ sub-folders)", "GLI",
           _FILES_2018, r"(?i)brats1[789]_.+", _LABELS_2020, _REGIONS_2020, small_et=(4, 1),
           example="HGG/Brats18_2013_2_1/Brats18_2013_2_1_{t1,t1ce,t2,flair,seg}.nii.gz"),
    _entry("brats2020", "BraTS 2020", "GLI", _FILES_2018,
           r"(?i)brats20_(training|validation|testing)_\d+", _LABELS_2020, _REGIONS_2020,
           small_et=(4, 1),
           example="BraTS20_Training_001/BraTS20_Training_001_{t1,t1ce,t2,flair,seg}.nii.gz"),
    _entry("brats2021", "BraTS 2021 (RSNA-ASNR-MICCAI)", "GLI", _FILES_2018,
           r"(?i)brats2021_\d{5}", _adult(1, 2, 4, ("NCR", "ED", "ET"))[0], _REGIONS_2020,
           small_et=(4, 1),
           example="BraTS2021_00000/BraTS2021_00000_{t1,t1ce,t2,flair,seg}.nii.gz"),
    _entry("brats2023-gli", "BraTS 2023 adult glioma (pre-operative)", "GLI", _FILES_2023,
           r"BraTS-GLI-\d{5}-0\d{2}", _LABELS_2023, _REGIONS_2023, small_et=(3, 1),
           scoring="brats2023",
           example="BraTS-GLI-00000-000/BraTS-GLI-00000-000-{t1n,t1c,t2w,t2f,seg}.nii.gz"),
    _entry("brats2023-men", "BraTS 2023 meningioma", "MEN", _FILES_2023,
           _ID_2023.format(task="MEN"), _LABELS_2023, _REGIONS_2023, scoring="brats2023",
           example="BraTS-MEN-00000-000/BraTS-MEN-00000-000-{t1n,t1c,t2w,t2f,seg}.nii.gz"),
    _entry("brats2023-met", "BraTS 2023 brain metastases", "MET", _FILES_2023,
           _ID_2023.format(task="MET"), _LABELS_2023, _REGIONS_2023, scoring="brats2023",
           example="BraTS-MET-00001-000/BraTS-MET-00001-000-{t1n,t1c,t2w,t2f,seg}.nii.gz"),
    _entry("brats2023-ssa", "BraTS 2023 Sub-Saharan Africa glioma", "SSA", _FILES_2023,
           _ID_2023.format(task="SSA"), _LABELS_2023, _REGIONS_2023, small_et=(3, 1),
           scoring="brats2023",
           example="BraTS-SSA-00002-000/BraTS-SSA-00002-000-{t1n,t1c,t2w,t2f,seg}.nii.gz"),
    _entry("brats2023-ped", "BraTS 2023 paediatric tumours (the 2023 glioma labels)", "PED",
           _FILES_2023, _ID_2023.format(task="PED"), _LABELS_2023, _REGIONS_2023,
           small_et=(3, 1), scoring="brats2023",
           example="BraTS-PED-00001-000/BraTS-PED-00001-000-{t1n,t1c,t2w,t2f,seg}.nii.gz"),
    _entry("brats2024-gli", "BraTS 2024-2025 adult glioma, pre- and post-treatment (resection "
           "cavity; id ending -0xx pre-operative, -1xx post-operative)", "GLI", _FILES_2023,
           _ID_2023.format(task="GLI"), (*_LABELS_2023, _RC),
           (*_REGIONS_2023, Region("rc", (4,))),
           scored=(*_REGIONS_2023, Region("rc", (4,)), Region("netc", (1,)),
                   Region("snfh", (2,))),
           small_et=(3, 1), scoring="brats2024", postoperative_only=(4,),
           sessions={"0": "pre-operative", "1": "post-operative"},
           example="BraTS-GLI-02073-100/BraTS-GLI-02073-100-{t1n,t1c,t2w,t2f,seg}.nii.gz"),
    _entry("brats2024-met", "BraTS 2024-2025 brain metastases (resection cavity)", "MET",
           _FILES_2023, _ID_2023.format(task="MET"), (*_LABELS_2023, _RC),
           (*_REGIONS_2023, Region("rc", (4,))), scoring="brats2024",
           example="BraTS-MET-00001-000/BraTS-MET-00001-000-{t1n,t1c,t2w,t2f,seg}.nii.gz"),
    _entry("brats2024-ped", "BraTS 2024-2025 paediatric tumours (cystic component)", "PED",
           _FILES_2023, _ID_2023.format(task="PED"),
           (Label(1, "ET", "enhancing"), Label(2, "NETC", "core"), Label(3, "CC", "cyst"),
            Label(4, "ED", "oedema")),
           (Region("wt", (1, 2, 3, 4)), Region("tc", (1, 2, 3)), Region("et", (1,)),
            Region("cc", (3,))),
           scored=(Region("et", (1,)), Region("tc", (1, 2, 3)), Region("wt", (1, 2, 3, 4)),
                   Region("cc", (3,)), Region("ed", (4,))),
           small_et=(1, 2), scoring="brats2024",
           example="BraTS-PED-00001-000/BraTS-PED-00001-000-{t1n,t1c,t2w,t2f,seg}.nii.gz"),
    _entry("brats2024-men-rt", "BraTS 2024 meningioma radiotherapy (t1c only, one GTV)", "MEN-RT",
           {"t1ce": "-t1c", "seg": "-gtv"}, r"BraTS-MEN-RT-\d{4}-\d+",
           (Label(1, "GTV", "gtv"),), (Region("gtv", (1,)),), scoring="brats2024",
           example="BraTS-MEN-RT-0001-1/BraTS-MEN-RT-0001-1-{t1c,gtv}.nii.gz"),
    _entry("msd-task01", "Medical Segmentation Decathlon Task01_BrainTumour (4D images)",
           "GLI", {"flair": "", "t1": "", "t1ce": "", "t2": "", "seg": ""}, r"BRATS_\d{3}",
           (Label(1, "edema", "oedema"), Label(2, "non-enhancing tumor", "core"),
            Label(3, "enhancing tumour", "enhancing")),
           (Region("wt", (1, 2, 3)), Region("tc", (2, 3)), Region("et", (3,))),
           small_et=(3, 2), layout="msd",
           example="imagesTr/BRATS_001.nii.gz (flair, t1, t1ce, t2 in one 4D file), "
                   "labelsTr/BRATS_001.nii.gz"),
)

#: Every convention by name, in discovery's order of preference.
CONVENTIONS: dict[str, Convention] = {entry.name: entry for entry in _ENTRIES}

#: Old names that still work: the `--naming` / `--labels` values of unet3d 0.1 and 0.2.
ALIASES: dict[str, str] = {"brats2023": "brats2023-gli"}

#: The convention of stores, models and folders that recorded label values only (unet3d 0.2).
_BY_VALUES = {(1, 2, 4): "brats2020", (1, 2, 3): "brats2023-gli"}

#: The default for old names and for data that says nothing.
DEFAULT_CONVENTION = "brats2020"


def get_convention(name: str | Convention) -> Convention:
    """The convention `name` (or an alias of it); `InputError` listing the names otherwise."""
    if isinstance(name, Convention):
        return name
    if re.fullmatch(r"labels(-\d+)+", str(name)):  # a custom label set (convention_for_labels)
        return convention_for_labels([int(v) for v in str(name).split("-")[1:]])
    key = ALIASES.get(str(name), str(name))
    if key not in CONVENTIONS:
        raise InputError(f"unknown convention {name!r}: choose one of {', '.join(CONVENTIONS)}")
    return CONVENTIONS[key]


def convention_for_labels(values: Sequence[int]) -> Convention:
    """The convention of data that recorded only its label triple (NCR/NET, ED, ET): 1, 2, 4 is
    brats2020, 1, 2, 3 brats2023-gli, any other triple the 2020 regions on those values."""
    values = tuple(int(v) for v in values)
    if values in _BY_VALUES:
        return CONVENTIONS[_BY_VALUES[values]]
    if not values or len(set(values)) != len(values) or not all(0 < v < 256 for v in values):
        raise InputError(f"labels {','.join(map(str, values))}: distinct values from 1 to 255 "
                         f"(NCR/NET, ED, ET), or a convention ({', '.join(CONVENTIONS)})")
    base = CONVENTIONS[DEFAULT_CONVENTION]
    name = f"labels-{'-'.join(map(str, values))}"
    if len(values) == 3:
        labels, regions = _adult(*values, names=("NCR/NET", "ED", "ET"))
        small_et = (values[2], values[0])
    else:  # no tissue meaning: one region per label
        labels = tuple(Label(v, f"label {v}", "core") for v in values)
        regions, small_et = tuple(Region(f"label_{v}", (v,)) for v in values), None
    return Convention(name, f"labels {values}", base.task, base.files, base.case_pattern,
                      labels, regions, regions, small_et, "legacy", base.example)


#: A convention given as a name, a `Convention` or a label triple.
ConventionLike = Union[str, Convention, Sequence[int]]


def as_convention(value: ConventionLike | None) -> Convention:
    """A convention from its name, itself, or a label triple (`convention_for_labels`); None is
    the default (brats2020)."""
    if value is None:
        return CONVENTIONS[DEFAULT_CONVENTION]
    if isinstance(value, (str, Convention)):
        return get_convention(value)
    return convention_for_labels(value)


def _meanings(convention: Convention) -> set[tuple[int, str]]:
    return {(label.value, label.kind) for label in convention.labels}


def same_meaning(a: Convention, b: Convention) -> bool:
    """Whether `a` and `b` give the same values to the same tissues (brats2020, brats2021)."""
    return _meanings(a) == _meanings(b)


def translatable(source: Convention, target: Convention) -> bool:
    """Whether `target` has a label for every tissue of `source` (`translate` can write it)."""
    return all(target.kind_value(label.kind) is not None for label in source.labels)


def check_translatable(source: Convention, target: Convention) -> None:
    """Raise `InputError`, naming the tissue, unless `translatable(source, target)`."""
    for label in source.labels:
        if target.kind_value(label.kind) is None:
            raise InputError(f"{target.name} has no label for {source.name}'s {label.name} "
                             f"({label.kind}); write {source.name}'s labels instead")


def check_same_meaning(given: Convention, recorded: Convention, where: str) -> None:
    """Raise `InputError` unless `given` has each label of `recorded` (the convention data at
    `where` were written in) at the same value for the same tissue: a 4 is ET in brats2020 and
    a resection cavity in brats2024-gli."""
    if not _meanings(recorded) <= _meanings(given):
        raise InputError(f"--convention {given.name} ({given.label_text}) does not give the "
                         f"labels of {where} ({recorded.name}: {recorded.label_text}) their "
                         "meaning; leave --convention out")


def recorded(name: str | None, labels: Sequence[int] | None) -> Convention | None:
    """The convention a file recorded: by its `name`, else (files of unet3d 0.2, which recorded
    the label values only) by its `labels` (`convention_for_labels`), else None."""
    if name:
        return get_convention(name)
    return convention_for_labels(labels) if labels else None


def conventions_with(value: int) -> list[str]:
    """Names of the conventions that have label `value`."""
    return [c.name for c in CONVENTIONS.values() if value in c.values]


def check_label_values(label_map: np.ndarray, convention: Convention, where: str) -> None:
    """Raise `InputError` when `label_map` holds values that are not 0 or labels of
    `convention`, naming `where` (a file, a case), the values and the conventions that have
    them."""
    values = np.unique(label_map)
    unknown = [v for v in values.tolist() if v != 0 and v not in convention.values]
    if not unknown:
        return
    unknown = [int(v) if float(v).is_integer() else v for v in unknown]
    having = sorted({name for v in unknown if isinstance(v, int) for name in conventions_with(v)
                     if all(u in CONVENTIONS[name].values for u in unknown)})
    hint = (f"; conventions with {'them' if len(unknown) > 1 else 'it'}: {', '.join(having)} "
            "(pass --convention NAME)" if having else "")
    raise InputError(f"{where} holds label values {unknown} that {convention.name} does not have "
                     f"(0, {', '.join(map(str, convention.values))}){hint}")


# ------------------------------------------------------------------------------ encodings

def encode(label_map: np.ndarray, convention: Convention) -> np.ndarray:
    """The region channels of a label map: uint8 (..., n_regions), channel k = the voxel's
    label is in `convention.regions[k]`."""
    out = np.empty((*label_map.shape, len(convention.regions)), dtype=np.uint8)
    for channel, region in enumerate(convention.regions):
        out[..., channel] = np.isin(label_map, region.labels)
    return out


def paint_labels(convention: Convention) -> tuple[int, ...]:
    """The label each region paints when decoding: the one label value it holds that no later
    region holds. `InputError` when a region has none or several (the regions cannot be
    decoded)."""
    painted = []
    for k, region in enumerate(convention.regions):
        later = {v for r in convention.regions[k + 1:] for v in r.labels}
        own = [v for v in region.labels if v not in later]
        if len(own) != 1:
            raise InputError(f"convention {convention.name}: region {region.name} holds "
                             f"{len(own)} labels that no later region holds; regions must be "
                             "ordered so that each paints exactly one")
        painted.append(own[0])
    return tuple(painted)


def decode(regions: np.ndarray, convention: Convention, threshold: float = 0.5) -> np.ndarray:
    """Label map (uint8 (...)) of region probabilities or masks (..., n_regions): in channel
    order, the voxels at or above `threshold` in a region get the label it paints
    (`paint_labels`), later regions over earlier ones. Inverts `encode` exactly."""
    if regions.shape[-1] != len(convention.regions):
        raise InputError(f"{convention.name} decodes {len(convention.regions)} region channels "
                         f"({', '.join(convention.region_names)}); got shape {regions.shape}")
    out = np.zeros(regions.shape[:-1], dtype=np.uint8)
    for channel, value in enumerate(paint_labels(convention)):
        out[regions[..., channel] >= threshold] = value
    return out


def translate(label_map: np.ndarray, source: Convention, target: Convention) -> np.ndarray:
    """`label_map` of `source` written with `target`'s values, label by kind of tissue.
    `InputError` when `target` has no label of a kind `source` has."""
    if same_meaning(source, target):
        return label_map
    check_translatable(source, target)
    lookup = np.zeros(256, dtype=np.uint8)
    for label in source.labels:
        lookup[label.value] = target.kind_value(label.kind)
    return lookup[label_map]


def check_convention(convention: Convention) -> None:
    """Raise `InputError` unless `convention` is consistent: known kinds and scoring, regions
    over its labels, every label in a region, and `decode(encode(x)) == x`."""
    values = convention.values
    problems = []
    if len(set(values)) != len(values) or not all(0 < v < 256 for v in values):
        problems.append(f"label values {values} are not distinct values from 1 to 255")
    if any(label.kind not in KINDS for label in convention.labels):
        problems.append(f"label kinds must be among {', '.join(KINDS)}")
    if convention.scoring not in SCORING_EDITIONS:
        problems.append(f"scoring {convention.scoring!r} is not one of {SCORING_EDITIONS}")
    for region in (*convention.regions, *convention.scored):
        if not set(region.labels) <= set(values):
            problems.append(f"region {region.name} has labels outside {values}")
    if {v for r in convention.regions for v in r.labels} != set(values):
        problems.append("every label must be in a training region")
    if not problems:
        every = np.array([0, *values], dtype=np.uint8)
        try:
            if not np.array_equal(decode(encode(every, convention), convention), every):
                problems.append("decoding the regions does not give the labels back")
        except InputError as error:
            problems.append(str(error))
    if problems:
        raise InputError(f"convention {convention.name}: {'; '.join(problems)}")


for _convention in CONVENTIONS.values():
    check_convention(_convention)


def markdown_table() -> str:
    """The registry as the Markdown table of docs/real_brats_data.md (kept equal by a test)."""
    def regions(items: Sequence[Region]) -> str:
        return ", ".join(f"{r.name.upper()} {{{','.join(map(str, r.labels))}}}" for r in items)

    rows = ["| convention | release / task | a case on disk | labels | trained on (outputs) | "
            "scored | small ET | scoring |", "|---|---|---|---|---|---|---|---|"]
    for c in CONVENTIONS.values():
        labels = c.label_text
        small = f"{c.small_et[0]} -> {c.small_et[1]}" if c.small_et else "-"
        rows.append(f"| `{c.name}` | {c.description} | `{c.example}` | {labels} | "
                    f"{regions(c.regions)} | {regions(c.scored)} | {small} | {c.scoring} |")
    return "\n".join(rows) + "\n"
