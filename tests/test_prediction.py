"""Prediction: windows and weights, test-time augmentation, labels, native space, the script."""

import itertools
import pickle
import shutil

import keras
import numpy as np
import pytest

from conftest import run_script
from unet3d.augment import generate_permutation_keys, permute_data, reverse_permute_data
from unet3d.brats import find_cases
from unet3d.data import normalize_modality, prepare_case
from unet3d.errors import InputError
from unet3d.io import Geometry, read_nifti
from unet3d.labels import labels_to_regions
from unet3d.prediction import (PredictConfig, gaussian_importance_map, get_prediction_labels,
                               patch_wise_prediction, predict, predict_cases, predict_config,
                               predict_with_tta, prediction_to_image, probabilities_to_labels,
                               remove_small_enhancing, run_validation_cases, save_settings,
                               sliding_window_inference,
                               to_native_space, tta_transforms, whole_volume_inference,
                               window_corners)
from unet3d.preprocessing import brain_mask


def sitk_array(image) -> np.ndarray:
    import SimpleITK as sitk
    return sitk.GetArrayFromImage(image).transpose(2, 1, 0)


def identity(batch):
    return batch


def channel_model(n_channels: int = 4, n_outputs: int = 3) -> keras.Model:
    """A fully convolutional model whose output k is input channel k (a 1x1x1 convolution)."""
    inputs = keras.Input((None, None, None, n_channels))
    conv = keras.layers.Conv3D(n_outputs, 1, use_bias=False)
    model = keras.Model(inputs, conv(inputs))
    conv.set_weights([np.eye(n_channels, n_outputs, dtype=np.float32).reshape(1, 1, 1, n_channels,
                                                                              n_outputs)])
    return model


# ------------------------------------------------------------------------- windows and weights

def test_gaussian_map_peaks_at_centre_and_is_symmetric():
    weights = gaussian_importance_map((8, 16, 5))
    assert weights.shape == (8, 16, 5) and weights.dtype == np.float32
    assert weights.min() > 0 and weights.max() == pytest.approx(1.0)
    np.testing.assert_allclose(weights, weights[::-1, ::-1, ::-1])
    assert weights[2, 8, 2] > weights[0, 8, 2]


def test_gaussian_map_sigma_is_an_eighth_of_the_window():
    line = gaussian_importance_map((1, 16, 1))[0, :, 0].astype(np.float64)
    centre = 7.5  # between voxels 7 and 8
    sigma = 16 / 8
    expected = np.exp(-0.5 * ((np.arange(16) - centre) / sigma) ** 2)
    np.testing.assert_allclose(line, expected / expected.max(), rtol=1e-6)


def test_window_corners_by_hand():
    # 200 voxels, window 128, step 0.5 (64): ceil(72 / 64) + 1 = 3 windows at 0, 36, 72
    corners = window_corners((200, 128, 129), (128, 128, 128), 0.5)
    assert sorted(set(corners[:, 0])) == [0, 36, 72]
    assert sorted(set(corners[:, 1])) == [0]
    assert sorted(set(corners[:, 2])) == [0, 1]
    assert len(corners) == 3 * 1 * 2


@pytest.mark.parametrize("size,patch,step", [(50, 16, 0.5), (37, 8, 0.25), (16, 16, 0.5),
                                             (33, 12, 1.0)])
def test_windows_cover_the_volume_within_the_step(size, patch, step):
    corners = window_corners((size, size, size), (patch,) * 3, step)
    positions = sorted(set(corners[:, 0]))
    assert positions[0] == 0 and positions[-1] == size - patch
    assert max(np.diff(positions), default=0) <= step * patch


def test_impossible_window_settings_are_refused():
    with pytest.raises(InputError, match="step"):
        window_corners((32, 32, 32), (16, 16, 16), 0)
    with pytest.raises(InputError, match="weighting"):
        sliding_window_inference(np.zeros((8, 8, 8, 1)), identity, (8, 8, 8), weighting="x")
    with pytest.raises(InputError, match="patch shape"):
        sliding_window_inference(np.zeros((8, 8, 8, 1)), identity, (8, 8))


