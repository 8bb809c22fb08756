"""The legacy port's prediction API, kept under its names (unet3d.legacy.prediction, also
importable from unet3d.prediction)."""

import pickle

import numpy as np
import pytest

from helpers import channel_model, write_model
from unet3d.augment import generate_permutation_keys, permute_data
from unet3d.errors import InputError
from unet3d.io import Geometry
from unet3d.prediction import (get_prediction_labels, patch_wise_prediction, predict,
                               prediction_to_image, run_validation_cases)


def sitk_array(image) -> np.ndarray:
    import SimpleITK as sitk
    return sitk.GetArrayFromImage(image).transpose(2, 1, 0)


def test_permutation_tta_matches_the_legacy_predict():
    model = channel_model(2, 2)
    batch = np.random.default_rng(4).random((1, 8, 8, 8, 2), dtype=np.float32)
    np.testing.assert_allclose(predict(model, batch, permute=True), batch, rtol=1e-5, atol=1e-6)
    key = sorted(generate_permutation_keys())[5]
    assert not np.allclose(permute_data(batch[0], key), batch[0])


def test_prediction_to_image_keeps_the_affine():
    affine = np.array([[-1.0, 0, 0, 90], [0, -2.0, 0, 120], [0, 0, 3.0, -70], [0, 0, 0, 1]])
    prediction = np.random.default_rng(6).random((1, 4, 5, 6, 3)).astype(np.float32)
    images = prediction_to_image(prediction, affine)
    assert len(images) == 3
    np.testing.assert_allclose(Geometry.of(images[0]).affine, affine)
    label_image = prediction_to_image(prediction, affine, label_map=True, labels=(1, 2, 4))
    assert Geometry.of(label_image).shape == (4, 5, 6)


def test_patch_wise_prediction_keeps_the_port_semantics():
    """Edge-padded grid patches averaged with equal weights: an identity model gives the input."""
    model = channel_model(2, 2)
    data = np.random.default_rng(7).random((1, 20, 18, 9, 2), dtype=np.float32)
    out = patch_wise_prediction(model, data, overlap=4, batch_size=2, patch_shape=(8, 8, 8))
    np.testing.assert_allclose(out, data[0], rtol=1e-5, atol=1e-6)


def test_legacy_functions_refuse_what_they_cannot_do(store_path, tmp_path):
    with pytest.raises(InputError, match="patch_shape"):
        patch_wise_prediction(channel_model(), np.zeros((1, 16, 16, 16, 4), np.float32))
    keys = tmp_path / "keys.pkl"
    keys.write_bytes(pickle.dumps([0]))
    model_file = write_model(tmp_path, channel_model())
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


def test_the_ports_names_import_from_the_ports_modules():
    import unet3d.legacy.prediction as legacy_prediction
    import unet3d.legacy.training as legacy_training
    import unet3d.postprocessing
    import unet3d.prediction
    import unet3d.training

    for name in legacy_prediction.__all__:
        assert getattr(unet3d.prediction, name) is getattr(legacy_prediction, name)
    for name in legacy_training.__all__:
        assert getattr(unet3d.training, name) is getattr(legacy_training, name)
    assert get_prediction_labels is unet3d.postprocessing.get_prediction_labels
    with pytest.raises(ImportError):
        from unet3d.prediction import no_such_function  # noqa: F401



def test_validation_run_of_a_port_model_on_a_port_store(tmp_path):
    """The port's own situation: a model without a card (fixed 16^3 input, one output per label)
    and a store in the port's layout (channels-first, resampled). Windows are the model's input;
    labels follow the port's rule, computed here by hand."""
    from unet3d.data import add_data_to_storage, create_data_file
    from unet3d.io import read_nifti

    rng = np.random.default_rng(11)
    images = rng.random((2, 4, 16, 16, 16)).astype(np.float32)
    store = tmp_path / "port.h5"
    hdf5_file, data, truth, affine = create_data_file(store, 4, 2, (16, 16, 16))
    for image in images:
        add_data_to_storage(data, truth, affine, [*image, np.zeros((16,) * 3, np.uint8)],
                            np.eye(4), 4)
    hdf5_file.close()
    channel_model(spatial=(16, 16, 16)).save(tmp_path / "port.keras")
    keys = tmp_path / "keys.pkl"
    keys.write_bytes(pickle.dumps([1, 0]))
    folders = run_validation_cases(keys, tmp_path / "port.keras", ("t1", "t1ce", "flair", "t2"),
                                   (1, 2, 4), store, output_label_map=True,
                                   output_dir=tmp_path / "v", overlap=0)
    assert [f.rsplit("/", 1)[-1] for f in folders] == ["case_1", "case_0"]
    for index, folder in ((1, folders[0]), (0, folders[1])):
        channels = np.moveaxis(images[index][:3], 0, -1)       # what the model outputs
        expected = np.array([0, 1, 2, 4], np.uint8)[np.where(
            channels.max(axis=-1) < 0.5, 0, channels.argmax(axis=-1) + 1)]
        prediction, _ = read_nifti(f"{folder}/prediction.nii.gz")
        np.testing.assert_array_equal(prediction, expected)
        np.testing.assert_allclose(read_nifti(f"{folder}/data_t1ce.nii.gz")[0], images[index][1])


def test_validation_run_of_a_card_less_model_uses_its_stores_space(cases, tmp_path):
    """A store written without crop or normalisation, a fully convolutional model without a card:
    whole images, in the store's own space (the inputs written back are the raw images)."""
    from unet3d.data import write_data_to_file
    from unet3d.io import read_nifti

    store = tmp_path / "raw.h5"
    write_data_to_file([c.files() for c in cases[:2]], store, normalize=False, crop=False,
                       subject_ids=[c.name for c in cases[:2]])
    channel_model().save(tmp_path / "plain.keras")
    keys = tmp_path / "keys.pkl"
    keys.write_bytes(pickle.dumps([1]))
    (folder,) = run_validation_cases(keys, tmp_path / "plain.keras",
                                     ("t1", "t1ce", "flair", "t2"), (1, 2, 4), store,
                                     output_dir=tmp_path / "v")
    raw_t1, _ = read_nifti(cases[1].images["t1"], dtype=np.float32)
    np.testing.assert_array_equal(read_nifti(f"{folder}/data_t1.nii.gz")[0], raw_t1)
    np.testing.assert_allclose(read_nifti(f"{folder}/prediction_label_1.nii.gz")[0], raw_t1,
                               rtol=1e-6)

