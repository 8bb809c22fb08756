"""Lesion-wise scores of every scoring edition against hand-computed values, and the panoptica
edition against the official package (brats-evaluation on panoptica, a test extra)."""

import csv
import math
import warnings

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.distance import cdist

from helpers import brute_force_hd95, run_script, surface_points
from unet3d.conventions import get_convention
from unet3d.errors import InputError
from unet3d.evaluation import STD
from unet3d.io import read_nifti, write_nifti
from unet3d.lesion_metrics import lesion_scores, missing_scores, penalty
from unet3d.scoring import EDITIONS, SCORING_EDITIONS, get_edition
from unet3d.synthetic import make_synthetic_brats

SHAPE = (40, 40, 40)
NAN = float("nan")


def cubes(*boxes, shape=SHAPE):
    """A mask holding the boxes ((x0, x1), (y0, y1), (z0, z1)), stop exclusive."""
    mask = np.zeros(shape, dtype=bool)
    for box in boxes:
        mask[tuple(slice(*axis) for axis in box)] = True
    return mask


def same(scores, expected):
    """`scores` has every key of `expected` with that value (NaN equals NaN)."""
    for key, value in expected.items():
        got = scores[key]
        assert (math.isnan(got) and math.isnan(value)) or got == pytest.approx(value, abs=1e-12), \
            (key, got, value)


LESION = ((5, 15), (5, 15), (5, 15))  # 1000 voxels
TRUTH = cubes(LESION)


# --------------------------------------------------------------------------- the editions as data

def test_editions_hold_the_official_parameters():
    assert SCORING_EDITIONS == ("legacy", "brats2023", "brats2024", "panoptica")
    b23, b24 = EDITIONS["brats2023"], EDITIONS["brats2024"]
    assert {task: (r.dilation, r.threshold, r.penalty) for task, r in b23.rules.items()} == {
        "GLI": (3, 50, 374), "SSA": (3, 50, 374), "PED": (3, 50, 374), "MEN": (1, 50, 374),
        "MET": (1, 2, 374)}
    gli = b24.rules["GLI"]
    assert gli.threshold_of("et") == 10 and gli.threshold_of("tc") == 20
    assert [gli.dilation_of(r) for r in ("wt", "tc", "et", "netc", "snfh", "rc")] == [
        3, 3, 3, 5, 3, 5]
    assert (b24.rules["PED"].dilation, b24.rules["PED"].threshold) == (5, 10)
    assert b24.rules["MEN"].small_predictions is None
    assert not b24.rules["MEN-RT"].count_false_positives
    assert penalty("brats2024", "GLI", SHAPE) == 337
    # MET and MEN-RT: the image diagonal in voxels (240x240x155: the legacy 373.13), as the
    # 2024 code computes it (whatever the spacing: test_an_empty_prediction_and_both_empty).
    assert penalty("brats2024", "MET", (240, 240, 155)) == pytest.approx(373.13, 1e-5)
    assert penalty("brats2024", "MEN-RT", (40, 40, 40)) == pytest.approx(
        math.sqrt(3 * 40 ** 2))
    assert penalty("panoptica", "GLI", SHAPE) == 373
    assert penalty("legacy", "MET", SHAPE) == 373.13
    # Every convention names an edition that has parameters for its task.
    from unet3d.conventions import CONVENTIONS
    for convention in CONVENTIONS.values():
        edition = get_edition(convention.scoring)
        if edition.lesions == "dilation":
            edition.rule(convention.task)
    with pytest.raises(InputError, match="no lesion-wise parameters for task MEN-RT"):
        lesion_scores(TRUTH, TRUTH, "brats2023", "MEN-RT")
    with pytest.raises(InputError, match="unknown scoring 'brats2022'"):
        get_edition("brats2022")
    with pytest.raises(InputError, match="legacy has no lesion-wise scores"):
        lesion_scores(TRUTH, TRUTH, "legacy")


def test_the_docs_list_every_edition_as_the_registry_has_it():
    from helpers import REPO
    from unet3d.scoring import markdown_table
    assert markdown_table() in (REPO / "docs" / "evaluation.md").read_text()


# --------------------------------------------------------------------------- hand-computed cases

