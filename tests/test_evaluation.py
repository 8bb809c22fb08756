"""Evaluation: metrics against hand-computed values and an independent brute-force HD95; folder
evaluation and brats/evaluate.py against expectations derived from the synthetic truths."""

import csv
import logging
import shutil
from dataclasses import replace

import numpy as np
import pytest
from matplotlib import image as mpimg
from scipy import ndimage

from helpers import brute_force_hd95, run_script
from unet3d.errors import InputError
from unet3d.case_metrics import (HD95_EMPTY, dice, evaluate_case, hausdorff95, region_masks,
                                 sensitivity, specificity, surface_voxels)
from unet3d.evaluation import STD, SCORE_COLUMNS, evaluate_folder, find_truth_files, summarize
from unet3d.io import read_nifti, write_nifti
from unet3d.logs import get_logger
from unet3d.synthetic import make_synthetic_brats


def box(shape, start, stop):
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(slice(a, b) for a, b in zip(start, stop))] = True
    return mask


# --------------------------------------------------------------------------- overlap metrics

def test_overlap_metrics_by_hand():
    shape = (4, 4, 4)  # 64 voxels
    truth = box(shape, (0, 0, 0), (2, 2, 2))  # 8 voxels
    shifted = box(shape, (1, 0, 0), (3, 2, 2))  # 8 voxels, 4 of them in truth
    # Dice 2*4/(8+8); sensitivity 4/8; specificity: 56 background voxels, 4 predicted -> 52/56.
    assert dice(truth, shifted) == pytest.approx(1 / 2)
    assert sensitivity(truth, shifted) == pytest.approx(1 / 2)
    assert specificity(truth, shifted) == pytest.approx(13 / 14)
    inside = box(shape, (0, 0, 0), (1, 2, 2))  # 4 voxels, all in truth
    # Dice 2*4/(8+4); sensitivity 4/8; no false positive -> specificity 56/56.
    assert dice(truth, inside) == pytest.approx(2 / 3)
    assert sensitivity(truth, inside) == pytest.approx(1 / 2)
    assert specificity(truth, inside) == 1.0
    # Non-boolean masks count nonzero voxels as inside.
    assert dice(truth.astype(np.uint8) * 3, shifted.astype(np.float32)) == pytest.approx(1 / 2)


def test_empty_mask_conventions():
    empty = np.zeros((6, 6, 6), dtype=bool)
    blob = box(empty.shape, (1, 1, 1), (3, 3, 3))
    assert (dice(empty, empty), hausdorff95(empty, empty)) == (1.0, 0.0)
    assert (sensitivity(empty, empty), specificity(empty, empty)) == (1.0, 1.0)
    for truth, pred in ((empty, blob), (blob, empty)):
        assert dice(truth, pred) == 0.0
        assert hausdorff95(truth, pred, (1.0, 2.0, 3.0)) == HD95_EMPTY == 373.13
    # Sensitivity with an empty truth: 1 for an empty prediction, else 0.
    assert sensitivity(empty, blob) == 0.0
    assert sensitivity(blob, empty) == 0.0
    # Specificity with no background in the truth: 1 if the prediction fills the image, else 0.
    full = np.ones_like(empty)
    assert specificity(full, full) == 1.0
    assert specificity(full, blob) == 0.0


def test_shape_mismatch_is_an_input_error():
    with pytest.raises(InputError, match="differ"):
        dice(np.zeros((2, 2, 2)), np.zeros((2, 2, 3)))
    with pytest.raises(InputError, match="differ"):
        hausdorff95(np.ones((2, 2, 2)), np.ones((2, 2, 3)))


# --------------------------------------------------------------------------- surfaces and HD95

def test_surface_voxels():
    cube = box((5, 5, 5), (1, 1, 1), (4, 4, 4))
    surface = surface_voxels(cube)
    assert surface.sum() == 26 and not surface[2, 2, 2]
    # Voxels on the array border are surface: a full 4x4x4 array keeps its 2x2x2 interior.
    full = surface_voxels(np.ones((4, 4, 4)))
    assert full.sum() == 64 - 8 and not full[1:3, 1:3, 1:3].any()


def random_blob(rng, shape, sigma=2.0, fraction=0.3):
    field = ndimage.gaussian_filter(rng.random(shape), sigma, mode="constant")
    return field > np.quantile(field, 1 - fraction)


