"""Tests of `unet3d.synthetic` and `brats/make_synthetic_data.py`: names, geometry, labels, content,
determinism, and the script's handling of bad input."""

import gzip
import hashlib
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from unet3d.errors import InputError
from unet3d.io import Geometry
from unet3d.synthetic import make_synthetic_brats, write_synthetic_case
from unet3d.synthetic_anatomy import NOISE_STD, generate_case

REPO = Path(__file__).resolve().parents[1]
SMALL = (64, 56, 40)  # not cubic, so that an (x, y, z) / (z, y, x) mix-up shows
SEED = 3
N_CASES = 5
MODALITY_FILES_2020 = ("t1", "t1ce", "t2", "flair")
MODALITY_FILES_2023 = ("t1n", "t1c", "t2w", "t2f")
SIX_NEIGHBOURS = ndimage.generate_binary_structure(3, 1)


def read(path):
    """(array indexed (x, y, z), SimpleITK image) of a NIfTI file."""
    image = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(image).transpose(2, 1, 0), image


def touches(region, other):
    """Whether any voxel of `region` is 6-adjacent to a voxel of `other`."""
    return bool((ndimage.binary_dilation(other, SIX_NEIGHBOURS) & region).any())


def mean(image, mask):
    return float(image[mask].mean())


def digests(folder):
    return {path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(Path(folder).rglob("*")) if path.is_file()}


@pytest.fixture(scope="module")
def cases_2020(tmp_path_factory):
    out = tmp_path_factory.mktemp("brats2020")
    return out, make_synthetic_brats(out, n_cases=N_CASES, shape=SMALL, seed=SEED)


@pytest.fixture(scope="module")
def cases_2023(tmp_path_factory):
    out = tmp_path_factory.mktemp("brats2023")
    return out, make_synthetic_brats(out, n_cases=4, shape=SMALL, seed=SEED, naming="brats2023")


def test_file_names_brats2020(cases_2020):
    out, case_dirs = cases_2020
    names = [f"BraTS20_Training_{i:03d}" for i in range(1, N_CASES + 1)]
    assert [d.name for d in case_dirs] == names
    assert sorted(p.name for p in out.iterdir()) == names
    assert sorted(p.name for p in case_dirs[0].iterdir()) == sorted([
        "BraTS20_Training_001_t1.nii.gz", "BraTS20_Training_001_t1ce.nii.gz",
        "BraTS20_Training_001_t2.nii.gz", "BraTS20_Training_001_flair.nii.gz",
        "BraTS20_Training_001_seg.nii.gz"])
    for case_dir in case_dirs:
        assert len(list(case_dir.iterdir())) == 5  # no temporary files left behind


def test_file_names_brats2023(cases_2023):
    out, case_dirs = cases_2023
    assert [d.name for d in case_dirs] == [f"BraTS-GLI-0000{i}-000" for i in range(1, 5)]
    assert sorted(p.name for p in case_dirs[1].iterdir()) == sorted([
        "BraTS-GLI-00002-000-t1n.nii.gz", "BraTS-GLI-00002-000-t1c.nii.gz",
        "BraTS-GLI-00002-000-t2w.nii.gz", "BraTS-GLI-00002-000-t2f.nii.gz",
        "BraTS-GLI-00002-000-seg.nii.gz"])


def check_geometry(path, shape, pixel_id):
    _, image = read(path)
    assert image.GetPixelID() == pixel_id
    assert image.GetSize() == tuple(shape)
    assert image.GetSpacing() == (1.0, 1.0, 1.0)
    assert image.GetOrigin() == (0.0, -(shape[1] - 1.0), 0.0)
    assert image.GetDirection() == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    expected = np.diag([-1.0, -1.0, 1.0, 1.0])
    expected[1, 3] = shape[1] - 1
    np.testing.assert_allclose(Geometry.of(image).affine, expected, atol=1e-6)
    # The sform in the NIfTI header itself (what nibabel reports), read without SimpleITK.
    with gzip.open(path, "rb") as f:
        header = f.read(348)
    assert struct.unpack("<i", header[:4])[0] == 348
    sform_code = struct.unpack("<h", header[254:256])[0]
    srows = np.array(struct.unpack("<12f", header[280:328])).reshape(3, 4)
    assert sform_code > 0
    np.testing.assert_allclose(srows, expected[:3], atol=1e-6)


def test_dtypes_and_geometry(cases_2020, cases_2023):
    for case_dir in (cases_2020[1][0], cases_2023[1][0]):
        for path in sorted(case_dir.iterdir()):
            is_label = path.name.endswith("seg.nii.gz")
            check_geometry(path, SMALL, sitk.sitkUInt8 if is_label else sitk.sitkInt16)


