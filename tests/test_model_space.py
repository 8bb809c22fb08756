"""The model's space and the way back: crop, normalisation, the port's resampling."""

import numpy as np

from unet3d.model_space import prepare_case
from unet3d.io import read_nifti
from unet3d.labels import labels_to_regions
from unet3d.model_space import ModelSpace, to_native_space
from unet3d.postprocessing import probabilities_to_labels


def test_cropped_truth_lands_back_where_the_tumour_is(cases):
    """Region maps of the stored (brain-cropped) truth put back on the original grid give the
    original label file exactly."""
    case = cases[0]
    image, truth, info = prepare_case(case.files(), case.name, 4, True, (1, 2, 4), ModelSpace())
    assert info.shape != info.original.shape  # really cropped
    native = to_native_space(labels_to_regions(truth).astype(np.float32), info)
    original, geometry = read_nifti(case.label)
    np.testing.assert_array_equal(probabilities_to_labels(native), original)
    assert geometry.same_grid(info.original)


def test_legacy_resampled_prediction_maps_back_close_to_the_original(cases):
    case = cases[1]
    _, truth, info = prepare_case(case.files(), case.name, 4, True, (1, 2, 4),
                                  ModelSpace(image_shape=(32, 32, 32)))
    native = to_native_space(labels_to_regions(truth).astype(np.float32), info)
    original, _ = read_nifti(case.label)
    assert native.shape[:3] == original.shape
    wt_truth, wt_back = original > 0, probabilities_to_labels(native) > 0
    dice = 2 * (wt_truth & wt_back).sum() / (wt_truth.sum() + wt_back.sum())
    assert dice > 0.85  # 64x64x48 -> 32^3 -> back loses detail, not position


def test_a_space_without_crop_or_normalisation_is_the_identity(cases):
    """The space a store written with normalize=False, crop=False records: the arrays pass
    through unchanged and come back exactly."""
    case = cases[2]
    space = ModelSpace(crop_to_brain=False, normalize=False)
    image, truth, info = prepare_case(case.files(), case.name, 4, True, (1, 2, 4), space)
    raw = np.stack([read_nifti(path, dtype=np.float32)[0] for path in case.files()[:4]], axis=-1)
    np.testing.assert_array_equal(image, raw)
    assert info.shape == info.original.shape and info.crop_start == (0, 0, 0)
    np.testing.assert_array_equal(to_native_space(truth, info), read_nifti(case.label)[0])


def test_the_space_is_recorded_by_the_store(cases, tmp_path):
    from unet3d.data import DataStore, write_data_to_file

    path = tmp_path / "raw.h5"
    write_data_to_file([cases[0].files()], path, normalize=False, crop=False)
    with DataStore(path) as store:
        assert store.space == ModelSpace(crop_to_brain=False, normalize=False)
