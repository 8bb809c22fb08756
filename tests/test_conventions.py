"""Every BraTS release and task (unet3d.conventions): discovery, encodings, scoring, and the whole
pipeline on synthetic cases of each, with no convention given anywhere."""

import shutil

import numpy as np
import pytest

from helpers import run_script
from unet3d.brats import detect_convention, find_cases, read_case
from unet3d.conventions import (CONVENTIONS, Convention, Label, Region, check_convention, decode,
                                encode, get_convention, paint_labels, translate)
from unet3d.errors import InputError
from unet3d.case_metrics import evaluate_case
from unet3d.io import read_nifti
from unet3d.synthetic import make_synthetic_brats

SHAPE = (40, 40, 32)
NAMES = list(CONVENTIONS)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Three synthetic cases of every convention, one folder each."""
    root = tmp_path_factory.mktemp("conventions")
    for name in NAMES:
        make_synthetic_brats(root / name, n_cases=3, shape=SHAPE, seed=1, convention=name)
    return root


def labels_of(case, convention):
    return read_case(case, convention.modalities)[1].astype(np.uint8)


@pytest.mark.parametrize("name", NAMES)
def test_discovery_detects_each_convention_from_its_files(folders, name):
    cases = find_cases(folders / name)
    convention = detect_convention(cases, folders / name, scan_labels=True)
    assert convention.name == name and len(cases) == 3
    assert all(case.convention == name and case.label is not None for case in cases)
    arrays, label, _ = read_case(cases[0], convention.modalities)
    assert len(arrays) == len(convention.modalities) and arrays[0].shape == SHAPE
    values = set().union(*(np.unique(labels_of(case, convention)).tolist() for case in cases))
    assert values == {0, *convention.values}  # every label drawn, and only the entry's


def test_the_2025_session_is_kept_per_case(folders):
    cases = find_cases(folders / "brats2024-gli")
    detect_convention(cases, "x")
    sessions = {case.name: case.session for case in cases}
    assert sessions == {"BraTS-GLI-00001-100": "post-operative",
                        "BraTS-GLI-00002-000": "pre-operative",
                        "BraTS-GLI-00003-100": "post-operative"}
    assert all(4 not in labels_of(case, CONVENTIONS["brats2024-gli"]) for case in cases
               if case.session == "pre-operative")


@pytest.mark.parametrize("name", NAMES)
def test_encode_then_decode_gives_every_label_back(name):
    convention = CONVENTIONS[name]
    rng = np.random.default_rng(0)
    label_map = rng.choice(np.array([0, *convention.values], dtype=np.uint8), size=(9, 8, 7))
    regions = encode(label_map, convention)
    assert regions.shape == (9, 8, 7, len(convention.regions))
    np.testing.assert_array_equal(decode(regions, convention), label_map)
    np.testing.assert_array_equal(decode(regions.astype(np.float32) * 0.8, convention, 0.5),
                                  label_map)  # probabilities above the threshold


@pytest.mark.parametrize("name", NAMES)
def test_a_truth_scored_against_itself_is_perfect_on_every_scored_region(folders, name):
    convention = CONVENTIONS[name]
    case = find_cases(folders / name)[0]
    truth = labels_of(case, convention)
    scores = evaluate_case(truth, truth.copy(), convention=convention)
    assert list(scores) == [region.name for region in convention.scored]
    assert all(s["dice"] == 1.0 and s["hd95"] == 0.0 for s in scores.values())


def test_the_resection_cavity_is_never_inside_wt_tc_or_et():
    convention = CONVENTIONS["brats2024-gli"]
    cavity = np.full((4, 4, 4), 4, np.uint8)
    regions = dict(zip(convention.region_names, np.moveaxis(encode(cavity, convention), -1, 0)))
    assert not regions["wt"].any() and not regions["tc"].any() and not regions["et"].any()
    assert regions["rc"].all()
    scores = evaluate_case(cavity, np.zeros_like(cavity), convention=convention)
    assert scores["wt"]["dice"] == scores["tc"]["dice"] == scores["et"]["dice"] == 1.0
    assert scores["rc"]["dice"] == 0.0


def test_paediatric_labels_have_their_own_meaning():
    ped = CONVENTIONS["brats2024-ped"]
    assert [label.name for label in ped.labels] == ["ET", "NETC", "CC", "ED"]
    assert {r.name: r.labels for r in ped.regions}["et"] == (1,)
    # An adult map written in the paediatric numbering, tissue by tissue (by hand).
    adult = np.array([0, 1, 2, 4], np.uint8)
    np.testing.assert_array_equal(translate(adult, CONVENTIONS["brats2020"], ped), [0, 2, 4, 1])
    with pytest.raises(InputError, match="brats2024-men-rt has no label for"):
        translate(adult, CONVENTIONS["brats2020"], CONVENTIONS["brats2024-men-rt"])


def test_regions_that_cannot_be_decoded_are_refused():
    bad = Convention("bad", "", "GLI", {"t1": "_t1", "seg": "_seg"}, "x", (
        Label(1, "A", "core"), Label(2, "B", "oedema")), (Region("wt", (1, 2)),), (), None,
        "legacy", "")
    with pytest.raises(InputError, match="region wt holds 2 labels"):
        paint_labels(bad)
    with pytest.raises(InputError, match="convention bad"):
        check_convention(bad)


def test_old_names_keep_their_meaning():
    assert get_convention("brats2023") is CONVENTIONS["brats2023-gli"]
    assert get_convention("labels-1-2-5").values == (1, 2, 5)
    with pytest.raises(InputError, match="unknown convention 'brats2019'.*brats2017"):
        get_convention("brats2019")


def test_a_folder_mixing_conventions_is_refused_listing_them(folders, tmp_path):
    mixed = tmp_path / "mixed"
    for name in ("brats2020", "brats2023-gli"):
        shutil.copytree(find_cases(folders / name)[0].directory,
                        mixed / find_cases(folders / name)[0].name)
    with pytest.raises(InputError, match=r"mixes conventions: 1 case\(s\) of brats2020 "
                                         r"\(BraTS20_Training_001\); 1 case\(s\) of brats2023-gli "
                                         r"or brats2024-gli \(BraTS-GLI-00001-000\)"):
        detect_convention(find_cases(mixed), mixed)


def test_names_fitting_no_convention_are_listed_with_the_flag(folders, tmp_path):
    source = find_cases(folders / "brats2020")[0]
    renamed = tmp_path / "own" / "patient7"
    renamed.mkdir(parents=True)
    for path in source.directory.iterdir():
        shutil.copy(path, renamed / path.name.replace(source.name, "patient7"))
    cases = find_cases(tmp_path / "own")
    with pytest.raises(InputError, match=r"fit no known BraTS convention \(seen: patient7\); "
                                         "pass --convention"):
        detect_convention(cases, tmp_path / "own")
    assert detect_convention(cases, "own", given="brats2020").name == "brats2020"


def test_label_values_decide_between_releases_of_the_same_names(folders):
    """brats2023-ped and brats2024-ped share their names; ED (4) only exists in 2024."""
    cases = find_cases(folders / "brats2024-ped")
    assert detect_convention(cases, "x").name == "brats2023-ped"  # names alone: the older
    assert detect_convention(cases, "x", scan_labels=True).name == "brats2024-ped"


def test_a_label_value_outside_the_entry_names_file_value_and_conventions(folders, tmp_path):
    from unet3d.preprocessing import preprocess_brats

    report = preprocess_brats(folders / "brats2024-gli", tmp_path / "out2",
                              convention="brats2023-gli", progress=lambda line: None)
    assert sorted(report.failed) == ["BraTS-GLI-00001-100", "BraTS-GLI-00003-100"]
    case, message = next(iter(report.failed.items()))
    assert (f"case {case}: {case}-seg.nii.gz holds label values [4] that brats2023-gli does "
            "not have (0, 1, 2, 3); conventions with it: brats2017") in message
    assert "brats2024-gli" in message


def test_a_missing_modality_of_the_entry_is_named(folders, tmp_path):
    source = find_cases(folders / "brats2023-met")[0]
    shutil.copytree(source.directory, tmp_path / source.name)
    (tmp_path / source.name / source.images["flair"].name).unlink()
    (case,) = find_cases(tmp_path)
    detect_convention([case], tmp_path)
    with pytest.raises(InputError, match=rf"case {case.name} .*missing modality flair; expected "
                                         rf"a file named like {case.name}-t2f.nii.gz"):
        read_case(case, CONVENTIONS["brats2023-met"].modalities)


def test_synthetic_data_script_writes_any_convention(tmp_path):
    run_script("make_synthetic_data.py", "--out_dir", str(tmp_path / "rt"), "--n_cases", "1",
               "--shape", "32,32,32", "--convention", "brats2024-men-rt")
    (folder,) = (tmp_path / "rt").iterdir()
    assert sorted(p.name for p in folder.iterdir()) == [
        "BraTS-MEN-RT-0001-1-gtv.nii.gz", "BraTS-MEN-RT-0001-1-t1c.nii.gz"]
    run_script("make_synthetic_data.py", "--out_dir", str(tmp_path / "old"), "--n_cases", "1",
               "--shape", "32,32,32", "--naming", "brats2023")
    assert (tmp_path / "old" / "BraTS-GLI-00001-000" / "BraTS-GLI-00001-000-t1c.nii.gz").exists()


def test_synthetic_cavity_cyst_and_lesions_look_as_they_should():
    from scipy import ndimage

    from unet3d.synthetic_anatomy import generate_case

    rng = np.random.default_rng(1)
    case = generate_case((64, 64, 48), rng, features=("cavity", "cyst", "lesions"))
    cavity, cyst = case.label == 5, case.label == 6
    assert cavity.sum() > 20 and cyst.sum() > 5
    white = case.tissue == 3  # fluid: darker than white matter except on t2
    for modality, darker in (("t1", True), ("t1ce", True), ("flair", True), ("t2", False)):
        fluid = case.clean(modality)[cavity].mean()
        assert (fluid < case.clean(modality)[white].mean()) == darker, modality
    # The cavity touches the tumour; the cyst lies mostly in the core; several lesions.
    tumour = np.isin(case.label, (1, 2, 4, 6))
    assert (ndimage.binary_dilation(cavity) & tumour).any()
    around = case.label[ndimage.binary_dilation(cyst) & ~cyst]
    assert np.isin(around, (1, 4)).mean() > 0.5
    assert ndimage.label(np.isin(case.label, (1, 2, 4, 6)))[1] >= 2


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_every_convention_end_to_end_without_a_convention_flag(name, tmp_path):
    """Synthetic cases -> preprocess -> train (tiny) -> predict -> evaluate, no convention given:
    the predictions hold only the entry's label values and the scores its scored regions."""
    from unet3d.config import PredictConfig, preset
    from unet3d.evaluation import evaluate_folder
    from unet3d.model import read_card
    from unet3d.prediction import predict_cases
    from unet3d.preprocessing import preprocess_brats
    from unet3d.recipes import train

    convention = CONVENTIONS[name]
    make_synthetic_brats(tmp_path / "raw", n_cases=4, shape=(48, 48, 32), seed=2,
                         convention=name)
    report = preprocess_brats(tmp_path / "raw", tmp_path / "pre", progress=lambda line: None)
    assert not report.failed and report.convention == name
    config = preset("paper", data_file=str(tmp_path / "data.h5"),
                    preprocessed_dir=str(tmp_path / "pre"), run_dir=str(tmp_path / "run"),
                    patch_shape=(32, 32, 32), batch_size=1, steps_per_epoch=2, n_epochs=1,
                    n_base_filters=4, validation_cases=1, precision="float32", workers=0,
                    verbose=0, seed=0)
    train(config)
    card = read_card(tmp_path / "run" / "model.keras")
    assert card.convention == name and card.modalities == convention.modalities
    assert card.output_names == card.outputs == convention.region_names
    done = predict_cases(tmp_path / "run" / "model.keras", tmp_path / "raw", tmp_path / "out",
                         PredictConfig(bias_correction=False), progress=lambda line: None)
    assert len(done.done) == 4 and not done.failed
    for path in (tmp_path / "out").glob("*.nii.gz"):
        values = set(np.unique(read_nifti(path)[0]).tolist())
        assert values <= {0, *convention.values}, (path.name, values)
    rows = evaluate_folder(tmp_path / "out", tmp_path / "raw", tmp_path / "scores",
                           overlays=False, progress=lambda *args: None).scores
    assert [k[:-len("_dice")] for k in rows[0] if k.endswith("_dice")] == [
        region.name for region in convention.scored]


