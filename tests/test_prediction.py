"""Predicting cases: the model card decides the preprocessing and the window; native-space
outputs; the script."""

import pickle
import shutil

import numpy as np
import pytest

from helpers import channel_model, run_script, write_model
from unet3d.brats import find_cases
from unet3d.config import PredictConfig
from unet3d.errors import InputError
from unet3d.io import read_nifti
from unet3d.model.card import TrainingRecord
from unet3d.model_space import brain_mask, normalize_modality
from unet3d.prediction import load_for_prediction, predict_cases


def test_predictions_are_the_input_grid_and_put_the_crop_back_in_place(cases, synthetic_brats,
                                                                       tmp_path):
    """With a model whose WT output is the normalised t1, the written WT probability map equals
    the t1 normalised independently on the original grid: same shape, affine and position."""
    model_file = write_model(tmp_path, channel_model())
    config = PredictConfig(bias_correction=False, probabilities=True)
    report = predict_cases(model_file, synthetic_brats, tmp_path / "out", config)
    assert sorted(report.done) == sorted(c.name for c in cases) and not report.failed
    for case in cases[:2]:
        t1, geometry = read_nifti(case.images["t1"])
        mask = brain_mask([read_nifti(case.images[m])[0] for m in ("t1", "t1ce", "flair", "t2")])
        wt, wt_geometry = read_nifti(tmp_path / "out" / f"{case.name}_wt.nii.gz")
        labels, label_geometry = read_nifti(tmp_path / "out" / f"{case.name}.nii.gz")
        assert wt_geometry.same_grid(geometry, tolerance=1e-6)
        assert label_geometry.same_grid(geometry, tolerance=1e-6)
        np.testing.assert_allclose(label_geometry.affine, geometry.affine, atol=1e-6)
        np.testing.assert_allclose(wt, normalize_modality(t1, mask), atol=2e-5)
        assert labels.dtype == np.uint8 and set(np.unique(labels)) <= {0, 1, 2, 4}


@pytest.mark.slow
def test_predict_script_on_unlabelled_raw_cases(synthetic_brats, tmp_path):
    """Raw cases without labels (N4 on), a Keras model with the Isensee architecture; 2023
    naming writes ET as 3."""
    from unet3d.model import isensee2017_model

    unlabelled = tmp_path / "unlabelled"
    for case in find_cases(synthetic_brats)[:2]:
        shutil.copytree(case.directory, unlabelled / case.name)
        (unlabelled / case.name / case.label.name).unlink()
    model = isensee2017_model((None, None, None, 4), n_base_filters=2, n_labels=3)
    model_file = write_model(tmp_path, model)
    result = run_script("predict.py", "--model_file", str(model_file), "--input_dir",
                        str(unlabelled), "--output_dir", str(tmp_path / "out"), "--tta", "mirror")
    assert result.returncode == 0, result.stderr[-2000:]
    for case in find_cases(unlabelled):
        _, geometry = read_nifti(case.images["flair"])
        prediction, out_geometry = read_nifti(tmp_path / "out" / f"{case.name}.nii.gz")
        assert out_geometry.same_grid(geometry, tolerance=1e-6)
        assert set(np.unique(prediction)) <= {0, 1, 2, 4}
        assert f"{case.name}: " in result.stderr
    assert (tmp_path / "out" / "predict.log").is_file()
    # a rerun skips finished cases
    again = run_script("predict.py", "--model_file", str(model_file), "--input_dir",
                       str(unlabelled), "--output_dir", str(tmp_path / "out"))
    assert again.returncode == 0 and again.stderr.count("skipped") >= 2


def test_predict_script_bad_input(synthetic_brats, tmp_path):
    """A failing case is reported and the others written (exit 1); bad arguments stop before any
    case is read (the script exits 2 for them: test_card.py)."""
    broken = tmp_path / "broken"
    for case in find_cases(synthetic_brats)[:2]:
        shutil.copytree(case.directory, broken / case.name)
    bad = find_cases(broken)[0]
    bad.images["t2"].unlink()
    model_file = write_model(tmp_path, channel_model())
    result = run_script("predict.py", "--model_file", str(model_file), "--input_dir", str(broken),
                        "--output_dir", str(tmp_path / "out"), "--nobias_correction")
    assert result.returncode == 1, result.stderr[-2000:]
    assert bad.name in result.stderr and "t2" in result.stderr
    assert len(list((tmp_path / "out").glob("*.nii.gz"))) == 1
    with pytest.raises(InputError, match="none.keras not found"):
        predict_cases(tmp_path / "none.keras", broken, tmp_path / "o")
    # a window the network cannot take (the Isensee network needs multiples of 16; the 1x1x1
    # channel model above takes any size)
    from unet3d.model import isensee2017_model

    isensee_file = write_model(tmp_path / "isensee",
                               isensee2017_model((None, None, None, 4), n_base_filters=2))
    with pytest.raises(InputError, match="30,30,30: every size must be divisible by 16"):
        predict_cases(isensee_file, broken, tmp_path / "odd", PredictConfig(patch_shape=(30,) * 3))
    assert not (tmp_path / "o").exists() and not (tmp_path / "odd").exists()