def test_a_split_lesion():
    """The plane x = 10 of the cube is not predicted: two predicted pieces, x 5-9 (500 voxels) and
    x 11-14 (400). The 2023/2024 evaluators score both pieces together against the lesion;
    panoptica matches the lesion to one piece (the one of higher Dice) and the other is a false
    positive."""
    pred = TRUTH.copy()
    pred[10] = False
    together = brute_force_hd95(TRUTH, pred, (1, 1, 1))
    same(lesion_scores(TRUTH, pred, "brats2023"),
         {"dice": 2 * 900 / 1900, "hd95": together, "n_tp": 1, "n_fp": 0, "n_fn": 0})
    same(lesion_scores(TRUTH, pred, "brats2024"),
         {"dice": 2 * 900 / 1900, "hd95": together, "n_tp": 1, "n_fp": 0, "n_fn": 0})
    piece = cubes(((5, 10), (5, 15), (5, 15)))
    # Dice of the pieces: 2*500/1500 = 2/3 and 2*400/1400 = 4/7.
    same(lesion_scores(TRUTH, pred, "panoptica"),
         {"dice": 2 / 3, "hd95": brute_force_hd95(TRUTH, piece, (1, 1, 1)), "n_tp": 1, "n_fp": 1,
          "n_fn": 0, "precision": 1 / 2, "recall": 1.0, "f1": 1 / (1 + 1 / 2)})


def test_a_false_positive_blob():
    """A 2x2x4 blob (16 voxels) far from the lesion: a false positive whatever its size in 2023;
    removed in 2024 where the threshold is 20 (WT), kept where it is 10 (ET)."""
    pred = TRUTH | cubes(((30, 32), (30, 32), (30, 34)))
    same(lesion_scores(TRUTH, pred, "brats2023", "GLI", "wt"),
         {"dice": (1 + 0) / 2, "hd95": (0 + 374) / 2, "n_tp": 1, "n_fp": 1, "n_fn": 0})
    same(lesion_scores(TRUTH, pred, "brats2024", "GLI", "wt"),
         {"dice": 1.0, "hd95": 0.0, "nsd_0.5": 1.0, "nsd_1.0": 1.0, "n_tp": 1, "n_fp": 0})
    same(lesion_scores(TRUTH, pred, "brats2024", "GLI", "et"),
         {"dice": 1 / 2, "hd95": 337 / 2, "nsd_0.5": 1 / 2, "nsd_1.0": 1 / 2, "n_tp": 1,
          "n_fp": 1, "n_fn": 0})
    same(lesion_scores(TRUTH, pred, "panoptica"),
         {"dice": 1.0, "hd95": 0.0, "nsd": 1.0, "n_tp": 1, "n_fp": 1, "n_fn": 0,
          "precision": 1 / 2, "recall": 1.0, "f1": 2 / 3})


def test_brats2024_merges_predicted_lesions_before_removing_small_ones():
    """Two 2x2x2 false-positive blobs (8 voxels each) 3 voxels apart: 2023 counts two false
    positives; 2024 PED (dilation 5) merges them into one lesion of 16 voxels, over its threshold
    of 10: one false positive. Alone, one 8-voxel blob is removed (at most 10 voxels)."""
    blobs = cubes(((30, 32), (30, 32), (30, 32)), ((35, 37), (30, 32), (30, 32)))
    same(lesion_scores(TRUTH, TRUTH | blobs, "brats2023", "PED"),
         {"dice": 1 / 3, "hd95": 2 * 374 / 3, "n_tp": 1, "n_fp": 2})
    same(lesion_scores(TRUTH, TRUTH | blobs, "brats2024", "PED"),
         {"dice": 1 / 2, "hd95": 374 / 2, "n_tp": 1, "n_fp": 1})
    same(lesion_scores(TRUTH, TRUTH | cubes(((30, 32), (30, 32), (30, 32))), "brats2024", "PED"),
         {"dice": 1.0, "hd95": 0.0, "n_fp": 0})
    # MEN-RT removes by volume (mm^3: 8 voxels of 8 mm^3 = 64 > 50 stay) and counts false
    # positives without scoring them.
    big_voxels = lesion_scores(TRUTH, TRUTH | cubes(((30, 32), (30, 32), (30, 32))), "brats2024",
                               "MEN-RT", "gtv", spacing=(2, 2, 2))
    same(big_voxels, {"dice": 1.0, "hd95": 0.0, "n_tp": 1, "n_fp": 1})
    # GLI dilates NETC and RC 5 times, the other regions 3: lesions 8 planes apart are one NETC
    # lesion (half predicted) but two ET lesions (one missed).
    truth = TRUTH | cubes(((23, 33), (5, 15), (5, 15)))
    same(lesion_scores(truth, TRUTH, "brats2024", "GLI", "netc"), {"dice": 2 / 3, "n_fn": 0})
    same(lesion_scores(truth, TRUTH, "brats2024", "GLI", "et"), {"dice": 1 / 2, "n_fn": 1})