@pytest.mark.parametrize("seed", range(4))
def test_hd95_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    spacing = tuple(rng.uniform(0.5, 3.0, size=3))
    shape = (18, 16, 14)  # blobs of 30 % of the image touch its border
    truth, pred = random_blob(rng, shape), random_blob(rng, shape, fraction=0.2)
    expected = brute_force_hd95(truth, pred, spacing)
    assert hausdorff95(truth, pred, spacing) == pytest.approx(expected, rel=1e-9)
    assert hausdorff95(pred, truth, spacing) == pytest.approx(expected, rel=1e-9)


def test_hd95_in_a_brats_sized_image_matches_brute_force():
    # Small blobs far apart in a 240x240x155 image: checks that cropping changes nothing.
    rng = np.random.default_rng(11)
    truth, pred = np.zeros((2, 240, 240, 155), dtype=bool)
    truth[100:112, 50:62, 0:10] = random_blob(rng, (12, 12, 10), sigma=1.5)
    pred[104:118, 57:70, 5:15] = random_blob(rng, (14, 13, 10), sigma=1.5)
    pred[230:240, 230:240, 150:155] = True  # a false positive in the image corner
    spacing = (1.0, 1.2, 2.5)
    expected = brute_force_hd95(truth, pred, spacing)
    assert hausdorff95(truth, pred, spacing) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("axis, k", [(0, 1), (0, 3), (2, 1), (2, 3)])
def test_hd95_of_shifted_cubes(axis, k):
    # Cube A (side n = 10) and cube B = A shifted by k voxels along `axis`, spacing s = (1, 2, 3).
    # Every surface voxel p of A has p + k e_axis on the surface of B (and the reverse for B), so
    # no pooled distance exceeds k * s[axis]. The n * n voxels of A's face at the start of `axis`
    # are exactly k * s[axis] from B (every voxel of B is at least k further along `axis`), and so
    # are the n * n voxels of B's far face from A. Sorted, the 2 * 488 pooled distances thus end
    # with at least 200 copies of the maximum (positions 776 to 975), and the 95th percentile
    # interpolates between positions 926 and 927 (0.95 * 975 = 926.25): it is exactly k * s[axis].
    spacing = (1.0, 2.0, 3.0)
    shape = (20, 20, 20)
    cube = box(shape, (3, 3, 3), (13, 13, 13))
    shifted = np.roll(cube, k, axis=axis)
    assert surface_voxels(cube).sum() == 10**3 - 8**3 == 488
    assert hausdorff95(cube, shifted, spacing) == pytest.approx(k * spacing[axis])
    assert hausdorff95(cube, cube, spacing) == 0.0


# --------------------------------------------------------------------------- regions and cases

def test_region_masks_for_both_label_conventions():
    for labels, et in (((1, 2, 4), 4), ((1, 2, 3), 3)):
        label_map = np.array([0, 1, 2, et]).reshape(4, 1, 1)
        masks = region_masks(label_map, labels)
        assert masks["wt"].ravel().tolist() == [False, True, True, True]
        assert masks["tc"].ravel().tolist() == [False, True, False, True]
        assert masks["et"].ravel().tolist() == [False, False, False, True]


def test_unknown_label_values_are_input_errors():
    with pytest.raises(InputError,
                       match=r"seg\.nii\.gz holds label values \[3\] that brats2020 does not have.*brats2023-gli"):
        region_masks(np.array([0, 1, 3]), (1, 2, 4), name="seg.nii.gz")
    with pytest.raises(InputError, match=r"\[4\] that brats2023-gli does not have.*brats2020"):
        region_masks(np.array([0, 4]), (1, 2, 3))
    truth = np.zeros((4, 4, 4), dtype=np.uint8)
    with pytest.raises(InputError, match=r"p\.nii\.gz holds label values \[5, 7\]"):
        evaluate_case(truth, truth + np.uint8(5) + 2 * (np.arange(64) % 2).reshape(4, 4, 4),
                      names=("t.nii.gz", "p.nii.gz"))
    with pytest.raises(InputError, match="differ in shape"):
        evaluate_case(truth, truth[:3])


def test_evaluate_case():
    truth = np.zeros((10, 10, 10), dtype=np.uint8)
    truth[2:8, 2:8, 2:8] = 2
    truth[3:7, 3:7, 3:7] = 1
    truth[4:6, 4:6, 4:6] = 4
    scores = evaluate_case(truth, truth, (1.0, 1.0, 2.0))
    assert all(scores[r] == {"dice": 1.0, "hd95": 0.0, "sensitivity": 1.0, "specificity": 1.0}
               for r in ("wt", "tc", "et"))
    no_et = np.where(truth == 4, 1, truth)
    scores = evaluate_case(truth, no_et, (1.0, 1.0, 2.0))
    assert scores["wt"]["dice"] == scores["tc"]["dice"] == 1.0
    assert scores["et"] == {"dice": 0.0, "hd95": HD95_EMPTY, "sensitivity": 0.0, "specificity": 1.0}