def test_the_docs_list_every_convention_as_the_registry_has_it():
    from pathlib import Path

    from unet3d.conventions import markdown_table

    docs = Path(__file__).resolve().parents[1] / "docs" / "real_brats_data.md"
    assert markdown_table() in docs.read_text()


def test_a_model_asked_for_cases_without_its_modalities_stops(folders, tmp_path):
    """A brats2020 model (four modalities) on MEN-RT cases (t1c alone): a clear error before
    any case; a MEN-RT model (t1c, one GTV output) on brats2020 cases predicts GTV maps."""
    from helpers import channel_model, write_model
    from unet3d.config import PredictConfig
    from unet3d.prediction import predict_cases

    adult = write_model(tmp_path / "adult", channel_model())
    with pytest.raises(InputError, match=r"holds brats2024-men-rt cases \(t1ce\), without t1, "
                                         r"flair, t2: the model was trained on brats2020"):
        predict_cases(adult, folders / "brats2024-men-rt", tmp_path / "out",
                      PredictConfig(bias_correction=False))
    gtv = write_model(tmp_path / "gtv", channel_model(1, 1), modalities=("t1ce",),
                      convention="brats2024-men-rt", labels=(1,))
    lines = []
    report = predict_cases(gtv, folders / "brats2020", tmp_path / "gtv_out",
                           PredictConfig(bias_correction=False), progress=lines.append)
    assert len(report.done) == 3 and not report.failed
    assert any("the cases are brats2020, the model brats2024-men-rt" in line for line in lines)
    for name in report.done:
        assert set(np.unique(read_nifti(tmp_path / "gtv_out" / f"{name}.nii.gz")[0])) <= {0, 1}


