"""Seconds to score BraTS-size cases: brats/evaluate.py's evaluation in each scoring edition
against the official package (brats-evaluation on panoptica), side by side in one run.

Writes `--n_cases` synthetic brats2024-gli cases (240x240x155, six scored regions, several
lesions per region) and a prediction of each that differs as a model's would (each label grown,
shrunk or shifted, small false-positive blobs, one lesion missed), then times, in interleaved
rounds (median over rounds):

- ours: `unet3d.evaluation.evaluate_folder` on the folder, one run per edition (reading the
  files, whole-image and lesion-wise scores, CSVs, box plots; no overlays);
- official: `brats_evaluation`'s glioma configuration, `Panoptica_Evaluator.evaluate` on each
  pair of files (what its command line runs per case), when the package is installed
  (`pip install -e .[test]`).

    python bench/evaluate.py                 # 5 cases, 3 rounds
    python bench/evaluate.py --n_cases 10 --rounds 5
"""

from __future__ import annotations

import os
import platform
import time
import warnings
from pathlib import Path

import numpy as np
from absl import app, flags
from scipy import ndimage

from common import work_folder
from unet3d.brats import find_cases
from unet3d.evaluation import evaluate_folder
from unet3d.io import read_nifti, write_nifti
from unet3d.scoring import SCORING_EDITIONS
from unet3d.synthetic import make_synthetic_brats

FLAGS = flags.FLAGS
flags.DEFINE_integer("n_cases", 5, "Cases scored per run.")
flags.DEFINE_integer("rounds", 3, "Interleaved rounds (the median is reported).")
flags.DEFINE_list("shape", ["240", "240", "155"], "Case grid.")
flags.DEFINE_string("work_dir", None, "Folder for the cases (default: a temporary folder).")

CONVENTION = "brats2024-gli"


def write_predictions(cases, out: Path, seed: int) -> None:
    """A prediction per case: every label grown, shrunk or shifted by a voxel, two 3x3x2
    false-positive blobs, and the smallest enhancing lesion missed."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    for case in cases:
        truth, geometry = read_nifti(case.label)
        pred = truth.copy()
        for value in np.unique(truth[truth > 0]):
            mask = truth == value
            changed = (ndimage.binary_dilation, ndimage.binary_erosion,
                       lambda m: np.roll(m, 1, axis=int(rng.integers(0, 3))))[rng.integers(0, 3)](mask)
            pred[mask & ~changed] = 0
            pred[changed & (pred == 0)] = value
        for _ in range(2):
            x, y, z = (int(rng.integers(20, n - 20)) for n in truth.shape)
            pred[x:x + 3, y:y + 3, z:z + 2] = int(rng.choice(np.unique(truth[truth > 0])))
        et, n = ndimage.label(pred == 3, structure=np.ones((3, 3, 3)))
        if n > 1:
            pred[et == 1 + int(np.argmin(np.bincount(et.ravel())[1:]))] = 0
        write_nifti(pred, geometry, out / f"{case.name}.nii.gz")


def official_seconds(cases, predictions: Path) -> float | None:
    """Seconds of the official package over the cases (None when it is not installed)."""
    try:
        from importlib.resources import files
        from panoptica import Panoptica_Evaluator
        config = files("brats_evaluation").joinpath("configs", "config_gli.yaml")
    except ImportError:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        evaluator = Panoptica_Evaluator.load_from_config(str(config))
        start = time.perf_counter()
        for case in cases:
            results = evaluator.evaluate(str(predictions / f"{case.name}.nii.gz"),
                                         str(case.label), verbose=False)
            {region: result.to_dict(True) for region, result in results.items()}
    return time.perf_counter() - start


def ours_seconds(predictions: Path, truths: Path, out: Path, scoring: str) -> float:
    start = time.perf_counter()
    evaluate_folder(predictions, truths, out / scoring, convention=CONVENTION, scoring=scoring,
                    overlays=False, progress=lambda *args: None)
    return time.perf_counter() - start


def main(argv):
    del argv
    shape = [int(n) for n in FLAGS.shape]
    with work_folder(FLAGS.work_dir, "bench_evaluate_") as work:
        print(f"writing {FLAGS.n_cases} synthetic {CONVENTION} cases of {tuple(shape)}")
        make_synthetic_brats(work / "cases", n_cases=FLAGS.n_cases, shape=shape, seed=0,
                             convention=CONVENTION, overwrite=True)
        cases = find_cases(work / "cases")
        write_predictions(cases, work / "predictions", seed=1)
        timings: dict[str, list[float]] = {}
        for round_ in range(FLAGS.rounds):
            seconds = official_seconds(cases, work / "predictions")
            if seconds is not None:
                timings.setdefault("official (brats-evaluation, panoptica)", []).append(seconds)
            for scoring in SCORING_EDITIONS:
                timings.setdefault(f"ours, --scoring {scoring}", []).append(
                    ours_seconds(work / "predictions", work / "cases", work / "scores", scoring))
            print(f"round {round_ + 1}/{FLAGS.rounds} done")

    per_case = {name: float(np.median(values)) / FLAGS.n_cases for name, values in timings.items()}
    official = per_case.get("official (brats-evaluation, panoptica)")
    print(f"\n{FLAGS.n_cases} cases of {tuple(shape)}, {CONVENTION} (6 regions), median of "
          f"{FLAGS.rounds} interleaved rounds; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores")
    print(f"| {'evaluation':<40} | s/case | vs official |")
    print(f"|{'-' * 42}|-------:|------------:|")
    for name, seconds in per_case.items():
        ratio = f"{official / seconds:.2f}x" if official else "-"
        print(f"| {name:<40} | {seconds:6.2f} | {ratio:>11} |")
    if official is None:
        print("the official package is not installed (pip install -e .[test]): ours only")


if __name__ == "__main__":
    app.run(main)