def test_summarize_by_hand():
    rows = [dict.fromkeys(SCORE_COLUMNS, 0.0) | {"case": str(i), "wt_dice": value}
            for i, value in enumerate([0.0, 0.5, 1.0, 1.0])]
    summary = summarize(rows)
    # mean 5/8; sample variance ((5/8)^2 + (1/8)^2 + 2 (3/8)^2) / (4 - 1) = 11/48; linear
    # quartiles at positions 0.75 and 2.25 of the sorted values (0, 0.5, 1, 1): 0.375 and 1.
    assert STD == "std (n-1)"
    assert summary["mean"]["wt_dice"] == pytest.approx(5 / 8)
    assert summary[STD]["wt_dice"] == pytest.approx(np.sqrt(11 / 48))
    assert summary["median"]["wt_dice"] == pytest.approx(3 / 4)
    assert summary["q1"]["wt_dice"] == pytest.approx(3 / 8)
    assert summary["q3"]["wt_dice"] == pytest.approx(1.0)
    assert summary["mean"]["et_hd95"] == 0.0
    # NaN scores (undefined lesion-wise scores) are left out; one value has no sample std.
    summary = summarize([{"case": "a", "x": 1.0, "y": float("nan")},
                         {"case": "b", "x": 0.0, "y": 0.5}])
    assert summary["mean"] == {"x": 0.5, "y": 0.5} and summary["median"]["y"] == 0.5
    assert summary[STD]["x"] == pytest.approx(np.sqrt(0.5)) and np.isnan(summary[STD]["y"])

# --------------------------------------------------------------------------- folders

CASES = [f"BraTS20_Training_{i:03d}" for i in range(1, 5)]


@pytest.fixture(scope="module")
def predictions(synthetic_brats, tmp_path_factory):
    """Predictions of the four synthetic cases and the scores they must get.

    1: the truth; 2: ET relabelled necrosis; 3: ET removed (background); 4 (no ET in the truth):
    ten necrosis voxels relabelled ET.
    """
    directory = tmp_path_factory.mktemp("predictions")
    expected = {}
    perfect = {"dice": 1.0, "hd95": 0.0, "sensitivity": 1.0, "specificity": 1.0}
    missed_et = {"dice": 0.0, "hd95": HD95_EMPTY, "sensitivity": 0.0, "specificity": 1.0}
    for case in CASES:
        truth, geometry = read_nifti(synthetic_brats / case / f"{case}_seg.nii.gz")
        n_wt, n_tc, n_et = (np.isin(truth, v).sum() for v in ((1, 2, 4), (1, 4), (4,)))
        pred = truth.copy()
        if case.endswith("1"):
            expected[case] = {"wt": perfect, "tc": perfect, "et": perfect}
        elif case.endswith("2"):
            pred[truth == 4] = 1
            expected[case] = {"wt": perfect, "tc": perfect, "et": missed_et}
        elif case.endswith("3"):
            pred[truth == 4] = 0
            expected[case] = {
                region: {"dice": 2 * (n - n_et) / (2 * n - n_et), "sensitivity": (n - n_et) / n,
                         "specificity": 1.0}
                for region, n in (("wt", n_wt), ("tc", n_tc))} | {"et": missed_et}
        else:
            assert n_et == 0
            pred.ravel()[np.flatnonzero(truth == 1)[:10]] = 4
            expected[case] = {"wt": perfect, "tc": perfect,
                              "et": {"dice": 0.0, "hd95": HD95_EMPTY, "sensitivity": 0.0,
                                     "specificity": (truth.size - 10) / truth.size}}
        write_nifti(pred, geometry, directory / f"{case}.nii.gz")
    return directory, expected


def read_csv(path):
    with open(path, newline="") as stream:
        return list(csv.DictReader(stream))


def assert_png(path):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
    image = mpimg.imread(path)
    assert image.shape[0] > 100 and image.shape[1] > 100