def test_no_resection_cavity_is_written_on_a_pre_operative_case(tmp_path):
    from helpers import write_model
    import keras

    from unet3d.config import PredictConfig
    from unet3d.prediction import predict_cases

    make_synthetic_brats(tmp_path / "cases", n_cases=2, shape=SHAPE, convention="brats2024-gli")
    inputs = keras.Input((None, None, None, 4))  # every region everywhere in the brain
    conv = keras.layers.Conv3D(4, 1, use_bias=False)
    model = keras.Model(inputs, conv(inputs))
    conv.set_weights([np.full((1, 1, 1, 4, 4), 1000.0, np.float32)])
    model_file = write_model(tmp_path / "m", model,
                             convention="brats2024-gli", labels=(1, 2, 3, 4))
    report = predict_cases(model_file, tmp_path / "cases", tmp_path / "out",
                           PredictConfig(bias_correction=False))
    written = {name: set(np.unique(read_nifti(tmp_path / "out" / f"{name}.nii.gz")[0]).tolist())
               for name in report.done}
    assert written == {"BraTS-GLI-00001-100": {0, 4}, "BraTS-GLI-00002-000": {0, 3}}


def test_scores_and_overlays_of_every_scored_region(folders, tmp_path):
    """brats2024-gli scores 6 regions (WT, TC, ET, RC, NETC, SNFH), whole-image and lesion-wise
    (its edition, brats2024); the overlay draws them all."""
    from unet3d.evaluation import evaluate_folder

    cases = find_cases(folders / "brats2024-gli")
    predictions = tmp_path / "predictions"
    predictions.mkdir()
    for case in cases:
        shutil.copy(case.label, predictions / f"{case.name}.nii.gz")
    evaluation = evaluate_folder(predictions, folders / "brats2024-gli", tmp_path / "out",
                                 progress=lambda *args: None)
    rows = evaluation.scores
    regions = ["wt", "tc", "et", "rc", "netc", "snfh"]
    assert [key for key in rows[0] if key.endswith("_dice")] == [f"{r}_dice" for r in regions]
    assert all(row[key] == 1.0 for row in rows for key in row if key.endswith("_dice"))
    assert evaluation.edition.name == "brats2024"
    assert [row["region"] for row in evaluation.lesions] == regions * len(cases)
    assert all(row["dice"] == row["nsd_0.5"] == 1.0 and row["hd95"] == 0.0 and row["n_fp"] == 0
               for row in evaluation.lesions)
    assert (tmp_path / "out" / "overlays" / f"{cases[0].name}.png").stat().st_size > 1000