@pytest.mark.parametrize("shape", [(40, 33, 20), (16, 16, 16), (10, 30, 7)])
@pytest.mark.parametrize("step", [0.25, 0.5, 1.0])
@pytest.mark.parametrize("weighting", ["gaussian", "constant"])
def test_identity_network_reproduces_its_input(shape, step, weighting):
    """The weights normalise: an identity network's windows put back give the input again, for
    volumes larger and smaller than the window (zero padding) and any overlap."""
    image = np.random.default_rng(0).random((*shape, 2), dtype=np.float32)
    out = sliding_window_inference(image, identity, (16, 16, 16), step, weighting, batch_size=3)
    assert out.shape == image.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, image, rtol=1e-5, atol=1e-6)


def test_sliding_window_of_a_pointwise_model_equals_the_whole_volume_pass():
    """A 1x1x1 Keras model gives the same voxel values whatever window sees the voxel."""
    model = channel_model()
    image = np.random.default_rng(1).random((40, 36, 20, 4), dtype=np.float32)
    whole = whole_volume_inference(image, model, divisor=16)
    windows = sliding_window_inference(image, model, (16, 16, 16), 0.5, batch_size=2,
                                       tta="mirror")
    np.testing.assert_allclose(whole, image[..., :3], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(windows, image[..., :3], rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------- test-time augmentation

@pytest.mark.parametrize("mode,count", [("none", 1), ("mirror", 8), ("permute", 48)])
def test_every_tta_variant_is_exactly_inverted(mode, count):
    batch = np.random.default_rng(2).random((2, 6, 6, 6, 3), dtype=np.float32)
    transforms = tta_transforms(mode)
    assert len(transforms) == count
    seen = set()
    for forward, inverse in transforms:
        moved = forward(batch)
        np.testing.assert_array_equal(inverse(moved), batch)
        seen.add(moved.tobytes())
    assert len(seen) == count  # all variants differ


def test_mirror_tta_averages_the_eight_flips():
    """With a predictor that is not flip-equivariant, the TTA mean equals the mean of the eight
    flip-predict-unflip results computed here independently."""
    ramp = np.arange(5 * 4 * 3, dtype=np.float32).reshape(1, 5, 4, 3, 1)

    def biased(batch):
        return batch + ramp

    batch = np.random.default_rng(3).random((1, 5, 4, 3, 1), dtype=np.float32)
    expected = np.zeros_like(batch)
    for axes in itertools.chain.from_iterable(itertools.combinations((1, 2, 3), r)
                                              for r in range(4)):
        expected += np.flip(biased(np.flip(batch, axes)), axes) if axes else biased(batch)
    np.testing.assert_allclose(predict_with_tta(biased, batch, tta_transforms("mirror")),
                               expected / 8, rtol=1e-6)


def test_permutation_tta_matches_the_legacy_predict():
    model = channel_model(2, 2)
    batch = np.random.default_rng(4).random((1, 8, 8, 8, 2), dtype=np.float32)
    np.testing.assert_allclose(predict(model, batch, permute=True), batch, rtol=1e-5, atol=1e-6)
    key = sorted(generate_permutation_keys())[5]
    assert not np.allclose(permute_data(batch[0], key), batch[0])


def test_whole_volume_permutations_need_a_cube():
    with pytest.raises(InputError, match="cubic"):
        whole_volume_inference(np.zeros((32, 16, 16, 1), np.float32), identity, tta="permute")


# ------------------------------------------------------------------------- labels

def test_region_outputs_round_trip_to_labels():
    truth = np.random.default_rng(5).choice(np.array([0, 1, 2, 4], np.uint8), size=(6, 7, 8))
    regions = labels_to_regions(truth, (1, 2, 4)).astype(np.float32)
    np.testing.assert_array_equal(probabilities_to_labels(regions, "regions", (1, 2, 4)), truth)
    truth23 = np.where(truth == 4, 3, truth).astype(np.uint8)
    np.testing.assert_array_equal(
        probabilities_to_labels(labels_to_regions(truth23, (1, 2, 3)), "regions", (1, 2, 3)),
        truth23)


def test_legacy_prediction_labels_by_hand():
    # voxel a: channel 2 wins (0.7) -> label 4; voxel b: max 0.4 < 0.5 -> 0; voxel c: ch 0 -> 1
    prediction = np.array([[0.1, 0.2, 0.7], [0.4, 0.3, 0.1], [0.9, 0.8, 0.0]],
                          np.float32).reshape(1, 3, 1, 1, 3)
    (labels,) = get_prediction_labels(prediction, 0.5, (1, 2, 4))
    assert labels.ravel().tolist() == [4, 0, 1]
    assert probabilities_to_labels(prediction[0], "labels", (1, 2, 4)).ravel().tolist() == [4, 0, 1]


def test_small_enhancing_tumour_becomes_necrosis():
    label_map = np.zeros((10, 10, 10), np.uint8)
    label_map[:2, :2, :2] = 4          # 8 voxels of ET
    label_map[5:, 5:, 5:] = 2
    out = remove_small_enhancing(label_map, (1, 2, 4), min_voxels=9)
    assert (out[:2, :2, :2] == 1).all() and (out[5:, 5:, 5:] == 2).all()
    assert (remove_small_enhancing(label_map, (1, 2, 4), min_voxels=8) == label_map).all()


def test_prediction_to_image_keeps_the_affine():
    affine = np.array([[-1.0, 0, 0, 90], [0, -2.0, 0, 120], [0, 0, 3.0, -70], [0, 0, 0, 1]])
    prediction = np.random.default_rng(6).random((1, 4, 5, 6, 3)).astype(np.float32)
    images = prediction_to_image(prediction, affine)
    assert len(images) == 3
    np.testing.assert_allclose(Geometry.of(images[0]).affine, affine)
    label_image = prediction_to_image(prediction, affine, label_map=True, labels=(1, 2, 4))
    assert Geometry.of(label_image).shape == (4, 5, 6)


# ------------------------------------------------------------------------- native space

def test_cropped_truth_lands_back_where_the_tumour_is(cases):
    """Region maps of the stored (brain-cropped) truth put back on the original grid give the
    original label file exactly."""
    case = cases[0]
    image, truth, info = prepare_case(case.files(), case.name, 4, True, (1, 2, 4),
                                      None, normalize=True, crop_to_brain=True)
    assert info.shape != info.original.shape  # really cropped
    native = to_native_space(labels_to_regions(truth).astype(np.float32), info)
    original, geometry = read_nifti(case.label)
    np.testing.assert_array_equal(probabilities_to_labels(native), original)
    assert geometry.same_grid(info.original)


def test_legacy_resampled_prediction_maps_back_close_to_the_original(cases):
    case = cases[1]
    _, truth, info = prepare_case(case.files(), case.name, 4, True, (1, 2, 4),
                                  (32, 32, 32), normalize=True, crop_to_brain=True)
    native = to_native_space(labels_to_regions(truth).astype(np.float32), info)
    original, _ = read_nifti(case.label)
    assert native.shape[:3] == original.shape
    wt_truth, wt_back = original > 0, probabilities_to_labels(native) > 0
    dice = 2 * (wt_truth & wt_back).sum() / (wt_truth.sum() + wt_back.sum())
    assert dice > 0.85  # 64x64x48 -> 32^3 -> back loses detail, not position


# ------------------------------------------------------------------------- cases and the script

def model_file_of(tmp_path, model, **settings):
    path = tmp_path / "model.keras"
    model.save(path)
    save_settings(path, {"model": "isensee2017", "patch_shape": [16, 16, 16], "image_shape": None,
                         "target": "regions", "modalities": ["t1", "t1ce", "flair", "t2"],
                         **settings})
    return path


def test_predictions_are_the_input_grid_and_put_the_crop_back_in_place(cases, synthetic_brats,
                                                                       tmp_path):
    """With a model whose WT output is the normalised t1, the written WT probability map equals
    the t1 normalised independently on the original grid: same shape, affine and position."""
    model_file = model_file_of(tmp_path, channel_model())
    config = predict_config(model_file, bias_correction=False, probabilities=True)
    assert config.patch_shape == (16, 16, 16) and config.target == "regions"
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
    model_file = model_file_of(tmp_path, model)
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
    missing = run_script("predict.py", "--model_file", str(tmp_path / "none.keras"),
                         "--input_dir", str(synthetic_brats), "--output_dir", str(tmp_path / "o"))
    assert missing.returncode == 2 and "none.keras" in missing.stderr
    assert "Traceback" not in missing.stderr
    # one case lacks a modality: it fails with its name, the other case is written
    broken = tmp_path / "broken"
    for case in find_cases(synthetic_brats)[:2]:
        shutil.copytree(case.directory, broken / case.name)
    bad = find_cases(broken)[0]
    bad.images["t2"].unlink()
    model_file = model_file_of(tmp_path, channel_model())
    result = run_script("predict.py", "--model_file", str(model_file), "--input_dir", str(broken),
                        "--output_dir", str(tmp_path / "out"), "--nobias_correction")
    assert result.returncode == 1, result.stderr[-2000:]
    assert bad.name in result.stderr and "t2" in result.stderr
    assert len(list((tmp_path / "out").glob("*.nii.gz"))) == 1
    # a window the network cannot take is refused before any case is read (the Isensee network
    # needs multiples of 16; the 1x1x1 channel model above takes any size)
    from unet3d.model import isensee2017_model

    (tmp_path / "isensee").mkdir()
    isensee_file = model_file_of(tmp_path / "isensee",
                                 isensee2017_model((None, None, None, 4), n_base_filters=2))
    odd = run_script("predict.py", "--model_file", str(isensee_file), "--input_dir", str(broken),
                     "--output_dir", str(tmp_path / "odd"), "--patch_shape", "30,30,30")
    assert odd.returncode == 2 and "divisible by 16" in odd.stderr
    assert not list((tmp_path / "odd").glob("*.nii.gz"))


def test_validation_run_writes_native_space_cases(store_path, cases, tmp_path):
    """The port's run_validation_cases: inputs, truth and prediction per validation case, on the
    original grid; the truth written equals the original label file."""
    keys = tmp_path / "validation_ids.pkl"
    with open(keys, "wb") as stream:
        pickle.dump([1, 3], stream)
    model_file = model_file_of(tmp_path, channel_model(), data_file=str(store_path),
                               validation_keys_file=str(keys), labels=[1, 2, 4])
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


def test_patch_wise_prediction_keeps_the_port_semantics():
    """Edge-padded grid patches averaged with equal weights: an identity model gives the input."""
    model = channel_model(2, 2)
    data = np.random.default_rng(7).random((1, 20, 18, 9, 2), dtype=np.float32)
    out = patch_wise_prediction(model, data, overlap=4, batch_size=2, patch_shape=(8, 8, 8))
    np.testing.assert_allclose(out, data[0], rtol=1e-5, atol=1e-6)


def test_predict_config_defaults_without_settings(tmp_path):
    config = predict_config(tmp_path / "legacy.h5", tta="mirror")
    assert config == PredictConfig(tta="mirror")


def test_gaussian_weighting_by_brute_force():
    """A predictor whose output is a different constant per window: each voxel gets the
    Gaussian-weighted mean of the constants of the windows covering it, computed here directly."""
    shape, patch, step = (20, 12, 10), (8, 8, 8), 0.5
    calls = []

    def per_window(batch):
        calls.append(len(calls) + 1)
        return np.full(batch.shape[:4] + (1,), float(calls[-1]), np.float32)

    out = sliding_window_inference(np.zeros((*shape, 1), np.float32), per_window, patch, step)
    axis = [np.exp(-0.5 * ((np.arange(n) - (n - 1) / 2) / (n / 8)) ** 2) for n in patch]
    weight = axis[0][:, None, None] * axis[1][None, :, None] * axis[2][None, None, :]
    total, norm = np.zeros(shape), np.zeros(shape)
    for value, corner in enumerate(window_corners(shape, patch, step), start=1):
        region = tuple(slice(c, c + p) for c, p in zip(corner, patch))
        total[region] += value * weight
        norm[region] += weight
    np.testing.assert_allclose(out[..., 0], total / norm, rtol=1e-4)
    constant = sliding_window_inference(np.zeros((*shape, 1), np.float32), per_window, patch,
                                        step, weighting="constant")
    assert not np.allclose(constant, out)  # the weighting matters


def test_permutation_tta_is_the_mean_over_the_48_permutations():
    ramp = np.arange(4 ** 3, dtype=np.float32).reshape(1, 4, 4, 4, 1)

    def biased(batch):
        return batch * 2 + ramp

    batch = np.random.default_rng(8).random((1, 4, 4, 4, 1), dtype=np.float32)
    keys = sorted(generate_permutation_keys())
    expected = np.mean([reverse_permute_data(biased(permute_data(batch[0], k)[np.newaxis])[0], k)
                        for k in keys], axis=0)
    np.testing.assert_allclose(predict_with_tta(biased, batch, tta_transforms("permute"))[0],
                               expected, rtol=1e-5)


def test_brats2023_cases_get_enhancing_tumour_as_label_3(tmp_path):
    from unet3d.synthetic import make_synthetic_brats

    make_synthetic_brats(tmp_path / "cases", n_cases=1, shape=(64, 64, 48), seed=3,
                         naming="brats2023")
    model_file = model_file_of(tmp_path, channel_model())
    report = predict_cases(model_file, tmp_path / "cases", tmp_path / "out",
                           predict_config(model_file, bias_correction=False))
    labels, _ = read_nifti(tmp_path / "out" / f"{report.done[0]}.nii.gz")
    assert 3 in labels and 4 not in labels


def test_legacy_functions_refuse_what_they_cannot_do(store_path, tmp_path):
    with pytest.raises(InputError, match="patch_shape"):
        patch_wise_prediction(channel_model(), np.zeros((1, 16, 16, 16, 4), np.float32))
    keys = tmp_path / "keys.pkl"
    keys.write_bytes(pickle.dumps([0]))
    model_file = model_file_of(tmp_path, channel_model())
    with pytest.raises(InputError, match="overlap"):
        run_validation_cases(keys, model_file, ("t1", "t1ce", "flair", "t2"), (1, 2, 4),
                             store_path, overlap=16, output_dir=tmp_path / "v")
    keys.write_bytes(pickle.dumps([0, 9]))
    with pytest.raises(InputError, match="another store"):
        run_validation_cases(keys, model_file, ("t1", "t1ce", "flair", "t2"), (1, 2, 4),
                             store_path, overlap=4, output_dir=tmp_path / "v")


def test_one_channel_label_map_keeps_the_port_rule():
    prediction = np.array([0.2, 0.5, 0.9], np.float32).reshape(1, 3, 1, 1, 1)
    image = prediction_to_image(prediction, np.eye(4), label_map=True, labels=(4,))
    values = sitk_array(image)
    assert values.ravel().tolist() == [0, 0, 4]  # strictly above the threshold