def test_default_shape_is_brats_grid(tmp_path):
    case_dir = write_synthetic_case(tmp_path, 1, seed=0)
    assert case_dir == tmp_path / "BraTS20_Training_001"
    check_geometry(case_dir / "BraTS20_Training_001_t1ce.nii.gz", (240, 240, 155), sitk.sitkInt16)
    check_geometry(case_dir / "BraTS20_Training_001_seg.nii.gz", (240, 240, 155), sitk.sitkUInt8)
    flair, _ = read(case_dir / "BraTS20_Training_001_flair.nii.gz")
    brain = flair > 0
    # A brain of plausible size (real ones: about 1.1 to 1.7 litres) well inside the grid.
    assert 0.9e6 < brain.sum() < 2.0e6
    for axis in range(3):
        extent = np.flatnonzero(brain.any(axis=tuple(a for a in range(3) if a != axis)))
        assert extent[0] > 0 and extent[-1] < brain.shape[axis] - 1


def labels_of(case_dirs, naming):
    return [read(d / f"{d.name}{'_seg' if naming == 'brats2020' else '-seg'}.nii.gz")[0]
            for d in case_dirs]


def test_label_values_and_missing_enhancing_tumour(cases_2020, cases_2023):
    values_2020 = [set(np.unique(x).tolist()) for x in labels_of(cases_2020[1], "brats2020")]
    # Every 4th case (1-based) has no enhancing tumour; the others have all three sub-regions.
    assert values_2020 == [{0, 1, 2, 4}, {0, 1, 2, 4}, {0, 1, 2, 4}, {0, 1, 2}, {0, 1, 2, 4}]
    values_2023 = [set(np.unique(x).tolist()) for x in labels_of(cases_2023[1], "brats2023")]
    assert values_2023 == [{0, 1, 2, 3}, {0, 1, 2, 3}, {0, 1, 2, 3}, {0, 1, 2}]


def test_brats2023_is_brats2020_with_et_relabelled(cases_2020, cases_2023):
    label_2020 = labels_of(cases_2020[1][:1], "brats2020")[0]
    label_2023 = labels_of(cases_2023[1][:1], "brats2023")[0]
    np.testing.assert_array_equal(label_2023, np.where(label_2020 == 4, 3, label_2020))
    t1ce_2020, _ = read(cases_2020[1][0] / "BraTS20_Training_001_t1ce.nii.gz")
    t1ce_2023, _ = read(cases_2023[1][0] / "BraTS-GLI-00001-000-t1c.nii.gz")
    np.testing.assert_array_equal(t1ce_2020, t1ce_2023)


def test_sub_regions_are_nested(cases_2020):
    for index, label in enumerate(labels_of(cases_2020[1], "brats2020"), start=1):
        background, necrosis, oedema, enhancing = (label == 0, label == 1, label == 2, label == 4)
        core = necrosis | enhancing
        assert oedema.sum() > 0 and core.sum() > 0
        # The core lies inside the whole tumour: oedema separates it from the background.
        assert not touches(core, background), index
        assert not touches(necrosis, background), index
        if index % 4 != 0:
            # The enhancing rim encloses the necrosis: necrosis never meets oedema.
            assert necrosis.sum() > 0 and enhancing.sum() > 0
            assert not touches(necrosis, oedema), index
        # The whole tumour is one lump, not scattered voxels.
        _, n_components = ndimage.label(label > 0, SIX_NEIGHBOURS)
        assert n_components == 1, index


@pytest.mark.parametrize("shape", [(32, 32, 32), (32, 64, 128)])
def test_invariants_hold_for_many_small_cases(shape):
    """The smallest grids have the thinnest rims; every case must still nest its sub-regions."""
    for index in range(1, 51):
        enhancing = index % 4 != 0
        case = generate_case(shape, np.random.default_rng([7, index]), enhancing=enhancing)
        label, brain = case.label, case.tissue > 0
        counts = np.bincount(label.ravel(), minlength=5)
        assert counts[1] > 0 and counts[2] > 0 and (counts[4] > 0) == enhancing, index
        assert (np.bincount(case.tissue.ravel(), minlength=5) > 0).all(), index
        assert not (label[~brain]).any()
        for image in case.images.values():
            np.testing.assert_array_equal(image > 0, brain)
        core = (label == 1) | (label == 4)
        assert not touches(core, label == 0), index
        if enhancing:
            assert not touches(label == 1, label == 2), index