def test_other_label_file_names_and_2017_challenge_names_are_recognised(tmp_path):
    """Real releases ship odd label files (BraTS20_Training_355: W39_1998.09.19_Segm.nii) and the
    2017 challenge's Brats17_ names."""
    from helpers import touch

    case = "BraTS20_Training_355"
    touch(tmp_path / "a" / case, *(f"{case}_{m}.nii" for m in ("t1", "t1ce", "t2", "flair")),
          "W39_1998.09.19_Segm.nii")
    (found,) = find_cases(tmp_path / "a")
    assert found.candidates == ("brats2020",) and found.label.name == "W39_1998.09.19_Segm.nii"
    case = "Brats17_2013_10_1"
    touch(tmp_path / "b" / "HGG" / case, *(f"{case}_{m}.nii.gz" for m in
                                           ("t1", "t1ce", "t2", "flair", "seg")))
    assert detect_convention(find_cases(tmp_path / "b"), "b").name == "brats2018"


def test_a_case_with_only_its_label_file_is_reported_missing_its_modalities(folders, tmp_path):
    source = find_cases(folders / "brats2024-men-rt")[0]
    shutil.copytree(source.directory, tmp_path / source.name)
    (tmp_path / source.name / source.images["t1ce"].name).unlink()
    (case,) = find_cases(tmp_path)
    with pytest.raises(InputError, match=f"case {case.name} .*missing modality t1ce"):
        case.check(("t1ce",))


