"""The legacy port's Keras 2 HDF5 models load channels-last and compute what the port computed."""

import h5py
import numpy as np
import pytest

from unet3d.errors import InputError
from unet3d.legacy.models import convert_port_model, is_port_file
from unet3d.model import load_old_model

port_models = pytest.importorskip("port_models")  # needs tf-keras (a test extra)

CASES = {
    "isensee2017 paper size": (port_models.port_isensee2017, {}),
    "isensee2017 small": (port_models.port_isensee2017, dict(
        input_channels=2, n_base_filters=4, depth=3, n_segmentation_levels=2, n_labels=4,
        activation_name="softmax")),
    "unet3d upsampling": (port_models.port_unet_3d, dict(depth=3, n_base_filters=4)),
    "unet3d deconvolution batch norm": (port_models.port_unet_3d, dict(
        depth=4, n_base_filters=2, n_labels=1, deconvolution=True, batch_normalization=True)),
}


@pytest.mark.parametrize("name", [pytest.param(name, marks=pytest.mark.slow)
                                  if name == "isensee2017 paper size" else name
                                  for name in CASES])
def test_converted_port_models_equal_the_port_outputs(name, tmp_path):
    builder, settings = CASES[name]
    path = tmp_path / "old.h5"
    twin = port_models.write_port_file(path, builder, **settings)
    assert is_port_file(path)
    model = load_old_model(path, compile=False)
    assert model.count_params() == twin.count_params()
    if not settings:  # the port's defaults, 4 inputs and 3 labels
        assert model.count_params() == 8_269_561
    channels = settings.get("input_channels", 4)
    rng = np.random.default_rng(1)
    for spatial in [(16, 16, 16), (32, 16, 48)]:
        batch = rng.normal(size=(2, channels, *spatial)).astype(np.float32)  # channels-first
        expected = port_models.reference_outputs(twin, batch)
        output = np.moveaxis(np.asarray(model.predict_on_batch(np.moveaxis(batch, 1, -1))), -1, 1)
        np.testing.assert_allclose(output, expected, atol=1e-5, rtol=0)


def test_a_port_file_with_an_unknown_layer_is_refused_by_name(tmp_path):
    import tf_keras

    inputs = tf_keras.layers.Input((4, None, None, None))
    x = tf_keras.layers.Conv3D(8, 3, padding="same", data_format="channels_first")(inputs)
    x = port_models.InstanceNormalization(axis=1)(x)
    x = tf_keras.layers.LeakyReLU()(x)
    x = tf_keras.layers.Conv3D(3, 1, data_format="channels_first", name="head")(x)
    x = tf_keras.layers.Cropping3D(1, data_format="channels_first", name="odd_crop")(x)
    path = tmp_path / "other.h5"
    tf_keras.Model(inputs, tf_keras.layers.Activation("sigmoid")(x)).save(path,
                                                                          save_format="h5")
    with pytest.raises(InputError, match=r"'odd_crop' \(Cropping3D\)"):
        load_old_model(path, compile=False)


def test_a_port_file_of_another_wiring_is_refused_naming_a_layer(tmp_path):
    """The same layer types in other sizes (a 5x5x5 first convolution) do not fit the rebuilt
    network: the error names the first layer that does not fit."""
    import tf_keras

    inputs = tf_keras.layers.Input((4, None, None, None))
    x = tf_keras.layers.Conv3D(4, 5, padding="same", data_format="channels_first",
                               name="wide")(inputs)
    x = tf_keras.layers.Activation("relu")(x)
    x = tf_keras.layers.MaxPooling3D(2, data_format="channels_first")(x)
    x = tf_keras.layers.UpSampling3D(2, data_format="channels_first")(x)
    x = tf_keras.layers.Conv3D(1, 1, data_format="channels_first")(x)
    path = tmp_path / "wide.h5"
    tf_keras.Model(inputs, tf_keras.layers.Activation("sigmoid")(x)).save(path,
                                                                          save_format="h5")
    with pytest.raises(InputError, match="'wide'"):
        convert_port_model(path)


def test_a_weights_only_file_is_refused(tmp_path):
    path = tmp_path / "weights.h5"
    with h5py.File(path, "w") as file:
        file.attrs["keras_version"] = "2.2.4"
        file.create_group("model_weights")
    with pytest.raises(InputError, match="no model_config"):
        convert_port_model(path)