def test_zero_outside_the_brain(cases_2020):
    for case_dir in cases_2020[1]:
        images = [read(case_dir / f"{case_dir.name}_{m}.nii.gz")[0] for m in MODALITY_FILES_2020]
        label, _ = read(case_dir / f"{case_dir.name}_seg.nii.gz")
        brain = images[0] > 0
        assert 0.05 < brain.mean() < 0.6  # a head in the grid, not an empty or full grid
        for image in images:
            assert image.min() == 0
            np.testing.assert_array_equal(image > 0, brain)  # one brain mask for all modalities
        assert not (label[~brain]).any()
        # Skull-stripped: the faces of the grid are background.
        for axis in range(3):
            assert not np.take(brain, [0, -1], axis=axis).any()


def test_generate_case_matches_files_and_is_pure(cases_2020):
    case = generate_case(SMALL, np.random.default_rng([SEED, 2]), enhancing=True)
    case_dir = cases_2020[1][1]
    for key in MODALITY_FILES_2020:
        image, _ = read(case_dir / f"{case_dir.name}_{key}.nii.gz")
        assert case.images[key].dtype == np.int16 and case.images[key].shape == SMALL
        np.testing.assert_array_equal(case.images[key], image)
    label, _ = read(case_dir / f"{case_dir.name}_seg.nii.gz")
    assert case.label.dtype == np.uint8 and case.tissue.dtype == np.uint8
    np.testing.assert_array_equal(case.label, label)

    # Without enhancing tumour: the same anatomy, the enhancing rim turned into necrosis.
    plain = generate_case(SMALL, np.random.default_rng([SEED, 2]), enhancing=False)
    np.testing.assert_array_equal(plain.label, np.where(case.label == 4, 1, case.label))
    np.testing.assert_array_equal(plain.tissue, case.tissue)


def test_tissue_map():
    case = generate_case(SMALL, np.random.default_rng([11, 1]))
    assert set(np.unique(case.tissue).tolist()) == {0, 1, 2, 3, 4}
    np.testing.assert_array_equal(case.tissue == 4, case.label > 0)
    np.testing.assert_array_equal(case.tissue > 0, case.images["t2"] > 0)


def test_contrasts_as_in_real_mri():
    for index in (1, 2, 3):
        case = generate_case(SMALL, np.random.default_rng([SEED, index]))
        t1, t1ce, t2, flair = (case.images[k].astype(float) for k in ("t1", "t1ce", "t2", "flair"))
        csf, grey, white = (case.tissue == 1, case.tissue == 2, case.tissue == 3)
        necrosis, oedema, enhancing = (case.label == 1, case.label == 2, case.label == 4)
        # Tissue: T1 WM > GM > CSF; T2 CSF > GM > WM; FLAIR GM > WM > CSF (fluid suppressed).
        assert mean(t1, white) > mean(t1, grey) > mean(t1, csf)
        assert mean(t1ce, white) > mean(t1ce, grey) > mean(t1ce, csf)
        assert mean(t2, csf) > mean(t2, grey) > mean(t2, white)
        assert mean(flair, grey) > mean(flair, white) > mean(flair, csf)
        # Tumour: ET bright on T1ce, oedema bright on T2 and FLAIR, tumour dark on T1, necrosis dark
        # on T1ce.
        assert mean(t1ce, enhancing) > 1.3 * mean(t1ce, white)
        assert mean(flair, oedema) > 1.3 * mean(flair, white)
        assert mean(t2, oedema) > 1.3 * mean(t2, white)
        assert mean(t1, case.label > 0) < 0.9 * mean(t1, white)
        assert mean(t1ce, necrosis) < mean(t1ce, white)


def test_bias_field_is_smooth_multiplicative_and_not_constant():
    case = generate_case(SMALL, np.random.default_rng([SEED, 1]))
    brain = case.brain
    fields = []
    for key in ("t1", "t1ce", "t2", "flair"):
        bias = case.bias[key]
        assert bias.dtype == np.float32 and bias.shape == SMALL
        spread = float(bias[brain].max() - bias[brain].min())
        assert 0.1 < spread < 0.5  # about +-20 %
        assert 0.7 < bias.min() and bias.max() < 1.3
        # Smooth: neighbouring voxels differ by a small part of the range (noise would not).
        for axis in range(3):
            assert np.abs(np.diff(bias, axis=axis)).max() < 0.15 * spread
        # The image is clean intensity times bias plus noise of the documented strength.
        residual = case.images[key][brain] - case.clean(key)[brain] * bias[brain]
        assert abs(residual.mean()) < 0.05 * NOISE_STD[key]
        assert abs(residual.std() / NOISE_STD[key] - 1) < 0.05
        fields.append(bias)
    assert not np.allclose(fields[0], fields[1])  # one field per modality