def test_a_lesion_under_the_size_threshold():
    """A 3x3x3 truth lesion (27 mm^3 <= 50) is not scored by 2023 GLI, predicted or not (its
    predicted component is not a false positive either); MET (threshold 2) and panoptica score
    it; the threshold is a volume: two voxels of 1x1x2 mm (4 mm^3) pass MET's 2 mm^3."""
    small = cubes(((30, 33), (30, 33), (30, 33)))
    truth = TRUTH | small
    for pred in (TRUTH, truth):
        same(lesion_scores(truth, pred, "brats2023", "GLI"),
             {"dice": 1.0, "hd95": 0.0, "n_tp": 1, "n_fp": 0, "n_fn": 0})
    same(lesion_scores(truth, TRUTH, "brats2023", "MET"),
         {"dice": 1 / 2, "hd95": 374 / 2, "n_tp": 1, "n_fp": 0, "n_fn": 1})
    same(lesion_scores(truth, TRUTH, "panoptica"),
         {"dice": 1.0, "n_tp": 1, "n_fp": 0, "n_fn": 1, "precision": 1.0, "recall": 1 / 2})
    two = TRUTH | cubes(((30, 32), (30, 31), (30, 31)))
    same(lesion_scores(two, TRUTH, "brats2023", "MET"), {"n_tp": 1, "n_fn": 0})
    same(lesion_scores(two, TRUTH, "brats2023", "MET", spacing=(1, 1, 2)),
         {"n_tp": 1, "n_fn": 1, "dice": 1 / 2, "hd95": 374 / 2})


@pytest.mark.parametrize("gap", [6, 7])
def test_two_truth_lesions_merged_by_dilation(gap):
    """Two truth cubes `gap` empty planes apart; only the first is predicted. Three dilations
    (GLI) bridge 6 planes, not 7: merged, the pair is one lesion half predicted (Dice
    2*1000/3000); apart, one lesion found and one missed. MET's single dilation never merges
    them; panoptica never dilates."""
    second = cubes(((15 + gap, 25 + gap), (5, 15), (5, 15)))
    truth = TRUTH | second
    if gap == 6:
        same(lesion_scores(truth, TRUTH, "brats2023", "GLI"),
             {"dice": 2 / 3, "hd95": brute_force_hd95(truth, TRUTH, (1, 1, 1)), "n_tp": 1,
              "n_fn": 0, "n_fp": 0})
    else:
        same(lesion_scores(truth, TRUTH, "brats2023", "GLI"),
             {"dice": 1 / 2, "hd95": 374 / 2, "n_tp": 1, "n_fn": 1, "n_fp": 0})
    same(lesion_scores(truth, TRUTH, "brats2023", "MET"),
         {"dice": 1 / 2, "hd95": 374 / 2, "n_tp": 1, "n_fn": 1, "n_fp": 0})
    same(lesion_scores(truth, TRUTH, "panoptica"), {"dice": 1.0, "n_tp": 1, "n_fn": 1})