def test_evaluate_script(synthetic_brats, predictions, tmp_path):
    prediction_dir, expected = predictions
    log = tmp_path / "training.log"
    log.write_text("epoch,learning_rate,loss,val_loss\n0,0.0005,0.9,0.95\n1,0.0005,0.7,0.8\n"
                   "2,0.00025,0.5,NA\n")
    out = tmp_path / "evaluation"
    result = run_script("evaluate.py", f"--prediction_dir={prediction_dir}",
                        f"--truth_dir={synthetic_brats}", f"--output_dir={out}",
                        f"--training_log={log}")
    assert result.returncode == 0, result.stderr
    assert "[1/4] BraTS20_Training_001: WT 1.000 TC 1.000 ET 1.000" in result.stderr
    assert "[4/4] BraTS20_Training_004: WT 1.000 TC 1.000 ET 0.000" in result.stderr

    rows = read_csv(out / "scores.csv")
    assert list(rows[0]) == ["case", *SCORE_COLUMNS]
    assert [row["case"] for row in rows] == CASES
    for row in rows:
        for region, metrics in expected[row["case"]].items():
            for metric, value in metrics.items():
                assert float(row[f"{region}_{metric}"]) == pytest.approx(value, abs=1e-12), \
                    (row["case"], region, metric)
    assert float(rows[2]["wt_hd95"]) > 0  # ET removed leaves holes in WT

    summary = {row["statistic"]: row for row in read_csv(out / "summary.csv")}
    assert list(summary) == ["mean", "std (n-1)", "median", "q1", "q3"]
    for column in SCORE_COLUMNS:
        values = [float(row[column]) for row in rows]
        assert float(summary["mean"][column]) == pytest.approx(np.mean(values))
        assert float(summary["median"][column]) == pytest.approx(np.median(values))
        assert float(summary[STD][column]) == pytest.approx(np.std(values, ddof=1))
    # Mean ET Dice: cases 1, 2, 3, 4 score 1, 0, 0, 0.
    assert float(summary["mean"]["et_dice"]) == pytest.approx(1 / 4)
    et_line = next(line for line in result.stderr.splitlines() if line.startswith("ET "))
    assert float(et_line.split()[1]) == pytest.approx(0.25)

    for png in ["boxplot.png", "loss_graph.png", *(f"overlays/{case}.png" for case in CASES)]:
        assert_png(out / png)
    assert (out / "evaluate.log").read_text().count("] BraTS20_Training_") == 4
    assert "scoring legacy; std: sample (n-1)" in result.stderr
    # brats2020's edition is the whole-image one: no lesion-wise report.
    assert not (out / "lesion_scores.csv").exists() and not (out / "lesion_boxplot.png").exists()
    assert not [p.name for p in out.rglob(".*")]  # no temporary file left


def test_evaluate_script_errors(synthetic_brats, tmp_path):
    case = CASES[0]
    truth, geometry = read_nifti(synthetic_brats / case / f"{case}_seg.nii.gz")
    moved = tmp_path / "moved"
    write_nifti(truth, replace(geometry, origin=(5.0, 0.0, 0.0)), moved / f"{case}.nii.gz")
    result = run_script("evaluate.py", f"--prediction_dir={moved}",
                        f"--truth_dir={synthetic_brats}", f"--output_dir={tmp_path / 'out'}")
    assert result.returncode == 2
    assert f"{moved / case}.nii.gz" in result.stderr and "not on the grid" in result.stderr
    assert f"{case}_seg.nii.gz" in result.stderr and "Traceback" not in result.stderr

    (tmp_path / "empty").mkdir()
    result = run_script("evaluate.py", f"--prediction_dir={tmp_path / 'empty'}",
                        f"--truth_dir={synthetic_brats}", f"--output_dir={tmp_path / 'out'}")
    assert result.returncode == 2
    assert "no predictions found" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out" / "scores.csv").exists()


@pytest.fixture
def log_records():
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    get_logger().addHandler(handler)
    yield records
    get_logger().removeHandler(handler)


