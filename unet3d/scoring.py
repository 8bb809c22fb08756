"""How BraTS scores, edition by edition, as data: one `Edition` per way the challenge has scored.

Every convention (`unet3d.conventions`) names the edition its release was scored with; the metrics
are in `unet3d.case_metrics` (whole image) and `unet3d.lesion_metrics` (lesion-wise). The facts
come from the official evaluators' code (docs/evaluation.md lists the sources and what differs):

- **legacy** (up to 2022): whole-image Dice and HD95 per region only; HD95 373.13 mm (the diagonal
  of the 240x240x155 image) when exactly one of truth and prediction is empty.
- **brats2023** (the 2023 metrics repository): lesion-wise Dice and HD95. Lesions are the
  26-connected components of a region; truth lesions that touch after `dilation` iterations of
  the 18-connected structuring element are merged; every predicted component touching a dilated
  truth lesion is its true positive; truth lesions of at most `threshold` mm^3 are left out; HD95
  penalty 374 mm.
- **brats2024** (the 2024 metrics repository, one file per task): as 2023, with predicted
  components merged by the same dilation and the groups of at most the threshold removed first
  (most tasks), normalised surface Dice at 0.5 and 1.0 mm, and per-task (and per-region)
  dilations, thresholds and penalties; MEN-RT leaves false positives out of its scores.
- **panoptica** (the current official package, `brats-evaluation`): lesions matched one to one by
  maximum bipartite matching on Dice (any overlap counts, no dilation, no threshold); counts of
  true and false positives and false negatives, precision, recall, F1; lesion-wise Dice, HD95 and
  NSD (tolerance: the smallest voxel spacing) are means over the matched pairs; HD95 373 mm for a
  missing prediction.

The summary's standard deviation divides by n - 1 in every edition (as the official evaluators'
pandas summaries do): `STD_DDOF`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from unet3d.errors import InputError

#: The penalty of a task that is the diagonal of the image in voxels, sqrt(nx^2 + ny^2 + nz^2)
#: (373.13 for BraTS' 240x240x155), as the 2024 MET and MEN-RT evaluators compute it.
DIAGONAL = "diagonal"

#: Degrees of freedom removed by the summary's standard deviation (1: the sample std, n - 1).
STD_DDOF = 1


@dataclass(frozen=True)
class LesionRule:
    """Lesion-wise parameters of one task in a dilation-based edition (brats2023, brats2024).

    Attributes:
        dilation: iterations of the 18-connected dilation of truth lesions (merging and matching)
            and, with `small_predictions`, of predicted ones (merging).
        threshold: truth lesions of at most this volume (mm^3) are not scored.
        penalty: HD95 (mm) of a missed lesion, a false positive, or a region empty in exactly one
            of truth and prediction; `DIAGONAL` for the diagonal of the image in voxels.
        region_thresholds: `threshold` of single regions, where it differs ({"et": 10}).
        region_dilations: `dilation` of single regions, where it differs ({"netc": 5}).
        small_predictions: None, or how predicted lesions are merged and removed first: their
            components that touch after the dilation become one lesion, and lesions of at most
            the threshold are removed, counted in "voxels" or in "mm3".
        count_false_positives: whether false positives enter the lesion-wise scores (they are
            counted in `n_fp` either way).
    """

    dilation: int
    threshold: float
    penalty: float | str = 374.0
    region_thresholds: dict[str, float] = field(default_factory=dict)
    region_dilations: dict[str, int] = field(default_factory=dict)
    small_predictions: str | None = None
    count_false_positives: bool = True

    def threshold_of(self, region: str) -> float:
        """The volume threshold (mm^3; voxels for `small_predictions` "voxels") of `region`."""
        return self.region_thresholds.get(region, self.threshold)

    def dilation_of(self, region: str) -> int:
        """The dilation iterations of `region`."""
        return self.region_dilations.get(region, self.dilation)

    @property
    def largest_dilation(self) -> int:
        """The most dilation iterations of any region."""
        return max([self.dilation, *self.region_dilations.values()])


@dataclass(frozen=True)
class Edition:
    """One way BraTS has scored (see the module docstring).

    Attributes:
        name: `--scoring` value.
        description: one line for people.
        lesions: None (whole image only), "dilation" (2023, 2024) or "matching" (panoptica).
        penalty: HD95 (mm) when exactly one of truth and prediction is empty, and of a missing
            prediction (tasks of `rules` may have their own).
        rules: per task ("GLI", "MET", ...), the lesion parameters of a dilation-based edition.
        nsd_tolerances: the tolerances (mm) of the lesion-wise normalised surface Dice; None: the
            smallest voxel spacing (panoptica).
    """

    name: str
    description: str
    lesions: str | None
    penalty: float
    rules: dict[str, LesionRule] = field(default_factory=dict)
    nsd_tolerances: tuple[float | None, ...] = ()

    def rule(self, task: str) -> LesionRule:
        """The lesion parameters of `task`; InputError naming the tasks it has otherwise."""
        if task not in self.rules:
            raise InputError(f"scoring {self.name} has no lesion-wise parameters for task {task} "
                             f"(it scores {', '.join(self.rules)}); choose another --scoring")
        return self.rules[task]

    def penalty_of(self, task: str) -> float | str:
        """The HD95 penalty of `task` (a number of mm or `DIAGONAL`)."""
        return self.rules[task].penalty if task in self.rules else self.penalty


_BRATS2023 = {"GLI": LesionRule(3, 50), "SSA": LesionRule(3, 50), "PED": LesionRule(3, 50),
              "MEN": LesionRule(1, 50), "MET": LesionRule(1, 2)}

# The 2024 files: GLI meant dilation 5 for SNFH too, but tests for a misspelt "SFNH" (3 applies).
_BRATS2024 = {
    "GLI": LesionRule(3, 20, 337.0, {"et": 10}, {"netc": 5, "rc": 5}, small_predictions="voxels"),
    "SSA": LesionRule(3, 50, small_predictions="voxels"),
    "MEN": LesionRule(1, 50),
    "PED": LesionRule(5, 10, small_predictions="voxels"),
    "MET": LesionRule(1, 2, DIAGONAL, small_predictions="voxels"),
    "MEN-RT": LesionRule(1, 50, DIAGONAL, small_predictions="mm3", count_false_positives=False),
}

EDITIONS: dict[str, Edition] = {edition.name: edition for edition in (
    Edition("legacy", "whole-image Dice and HD95 per region (BraTS 2017-2022)", None, 373.13),
    Edition("brats2023", "lesion-wise Dice and HD95 of the 2023 metrics repository", "dilation",
            374.0, _BRATS2023),
    Edition("brats2024", "lesion-wise Dice, HD95 and NSD of the 2024 metrics repository",
            "dilation", 374.0, _BRATS2024, nsd_tolerances=(0.5, 1.0)),
    Edition("panoptica", "lesion matching of the current official package (brats-evaluation, "
            "panoptica)", "matching", 373.0, nsd_tolerances=(None,)),
)}

#: The `--scoring` values.
SCORING_EDITIONS: tuple[str, ...] = tuple(EDITIONS)


def get_edition(name: str) -> Edition:
    """The edition called `name`; InputError naming the editions otherwise."""
    if name not in EDITIONS:
        raise InputError(f"unknown scoring {name!r}; choose one of {', '.join(EDITIONS)}")
    return EDITIONS[name]


def nsd_column(tolerance: float | None) -> str:
    """The column of the NSD at `tolerance` mm: "nsd_0.5", "nsd_1.0"; "nsd" for the smallest
    spacing."""
    return "nsd" if tolerance is None else f"nsd_{tolerance:.1f}"


def markdown_table() -> str:
    """The editions as the Markdown table of docs/evaluation.md (kept equal by a test)."""
    def per_region(default, by_region: dict) -> str:
        return ", ".join([f"{default:g}", *(f"{region.upper()} {value:g}"
                                            for region, value in by_region.items())])

    rows = ["| scoring | lesions | task | dilation | truth threshold (mm^3) | HD95 penalty (mm) | "
            "predicted lesions merged, small ones removed | false positives scored | "
            "NSD tolerance (mm) |", "|---|---|---|---|---|---|---|---|---|"]
    for edition in EDITIONS.values():
        tolerances = ", ".join("smallest spacing" if t is None else f"{t:g}"
                               for t in edition.nsd_tolerances) or "-"
        if not edition.rules:
            lesions = {None: "-", "matching": "one-to-one matching on Dice"}[edition.lesions]
            scored = "yes" if edition.lesions else "-"
            rows.append(f"| `{edition.name}` | {lesions} | every task | - | - | "
                        f"{edition.penalty:g} | - | {scored} | {tolerances} |")
        for task, rule in edition.rules.items():
            penalty = ("image diagonal (voxels)" if rule.penalty == DIAGONAL
                       else f"{rule.penalty:g}")
            small = {None: "no", "voxels": "yes, threshold in voxels",
                     "mm3": "yes, threshold in mm^3"}[rule.small_predictions]
            rows.append(f"| `{edition.name}` | truth dilation | {task} | "
                        f"{per_region(rule.dilation, rule.region_dilations)} | "
                        f"{per_region(rule.threshold, rule.region_thresholds)} | {penalty} | "
                        f"{small} | {'yes' if rule.count_false_positives else 'no'} | "
                        f"{tolerances} |")
    return "\n".join(rows) + "\n"