def test_an_empty_prediction_and_both_empty():
    empty = np.zeros(SHAPE, dtype=bool)
    same(lesion_scores(TRUTH, empty, "brats2023"),
         {"dice": 0.0, "hd95": 374.0, "n_tp": 0, "n_fp": 0, "n_fn": 1})
    same(lesion_scores(TRUTH, empty, "brats2024"),
         {"dice": 0.0, "hd95": 337.0, "nsd_0.5": 0.0, "nsd_1.0": 0.0, "n_fn": 1})
    same(lesion_scores(TRUTH, empty, "brats2024", "MET", spacing=(1, 1, 2)),
         {"hd95": math.sqrt(3 * 40 ** 2)})
    same(lesion_scores(TRUTH, empty, "panoptica"),
         {"dice": 0.0, "hd95": 373.0, "nsd": 0.0, "n_fn": 1, "precision": NAN, "recall": 0.0,
          "f1": 0.0})
    # Nothing to find and nothing found: perfect in 2023/2024, undefined in panoptica.
    same(lesion_scores(empty, empty, "brats2023"),
         {"dice": 1.0, "hd95": 0.0, "n_tp": 0, "n_fp": 0, "n_fn": 0})
    same(lesion_scores(empty, empty, "brats2024"), {"dice": 1.0, "nsd_0.5": 1.0, "nsd_1.0": 1.0})
    same(lesion_scores(empty, empty, "panoptica"),
         {"dice": NAN, "hd95": NAN, "nsd": NAN, "n_tp": 0, "n_fp": 0, "n_fn": 0,
          "precision": NAN, "recall": NAN, "f1": NAN})
    # A prediction where the truth has nothing: one false positive, nothing found.
    same(lesion_scores(empty, TRUTH, "brats2023"), {"dice": 0.0, "hd95": 374.0, "n_fp": 1})
    same(lesion_scores(empty, TRUTH, "panoptica"),
         {"dice": 0.0, "hd95": 373.0, "n_fp": 1, "precision": 0.0, "recall": NAN, "f1": 0.0})


def test_panoptica_matching_maximises_the_summed_dice():
    """T1, T2: two cubes; P1 overlaps both (700 and 500 voxels), P2 only T1 (200). Greedy
    matching would take the best pair T1-P1 (Dice 1400/2700) and leave T2 unmatched; the one to
    one matching of largest summed Dice is T1-P2 (400/1200) and T2-P1 (1000/2700)."""
    truth = TRUTH | cubes(((20, 30), (5, 15), (5, 15)))
    pred = cubes(((8, 25), (5, 15), (5, 15)), ((5, 7), (5, 15), (5, 15)))
    same(lesion_scores(truth, pred, "panoptica"),
         {"dice": (400 / 1200 + 1000 / 2700) / 2, "n_tp": 2, "n_fp": 0, "n_fn": 0, "f1": 1.0})


def test_nsd_by_hand():
    """The prediction is the lesion shifted by one voxel along x: every surface voxel of either
    is within 1 mm of the other's surface (NSD 1 at 1.0 mm); at 0.5 mm only those on both
    surfaces count. 2024 pools both surfaces; panoptica averages the two directions' shares."""
    shifted = np.roll(TRUTH, 1, axis=0)
    distances = cdist(surface_points(TRUTH, (1, 1, 1)), surface_points(shifted, (1, 1, 1)))
    from_truth, from_pred = distances.min(axis=1), distances.min(axis=0)
    assert from_truth.size == from_pred.size == 1000 - 8 ** 3
    on_both = np.count_nonzero(from_truth == 0) + np.count_nonzero(from_pred == 0)
    same(lesion_scores(TRUTH, shifted, "brats2024"),
         {"nsd_0.5": on_both / (2 * 488), "nsd_1.0": 1.0, "dice": 2 * 900 / 2000, "n_tp": 1})
    same(lesion_scores(TRUTH, shifted, "panoptica"), {"nsd": 1.0})
    # Shifted by two voxels (prediction x 7-16): at 1.0 mm the truth's face x=5 (100 voxels, 2 mm
    # from the face x=7) is out, and so is the middle of its face x=14, which lies inside the
    # prediction: its 8x8 voxels off the edge are 1 mm (the outer 28) or more (the inner 6x6 = 36)
    # from the prediction's side walls. The same on the prediction's side, by symmetry.
    shifted = np.roll(TRUTH, 2, axis=0)
    same(lesion_scores(TRUTH, shifted, "brats2024"), {"nsd_1.0": (488 - 100 - 36) / 488})
    same(lesion_scores(TRUTH, shifted, "panoptica"), {"nsd": (488 - 100 - 36) / 488})


