"""The model card: written by training inside the model file, read by prediction and export; a
model copied alone predicts as the original; a model without one is refused."""

import dataclasses
import json
import shutil
import zipfile

import keras
import numpy as np
import pytest

from helpers import card_of, channel_model, run_script, write_model
from unet3d.brats import MODALITIES, find_cases
from unet3d.config import PredictConfig, preset
from unet3d.plain_settings import to_plain
from unet3d.errors import InputError
from unet3d.io import read_nifti
from unet3d.model import read_card, save_model
from unet3d.model.card import CARD_MEMBER, SCHEMA_VERSION, card_path
from unet3d.model_space import ModelSpace
from unet3d.prediction import load_for_prediction, predict_cases
from unet3d.preprocessing import PreprocessConfig


def outputs(folder):
    return {path.name: read_nifti(path)[0] for path in sorted(folder.glob("*.nii.gz"))}


def test_training_writes_the_card_into_the_model(trained, store_path):
    card = read_card(trained.model_file)
    assert card.patch_shape == (32, 32, 32) and card.target == "regions"
    assert card.modalities == MODALITIES and card.labels == (1, 2, 4)
    assert card.output_names == ("wt", "tc", "et") and card.model == "isensee2017"
    assert card.space == ModelSpace()  # brain crop, normalised: the store written by conftest
    assert card.spacing == (1.0, 1.0, 1.0)  # the synthetic cases' voxels
    assert card.preprocessing is None  # that store was written from raw files: N4 not recorded
    assert card.training.data_file == trained.data_file
    assert card.training.settings == to_plain(dataclasses.replace(trained, convention="brats2020"))
    with zipfile.ZipFile(trained.model_file) as archive:  # inside the .keras file itself
        inside = json.loads(archive.read(CARD_MEMBER))
    assert inside == json.loads(card_path(trained.model_file).read_text())
    assert inside["schema_version"] == SCHEMA_VERSION
    assert read_card(f"{trained.model_file}.run/last.keras") == card


def test_a_model_copied_alone_predicts_what_the_original_predicts(trained, synthetic_brats,
                                                                 tmp_path):
    """The issue's case: a 32^3 model copied without anything beside it used to predict with
    the default 128^3 window. The copy reads its card from inside the file."""
    copy = tmp_path / "elsewhere" / "copied.keras"
    copy.parent.mkdir()
    shutil.copyfile(trained.model_file, copy)
    assert not card_path(copy).exists()
    cases = tmp_path / "cases"
    shutil.copytree(find_cases(synthetic_brats)[0].directory,
                    cases / find_cases(synthetic_brats)[0].name)
    config = PredictConfig(probabilities=True)
    for model_file, out in ((trained.model_file, "original"), (copy, "copy")):
        report = predict_cases(model_file, cases, tmp_path / out, config)
        assert len(report.done) == 1 and not report.failed
    original, copied = outputs(tmp_path / "original"), outputs(tmp_path / "copy")
    assert original.keys() == copied.keys() and len(original) == 4
    for name in original:
        np.testing.assert_array_equal(copied[name], original[name])
    # the window matters for this network (instance normalisation sees the window): a 64^3
    # window gives other probabilities, so the equality above says the copy used 32^3
    predict_cases(copy, cases, tmp_path / "wide", dataclasses.replace(config,
                                                                      patch_shape=(64, 64, 64)))
    wide = outputs(tmp_path / "wide")
    assert np.abs(wide[next(n for n in wide if n.endswith("_wt.nii.gz"))]
                  - original[next(n for n in original if n.endswith("_wt.nii.gz"))]).max() > 1e-3