def test_the_decathlon_test_images_are_their_own_folder(folders, tmp_path):
    root = tmp_path / "Task01_BrainTumour"
    shutil.copytree(folders / "msd-task01", root)
    (root / "imagesTs").mkdir()
    shutil.move(root / "imagesTr" / "BRATS_003.nii.gz", root / "imagesTs" / "BRATS_003.nii.gz")
    (root / "labelsTr" / "BRATS_003.nii.gz").unlink()
    assert [(c.name, c.label is not None) for c in find_cases(root)] == [
        ("BRATS_001", True), ("BRATS_002", True)]
    assert [(c.name, c.label) for c in find_cases(root / "imagesTs")] == [("BRATS_003", None)]


def test_truths_named_by_no_release_are_scored_as_brats2020_with_a_warning(folders, tmp_path,
                                                                          caplog):
    from unet3d.evaluation import truth_convention

    case = find_cases(folders / "brats2020")[0]
    shutil.copy(case.label, tmp_path / "patient1_seg.nii.gz")
    assert truth_convention(tmp_path).name == "brats2020"
    assert "fit no known BraTS convention (seen: patient1); read as brats2020" in caplog.text


def test_training_refuses_a_convention_giving_the_store_s_labels_other_meanings():
    from types import SimpleNamespace

    from unet3d.config import TrainConfig
    from unet3d.recipes import training_convention

    store = SimpleNamespace(convention=CONVENTIONS["brats2020"], path="data.h5")
    assert training_convention(TrainConfig(), store) == "brats2020"
    assert training_convention(TrainConfig(convention="brats2018"), store) == "brats2018"
    for other in ("brats2024-gli", "brats2024-ped", "brats2023-gli"):
        with pytest.raises(InputError, match=f"--convention {other} .* does not give the labels "
                                             r"of data.h5 \(brats2020: 1 NCR/NET, 2 ED, 4 ET\)"):
            training_convention(TrainConfig(convention=other), store)


