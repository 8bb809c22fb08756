"""Finding BraTS cases of every release naming on disk."""


import pytest

from helpers import touch
from unet3d.brats import MODALITIES, case_file_name, classify_file, find_cases
from unet3d.errors import InputError


def test_brats2020_naming(tmp_path):
    for case in ("BraTS20_Training_002", "BraTS20_Training_001"):
        touch(tmp_path / case, *(f"{case}_{m}.nii.gz" for m in ("t1", "t1ce", "t2", "flair", "seg")))
    cases = find_cases(tmp_path)
    assert [c.name for c in cases] == ["BraTS20_Training_001", "BraTS20_Training_002"]
    case = cases[0]
    assert case.images["t1ce"].name == "BraTS20_Training_001_t1ce.nii.gz"
    assert case.images["t1"].name == "BraTS20_Training_001_t1.nii.gz"
    assert case.label.name == "BraTS20_Training_001_seg.nii.gz"
    assert case.candidates == ("brats2020",) and case.labels == (1, 2, 4)
    assert [p.name for p in case.files()] == [
        f"BraTS20_Training_001_{m}.nii.gz" for m in (*MODALITIES, "seg")]


def test_brats2018_hgg_lgg_subfolders(tmp_path):
    touch(tmp_path / "HGG" / "Brats18_2013_2_1",
          *(f"Brats18_2013_2_1_{m}.nii.gz" for m in ("t1", "t1ce", "t2", "flair", "seg")))
    touch(tmp_path / "LGG" / "Brats18_TCIA10_103_1",
          *(f"Brats18_TCIA10_103_1_{m}.nii.gz" for m in ("t1", "t1ce", "t2", "flair", "seg")))
    cases = find_cases(tmp_path)
    assert [c.name for c in cases] == ["Brats18_2013_2_1", "Brats18_TCIA10_103_1"]
    assert all(set(c.images) == set(MODALITIES) and c.label for c in cases)


def test_brats2017_tcga_naming_prefers_manually_corrected_labels(tmp_path):
    prefix = "TCGA-02-0006_1996.08.23"
    touch(tmp_path / "TCGA-02-0006", f"{prefix}_t1.nii.gz", f"{prefix}_t1Gd.nii.gz",
          f"{prefix}_t2.nii.gz", f"{prefix}_flair.nii.gz", f"{prefix}_GlistrBoost.nii.gz",
          f"{prefix}_GlistrBoost_ManuallyCorrected.nii.gz")
    (case,) = find_cases(tmp_path)
    assert case.name == "TCGA-02-0006"
    assert case.images["t1ce"].name == f"{prefix}_t1Gd.nii.gz"
    assert case.label.name == f"{prefix}_GlistrBoost_ManuallyCorrected.nii.gz"


def test_brats2023_naming_uses_label_3(tmp_path):
    case = "BraTS-GLI-00000-000"
    touch(tmp_path / case, *(f"{case}-{m}.nii.gz" for m in ("t1n", "t1c", "t2w", "t2f", "seg")))
    (found,) = find_cases(tmp_path)
    assert found.candidates == ("brats2023-gli", "brats2024-gli")
    assert {m: p.name for m, p in found.images.items()} == {
        "t1": f"{case}-t1n.nii.gz", "t1ce": f"{case}-t1c.nii.gz",
        "t2": f"{case}-t2w.nii.gz", "flair": f"{case}-t2f.nii.gz"}
    assert case_file_name(case, "t1ce", "brats2023") == f"{case}-t1c.nii.gz"


def test_unlabelled_and_uncompressed_cases(tmp_path):
    touch(tmp_path / "BraTS20_Validation_001",
          *(f"BraTS20_Validation_001_{m}.nii" for m in ("t1", "t1ce", "t2", "flair")))
    (case,) = find_cases(tmp_path)
    assert case.label is None and len(case.files()) == 4


def test_preprocessed_layout_and_unrelated_files(tmp_path):
    touch(tmp_path / "case_a", "t1.nii.gz", "t1ce.nii.gz", "flair.nii.gz", "t2.nii.gz",
          "truth.nii.gz", "notes.txt", "brainmask.nii.gz")
    (case,) = find_cases(tmp_path)
    assert case.name == "case_a" and case.label.name == "truth.nii.gz"
    assert set(case.images) == set(MODALITIES)


def test_flat_layout_groups_files_by_case(tmp_path):
    touch(tmp_path, *(f"{c}_{m}.nii.gz" for c in ("P1", "P2")
                      for m in ("t1", "t1ce", "t2", "flair", "seg")))
    cases = find_cases(tmp_path)
    assert [c.name for c in cases] == ["P1", "P2"]
    assert cases[1].images["t2"].name == "P2_t2.nii.gz" and cases[1].label.name == "P2_seg.nii.gz"


def test_missing_modality_is_reported_with_case_and_expected_name(tmp_path):
    touch(tmp_path / "BraTS20_Training_009",
          *(f"BraTS20_Training_009_{m}.nii.gz" for m in ("t1", "t2", "flair", "seg")))
    (case,) = find_cases(tmp_path)
    with pytest.raises(InputError, match=r"BraTS20_Training_009.*missing modality t1ce.*"
                                         r"BraTS20_Training_009_t1ce\.nii\.gz"):
        case.files()


def test_empty_and_missing_folders(tmp_path):
    with pytest.raises(InputError, match="no BraTS cases found"):
        find_cases(tmp_path)
    touch(tmp_path / "x", "readme.txt")
    with pytest.raises(InputError, match="no BraTS cases found"):
        find_cases(tmp_path)
    with pytest.raises(InputError, match="no such folder"):
        find_cases(tmp_path / "absent")


def test_two_files_of_one_modality_in_a_case_folder(tmp_path):
    touch(tmp_path / "c", "c_t1.nii.gz", "c_t1.nii", "c_t1ce.nii.gz")
    with pytest.raises(InputError, match="two files for modality t1"):
        find_cases(tmp_path)


def test_duplicate_case_names(tmp_path):
    for group in ("HGG", "LGG"):
        touch(tmp_path / group / "dup", *(f"dup_{m}.nii.gz" for m in ("t1", "t1ce", "t2", "flair")))
    with pytest.raises(InputError, match="appears twice"):
        find_cases(tmp_path)


@pytest.mark.parametrize("name, expected", [
    ("BraTS2021_00000_t1ce.nii.gz", "t1ce"), ("x_T1.nii.gz", "t1"), ("x-t2f.nii.gz", "flair"),
    ("x_FLAIR.nii", "flair"), ("W39_1998.09.19_Segm.nii", "label"), ("x_t1.txt", None),
    ("t2.nii.gz", "t2"), ("mask.nii.gz", None)])
def test_classify_file(name, expected):
    found = classify_file(name)
    assert (found[0] if found else None) == expected