def test_validation_run_writes_native_space_cases(store_path, cases, tmp_path):
    """The port's run_validation_cases: inputs, truth and prediction per validation case, on the
    original grid; the truth written equals the original label file."""
    keys = tmp_path / "validation_ids.pkl"
    with open(keys, "wb") as stream:
        pickle.dump([1, 3], stream)
    model_file = write_model(tmp_path, channel_model(), training=TrainingRecord(
        str(store_path), str(tmp_path / "training_ids.pkl"), str(keys), {}))
    result = run_script("predict.py", "--model_file", str(model_file), "--validation",
                        "--output_dir", str(tmp_path / "validation"))
    assert result.returncode == 0, result.stderr[-2000:]
    for index in (1, 3):
        folder = tmp_path / "validation" / cases[index].name
        names = sorted(p.name for p in folder.iterdir())
        assert names == sorted(["data_t1.nii.gz", "data_t1ce.nii.gz", "data_flair.nii.gz",
                                "data_t2.nii.gz", "truth.nii.gz", "prediction.nii.gz"])
        truth, geometry = read_nifti(folder / "truth.nii.gz")
        original, original_geometry = read_nifti(cases[index].label)
        np.testing.assert_array_equal(truth, original)
        assert geometry.same_grid(original_geometry, tolerance=1e-6)


@pytest.mark.parametrize("target", ["regions", "labels"])
def test_brats2023_cases_get_enhancing_tumour_as_label_3(tmp_path, target):
    """A model writes its own convention's labels (brats2020: ET 4) on cases of another with the
    same modalities (BraTS 2023 names), saying so; --convention brats2023-gli writes theirs (ET
    3): regions and one output per label alike."""
    from unet3d.synthetic import make_synthetic_brats

    make_synthetic_brats(tmp_path / "cases", n_cases=1, shape=(64, 64, 48), seed=3,
                         naming="brats2023")
    model_file = write_model(tmp_path, channel_model(), target=target, labels=(1, 2, 4))
    lines = []
    report = predict_cases(model_file, tmp_path / "cases", tmp_path / "out",
                           PredictConfig(bias_correction=False), progress=lines.append)
    labels, _ = read_nifti(tmp_path / "out" / f"{report.done[0]}.nii.gz")
    assert 4 in labels and 3 not in labels
    assert any("the cases are brats2023-gli or brats2024-gli, the model brats2020" in line for line in lines)
    forced = predict_cases(model_file, tmp_path / "cases", tmp_path / "forced",
                           PredictConfig(bias_correction=False, convention="brats2023-gli"))
    labels, _ = read_nifti(tmp_path / "forced" / f"{forced.done[0]}.nii.gz")
    assert 3 in labels and 4 not in labels


@pytest.mark.parametrize("config, message", [
    (PredictConfig(convention="brats2024-men-rt"), "brats2024-men-rt has no label for brats2020's"),
    (PredictConfig(convention="brats1999"), "unknown convention 'brats1999'"),
    (PredictConfig(threshold=7.0), r"--threshold 7.0: must be in \(0, 1\)"),
    (PredictConfig(min_et_voxels=-5), r"--min_et_voxels -5: must be in \[0, inf\)"),
    (PredictConfig(step=0.0), r"--step 0.0: must be in \(0, 1\]"),
    (PredictConfig(whole_volume=True, patch_shape=(16, 16, 16)), "exclude each other"),
])
def test_impossible_prediction_settings_stop_before_any_case(config, message, tmp_path,
                                                             synthetic_brats):
    model_file = write_model(tmp_path, channel_model())
    with pytest.raises(InputError, match=message):
        predict_cases(model_file, synthetic_brats, tmp_path / "out", config)
    assert not (tmp_path / "out").exists()


def test_a_model_of_a_fixed_input_size_predicts_in_windows_of_that_size(tmp_path,
                                                                       synthetic_brats):
    """Its window is its input size, whatever the card says of the patch; a whole-volume pass,
    or another window, is refused before any case is read."""
    model_file = write_model(tmp_path, channel_model(spatial=(16, 16, 16)), patch_shape=None)
    model, card, config = load_for_prediction(model_file)
    assert config.patch_shape == (16, 16, 16) and not config.whole_volume
    for bad, message in ((PredictConfig(whole_volume=True), "not --whole_volume"),
                         (PredictConfig(patch_shape=(32, 32, 32)), "not --patch_shape")):
        with pytest.raises(InputError, match=f"takes inputs of .16, 16, 16. voxels only.*{message}"):
            predict_cases(model_file, synthetic_brats, tmp_path / "out", bad)
    wrong = write_model(tmp_path / "wrong", channel_model(spatial=(16, 16, 16)),
                        patch_shape=(32, 32, 32))
    with pytest.raises(InputError, match="not the model card's patch"):
        load_for_prediction(wrong)



