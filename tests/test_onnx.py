"""ONNX export and the prediction runtimes: the ONNX graph computes what the Keras model computes,
with the fast operators; ONNX Runtime, OpenVINO and bfloat16 predict the same windows."""

import json
import subprocess
import sys

import keras
import numpy as np
import pytest

from helpers import card_of, run_script, write_model
from unet3d import runtimes
from unet3d.config import PredictConfig
from unet3d.errors import InputError
from unet3d.export import export_model
from unet3d.inference import sliding_window_inference
from unet3d.io import read_nifti
from unet3d.model import build_isensee2017, build_unet_2d, build_unet_3d
from unet3d.onnx_graph import card_of as onnx_card
from unet3d.onnx_graph import onnx_model
from unet3d.prediction import predict_cases

onnxruntime = pytest.importorskip("onnxruntime")


def randomise_normalisation(model: keras.Model, seed: int = 0) -> keras.Model:
    """Give every normalisation layer scales, offsets (and batch statistics) far from their
    initial 1 and 0, so that a wrong mapping of them shows in the outputs."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if type(layer).__name__ in ("GroupNormalization", "BatchNormalization"):
            layer.set_weights([rng.uniform(0.5, 1.5, w.shape).astype(np.float32)
                               for w in layer.get_weights()])
    return model


def run_onnx(proto, batch: np.ndarray) -> np.ndarray:
    session = onnxruntime.InferenceSession(proto.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    return session.run(None, {"image": batch})[0]


NETWORKS = {
    "isensee2017": lambda: build_isensee2017((None, None, None, 4), n_base_filters=4, depth=4),
    "isensee2017 legacy softmax": lambda: build_isensee2017(
        (None, None, None, 2), n_base_filters=4, depth=3, n_segmentation_levels=2, n_labels=4,
        activation_name="softmax", legacy=True),
    "unet3d batch norm": lambda: build_unet_3d((None, None, None, 4), depth=3, n_base_filters=4,
                                               batch_normalization=True),
    "unet3d deconvolution": lambda: build_unet_3d((None, None, None, 4), depth=3,
                                                  n_base_filters=4, deconvolution=True,
                                                  n_labels=3),
}


@pytest.mark.parametrize("name", NETWORKS)
def test_onnx_outputs_equal_keras_on_several_sizes(name):
    keras.utils.set_random_seed(1)
    model = randomise_normalisation(NETWORKS[name]())
    proto = onnx_model(model)
    rng = np.random.default_rng(2)
    channels = model.inputs[0].shape[-1]
    for shape in [(1, 16, 16, 16), (2, 32, 16, 48), (1, 48, 64, 32)]:
        batch = rng.normal(size=(*shape, channels)).astype(np.float32)
        expected = model.predict_on_batch(batch)
        output = run_onnx(proto, batch)
        assert output.shape == expected.shape
        np.testing.assert_allclose(output, expected, atol=1e-4, rtol=0)


def test_onnx_of_a_2d_unet_equals_keras():
    keras.utils.set_random_seed(3)
    model = randomise_normalisation(build_unet_2d((None, None, 3), depth=3, n_base_filters=4,
                                                  batch_normalization=True))
    batch = np.random.default_rng(4).normal(size=(2, 32, 48, 3)).astype(np.float32)
    np.testing.assert_allclose(run_onnx(onnx_model(model), batch),
                               model.predict_on_batch(batch), atol=1e-4, rtol=0)


def test_onnx_graph_uses_fused_operators_and_dynamic_axes():
    """Instance normalisation is one InstanceNormalization per layer; the only layout changes are
    the input's and the output's transposes; batch and spatial axes are named, not fixed."""
    model = build_isensee2017((None, None, None, 4), n_base_filters=4, depth=3,
                              n_segmentation_levels=2)
    proto = onnx_model(model)
    ops = [node.op_type for node in proto.graph.node]
    norms = [l for l in model.layers if isinstance(l, keras.layers.GroupNormalization)]
    convs = [l for l in model.layers if isinstance(l, keras.layers.Conv3D)]
    assert ops.count("InstanceNormalization") == len(norms) > 0
    assert ops.count("Conv") == len(convs)
    assert ops.count("Transpose") == 2
    assert not {"Reshape", "ReduceMean", "Sqrt", "Div", "Pow"} & set(ops)
    for value in (proto.graph.input[0], proto.graph.output[0]):
        dims = value.type.tensor_type.shape.dim
        assert [d.dim_param for d in dims[:4]] == ["batch", "x", "y", "z"]
    assert proto.graph.input[0].type.tensor_type.shape.dim[4].dim_value == 4
    assert proto.graph.output[0].type.tensor_type.shape.dim[4].dim_value == 3


def test_onnx_metadata_carries_the_model_card():
    model = build_isensee2017((None, None, None, 4), n_base_filters=2, depth=3,
                              n_segmentation_levels=2)
    card = card_of(patch_shape=(32, 32, 32))
    proto = onnx_model(model, card)
    assert onnx_card(proto, "model.onnx") == card
    metadata = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(metadata["unet3d_spatial_multiple_of"]) == [4, 4, 4]
    assert onnx_card(onnx_model(model), "model.onnx") is None


def test_layers_without_an_operator_are_refused_by_name():
    inputs = keras.Input((None, None, None, 4))
    x = keras.layers.Conv3D(4, 3, padding="same")(inputs)
    x = keras.layers.GroupNormalization(groups=2, name="two_groups")(x)
    with pytest.raises(InputError, match="two_groups"):
        onnx_model(keras.Model(inputs, x))
    y = keras.layers.Cropping3D(1, name="crop")(inputs)
    with pytest.raises(InputError, match=r"crop \(Cropping3D\)"):
        onnx_model(keras.Model(inputs, y))


# Runs an exported ONNX model with ONNX Runtime alone, in a process that cannot see the
# repository (argv: model, inputs .npz, outputs .npz).
CHILD = """
import sys
import numpy as np
import onnxruntime