def test_tumours_vary_between_cases():
    sizes, centres = [], []
    for index in range(1, 5):
        label = generate_case((96, 96, 64), np.random.default_rng([0, index])).label
        sizes.append(int((label > 0).sum()))
        centres.append(np.argwhere(label > 0).mean(axis=0))
    assert len(set(sizes)) == 4
    assert max(np.linalg.norm(c - centres[0]) for c in centres[1:]) > 5


def test_same_seed_same_bytes_whatever_n_cases(cases_2020, tmp_path):
    out, _ = cases_2020
    make_synthetic_brats(tmp_path / "again", n_cases=2, shape=SMALL, seed=SEED)
    first = digests(out)
    again = digests(tmp_path / "again")
    assert len(again) == 10
    assert again == {name: digest for name, digest in first.items()
                     if name.split("/")[0] in ("BraTS20_Training_001", "BraTS20_Training_002")}


def test_different_seed_different_data(cases_2020, tmp_path):
    make_synthetic_brats(tmp_path, n_cases=1, shape=SMALL, seed=SEED + 1)
    first, other = digests(cases_2020[0]), digests(tmp_path)
    for name, digest in other.items():
        assert first[name] != digest, name


def test_bad_arguments(tmp_path):
    for shape in [(64, 64), (64, 64, 31), (64, 64, 48, 2), (64.5, 64, 48)]:
        with pytest.raises(InputError, match="shape"):
            make_synthetic_brats(tmp_path, n_cases=1, shape=shape)
    with pytest.raises(InputError, match="n_cases"):
        make_synthetic_brats(tmp_path, n_cases=0, shape=SMALL)
    with pytest.raises(InputError, match="brats2019"):
        make_synthetic_brats(tmp_path, n_cases=1, shape=SMALL, naming="brats2019")
    with pytest.raises(InputError, match="seed"):
        make_synthetic_brats(tmp_path, n_cases=1, shape=SMALL, seed=-1)
    assert list(tmp_path.iterdir()) == []  # nothing written for bad arguments


def test_existing_cases_need_overwrite(tmp_path):
    make_synthetic_brats(tmp_path, n_cases=1, shape=SMALL, seed=1)
    before = digests(tmp_path)
    with pytest.raises(InputError, match="overwrite") as error:
        make_synthetic_brats(tmp_path, n_cases=2, shape=SMALL, seed=2)
    assert "BraTS20_Training_001" in str(error.value)
    # Refused before writing anything: case 1 is unchanged and case 2 was not written.
    assert digests(tmp_path) == before
    make_synthetic_brats(tmp_path, n_cases=2, shape=SMALL, seed=2, overwrite=True)
    after = digests(tmp_path)
    assert len(after) == 10
    assert after["BraTS20_Training_001/BraTS20_Training_001_t1.nii.gz"] != \
        before["BraTS20_Training_001/BraTS20_Training_001_t1.nii.gz"]


def test_progress_callback(tmp_path):
    calls = []
    make_synthetic_brats(tmp_path, n_cases=2, shape=SMALL,
                         progress=lambda i, n, d, s: calls.append((i, n, d, s)))
    assert [(i, n, d.name) for i, n, d, _ in calls] == [
        (1, 2, "BraTS20_Training_001"), (2, 2, "BraTS20_Training_002")]
    assert all(s > 0 for *_, s in calls)


def run_script(*args):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in [env.get("PYTHONPATH")] if p])
    return subprocess.run([sys.executable, str(REPO / "brats" / "make_synthetic_data.py"), *args],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=120)


def test_script(tmp_path):
    out = tmp_path / "data"
    args = ["--out_dir", str(out), "--n_cases", "2", "--shape", "48,48,40", "--seed", "5",
            "--naming", "brats2023"]
    result = run_script(*args)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("[1/2] BraTS-GLI-00001-000 written (")
    assert lines[1].startswith("[2/2] BraTS-GLI-00002-000 written (")
    expected = tmp_path / "library"
    make_synthetic_brats(expected, n_cases=2, shape=(48, 48, 40), seed=5, naming="brats2023")
    assert digests(out) == digests(expected)

    # Existing output without --overwrite: a one-line error naming the folder, exit status 2.
    result = run_script(*args)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ")
    assert "BraTS-GLI-00001-000" in result.stderr and "--overwrite" in result.stderr
    assert "Traceback" not in result.stderr
    assert run_script(*args, "--overwrite").returncode == 0

    for shape in ("64,64", "64,64,abc", "16,64,64"):
        result = run_script("--out_dir", str(tmp_path / "bad"), "--shape", shape)
        assert result.returncode == 2, shape
        assert result.stderr.startswith("error: shape")
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "bad").exists()