@pytest.mark.slow
def test_the_exported_copy_carries_the_card(trained, synthetic_brats, tmp_path):
    """Including the copy of a unet3d 0.1 model, whose card was beside it."""
    from unet3d.export import export_model

    old = tmp_path / "old" / "old.keras"
    old.parent.mkdir()
    channel_model().save(old)
    card_path(old).write_text(json.dumps({
        **to_plain(preset("paper", patch_shape=(16, 16, 16))), "labels": [1, 2, 4],
        "modalities": list(MODALITIES), "model_file": "old.keras",
        "training_keys_file": "training_ids.pkl", "validation_keys_file": "validation_ids.pkl"}))
    exported_old = export_model(old, tmp_path / "exported_old")
    assert read_card(exported_old / "old.keras") == read_card(old)
    assert not card_path(exported_old / "old.keras").exists()  # inside the copy itself

    exported = export_model(trained.model_file, tmp_path / "exported")
    signature = json.loads((exported / "signature.json").read_text())
    assert signature["model_card"] == json.loads(read_card(trained.model_file).to_json())
    assert signature["inputs"]["image"]["channels"] == list(MODALITIES)
    case = find_cases(synthetic_brats)[1]
    shutil.copytree(case.directory, tmp_path / "cases" / case.name)
    for model_file, out in ((trained.model_file, "original"),
                            (exported / "m.keras", "exported_copy")):
        predict_cases(model_file, tmp_path / "cases", tmp_path / out)
    np.testing.assert_array_equal(outputs(tmp_path / "exported_copy")[f"{case.name}.nii.gz"],
                                  outputs(tmp_path / "original")[f"{case.name}.nii.gz"])


def test_a_model_without_a_card_is_refused_naming_the_missing_settings(tmp_path,
                                                                       synthetic_brats):
    model_file = tmp_path / "plain.keras"
    channel_model().save(model_file)
    with pytest.raises(InputError) as error:
        load_for_prediction(model_file, PredictConfig())
    message = str(error.value)
    assert "has no model card" in message
    for flag in ("--modalities", "--target", "--patch_shape (or --whole_volume)"):
        assert flag in message
    # the same through the script: exit status 2, nothing written
    result = run_script("predict.py", "--model_file", str(model_file), "--input_dir",
                        str(synthetic_brats), "--output_dir", str(tmp_path / "out"))
    assert result.returncode == 2 and "--modalities" in result.stderr
    assert not list((tmp_path / "out").glob("*.nii.gz"))
    # one setting given: the message names the others only
    with pytest.raises(InputError) as error:
        load_for_prediction(model_file, PredictConfig(target="regions"))
    assert "--modalities" in str(error.value) and "--target" not in str(error.value)


def test_settings_given_as_flags_stand_in_for_a_card(tmp_path, synthetic_brats):
    plain = tmp_path / "plain.keras"
    channel_model().save(plain)
    carded = write_model(tmp_path, channel_model())
    cases = tmp_path / "cases"
    case = find_cases(synthetic_brats)[2]
    shutil.copytree(case.directory, cases / case.name)
    flags = PredictConfig(modalities=MODALITIES, target="regions", patch_shape=(16, 16, 16),
                          probabilities=True)
    predict_cases(plain, cases, tmp_path / "flags", flags)
    predict_cases(carded, cases, tmp_path / "card", PredictConfig(probabilities=True))
    with_flags, with_card = outputs(tmp_path / "flags"), outputs(tmp_path / "card")
    for name in with_card:
        np.testing.assert_array_equal(with_flags[name], with_card[name])


def test_flags_that_contradict_the_card_are_refused(tmp_path):
    model_file = write_model(tmp_path, channel_model())
    with pytest.raises(InputError, match="--target labels contradicts the model card"):
        load_for_prediction(model_file, PredictConfig(target="labels"))
    with pytest.raises(InputError, match="--modalities"):
        load_for_prediction(model_file, PredictConfig(modalities=("t1", "t2", "flair", "t1ce")))
    model, card, config = load_for_prediction(model_file, PredictConfig(target="regions"))
    assert config.patch_shape == (16, 16, 16) and not config.whole_volume


