"""The same saved model, losses and metrics give the same numbers on the TensorFlow and JAX backends."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

# Run in a fresh interpreter per backend: loads the model with nothing registered by hand, predicts,
# evaluates (compiled loss and Dice metrics) and evaluates every loss on fixed inputs.
SCRIPT = """
import sys
import keras
import numpy as np
from unet3d import losses, metrics
from unet3d.model import load_old_model

folder, backend = sys.argv[1], sys.argv[2]
assert keras.backend.backend() == backend
data = np.load(f"{folder}/inputs.npz")
x, y, logits = data["x"], data["y"], data["logits"]
model = load_old_model(f"{folder}/model.keras")
results = {"prediction": model.predict(x, verbose=0)}
for name, value in model.evaluate(x, y, verbose=0, return_dict=True).items():
    results[f"evaluate_{name}"] = value
probabilities = keras.ops.sigmoid(logits)
functions = {
    "soft_dice": losses.soft_dice_loss,
    "bce_dice": losses.bce_dice_loss,
    "focal": losses.focal_loss,
    "weighted_bce": lambda t, p, from_logits: losses.class_weighted_crossentropy(
        t, p, [1, 4, 9], from_logits
    ),
}
for name, function in functions.items():
    results[f"{name}_logits"] = function(y, logits, from_logits=True)
    results[f"{name}_probabilities"] = function(y, probabilities, from_logits=False)
results["weighted_dice"] = metrics.weighted_dice_coefficient(y, probabilities)
results["dice"] = metrics.dice_coefficient(y, probabilities)
np.savez(f"{folder}/{backend}.npz", **{k: keras.ops.convert_to_numpy(v) for k, v in results.items()})
"""


def run_with_backend(folder: Path, backend: str) -> dict:
    environment = {
        **os.environ,
        "KERAS_BACKEND": backend,
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "JAX_PLATFORMS": "cpu",
    }
    root = Path(__file__).resolve().parents[1]
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))
    completed = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(folder), backend], env=environment, capture_output=True, text=True
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return dict(np.load(folder / f"{backend}.npz"))


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("jax") is None, reason="jax is not installed (pip install jax jaxlib)"
)
def test_tensorflow_and_jax_backends_agree(tmp_path):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras

    from unet3d.losses import BCEDiceLoss
    from unet3d.metrics import region_dice_metrics
    from unet3d.model import isensee2017_model

    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 16, 16, 16, 2)).astype("float32")
    y = (rng.uniform(size=(2, 16, 16, 16, 3)) > 0.6).astype("float32")
    logits = rng.normal(scale=3, size=y.shape).astype("float32")
    keras.utils.set_random_seed(0)
    model = isensee2017_model(
        (None, None, None, 2),
        n_base_filters=4,
        depth=3,
        n_segmentation_levels=2,
        loss_function=BCEDiceLoss(),
        metrics=region_dice_metrics(),
    )
    model.fit(x, y, epochs=2, verbose=0)  # weights away from their initial values
    model.save(tmp_path / "model.keras")
    np.savez(tmp_path / "inputs.npz", x=x, y=y, logits=logits)

    tf_results = run_with_backend(tmp_path, "tensorflow")
    jax_results = run_with_backend(tmp_path, "jax")
    assert set(jax_results) == set(tf_results)
    assert {"evaluate_loss", "evaluate_dice_wt", "evaluate_dice_tc", "evaluate_dice_et"} <= set(tf_results)
    np.testing.assert_allclose(tf_results["prediction"], model.predict(x, verbose=0), rtol=1e-6, atol=1e-7)
    for name, expected in tf_results.items():
        np.testing.assert_allclose(jax_results[name], expected, rtol=1e-4, atol=1e-5, err_msg=name)


# Predicts and scores a folder on JAX with TensorFlow made unimportable (argv: model, cases,
# output folder).
PREDICT_ON_JAX = """
import sys
sys.modules["tensorflow"] = None  # any import of TensorFlow fails
import keras
from unet3d.config import PredictConfig
from unet3d.evaluation import evaluate_folder
from unet3d.prediction import predict_cases

assert keras.backend.backend() == "jax"
model, cases, out = sys.argv[1:4]
report = predict_cases(model, cases, out, PredictConfig(bias_correction=False,
                                                        probabilities=True, tta="mirror"))
