"""Model export: a SavedModel that TensorFlow alone loads and that predicts as the Keras model."""

import filecmp
import json
import subprocess
import sys

import keras
import numpy as np
import pytest

from helpers import channel_model, run_script, write_model
from unet3d.errors import InputError
from unet3d.export import export_model
from unet3d.model import build_isensee2017, isensee2017_model, load_old_model

# Loads the export with TensorFlow alone, in a process that cannot see the repository, and saves
# the outputs of the inputs in argv[2] to argv[3]; prints the message for a size the network
# cannot take.
CHILD = """
import sys
import numpy as np
import tensorflow as tf

serve = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
inputs = np.load(sys.argv[2])
outputs = {name: serve(image=tf.constant(x))["segmentation"].numpy() for name, x in inputs.items()}
try:
    serve(image=tf.zeros((1, 24, 32, 32, 4)))
except tf.errors.InvalidArgumentError as error:
    print(error.message)
assert "unet3d" not in sys.modules, "loading the export imported unet3d"
np.savez(sys.argv[3], **outputs)
"""


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """A small compiled Isensee model (4 base filters), fully convolutional, saved as .keras."""
    path = tmp_path_factory.mktemp("model") / "isensee2017_model.keras"
    keras.utils.set_random_seed(0)
    isensee2017_model((None, None, None, 4), n_base_filters=4).save(path)
    return path


@pytest.mark.slow
def test_export_runs_without_unet3d_and_matches_keras(model_file, tmp_path):
    output = tmp_path / "exports" / "isensee2017"
    output.mkdir(parents=True)
    (output / "stale.txt").write_text("from an earlier export")
    result = run_script("export.py", "--model_file", str(model_file), "--output", str(output),
                        "--channel_names", "t1,t1ce,flair,t2", "--overwrite")
    assert result.returncode == 0, result.stderr

    assert sorted(p.name for p in output.iterdir()) == [
        "README.txt", "isensee2017_model.keras", "saved_model", "signature.json"]
    assert sorted(p.name for p in output.parent.iterdir()) == ["isensee2017"]  # no temporaries
    assert filecmp.cmp(model_file, output / "isensee2017_model.keras", shallow=False)
    signature = json.loads((output / "signature.json").read_text())
    assert signature["inputs"]["image"]["shape"] == [None, None, None, None, 4]
    assert signature["inputs"]["image"]["spatial_multiple_of"] == [16, 16, 16]
    assert signature["inputs"]["image"]["channels"] == ["t1", "t1ce", "flair", "t2"]
    assert signature["outputs"]["segmentation"]["shape"] == [None, None, None, None, 3]
    assert signature["outputs"]["segmentation"]["activation"] == "sigmoid"
    assert "t1, t1ce, flair, t2" in (output / "README.txt").read_text()

    rng = np.random.default_rng(0)
    inputs = {"cube": rng.random((1, 32, 32, 32, 4), dtype=np.float32),
              "box": rng.random((1, 48, 32, 16, 4), dtype=np.float32)}
    np.savez(tmp_path / "inputs.npz", **inputs)
    # -I: isolated mode, without PYTHONPATH, user site-packages or the working directory.
    child = subprocess.run(
        [sys.executable, "-I", "-c", CHILD, str(output / "saved_model"),
         str(tmp_path / "inputs.npz"), str(tmp_path / "outputs.npz")],
        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert child.returncode == 0, child.stderr
    assert "spatial sizes" in child.stdout and "multiples of" in child.stdout

    model = load_old_model(model_file, compile=False)
    outputs = np.load(tmp_path / "outputs.npz")
    for name, x in inputs.items():
        expected = model.predict(x, verbose=0)
        assert outputs[name].dtype == np.float32 and outputs[name].shape == x.shape[:-1] + (3,)
        np.testing.assert_allclose(outputs[name], expected, rtol=0, atol=1e-5)


@pytest.mark.slow  # a script run (the fast tier keeps test_export_missing_model_file)
def test_export_refuses_existing_output(model_file, tmp_path):
    output = tmp_path / "export"
    output.mkdir()
    (output / "keep.txt").write_text("keep me")
    result = run_script("export.py", "--model_file", str(model_file), "--output", str(output))
    assert result.returncode == 2
    assert f"{output} already exists" in result.stderr and "--overwrite" in result.stderr
    assert [p.name for p in output.iterdir()] == ["keep.txt"]


def test_export_missing_model_file(tmp_path):
    missing = tmp_path / "no_such_model.keras"
    result = run_script("export.py", "--model_file", str(missing),
                        "--output", str(tmp_path / "export"))
    assert result.returncode == 2
    assert str(missing) in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "export").exists()


def test_export_checks_channel_names(model_file, tmp_path):
    with pytest.raises(InputError, match="2 names given .* for the 3 output channels"):
        export_model(model_file, tmp_path / "export", output_names=["wt", "tc"])
    assert list(tmp_path.iterdir()) == []


def test_export_names_must_agree_with_the_model_card(tmp_path):
    model_file = write_model(tmp_path / "model", channel_model())
    with pytest.raises(InputError, match="--channel_names t2,t1,t1ce,flair contradicts the model "
                                         "card"):
        export_model(model_file, tmp_path / "export",
                     channel_names=["t2", "t1", "t1ce", "flair"])
    assert not (tmp_path / "export").exists()


def test_export_refuses_several_outputs(tmp_path):
    path = tmp_path / "deep_supervision.keras"
    build_isensee2017((None, None, None, 4), n_base_filters=2, deep_supervision=True).save(path)
    with pytest.raises(InputError, match="deep_supervision.keras has 1 inputs and 3 outputs"):
        export_model(path, tmp_path / "export")
    assert not (tmp_path / "export").exists()


def test_export_refuses_the_folder_holding_the_model(tmp_path):
    (tmp_path / "run").mkdir()
    model_file = tmp_path / "run" / "m.keras"
    model_file.write_bytes(b"not read")
    with pytest.raises(InputError, match="inside the output folder"):
        export_model(model_file, tmp_path / "run", overwrite=True)
    assert model_file.exists()