def test_converted_port_model_exports_to_onnx_with_the_same_outputs(tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    from unet3d.onnx_graph import onnx_model

    path = tmp_path / "old.h5"
    twin = port_models.write_port_file(path, port_models.port_isensee2017, n_base_filters=4,
                                       depth=3, n_segmentation_levels=2)
    session = onnxruntime.InferenceSession(onnx_model(load_old_model(path)).SerializeToString())
    batch = np.random.default_rng(2).normal(size=(1, 4, 32, 16, 16)).astype(np.float32)
    output = session.run(None, {"image": np.moveaxis(batch, 1, -1)})[0]
    np.testing.assert_allclose(np.moveaxis(output, -1, 1),
                               port_models.reference_outputs(twin, batch), atol=1e-5, rtol=0)


@pytest.mark.slow
def test_convert_script_writes_a_model_predict_uses(synthetic_brats, tmp_path):
    """A port file of a fixed 32^3 input becomes a .keras model whose card says the port's
    modalities, labels and resampled space; it predicts the raw cases on their own grid."""
    from helpers import run_script
    from unet3d.brats import find_cases
    from unet3d.config import PredictConfig
    from unet3d.io import read_nifti
    from unet3d.model import read_card
    from unet3d.prediction import predict_cases

    old = tmp_path / "isensee_2017_model.h5"
    twin = port_models.write_port_file(old, port_models.port_isensee2017, spatial=(32, 32, 32),
                                       n_base_filters=4, depth=3, n_segmentation_levels=2)
    new = tmp_path / "converted" / "model.keras"
    result = run_script("convert_legacy_model.py", "--model_file", str(old), "--output",
                        str(new))
    assert result.returncode == 0, result.stderr[-2000:]
    card = read_card(new)
    assert (card.modalities, card.target, card.labels) == (("t1", "t1ce", "flair", "t2"),
                                                           "labels", (1, 2, 4))
    assert card.space.image_shape == (32, 32, 32) and card.patch_shape == (32, 32, 32)
    batch = np.random.default_rng(3).normal(size=(1, 4, 32, 32, 32)).astype(np.float32)
    output = load_old_model(new, compile=False).predict_on_batch(np.moveaxis(batch, 1, -1))
    np.testing.assert_allclose(np.moveaxis(output, -1, 1),
                               port_models.reference_outputs(twin, batch), atol=1e-5, rtol=0)
    again = run_script("convert_legacy_model.py", "--model_file", str(old), "--output", str(new))
    assert again.returncode == 2 and "--overwrite" in again.stderr

    report = predict_cases(new, synthetic_brats, tmp_path / "out",
                           PredictConfig(bias_correction=False))
    assert report.done and not report.failed
    for case in find_cases(synthetic_brats)[:2]:
        labels, geometry = read_nifti(tmp_path / "out" / f"{case.name}.nii.gz")
        assert geometry.same_grid(read_nifti(case.images["t1"])[1], tolerance=1e-6)
        assert set(np.unique(labels)) <= {0, 1, 2, 4}


def test_a_port_file_without_its_input_size_needs_the_image_shape(tmp_path):
    from unet3d.legacy.models import convert_legacy_model

    old = tmp_path / "free.h5"
    port_models.write_port_file(old, port_models.port_unet_3d, depth=2, n_base_filters=2)
    with pytest.raises(InputError, match="--image_shape"):
        convert_legacy_model(old, tmp_path / "new.keras")
    card = convert_legacy_model(old, tmp_path / "new.keras", image_shape=(48, 48, 32))
    assert card.model == "unet3d" and card.space.image_shape == (48, 48, 32)
    assert not (tmp_path / "other.keras").exists()
    with pytest.raises(InputError, match="not a Keras 2 HDF5"):
        convert_legacy_model(tmp_path / "new.keras", tmp_path / "other.keras")


def test_a_port_file_with_other_layer_settings_is_refused_by_name(tmp_path):
    """Weights of the right shapes are not enough: a dilated convolution or another slope in
    one layer makes another network."""
    import json

    path = tmp_path / "edited.h5"
    port_models.write_port_file(path, port_models.port_isensee2017, n_base_filters=2, depth=3,
                                n_segmentation_levels=2)
    with h5py.File(path, "r") as file:
        original = json.loads(file.attrs["model_config"])
    for kind, key, value in (("Conv3D", "dilation_rate", [2, 2, 2]), ("LeakyReLU", "alpha", 0.1)):
        config = json.loads(json.dumps(original))
        layer = [l for l in config["config"]["layers"] if l["class_name"] == kind][1]
        layer["config"][key] = value
        with h5py.File(path, "a") as file:
            file.attrs["model_config"] = json.dumps(config)
        with pytest.raises(InputError, match=f"'{layer['name']}' .*{key}"):
            convert_port_model(path)


def test_channels_last_keras_2_files_load_as_keras_3_reads_them(tmp_path):
    import tf_keras

    inputs = tf_keras.layers.Input((None, None, None, 2))
    outputs = tf_keras.layers.Conv3D(3, 1, activation="sigmoid")(inputs)
    twin = tf_keras.Model(inputs, outputs)
    path = tmp_path / "channels_last.h5"
    twin.save(path, save_format="h5")
    assert not is_port_file(path)
    batch = np.random.default_rng(4).normal(size=(1, 8, 8, 8, 2)).astype(np.float32)
    np.testing.assert_allclose(load_old_model(path, compile=False).predict_on_batch(batch),
                               twin.predict_on_batch(batch), atol=1e-6)