assert report.done and not report.failed, report.failed
evaluation = evaluate_folder(out, cases, out + "_scores")
print("SCORED", len(evaluation.rows))
"""


@pytest.mark.slow
def test_prediction_and_evaluation_run_on_jax_without_tensorflow(synthetic_brats, tmp_path):
    """A model saved on TensorFlow predicts the same probabilities on JAX, with TensorFlow
    unimportable, and the folder is scored there."""
    from helpers import write_model
    from unet3d.config import PredictConfig
    from unet3d.io import read_nifti
    from unet3d.model import build_isensee2017
    from unet3d.prediction import predict_cases

    import keras
    keras.utils.set_random_seed(3)
    model_file = write_model(tmp_path, build_isensee2017((None, None, None, 4), n_base_filters=4,
                                                         depth=3, n_segmentation_levels=2))
    reference = predict_cases(model_file, synthetic_brats, tmp_path / "tensorflow",
                              PredictConfig(bias_correction=False, probabilities=True,
                                            tta="mirror"))
    environment = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu",
                   "PYTHONPATH": os.pathsep.join(filter(None, [
                       str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH")]))}
    completed = subprocess.run([sys.executable, "-c", PREDICT_ON_JAX, str(model_file),
                                str(synthetic_brats), str(tmp_path / "jax")], env=environment,
                               capture_output=True, text=True, timeout=900)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert f"SCORED {len(reference.done)}" in completed.stdout
    for case in reference.done:
        for region in ("wt", "tc", "et"):
            ours = read_nifti(tmp_path / "jax" / f"{case}_{region}.nii.gz")[0]
            theirs = read_nifti(tmp_path / "tensorflow" / f"{case}_{region}.nii.gz")[0]
            np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)


# Trains the paper recipe on the backend of KERAS_BACKEND (on JAX with TensorFlow unimportable;
# argv: store, run folder, epochs), then saves the model's prediction of a fixed input (argv:
# inputs .npy, outputs .npy).
TRAIN = """
import os, sys
if os.environ["KERAS_BACKEND"] == "jax":
    sys.modules["tensorflow"] = None  # any import of TensorFlow fails
import keras
import numpy as np
from unet3d.config import preset
from unet3d.model import load_old_model
from unet3d.recipes import train

assert keras.backend.backend() == os.environ["KERAS_BACKEND"]
store, run, epochs, inputs, outputs = sys.argv[1:6]
train(preset("paper", data_file=store, run_dir=run, patch_shape=(16, 16, 16), batch_size=1,
             steps_per_epoch=2, n_epochs=int(epochs), n_base_filters=4, precision="float32",
             workers=0, verbose=0))