def test_evaluate_folder_pairs_predictions_with_truths(synthetic_brats, predictions, tmp_path,
                                                       log_records):
    prediction_dir, _ = predictions
    subset = tmp_path / "subset"
    subset.mkdir()
    for case in CASES[:2]:
        shutil.copy(prediction_dir / f"{case}.nii.gz", subset)
    # Probability maps of brats/predict.py --probabilities beside a prediction are not cases.
    for name in ("wt", "tc", "et", "label_4"):
        shutil.copy(prediction_dir / f"{CASES[0]}.nii.gz", subset / f"{CASES[0]}_{name}.nii.gz")
    lines = []
    evaluation = evaluate_folder(subset, synthetic_brats, tmp_path / "out", overlays=False,
                                 skip_missing=True,
                                 progress=lambda i, n, case, row: lines.append((i, n, case)))
    assert [row["case"] for row in evaluation.scores] == CASES[:2]
    assert evaluation.missing == CASES[2:]
    assert lines == [(1, 2, CASES[0]), (2, 2, CASES[1])]
    warnings = [r.getMessage() for r in log_records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and f"skipped (--skip_missing): {CASES[2]}, {CASES[3]}" in warnings[0]
    assert not (tmp_path / "out" / "overlays").exists()

    # By default a truth without prediction is scored as the official evaluators score it.
    scored = evaluate_folder(subset, synthetic_brats, tmp_path / "out", overlays=False).scores
    assert [row["case"] for row in scored] == CASES and scored[:2] == evaluation.scores
    for row in scored[2:]:
        for region in ("wt", "tc", "et"):
            assert (row[f"{region}_dice"], row[f"{region}_hd95"], row[f"{region}_sensitivity"],
                    row[f"{region}_specificity"]) == (0.0, HD95_EMPTY, 0.0, 0.0)
    assert any("scored as missing" in r.getMessage() for r in log_records)

    shutil.copy(prediction_dir / f"{CASES[0]}.nii.gz", subset / "BraTS20_Training_099.nii.gz")
    with pytest.raises(InputError, match="BraTS20_Training_099"):
        evaluate_folder(subset, synthetic_brats, tmp_path / "out")
    with pytest.raises(InputError, match="no_such.log: file not found"):
        evaluate_folder(prediction_dir, synthetic_brats, tmp_path / "out",
                        training_log=tmp_path / "no_such.log")


def test_find_truth_files_layouts(synthetic_brats, tmp_path):
    found = find_truth_files(synthetic_brats)
    assert found == {case: synthetic_brats / case / f"{case}_seg.nii.gz" for case in CASES}
    flat = tmp_path / "flat"
    flat.mkdir()
    shutil.copy(found[CASES[0]], flat / f"{CASES[0]}_seg.nii.gz")
    shutil.copy(found[CASES[1]], flat / "BraTS-GLI-00002-000-seg.nii")
    (flat / "notes.txt").write_text("not a label")
    assert find_truth_files(flat) == {CASES[0]: flat / f"{CASES[0]}_seg.nii.gz",
                                      "BraTS-GLI-00002-000": flat / "BraTS-GLI-00002-000-seg.nii"}
    preprocessed = tmp_path / "preprocessed" / "case_a"
    preprocessed.mkdir(parents=True)
    shutil.copy(found[CASES[0]], preprocessed / "truth.nii.gz")
    shutil.copy(synthetic_brats / CASES[0] / f"{CASES[0]}_flair.nii.gz",
                preprocessed / "flair.nii.gz")
    assert find_truth_files(preprocessed.parent) == {"case_a": preprocessed / "truth.nii.gz"}
    nothing = tmp_path / "nothing"
    nothing.mkdir()
    with pytest.raises(InputError, match="no truth label files"):
        find_truth_files(nothing)


def test_brats2023_labels(tmp_path):
    truth_dir = tmp_path / "brats2023"
    make_synthetic_brats(truth_dir, n_cases=1, shape=(32, 32, 32), seed=3, naming="brats2023")
    case = "BraTS-GLI-00001-000"
    predictions = tmp_path / "predictions"
    predictions.mkdir()
    shutil.copy(truth_dir / case / f"{case}-seg.nii.gz", predictions / f"{case}.nii.gz")
    evaluation = evaluate_folder(predictions, truth_dir, tmp_path / "out")  # brats2023-gli
    rows = evaluation.scores
    assert rows[0]["et_dice"] == 1.0 and rows[0]["et_hd95"] == 0.0
    assert evaluation.edition.name == "brats2023"  # the 2023 convention's edition
    assert [(row["region"], row["dice"], row["hd95"]) for row in evaluation.lesions] == [
        ("wt", 1.0, 0.0), ("tc", 1.0, 0.0), ("et", 1.0, 0.0)]
    assert_png(tmp_path / "out" / "lesion_boxplot.png")
    assert_png(tmp_path / "out" / "overlays" / f"{case}.png")
    with pytest.raises(InputError, match=r"\[3\] that brats2020 does not have.*brats2023-gli"):
        evaluate_folder(predictions, truth_dir, tmp_path / "out", convention="brats2020")