def test_the_card_decides_the_bias_correction_of_raw_inputs(tmp_path, synthetic_brats):
    """A card recording no N4 gets uncorrected inputs, exactly as --nobias_correction; a card
    recording the default N4 gets it (different intensities, so different probabilities)."""
    cases = tmp_path / "cases"
    case = find_cases(synthetic_brats)[0]
    shutil.copytree(case.directory, cases / case.name)
    none = write_model(tmp_path / "none", channel_model(),
                       preprocessing=PreprocessConfig(bias_correction=()))
    n4 = write_model(tmp_path / "n4", channel_model(), preprocessing=PreprocessConfig())
    config = PredictConfig(probabilities=True)
    predict_cases(none, cases, tmp_path / "out_none", config)
    predict_cases(n4, cases, tmp_path / "out_n4", config)
    predict_cases(n4, cases, tmp_path / "out_off", dataclasses.replace(config,
                                                                      bias_correction=False))
    wt = f"{case.name}_wt.nii.gz"
    np.testing.assert_array_equal(outputs(tmp_path / "out_none")[wt],
                                  outputs(tmp_path / "out_off")[wt])
    assert np.abs(outputs(tmp_path / "out_n4")[wt] - outputs(tmp_path / "out_none")[wt]).max() \
        > 1e-3


def test_a_case_of_another_spacing_is_predicted_at_the_cards(tmp_path, synthetic_brats):
    model_file = write_model(tmp_path, channel_model(), spacing=(1.0, 1.0, 3.0))
    cases = tmp_path / "cases"
    case = find_cases(synthetic_brats)[0]
    shutil.copytree(case.directory, cases / case.name)
    lines = []
    predict_cases(model_file, cases, tmp_path / "out", PredictConfig(bias_correction=False),
                  progress=lines.append)
    assert any("predicted at 1x1x3 mm, the model's voxel size, from 1x1x1 mm" in line
               for line in lines)
    _, grid = read_nifti(tmp_path / "out" / f"{case.name}.nii.gz")
    assert grid.same_grid(read_nifti(case.label)[1])


# --------------------------------------------------------------------------- the file format

def test_the_card_round_trips_and_rides_inside_the_file(tmp_path):
    card = card_of(preprocessing=PreprocessConfig(), spacing=(1.0, 1.0, 1.2),
                   space=ModelSpace(image_shape=(32, 32, 32)))
    path = tmp_path / "m.keras"
    save_model(channel_model(), path, card)
    assert read_card(path) == card
    card_path(path).unlink()  # the readable copy is only a copy
    assert read_card(path) == card
    path.rename(tmp_path / "renamed.keras")
    assert read_card(tmp_path / "renamed.keras") == card
    assert keras.saving.load_model(tmp_path / "renamed.keras").output_shape[-1] == 3


def test_models_of_unet3d_0_1_still_load(tmp_path):
    """0.1 saved the training settings beside the model (no card inside, no schema)."""
    path = tmp_path / "old.keras"
    channel_model().save(path)
    settings = {**to_plain(preset("legacy", patch_shape=None, image_shape=(32, 32, 32))),
                "modalities": list(MODALITIES), "labels": [1, 2, 4],
                "training_keys_file": "isensee_training_ids.pkl",
                "validation_keys_file": "isensee_validation_ids.pkl"}
    card_path(path).write_text(json.dumps(settings))
    card = read_card(path)
    assert card.patch_shape == (32, 32, 32)  # whole resampled images: the window
    assert card.space == ModelSpace(image_shape=(32, 32, 32)) and card.target == "labels"
    assert card.training.validation_keys_file == "isensee_validation_ids.pkl"
    assert card.unet3d_version == "0.1.0" and card.preprocessing is None


def embed_text(path, text: str) -> None:
    """Put `text` into the model file `path` as its card member, as an edit would."""
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr(CARD_MEMBER, text)