model = load_old_model(run + "/model.keras", compile=False)
np.save(outputs, keras.ops.convert_to_numpy(model.predict_on_batch(np.load(inputs))))
"""


def environment_of(backend: str) -> dict:
    """This process's environment on `backend` (JAX on the CPU), with the repository importable."""
    return {**os.environ, "KERAS_BACKEND": backend, "JAX_PLATFORMS": "cpu",
            "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": os.pathsep.join(filter(None, [
                str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH")]))}


@pytest.mark.slow
def test_training_runs_on_jax_resumes_on_tensorflow_and_its_model_loads_there(store_path,
                                                                               tmp_path):
    """The paper recipe trains on JAX without TensorFlow; a second run on TensorFlow resumes its
    checkpoint for one more epoch; the .keras file written on JAX predicts on TensorFlow what it
    predicted on JAX."""
    import csv
    import shutil

    from unet3d.model import load_old_model

    shutil.copy(store_path, tmp_path / "data.h5")
    batch = np.random.default_rng(5).normal(size=(1, 16, 16, 16, 4)).astype(np.float32)
    np.save(tmp_path / "inputs.npy", batch)
    for backend, epochs in (("jax", 2), ("tensorflow", 3)):
        completed = subprocess.run(
            [sys.executable, "-c", TRAIN, str(tmp_path / "data.h5"), str(tmp_path / "run"),
             str(epochs), str(tmp_path / "inputs.npy"), str(tmp_path / f"{backend}.npy")],
            env=environment_of(backend), capture_output=True, text=True, timeout=900)
        assert completed.returncode == 0, completed.stderr[-3000:]
        if backend == "jax":
            model = load_old_model(tmp_path / "run" / "model.keras", compile=False)
            np.testing.assert_allclose(model.predict_on_batch(batch),
                                       np.load(tmp_path / "jax.npy"), atol=1e-4, rtol=0)
    with open(tmp_path / "run" / "training.log") as log:
        rows = list(csv.DictReader(log))
    assert [int(row["epoch"]) for row in rows] == [0, 1, 2]  # resumed, not restarted


# The training script on JAX with TensorFlow unimportable (argv: the script's flags).
SCRIPT_ON_JAX = """
import runpy, sys
sys.modules["tensorflow"] = None  # any import of TensorFlow fails
script = sys.argv[1]
sys.argv = sys.argv[1:]
runpy.run_path(script, run_name="__main__")
"""

#: A few small steps of the paper recipe, two epochs kept short.
SMALL_RUN = ["--patch_shape", "16,16,16", "--batch_size", "2", "--steps_per_epoch", "2",
             "--n_base_filters", "4", "--workers", "0", "--precision", "float32", "--seed", "1",
             "--validation_cases", "1", "--verbose", "0"]


def jax_training(folder: Path, *flags: str) -> subprocess.Popen:
    """The training script on JAX (TensorFlow unimportable) in `folder` with `flags`."""
    script = Path(__file__).resolve().parents[1] / "brats" / "train_isensee2017.py"
    return subprocess.Popen([sys.executable, "-c", SCRIPT_ON_JAX, str(script),
                             "--data_file", str(folder / "data.h5"), *SMALL_RUN, *flags],
                            cwd=folder, env=environment_of("jax"), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def finished(process: subprocess.Popen) -> str:
    output, _ = process.communicate(timeout=900)
    assert process.returncode == 0, output[-3000:]
    return output


@pytest.mark.slow
def test_jax_data_parallel_on_two_cpu_devices_trains_like_one_device_and_resumes_a_kill(
        store_path, tmp_path):
    """--strategy mirrored --cpu_replicas 2 on JAX splits each global batch of 2 over two CPU
    devices: after an epoch, the network of one device with that batch (1e-5); killed then and
    rerun, it resumes to what an uninterrupted run computes. (Later epochs drift apart by float
    summation order, which Adam amplifies on near-zero gradients: 2.4e-4 after two epochs.)"""
    import csv
    import json
    import shutil
    import signal
    import time

    from unet3d.model import load_old_model

    batch = np.random.default_rng(2).normal(size=(2, 16, 16, 16, 4)).astype(np.float32)

    def outputs(run: str) -> np.ndarray:
        """The run's last checkpoint on a fixed batch. (Not its weights: the biases before
        each normalisation have no gradient, and Adam turns their float noise into steps of the
        learning rate that change nothing the network computes.)"""
        model = load_old_model(tmp_path / run / "model.keras.run" / "last.keras",
                               compile=False)
        return model.predict_on_batch(batch)

    shutil.copy(store_path, tmp_path / "data.h5")
    several_hosts = jax_training(tmp_path, "--run_dir", "hosts", "--strategy", "multi_worker")
    output, _ = several_hosts.communicate(timeout=300)
    assert several_hosts.returncode == 2 and "TensorFlow backend only" in output, output[-2000:]
    one_device = ("--run_dir", "one", "--strategy", "one_device")
    two_devices = ("--run_dir", "two", "--strategy", "mirrored", "--cpu_replicas", "2")
    assert "1 replicas, global batch 2" in finished(jax_training(tmp_path, *one_device,
                                                                 "--n_epochs", "1"))
    state = tmp_path / "two" / "model.keras.run" / "state.json"
    process = jax_training(tmp_path, *two_devices, "--n_epochs", "2")
    while process.poll() is None and not (
            state.exists() and json.loads(state.read_text())["epochs_done"] >= 1):
        time.sleep(0.1)
    assert process.poll() is None, "the run ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert json.loads(state.read_text())["epochs_done"] == 1
    first = outputs("one")
    np.testing.assert_allclose(outputs("two"), first, rtol=0, atol=1e-5)
    resumed = finished(jax_training(tmp_path, *two_devices, "--n_epochs", "2"))
    assert "2 replicas, global batch 2" in resumed and "resuming" in resumed
    finished(jax_training(tmp_path, "--run_dir", "uninterrupted", *two_devices[2:],
                          "--n_epochs", "2"))

    def losses(run: str) -> list[float]:
        with open(tmp_path / run / "training.log") as log:
            rows = list(csv.DictReader(log))
        assert [int(row["epoch"]) for row in rows] == [0, 1]
        return [float(row["loss"]) for row in rows]

    np.testing.assert_allclose(losses("two"), losses("uninterrupted"), rtol=1e-6)
    second = outputs("uninterrupted")
    np.testing.assert_allclose(outputs("two"), second, rtol=0, atol=1e-6)
    print("an epoch moved the outputs by", np.abs(second - first).max())
    assert np.abs(second - first).max() > 100 * 1e-5  # what was compared has changed