def test_a_pre_operative_case_keeps_the_tissue_under_a_dropped_cavity():
    """Outputs WT, TC, ET, RC of one voxel: 0.9, 0.9, 0.9, 0.6. After surgery the cavity wins
    (decoded last); before it, the voxel is enhancing tumour, not background."""
    from unet3d.config import PredictConfig
    from unet3d.prediction import predicted_labels

    voxel = np.array([[[[0.9, 0.9, 0.9, 0.6]]]], np.float32)
    gli = CONVENTIONS["brats2024-gli"]
    assert predicted_labels(voxel, "regions", gli, PredictConfig(), "post-operative")[0, 0, 0] == 4
    assert predicted_labels(voxel, "regions", gli, PredictConfig(), "pre-operative")[0, 0, 0] == 3
    labels = np.array([[[[0.1, 0.1, 0.55, 0.6]]]], np.float32)  # one output per label value
    assert predicted_labels(labels, "labels", gli, PredictConfig(), "pre-operative")[0, 0, 0] == 3


def test_flat_truths_of_any_release_are_detected(folders, tmp_path):
    """<case>-seg.nii.gz side by side (2023+), <case>-gtv.nii.gz (MEN-RT): detected from the
    ids; no brats2020 fallback for BraTS ids, even with labels brats2020 has."""
    from unet3d.evaluation import truth_convention

    for name in ("brats2024-gli", "brats2024-men-rt"):
        flat = tmp_path / name
        flat.mkdir()
        for case in find_cases(folders / name):
            shutil.copy(case.label, flat / case.label.name)
        assert truth_convention(flat).name == name


def test_a_copy_of_a_label_file_beside_the_cases_is_not_a_case(folders, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(folders / "brats2020", root)
    case = find_cases(root)[0]
    shutil.copy(case.label, root / case.label.name)  # a stray copy at the top
    (root / "labels").mkdir()
    shutil.copy(case.label, root / "labels" / case.label.name)
    assert [c.name for c in find_cases(root)] == [c.name for c in find_cases(folders / "brats2020")]
    assert all(c.images for c in find_cases(root))


def test_a_store_is_not_built_with_a_convention_changing_what_the_labels_mean(folders, tmp_path):
    from types import SimpleNamespace

    from unet3d.config import TrainConfig
    from unet3d.data import write_store_from_folder
    from unet3d.preprocessing import preprocess_brats
    from unet3d.recipes import training_convention

    preprocess_brats(folders / "brats2020", tmp_path / "pre", progress=lambda line: None)
    with pytest.raises(InputError, match="--convention brats2024-gli .* does not give the labels"):
        write_store_from_folder(tmp_path / "pre", tmp_path / "s.h5", convention="brats2024-gli")
    assert not (tmp_path / "s.h5").exists()
    port_store = SimpleNamespace(convention=None, path="port.h5")  # no labels recorded
    with pytest.raises(InputError, match=r"labels of port.h5 \(brats2020"):
        training_convention(TrainConfig(convention="brats2024-gli"), port_store)


def test_an_undetected_case_is_read_with_the_first_convention_it_fits(folders):
    from unet3d.preprocessing import PreprocessConfig, correct_case

    case = find_cases(folders / "brats2024-men-rt")[0]  # detect_convention not called
    images, label, _ = correct_case(case, PreprocessConfig(bias_correction=()))
    assert list(images) == ["t1ce"] and set(np.unique(label)) <= {0, 1}


def test_folders_of_this_package_s_names_are_detected_from_their_ids(folders, tmp_path):
    """A preprocessed Decathlon folder without its preprocess.json (BRATS_001/t1.nii.gz) and a
    validation run of predict.py (<case>/data_t1.nii.gz) of 2023 ids."""
    from unet3d.preprocessing import SETTINGS_FILE, preprocess_brats

    preprocess_brats(folders / "msd-task01", tmp_path / "pre", progress=lambda line: None)
    (tmp_path / "pre" / SETTINGS_FILE).unlink()
    cases = find_cases(tmp_path / "pre")
    assert detect_convention(cases, "pre", scan_labels=True).name == "msd-task01"
    run = tmp_path / "validation" / "BraTS-GLI-00001-000"
    run.mkdir(parents=True)
    for name in ("data_t1", "data_t1ce", "data_flair", "data_t2", "truth"):
        (run / f"{name}.nii.gz").write_bytes(b"")
    assert find_cases(tmp_path / "validation")[0].candidates == ("brats2023-gli",
                                                                 "brats2024-gli")
