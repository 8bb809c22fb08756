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


# Trains the paper recipe on JAX with TensorFlow unimportable (argv: store, run folder, epochs),
# then saves the model's prediction of a fixed input (argv: inputs .npy, outputs .npy).
TRAIN_ON_JAX = """
import sys
sys.modules["tensorflow"] = None  # any import of TensorFlow fails
import keras
import numpy as np
from unet3d.config import preset
from unet3d.model import load_old_model
from unet3d.recipes import train

assert keras.backend.backend() == "jax"
store, run, epochs, inputs, outputs = sys.argv[1:6]
train(preset("paper", data_file=store, run_dir=run, patch_shape=(16, 16, 16), batch_size=1,
             steps_per_epoch=2, n_epochs=int(epochs), n_base_filters=4, precision="float32",
             workers=0, verbose=0))
model = load_old_model(run + "/model.keras", compile=False)
np.save(outputs, keras.ops.convert_to_numpy(model.predict_on_batch(np.load(inputs))))
"""


@pytest.mark.slow
def test_training_runs_and_resumes_on_jax_and_its_model_loads_on_tensorflow(store_path, tmp_path):
    """The paper recipe trains on JAX without TensorFlow, a second run resumes it for one more
    epoch, and its .keras file predicts on TensorFlow what it predicted on JAX."""
    import csv
    import shutil

    from unet3d.model import load_old_model

    shutil.copy(store_path, tmp_path / "data.h5")
    batch = np.random.default_rng(5).normal(size=(1, 16, 16, 16, 4)).astype(np.float32)
    np.save(tmp_path / "inputs.npy", batch)
    environment = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu",
                   "PYTHONPATH": os.pathsep.join(filter(None, [
                       str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH")]))}
    for epochs in (2, 3):
        completed = subprocess.run(
            [sys.executable, "-c", TRAIN_ON_JAX, str(tmp_path / "data.h5"), str(tmp_path / "run"),
             str(epochs), str(tmp_path / "inputs.npy"), str(tmp_path / "jax.npy")],
            env=environment, capture_output=True, text=True, timeout=900)
        assert completed.returncode == 0, completed.stderr[-3000:]
    with open(tmp_path / "run" / "training.log") as log:
        assert [int(row["epoch"]) for row in csv.DictReader(log)] == [0, 1, 2]
    model = load_old_model(tmp_path / "run" / "model.keras", compile=False)
    np.testing.assert_allclose(model.predict_on_batch(batch), np.load(tmp_path / "jax.npy"),
                               atol=1e-4, rtol=0)
