"""N4 bias correction and the preprocessing of BraTS folders (brats/preprocess.py)."""

import shutil
from pathlib import Path

import numpy as np
import pytest

from helpers import run_script
from unet3d.brats import MODALITIES
from unet3d.conventions import CONVENTIONS
from unet3d.errors import InputError
from unet3d.io import read_nifti, write_nifti
from unet3d.data import DataStore, write_store_from_folder
from unet3d.preprocessing import (PreprocessConfig, n4_bias_correction, preprocess_brats,
                                  read_preprocess_config)
from unet3d.synthetic import brats_geometry
from unet3d.synthetic_anatomy import WHITE_MATTER, generate_case


def test_n4_reduces_a_known_bias_field():
    shape = (96, 96, 72)
    case = generate_case(shape, np.random.default_rng(3))
    raw = case.images["t1"].astype(np.float32)
    brain = raw > 0
    white = (case.tissue == WHITE_MATTER) & (case.label == 0)
    # Unbiased image: the case's clean intensities plus its own noise; then a strong known field.
    unbiased = case.clean("t1") + (raw - case.clean("t1") * case.bias["t1"])
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    field = np.exp(0.3 * x - 0.2 * y * z + 0.15 * z ** 2).astype(np.float32)
    image = np.where(brain, unbiased * field, 0).astype(np.float32)

    def cov(values):
        return values[white].std() / values[white].mean()

    corrected = n4_bias_correction(image, brats_geometry(shape), brain)
    assert cov(image) > 2 * cov(unbiased), "the known field should dominate the CoV"
    assert cov(corrected) < 0.5 * cov(image)
    assert cov(corrected) < 1.5 * cov(unbiased)
    assert np.all(corrected[~brain] == 0) and np.all(np.isfinite(corrected))


@pytest.fixture()
def brats_copy(synthetic_brats, tmp_path) -> Path:
    root = tmp_path / "brats"
    shutil.copytree(synthetic_brats, root)
    return root


def case_files(root: Path, case: str) -> dict:
    return {m: root / case / f"{case}_{m}.nii.gz" for m in ("t1", "t1ce", "t2", "flair", "seg")}


def test_preprocess_writes_legacy_layout_on_the_original_grid(brats_copy, tmp_path):
    out = tmp_path / "out"
    lines = []
    report = preprocess_brats(brats_copy, out, workers=1, progress=lines.append)
    assert sorted(report.done) == [f"BraTS20_Training_00{i}" for i in range(1, 5)]
    assert not report.failed and len(lines) == 5 and "[1/4]" in lines[1]
    assert lines[0].startswith("4 case(s) of brats2020 (BraTS 2020)") and "detected" in lines[0]
    files = case_files(brats_copy, "BraTS20_Training_001")
    folder = out / "BraTS20_Training_001"
    assert sorted(p.name for p in folder.iterdir()) == [
        "flair.nii.gz", "t1.nii.gz", "t1ce.nii.gz", "t2.nii.gz", "truth.nii.gz"]
    seg, seg_geometry = read_nifti(files["seg"])
    truth, truth_geometry = read_nifti(folder / "truth.nii.gz")
    assert truth.dtype == np.uint8 and np.array_equal(truth, seg)
    assert truth_geometry == seg_geometry
    np.testing.assert_allclose(truth_geometry.affine, seg_geometry.affine)
    # flair is not bias-corrected by default: same values; t1 is, and stays zero outside the brain.
    flair_in, _ = read_nifti(files["flair"], dtype=np.float32)
    flair_out, _ = read_nifti(folder / "flair.nii.gz")
    assert np.array_equal(flair_in, flair_out)
    t1_in, _ = read_nifti(files["t1"], dtype=np.float32)
    t1_out, geometry = read_nifti(folder / "t1.nii.gz")
    assert geometry == seg_geometry and t1_out.dtype == np.float32
    assert not np.allclose(t1_in, t1_out) and np.all(t1_out[t1_in == 0] == 0)
    # the settings are recorded, and a store of the folder carries them to the model card
    resolved = PreprocessConfig(modalities=MODALITIES)  # the convention's modalities
    assert read_preprocess_config(out) == (resolved, CONVENTIONS["brats2020"])
    assert read_preprocess_config(brats_copy) == (None, None)
    with DataStore(write_store_from_folder(out, tmp_path / "store.h5",
                                           progress=lambda line: None)) as store:
        assert store.preprocessing == resolved and store.labels == (1, 2, 4)
        assert store.convention == CONVENTIONS["brats2020"]


def test_preprocess_resumes_and_overwrites(brats_copy, tmp_path):
    out = tmp_path / "out"
    preprocess_brats(brats_copy, out)
    marker = (out / "BraTS20_Training_002" / "t1.nii.gz").stat().st_mtime_ns
    again = preprocess_brats(brats_copy, out)
    assert again.done == [] and len(again.skipped) == 4
    assert (out / "BraTS20_Training_002" / "t1.nii.gz").stat().st_mtime_ns == marker
    redone = preprocess_brats(brats_copy, out, overwrite=True)
    assert len(redone.done) == 4
    with pytest.raises(InputError, match="other settings"):
        preprocess_brats(brats_copy, out, PreprocessConfig(bias_correction=("t1",)))