def z_dilating_model() -> "keras.Model":
    """Output k = input channel k dilated by 4 voxels along z (a 1x1x9 max filter): what it
    predicts depends on the voxel size, as a network's receptive field does."""
    import keras
    inputs = keras.Input((None, None, None, 4))
    pooled = keras.layers.MaxPooling3D((1, 1, 9), strides=1, padding="same")(inputs)
    first_three = channel_model()  # channel k of 4 -> output k of 3
    return keras.Model(inputs, first_three(pooled))


def resampled_case(case, out, spacing, direction=None):
    """A copy of `case` resampled to `spacing` (linear for images, nearest for the labels),
    optionally with another direction (the same voxels, an oblique grid)."""
    import SimpleITK as sitk
    out.mkdir(parents=True)
    for path in [*case.images.values(), case.label]:
        image = sitk.ReadImage(str(path))
        size = [int(round(n * s / t)) for n, s, t in zip(image.GetSize(), image.GetSpacing(),
                                                        spacing)]
        labels = path == case.label
        image = sitk.Resample(image, size, sitk.Transform(), sitk.sitkNearestNeighbor if labels
                              else sitk.sitkLinear, image.GetOrigin(), spacing,
                              image.GetDirection(), 0.0, image.GetPixelID())
        if direction is not None:
            image.SetDirection(direction)
        sitk.WriteImage(image, str(out / path.name))


def dice(a, b):
    return 2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def test_cases_not_at_the_models_voxel_size_are_predicted_at_it(synthetic_brats, tmp_path):
    """A model trained at 1 mm predicts a 1 x 1 x 3 mm copy of a case on the copy's own grid
    and agrees with its 1 mm prediction; used at 3 mm (no spacing recorded) it does not. An
    oblique copy (same voxels, rotated axes) is predicted as the straight one (but for rounding
    in under 0.1 % of the voxels) on its own grid."""
    import SimpleITK as sitk
    case = find_cases(synthetic_brats)[0]
    raw = tmp_path / "raw"
    shutil.copytree(case.directory, raw / case.name)
    resampled_case(case, tmp_path / "thick" / case.name, (1.0, 1.0, 3.0))
    config = PredictConfig(bias_correction=False)
    at_1mm = write_model(tmp_path / "m1", z_dilating_model(), spacing=(1.0, 1.0, 1.0))
    unknown = write_model(tmp_path / "m0", z_dilating_model(), spacing=None)
    lines = []
    predict_cases(at_1mm, raw, tmp_path / "p1", config, progress=lambda line: None)
    predict_cases(at_1mm, tmp_path / "thick", tmp_path / "p3", config, progress=lines.append)
    predict_cases(unknown, tmp_path / "thick", tmp_path / "p3raw", config,
                  progress=lambda line: None)
    assert any("predicted at 1x1x1 mm, the model's voxel size, from 1x1x3 mm" in line
               for line in lines)
    thick, thick_grid = read_nifti(tmp_path / "thick" / case.name / case.label.name)
    resampled, grid = read_nifti(tmp_path / "p3" / f"{case.name}.nii.gz")
    assert grid.same_grid(thick_grid) and resampled.shape == thick.shape
    # The 1 mm prediction brought to the thick grid (nearest neighbour) is the reference.
    reference = sitk.GetArrayFromImage(sitk.Resample(
        sitk.ReadImage(str(tmp_path / "p1" / f"{case.name}.nii.gz")),
        sitk.ReadImage(str(tmp_path / "p3" / f"{case.name}.nii.gz")), sitk.Transform(),
        sitk.sitkNearestNeighbor)).transpose(2, 1, 0)
    as_is, _ = read_nifti(tmp_path / "p3raw" / f"{case.name}.nii.gz")
    whole = lambda labels: labels > 0  # noqa: E731
    agree, unresampled = dice(whole(resampled), whole(reference)), dice(whole(as_is),
                                                                       whole(reference))
    assert agree > 0.9 and agree > unresampled + 0.05, (agree, unresampled)

    # Oblique: the thick case with rotated axes lands on its own (rotated) grid, same voxels.
    angle = np.deg2rad(20)
    rotation = (np.cos(angle), -np.sin(angle), 0.0, np.sin(angle), np.cos(angle), 0.0, 0, 0, 1.0)
    resampled_case(case, tmp_path / "oblique" / case.name, (1.0, 1.0, 3.0), rotation)
    predict_cases(at_1mm, tmp_path / "oblique", tmp_path / "po", config,
                  progress=lambda line: None)
    oblique, oblique_grid = read_nifti(tmp_path / "po" / f"{case.name}.nii.gz")
    assert oblique_grid.same_grid(read_nifti(tmp_path / "oblique" / case.name
                                             / case.label.name)[1])
    assert np.mean(oblique != resampled) < 1e-3, np.mean(oblique != resampled)