def test_missing_prediction_scores():
    truth = TRUTH | cubes(((30, 35), (30, 35), (30, 35)))
    # As brats-evaluation's parser writes a missing case: HD95 the penalty, everything else 0.
    same(missing_scores(truth, "brats2023"),
         {"dice": 0.0, "hd95": 374.0, "n_tp": 0, "n_fp": 0, "n_fn": 0})
    same(missing_scores(np.zeros(SHAPE, bool), "panoptica"),
         {"dice": 0.0, "hd95": 373.0, "nsd": 0.0, "precision": 0.0, "recall": 0.0, "f1": 0.0,
          "n_fn": 0})


# --------------------------------------------------------------------------- folders and script

def read_csv(path):
    with open(path, newline="") as stream:
        return list(csv.DictReader(stream))


@pytest.mark.slow
def test_evaluate_script_scores_every_edition(tmp_path):
    """Three brats2023-gli cases: the truth itself, ET removed (a missed lesion), no prediction.
    Scored in every edition by brats/evaluate.py: the lesion rows, the summary of n - 1 and the
    missing case as the official evaluators score it."""
    truth_dir = tmp_path / "truths"
    make_synthetic_brats(truth_dir, n_cases=3, shape=(48, 48, 32), seed=5, naming="brats2023")
    cases = [f"BraTS-GLI-{i:05d}-000" for i in range(1, 4)]
    predictions = tmp_path / "predictions"
    predictions.mkdir()
    for index, case in enumerate(cases[:2]):
        truth, geometry = read_nifti(truth_dir / case / f"{case}-seg.nii.gz")
        if index == 1:
            truth[truth == 3] = 1
        write_nifti(truth, geometry, predictions / f"{case}.nii.gz")
    et_volume = np.count_nonzero(read_nifti(truth_dir / cases[1] / f"{cases[1]}-seg.nii.gz")[0]
                                 == 3)
    assert et_volume > 50  # scored in 2023

    for scoring, hd in (("brats2023", 374.0), ("brats2024", 337.0), ("panoptica", 373.0)):
        out = tmp_path / scoring
        result = run_script("evaluate.py", f"--prediction_dir={predictions}",
                            f"--truth_dir={truth_dir}", f"--output_dir={out}",
                            f"--scoring={scoring}", "--nooverlays")
        assert result.returncode == 0, result.stderr
        assert f"1 truth(s) without a prediction" in result.stderr and cases[2] in result.stderr
        lesions = read_csv(out / "lesion_scores.csv")
        assert [(row["case"], row["region"]) for row in lesions] == [
            (case, region) for case in cases for region in ("wt", "tc", "et")]
        by = {(row["case"], row["region"]): row for row in lesions}
        assert float(by[cases[0], "et"]["dice"]) == 1.0 and float(by[cases[0], "et"]["hd95"]) == 0
        assert float(by[cases[1], "et"]["dice"]) == 0.0 and float(by[cases[1], "et"]["hd95"]) == hd
        assert int(by[cases[1], "et"]["n_fn"]) >= 1 and int(by[cases[1], "et"]["n_tp"]) == 0
        for region in ("wt", "tc", "et"):
            assert float(by[cases[2], region]["dice"]) == 0.0
            assert float(by[cases[2], region]["hd95"]) == hd
        scores = {row["case"]: row for row in read_csv(out / "scores.csv")}
        assert float(scores[cases[2]]["wt_dice"]) == 0.0
        assert float(scores[cases[2]]["wt_hd95"]) == hd
        summary = {row["statistic"]: row for row in read_csv(out / "summary.csv")}
        et = [float(by[case, "et"]["dice"]) for case in cases]
        assert float(summary["mean"]["et_lesion_dice"]) == pytest.approx(np.mean(et))
        assert float(summary[STD]["et_lesion_dice"]) == pytest.approx(np.std(et, ddof=1))
        assert (out / "lesion_boxplot.png").stat().st_size > 5000
        assert f"scoring {scoring}; std: sample (n-1)" in result.stderr

    # --skip_missing: today's behaviour, two cases.
    out = tmp_path / "skipped"
    result = run_script("evaluate.py", f"--prediction_dir={predictions}",
                        f"--truth_dir={truth_dir}", f"--output_dir={out}", "--skip_missing",
                        "--nooverlays")
    assert result.returncode == 0, result.stderr
    assert [row["case"] for row in read_csv(out / "scores.csv")] == cases[:2]
    assert "skipped (--skip_missing)" in result.stderr
    result = run_script("evaluate.py", f"--prediction_dir={predictions}",
                        f"--truth_dir={truth_dir}", f"--output_dir={out}", "--scoring=brats2022")
    assert result.returncode == 2 and "brats2022" in result.stderr