session = onnxruntime.InferenceSession(sys.argv[1])
inputs = np.load(sys.argv[2])
outputs = {k: session.run(["segmentation"], {"image": x})[0] for k, x in inputs.items()}
assert "unet3d" not in sys.modules and "keras" not in sys.modules
np.savez(sys.argv[3], **outputs)
"""


@pytest.mark.slow
def test_export_script_writes_onnx_that_runs_without_unet3d(tmp_path):
    keras.utils.set_random_seed(5)
    model = randomise_normalisation(build_isensee2017((None, None, None, 4), n_base_filters=4))
    model_file = write_model(tmp_path, model)
    output = tmp_path / "exported"
    result = run_script("export.py", "--model_file", str(model_file), "--output", str(output),
                        "--format", "onnx")
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(p.name for p in output.iterdir()) == [
        "README.txt", "model.keras", "model.onnx", "signature.json"]
    signature = json.loads((output / "signature.json").read_text())
    assert signature["format"] == "onnx" and signature["onnx"] == "model.onnx"
    assert signature["inputs"]["image"]["channels"] == ["t1", "t1ce", "flair", "t2"]
    assert signature["outputs"]["segmentation"]["channels"] == ["wt", "tc", "et"]
    assert "onnxruntime.InferenceSession(\"model.onnx\")" in (output / "README.txt").read_text()
    assert "equal the Keras model's within" in result.stderr

    rng = np.random.default_rng(6)
    inputs = {"a": rng.normal(size=(1, 32, 48, 16, 4)).astype(np.float32),
              "b": rng.normal(size=(2, 16, 16, 16, 4)).astype(np.float32)}
    np.savez(tmp_path / "in.npz", **inputs)
    child = subprocess.run([sys.executable, "-c", CHILD, str(output / "model.onnx"),
                            str(tmp_path / "in.npz"), str(tmp_path / "out.npz")],
                           cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert child.returncode == 0, child.stderr[-2000:]
    outputs = np.load(tmp_path / "out.npz")
    for key, batch in inputs.items():
        np.testing.assert_allclose(outputs[key], model.predict_on_batch(batch), atol=1e-4,
                                   rtol=0)


def test_export_of_a_deep_supervision_model_is_refused(tmp_path):
    model = build_isensee2017((None, None, None, 4), n_base_filters=2, depth=3,
                              n_segmentation_levels=2, deep_supervision=True)
    model_file = tmp_path / "ds.keras"
    model.save(model_file)
    with pytest.raises(InputError, match="deep-supervision"):
        export_model(model_file, tmp_path / "out", format="onnx")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------- runtimes


@pytest.fixture(scope="module")
def network():
    keras.utils.set_random_seed(7)
    return randomise_normalisation(build_isensee2017((None, None, None, 4), n_base_filters=4,
                                                     depth=3, n_segmentation_levels=2))


def test_every_runtime_predicts_the_same_windows(network):
    """The same sliding windows, Gaussian weights and mirroring on Keras, ONNX Runtime and
    OpenVINO (float32) give the same probabilities to float32 rounding."""
    image = np.random.default_rng(8).normal(size=(40, 36, 20, 4)).astype(np.float32)
    results = {}
    for runtime in runtimes.RUNTIMES:
        if runtime != "keras":
            pytest.importorskip(runtimes.PACKAGES[runtime][0])
        predict = runtimes.predictor(network, runtime, "float32")
        results[runtime] = sliding_window_inference(image, predict, (16, 16, 16), tta="mirror")
    for runtime, probabilities in results.items():
        np.testing.assert_allclose(probabilities, results["keras"], atol=1e-4, rtol=0,
                                   err_msg=runtime)


def test_keras_bfloat16_copy_computes_in_bfloat16_with_the_same_weights(network):
    copy = runtimes.with_dtype_policy(network, "mixed_bfloat16")
    convs = [l for l in copy.layers if isinstance(l, keras.layers.Conv3D)]
    assert all(l.compute_dtype == "bfloat16" and l.variable_dtype == "float32" for l in convs)
    assert copy.layers[-1].compute_dtype == "float32"  # the output activation stays float32
    for a, b in zip(copy.weights, network.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    batch = np.random.default_rng(9).normal(size=(1, 16, 16, 16, 4)).astype(np.float32)
    full, half = network.predict_on_batch(batch), copy.predict_on_batch(batch)
    assert half.dtype == np.float32
    difference = np.abs(full - half).max()
    assert 0 < difference < 0.1  # bfloat16 rounding: different, and close


def test_precisions_resolve_per_runtime_and_machine(monkeypatch):
    monkeypatch.setattr(runtimes, "gpu_has_bfloat16", lambda: False)
    monkeypatch.setattr(runtimes, "cpu_has_bfloat16", lambda: True)
    assert [runtimes.resolve_precision(r, "auto") for r in runtimes.RUNTIMES] == [
        "bfloat16", "float32", "bfloat16"]
    with pytest.raises(InputError, match="ONNX Runtime has no bfloat16"):
        runtimes.resolve_precision("onnxruntime", "bfloat16")
    monkeypatch.setattr(runtimes, "cpu_has_bfloat16", lambda: False)
    assert [runtimes.resolve_precision(r, "auto") for r in runtimes.RUNTIMES] == [
        "float32"] * 3
    with pytest.raises(InputError, match="no bfloat16 units"):
        runtimes.resolve_precision("openvino", "bfloat16")
    assert runtimes.resolve_precision("keras", "bfloat16") == "bfloat16"
    monkeypatch.setattr(runtimes, "gpu_has_bfloat16", lambda: True)  # e.g. an H100
    assert [runtimes.resolve_precision(r, "auto") for r in runtimes.RUNTIMES] == [
        "bfloat16", "float32", "float32"]
    with pytest.raises(InputError, match="unknown runtime 'tensorrt'"):
        runtimes.resolve_precision("tensorrt", "float32")


def test_a_missing_runtime_names_its_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino fails
    with pytest.raises(InputError, match=r"pip install -e \.\[openvino\]"):
        runtimes.runtime_module("openvino")


@pytest.mark.slow
def test_predict_script_on_onnx_runtimes_writes_the_keras_labels(synthetic_brats, tmp_path):
    keras.utils.set_random_seed(10)
    model = randomise_normalisation(build_isensee2017((None, None, None, 4), n_base_filters=4,
                                                      depth=3, n_segmentation_levels=2))
    model_file = write_model(tmp_path, model)
    config = PredictConfig(bias_correction=False, probabilities=True)
    keras_report = predict_cases(model_file, synthetic_brats, tmp_path / "keras", config)
    assert keras_report.done and not keras_report.failed
    for runtime in ("onnxruntime", "openvino"):
        pytest.importorskip(runtimes.PACKAGES[runtime][0])
        result = run_script("predict.py", "--model_file", str(model_file), "--input_dir",
                            str(synthetic_brats), "--output_dir", str(tmp_path / runtime),
                            "--runtime", runtime, "--nobias_correction", "--probabilities")
        assert result.returncode == 0, result.stderr[-2000:]
        assert f"runs on {runtime}, float32" in result.stderr
        for case in keras_report.done:
            for suffix in ("", "_wt", "_tc", "_et"):
                ours = read_nifti(tmp_path / runtime / f"{case}{suffix}.nii.gz")[0]
                reference = read_nifti(tmp_path / "keras" / f"{case}{suffix}.nii.gz")[0]
                if suffix:
                    np.testing.assert_allclose(ours, reference, atol=1e-4, rtol=0)
                else:  # labels: equal but where a probability is within rounding of 0.5
                    assert np.mean(ours != reference) < 1e-4


def test_keras_float32_runs_a_mixed_precision_model_in_float32(network):
    """A model trained under mixed_bfloat16 keeps that policy in its file; float32 prediction
    must still compute in float32, and bfloat16 prediction of a float32 model in bfloat16."""
    trained_in_bf16 = runtimes.with_dtype_policy(network, "mixed_bfloat16")
    batch = np.random.default_rng(11).normal(size=(1, 16, 16, 16, 4)).astype(np.float32)
    as_float32 = runtimes.predictor(trained_in_bf16, "keras", "float32")(batch)
    np.testing.assert_allclose(as_float32, network.predict_on_batch(batch), atol=1e-5, rtol=0)
    as_bfloat16 = runtimes.predictor(network, "keras", "bfloat16")(batch)
    np.testing.assert_allclose(as_bfloat16, trained_in_bf16.predict_on_batch(batch), atol=1e-6,
                               rtol=0)


def test_a_model_trained_in_mixed_precision_exports_its_float32_network(network, tmp_path):
    """The ONNX graph is float32: the export checks it against the float32 network, not the
    model's own bfloat16 arithmetic (which differs by more than the tolerance)."""
    model_file = tmp_path / "mixed.keras"
    runtimes.with_dtype_policy(network, "mixed_bfloat16").save(model_file)
    output = export_model(model_file, tmp_path / "onnx", format="onnx")
    session = onnxruntime.InferenceSession(str(output / "model.onnx"))
    batch = np.random.default_rng(12).normal(size=(1, 16, 16, 16, 4)).astype(np.float32)
    np.testing.assert_allclose(session.run(None, {"image": batch})[0],
                               network.predict_on_batch(batch), atol=1e-4, rtol=0)