@pytest.mark.parametrize("change, message", [
    (lambda d: {**d, "schema_version": SCHEMA_VERSION + 1}, "upgrade unet3d"),
    (lambda d: {**d, "schema_version": "1"}, "schema_version '1' is not a schema number"),
    (lambda d: {**d, "modalities": ["t1", "t1ce", "flair", "xx"]}, "not distinct modalities"),
    (lambda d: {**d, "labels": [1, 2, 300]}, r"labels \[1, 2, 300\] are not those of conven"),
    (lambda d: {**d, "convention": "brats1999"}, "convention 'brats1999' is not one of"),
    (lambda d: {**d, "outputs": ["wt", "et", "tc"]},
     r"its outputs wt, et, tc are not those this unet3d decodes for brats2020 \(wt, tc, et\)"),
    (lambda d: {**d, "target": "blobs"}, "target 'blobs' is not one of"),
    (lambda d: {**d, "patch_shape": [16, 0, 16]}, "patch_shape .16, 0, 16. is not three"),
    (lambda d: {k: v for k, v in d.items() if k != "target"}, "misses target"),
    (lambda d: {**d, "window": [16, 16, 16]}, "has unknown window"),
    (lambda d: {k: v for k, v in d.items() if k != "schema_version"}, "not a model card"),
])
def test_a_card_of_another_version_or_edited_is_refused(tmp_path, change, message):
    path = tmp_path / "m.keras"
    channel_model().save(path)
    embed_text(path, json.dumps(change(json.loads(card_of().to_json()))))
    with pytest.raises(InputError, match=message):
        read_card(path)


def test_unreadable_or_foreign_card_files_are_refused(tmp_path):
    path = tmp_path / "m.keras"
    channel_model().save(path)
    card_path(path).write_text("{not json")
    with pytest.raises(InputError, match="unreadable model card"):
        read_card(path)
    card_path(path).write_text(json.dumps({"model": "isensee2017"}))  # neither 0.1 nor a card
    with pytest.raises(InputError, match="neither a model card nor unet3d 0.1's"):
        read_card(path)
    # a card copy beside a file that holds no card: the file was replaced after training wrote
    # the card (e.g. by a plain model.save), so the copy describes another model
    card_path(path).write_text(card_of().to_json())
    with pytest.raises(InputError, match="holds none: the model file was replaced"):
        read_card(path)


def test_the_cards_inference_is_how_the_model_predicts_unless_told(tmp_path):
    from unet3d.config import Inference
    from unet3d.prediction import complete_config

    path = tmp_path / "m.keras"
    model = channel_model()
    save_model(model, path, card_of(inference=Inference(whole_volume=True, tta="mirror")))
    assert read_card(path).inference == Inference(True, "mirror")  # round trip, schema 3
    resolve = lambda config: complete_config(path, model, config)[1]  # noqa: E731
    default = resolve(PredictConfig())
    assert default.whole_volume and default.patch_shape is None and default.tta == "mirror"
    windows = resolve(PredictConfig(patch_shape=(32, 32, 32)))  # a window given: windows
    assert not windows.whole_volume and windows.patch_shape == (32, 32, 32)
    assert windows.tta == "mirror"
    told = resolve(PredictConfig(whole_volume=False, tta="none"))
    assert (told.whole_volume, told.patch_shape, told.tta) == (False, (16, 16, 16), "none")
    # a card without a recipe's choice: sliding windows of the patch, no TTA
    save_model(model, path, card_of())
    plain = resolve(PredictConfig())
    assert (plain.whole_volume, plain.patch_shape, plain.tta) == (False, (16, 16, 16), "none")


def test_a_schema_2_card_predicts_as_before_and_a_bad_inference_is_refused(tmp_path):
    from unet3d.config import Inference

    path = tmp_path / "m.keras"
    channel_model().save(path)
    data = json.loads(card_of().to_json())
    old = {**{k: v for k, v in data.items() if k != "inference"}, "schema_version": 2}
    embed_text(path, json.dumps(old))
    assert read_card(path) == card_of() and read_card(path).inference == Inference(False, "none")
    channel_model().save(path)
    embed_text(path, json.dumps({**data, "inference": {"whole_volume": True, "tta": "flip"}}))
    with pytest.raises(InputError, match="inference tta 'flip' is not one of"):
        read_card(path)