@pytest.mark.parametrize("config, message", [
    (PreprocessConfig(bias_correction=("t1", "t3")), "unknown t3"),
    (PreprocessConfig(modalities=("t1", "t2"), bias_correction=("t1ce",)),
     "--bias_correction t1ce: not among --modalities t1,t2"),
    (PreprocessConfig(modalities=("t1", "t1")), "--modalities t1,t1: one or more, each once"),
    (PreprocessConfig(modalities=(), bias_correction=()), "one or more, each once"),
    (PreprocessConfig(n4_iterations=()), "one or more levels"),
])
def test_impossible_settings_are_refused_before_any_case(brats_copy, tmp_path, config, message):
    with pytest.raises(InputError, match=message):
        preprocess_brats(brats_copy, tmp_path / "out", config)
    assert not (tmp_path / "out").exists()


def test_a_store_of_fewer_modalities_keeps_their_order(brats_copy, tmp_path):
    """The modalities preprocessed (here two, FLAIR first) are the store's channels, in order."""
    config = PreprocessConfig(modalities=("flair", "t1ce"), bias_correction=("t1ce",))
    preprocess_brats(brats_copy, tmp_path / "out", config)
    with DataStore(write_store_from_folder(tmp_path / "out", tmp_path / "s.h5",
                                           progress=lambda line: None)) as store:
        assert store.modalities == ("flair", "t1ce") and store.n_channels == 2
        assert store.preprocessing == config


def test_the_script_checks_the_store_shape_before_any_case(brats_copy, tmp_path):
    for args, message in ((["--image_shape", "0,16,16", "--data_file", str(tmp_path / "s.h5")],
                           "--image_shape 0,16,16: three positive sizes"),
                          (["--image_shape", "16,16,16"], "give --data_file too")):
        result = run_script("preprocess.py", f"--brats_dir={brats_copy}",
                            f"--out_dir={tmp_path / 'out'}", *args)
        assert result.returncode == 2 and message in result.stderr, result.stderr[-2000:]
        assert not list((tmp_path / "out").glob("BraTS*"))


def corrupt_cases(root: Path) -> dict:
    """Break three cases in three ways; return {case: expected message fragment}."""
    files = case_files(root, "BraTS20_Training_001")
    image, geometry = read_nifti(files["t2"], dtype=np.float32)
    image[10, 10, 10] = np.nan
    write_nifti(image, geometry, files["t2"])
    files = case_files(root, "BraTS20_Training_002")
    files["t1ce"].unlink()
    files = case_files(root, "BraTS20_Training_003")
    seg, geometry = read_nifti(files["seg"])
    seg[0, 0, 0] = 3
    write_nifti(seg, geometry, files["seg"])
    return {"BraTS20_Training_001": "NaN", "BraTS20_Training_002": "missing modality t1ce",
            "BraTS20_Training_003": "label values [3]"}


def test_bad_cases_are_reported_and_the_others_done(brats_copy, tmp_path):
    expected = corrupt_cases(brats_copy)
    report = preprocess_brats(brats_copy, tmp_path / "out", workers=2)
    assert report.done == ["BraTS20_Training_004"]
    assert set(report.failed) == set(expected)
    for case, fragment in expected.items():
        assert case in report.failed[case] and fragment in report.failed[case]
    assert not any(p.name.endswith(".partial") for p in (tmp_path / "out").iterdir())


def test_mismatched_grid_and_unreadable_file(brats_copy, tmp_path):
    files = case_files(brats_copy, "BraTS20_Training_001")
    image, geometry = read_nifti(files["flair"])
    write_nifti(image[:-2], brats_geometry(image[:-2].shape), files["flair"])
    files = case_files(brats_copy, "BraTS20_Training_002")
    files["t1"].write_bytes(b"not a nifti file")
    report = preprocess_brats(brats_copy, tmp_path / "out")
    assert "is not on the grid" in report.failed["BraTS20_Training_001"]
    assert "_flair.nii.gz" in report.failed["BraTS20_Training_001"]
    assert "cannot read" in report.failed["BraTS20_Training_002"]
    assert "BraTS20_Training_002_t1.nii.gz" in report.failed["BraTS20_Training_002"]


@pytest.mark.slow
def test_script_exit_status_summary_and_store(brats_copy, tmp_path):
    out, data_file = tmp_path / "out", tmp_path / "brats_data.h5"
    result = run_script("preprocess.py", f"--brats_dir={brats_copy}", f"--out_dir={out}",
                        f"--data_file={data_file}", "--workers=2")
    assert result.returncode == 0, result.stderr
    assert data_file.is_file() and "data store written" in result.stderr
    assert "[4/4]" in (out / "preprocess.log").read_text()
    again = run_script("preprocess.py", f"--brats_dir={brats_copy}", f"--out_dir={out}",
                       f"--data_file={data_file}")
    assert again.returncode == 2 and "already exists; pass --overwrite" in again.stderr
    corrupt_cases(brats_copy)
    failed = run_script("preprocess.py", f"--brats_dir={brats_copy}", f"--out_dir={out}",
                        "--overwrite")
    assert failed.returncode == 1
    assert "failed cases:" in failed.stderr and "BraTS20_Training_002: case" in failed.stderr
    empty = run_script("preprocess.py", f"--brats_dir={tmp_path / 'nothing'}", f"--out_dir={out}")
    assert empty.returncode == 2 and "no such folder" in empty.stderr and "Traceback" not in empty.stderr