# --------------------------------------------------------------------------- the official package

def random_pair(rng, shape=(64, 64, 48)):
    """A label map of ellipsoid lesions (labels 1-4) and a prediction of it: lesions grown,
    shrunk, shifted or kept, false-positive blobs, sometimes every lesion cut in two."""
    truth = np.zeros(shape, np.uint8)
    grid = np.indices(shape).transpose(1, 2, 3, 0)
    for value in (2, 1, 3, 4):
        for _ in range(rng.integers(0, 4)):
            centre, radii = rng.uniform(6, np.array(shape) - 6), rng.uniform(1.5, 6, 3)
            truth[(((grid - centre) / radii) ** 2).sum(-1) <= 1] = value
    pred = truth.copy()
    for value in (1, 2, 3, 4):
        mask = truth == value
        change = (lambda m: m, ndimage.binary_dilation, ndimage.binary_erosion,
                  lambda m: np.roll(m, rng.integers(-2, 3), axis=rng.integers(0, 3)))
        changed = change[rng.integers(0, 4)](mask)
        pred[mask & ~changed] = 0
        pred[changed & (pred == 0)] = value
    for _ in range(rng.integers(0, 3)):
        x, y, z = rng.integers(3, np.array(shape) - 3)
        pred[x - 1:x + 2, y - 1:y + 2, z:z + 2] = rng.integers(1, 5)
    if rng.random() < 0.3:
        pred[:, shape[1] // 2, :] = 0
    return truth, pred


def test_panoptica_edition_equals_the_official_package():
    """Generated pairs scored by brats-evaluation's glioma configuration (panoptica) and by the
    panoptica edition: counts equal, Dice within 1e-6, HD95 within 1e-3 mm (1 mm data), NSD,
    precision, recall and F1 within 1e-6 (NaN where it is NaN)."""
    pytest.importorskip("panoptica")
    pytest.importorskip("brats_evaluation")
    from importlib import resources

    from panoptica import Panoptica_Evaluator

    config = resources.files("brats_evaluation").joinpath("configs", "config_gli.yaml")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        evaluator = Panoptica_Evaluator.load_from_config(str(config))
    convention = get_convention("brats2024-gli")
    rng = np.random.default_rng(0)
    compared = 0
    for _ in range(12):
        truth, pred = random_pair(rng)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            results = evaluator.evaluate(pred, truth, verbose=False)
        for region in convention.scored:
            theirs = results[region.name].to_dict()
            ours = lesion_scores(np.isin(truth, region.labels), np.isin(pred, region.labels),
                                 "panoptica", "GLI", region.name)
            assert (ours["n_tp"], ours["n_fp"], ours["n_fn"]) == (
                theirs["tp"], theirs["fp"], theirs["fn"]), region.name
            for key, their_key, tolerance in (
                    ("dice", "sq_dsc", 1e-6), ("hd95", "sq_hd95", 1e-3), ("nsd", "sq_nsd", 1e-6),
                    ("precision", "prec", 1e-6), ("recall", "rec", 1e-6), ("f1", "rq", 1e-6)):
                value = theirs.get(their_key)
                value = NAN if value is None else 373.0 if value == math.inf else value
                assert (math.isnan(ours[key]) and math.isnan(value)) or abs(
                    ours[key] - value) <= tolerance, (region.name, key, ours[key], value)
            compared += 1
    assert compared == 12 * 6
