"""Training: schedules, callbacks, distribution, resumable runs and the training scripts.

Anything that needs TensorFlow's device set-up (logical CPU replicas) runs in a subprocess, since
that must happen before TensorFlow starts; the scripts run as a user would run them.
"""

import csv
import json
import math
import os
import pickle
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import keras
import numpy as np
import pytest

from helpers import REPO, paper_run, run_script
from unet3d.brats import MODALITIES, find_cases
from unet3d.data import DataStore, write_data_to_file
from unet3d.errors import InputError
from unet3d.config import TrainConfig, preset
from unet3d.recipes import check_config, check_divisors
from unet3d.training import (EpochSync, NaNGuard, RunCheckpoint, exponential_decay,
                             get_callbacks, load_old_model, make_schedule, poly_decay,
                             run_training, scaled_learning_rate, step_decay, train_model)

ENV = dict({k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"},
           PYTHONPATH=str(REPO))


# --------------------------------------------------------------------------- helpers

def run_python(tmp_path: Path, source: str, timeout: int = 300) -> dict:
    """Run `source` as a fresh Python process; returns the JSON object on its last stdout line."""
    program = tmp_path / "program.py"
    program.write_text(textwrap.dedent(source))
    result = subprocess.run([sys.executable, str(program)], env=ENV, cwd=tmp_path,
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-5000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def read_log(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def partial_files(folder: Path) -> list[str]:
    return [os.path.join(root, name) for root, _, names in os.walk(folder)
            for name in names if ".partial" in name]


class RecordingDataset(keras.utils.PyDataset):
    """Batches of a linear problem drawn from (epoch, index), like unet3d's datasets; records
    which (dataset.epoch, index) pairs were asked for; `bad` = {(epoch, index): value} puts that
    value in the batch's targets (NaN, or a huge value whose square overflows)."""

    def __init__(self, n_batches=6, bad=None, depends_on_epoch=True):
        super().__init__()
        self.epoch = 0
        self.n_batches = n_batches
        self.bad = bad or {}
        self.depends_on_epoch = depends_on_epoch
        self.requests = []

    def __len__(self):
        return self.n_batches

    def __getitem__(self, index):
        self.requests.append((self.epoch, index))
        rng = np.random.default_rng([self.epoch if self.depends_on_epoch else 0, index])
        x = rng.normal(size=(4, 3)).astype("float32")
        y = x @ np.array([[1.0], [-2.0], [0.5]], "float32") + 0.3
        if (self.epoch, index) in self.bad:
            y[:] = self.bad[(self.epoch, index)]
        return x, y


def tiny_model(learning_rate=0.05, optimizer="adam"):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, kernel_initializer="zeros")])
    opt = (keras.optimizers.Adam(learning_rate) if optimizer == "adam"
           else keras.optimizers.SGD(learning_rate))
    model.compile(optimizer=opt, loss="mse")
    return model


class BatchCounter(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.batches = []

    def on_train_batch_end(self, batch, logs=None):
        self.batches.append(batch)


@pytest.fixture
def float32_policy():
    """Put Keras' global dtype policy back to float32 after the test."""
    yield
    keras.mixed_precision.set_global_policy("float32")


# --------------------------------------------------------------------------- 1. schedules

@pytest.mark.parametrize("epoch, expected", [
    (0, 0.1), (8, 0.1),          # floor((1 + e) / 10) = 0
    (9, 0.05), (18, 0.05),       # = 1: the port drops one epoch early (1 + epoch)
    (19, 0.025), (29, 0.0125), (99, 0.1 * 0.5 ** 10)])
def test_step_decay_is_the_port_formula(epoch, expected):
    assert step_decay(epoch, 0.1, 0.5, 10) == pytest.approx(expected, rel=1e-12)


def test_exponential_and_poly_decay_hand_values():
    assert exponential_decay(0, 5e-4) == pytest.approx(5e-4, rel=1e-12)
    assert exponential_decay(1, 5e-4) == pytest.approx(4.925e-4, rel=1e-12)
    assert exponential_decay(2, 5e-4) == pytest.approx(4.851125e-4, rel=1e-12)
    assert exponential_decay(10, 5e-4) == pytest.approx(5e-4 * 0.859730442259143, rel=1e-12)
    assert exponential_decay(2, 1.0, gamma=0.5) == pytest.approx(0.25, rel=1e-12)
    assert poly_decay(0, 0.01, 100) == pytest.approx(0.01, rel=1e-12)
    assert poly_decay(50, 0.01, 100) == pytest.approx(0.005358867312681466, rel=1e-12)  # 0.5**0.9
    assert poly_decay(75, 0.01, 100, exponent=1.0) == pytest.approx(0.0025, rel=1e-12)
    assert poly_decay(100, 0.01, 100) == 0.0
    assert poly_decay(150, 0.01, 100) == 0.0  # past the end: stays at 0, no complex power


def test_make_schedule_names():
    exponential = make_schedule("exponential", 5e-4, 300)
    assert [exponential(e) for e in (0, 1, 3)] == pytest.approx(
        [5e-4, 4.925e-4, 5e-4 * 0.955671625], rel=1e-12)
    step = make_schedule("step", 1e-3, 300, learning_rate_drop=0.5, learning_rate_epochs=2)
    assert [step(e) for e in (0, 1, 2, 3)] == pytest.approx([1e-3, 5e-4, 5e-4, 2.5e-4], rel=1e-12)
    poly = make_schedule("poly", 1e-2, 10)
    assert [poly(0), poly(5), poly(10)] == pytest.approx([1e-2, 0.005358867312681466, 0.0])
    constant = make_schedule("constant", 3e-4, 10)
    assert [constant(e) for e in (0, 7, 500)] == [3e-4] * 3
    assert make_schedule("plateau", 1e-3, 10) is None


def test_make_schedule_errors():
    with pytest.raises(InputError, match="unknown learning-rate schedule 'cosine'.*exponential"):
        make_schedule("cosine", 1e-3, 10)
    for epochs in (None, 0):
        with pytest.raises(InputError, match="learning_rate_epochs"):
            make_schedule("step", 1e-3, 10, learning_rate_epochs=epochs)


def test_scaled_learning_rate():
    assert scaled_learning_rate(5e-4, 2) == pytest.approx(5e-4)  # the paper's batch
    assert scaled_learning_rate(5e-4, 8) == pytest.approx(2e-3)
    assert scaled_learning_rate(5e-4, 1) == pytest.approx(2.5e-4)
    assert scaled_learning_rate(1e-3, 16, reference_batch_size=4) == pytest.approx(4e-3)


def test_get_callbacks_picks_step_decay_or_plateau(tmp_path):
    step = get_callbacks(tmp_path / "m.keras", 1e-3, 0.5, learning_rate_epochs=2,
                         logging_file=tmp_path / "log.csv", early_stopping_patience=5)
    types = [type(c) for c in step]
    assert keras.callbacks.LearningRateScheduler in types
    assert keras.callbacks.ReduceLROnPlateau not in types
    assert NaNGuard in types and keras.callbacks.EarlyStopping in types
    scheduler = step[types.index(keras.callbacks.LearningRateScheduler)]
    assert scheduler.schedule(1) == pytest.approx(5e-4)
    plateau = get_callbacks(tmp_path / "m.keras", logging_file=tmp_path / "log.csv",
                            learning_rate_drop=0.25, learning_rate_patience=7)
    reduce = [c for c in plateau if isinstance(c, keras.callbacks.ReduceLROnPlateau)]
    assert len(reduce) == 1 and reduce[0].factor == 0.25 and reduce[0].patience == 7
    assert not any(isinstance(c, keras.callbacks.EarlyStopping) for c in plateau)


def test_the_ports_train_model_fits_with_its_callbacks(tmp_path, monkeypatch):
    """train_model: model.fit with get_callbacks: the best model saved, one CSV row per epoch in
    training.log of the working folder, the port's step decay."""
    monkeypatch.chdir(tmp_path)
    model = tiny_model(0.05)
    history = train_model(model, tmp_path / "best.keras", RecordingDataset(), RecordingDataset(2),
                          steps_per_epoch=6, validation_steps=2, initial_learning_rate=0.05,
                          learning_rate_epochs=1, n_epochs=3)
    assert len(history.history["val_loss"]) == 3
    assert load_old_model(tmp_path / "best.keras").count_params() == 4
    assert [row["epoch"] for row in read_log(tmp_path / "training.log")] == ["0", "1", "2"]
    # epoch 2's rate: 0.05 * 0.5 ** floor((1 + 2) / 1)
    assert float(model.optimizer.learning_rate) == pytest.approx(0.05 * 0.5 ** 3, rel=1e-6)


@pytest.mark.parametrize("overrides, message", [
    (dict(loss="focal"), "unknown loss 'focal'"),
    (dict(model="vnet"), "unknown model 'vnet'"),
    (dict(patch_shape=(64, 64)), "three positive sizes"),
    (dict(steps_per_epoch=None), "--steps_per_epoch"),
    (dict(model_file="m.h5"), "--model_file m.h5: models are saved as .keras"),
    (dict(patch_shape=None, random_patches=False, batch_size=2), "--patch_shape"),
    (dict(batch_size=0), "--batch_size"),
    (dict(patch_shape=None, batch_size=1), "random patches need --patch_shape"),
    (dict(predict_tta="flip"), "--predict_tta flip: choose one of none, mirror, permute"),
    (dict(augmentation="heavy"), "--augmentation heavy: choose one of nnunet, paper2017"),
    (dict(predict_tta="permute", predict_whole_volume=True), "permute needs cubic windows"),
    (dict(predict_tta="permute", patch_shape=(128, 128, 64)), "permute needs cubic windows"),
])
def test_check_config_rejects(overrides, message):
    with pytest.raises(InputError, match=message):
        check_config(TrainConfig(**overrides))


def test_the_divisor_comes_from_the_network():
    """Patches are checked against the divisors the network reports (its depth decides: 4
    downsamplings for the Isensee network, 3 for the port's plain U-Net), not against a guess
    from the model's name."""
    check_divisors(preset("unet", patch_shape=(24, 24, 24)))
    check_divisors(preset("paper", patch_shape=(32, 48, 16)))
    with pytest.raises(InputError, match="24,24,24: every size must be divisible by 16"):
        check_divisors(preset("paper", patch_shape=(24, 24, 24)))
    with pytest.raises(InputError, match="divisible by 8 for the unet3d model"):
        check_divisors(preset("unet", patch_shape=(20, 20, 20)))
    # whole resampled images: the image is the sample
    with pytest.raises(InputError, match="--image_shape 40,40,40"):
        check_divisors(preset("legacy", image_shape=(40, 40, 40)))
    with pytest.raises(InputError, match="unknown preset 'nope'"):
        preset("nope")


# --------------------------------------------------------------------------- 2. NaNGuard

@pytest.mark.parametrize("bad_value, word", [(np.nan, "nan"), (1e30, "inf")])
def test_nan_guard_stops_at_the_first_bad_batch(bad_value, word):
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).normal(size=(16, 3)).astype("float32")
    y = x.sum(axis=1, keepdims=True)
    y[6] = bad_value  # sample 6 is in batch 3 of 8 (batch size 2); 1e30 ** 2 overflows float32
    model, guard, counter = tiny_model(0.01, "sgd"), NaNGuard(), BatchCounter()
    model.fit(x, y, batch_size=2, epochs=3, shuffle=False, verbose=0, callbacks=[guard, counter])
    assert counter.batches == [0, 1, 2, 3]  # 4 of the 24 batches asked for
    assert f"loss became {word} at batch 3" in guard.message
    assert "learning rate" in guard.message and "--initial_learning_rate" in guard.message


def test_nan_guard_leaves_finite_training_alone():
    x = np.random.default_rng(0).normal(size=(16, 3)).astype("float32")
    model, guard, counter = tiny_model(0.01, "sgd"), NaNGuard(), BatchCounter()
    model.fit(x, x.sum(axis=1), batch_size=2, epochs=2, shuffle=False, verbose=0,
              callbacks=[guard, counter])
    assert counter.batches == list(range(8)) * 2
    assert not hasattr(guard, "message")


def test_nan_stop_keeps_the_last_good_checkpoint(tmp_path):
    """A NaN epoch is neither saved nor counted: the message promises the last good checkpoint
    (regression: RunCheckpoint used to save the NaN weights and count the epoch as done)."""
    data = RecordingDataset(bad={(1, 2): np.nan})
    result = run_training(tiny_model, lambda: (data, None), tmp_path / "m.keras",
                          tmp_path / "log.csv", 3, verbose=0)
    assert result.stopped_by_nan
    state = RunCheckpoint.load_state(tmp_path / "m.keras.run")
    last = load_old_model(tmp_path / "m.keras.run" / "last.keras")
    assert all(np.isfinite(w).all() for w in last.get_weights())
    assert state["epochs_done"] == 1
    assert [row["epoch"] for row in read_log(tmp_path / "log.csv")] == ["0"]
    # with the data fixed, the same command redoes epoch 1 from the good checkpoint
    again = run_training(tiny_model, lambda: (RecordingDataset(), None), tmp_path / "m.keras",
                         tmp_path / "log.csv", 3, verbose=0)
    assert again.resumed_from == 1 and again.epochs_done == 3 and not again.stopped_by_nan
    rows = read_log(tmp_path / "log.csv")
    assert [row["epoch"] for row in rows] == ["0", "1", "2"]
    assert all(math.isfinite(float(row["loss"])) for row in rows)


# --------------------------------------------------------------------------- resumable loop

def test_the_checkpoint_keeps_the_highest_score_when_higher_is_better(tmp_path):
    """With mode "max" (the whole-case Dice) the best model is the epoch of the highest value,
    not of the lowest (as for a loss)."""
    model = tiny_model()
    checkpoint = RunCheckpoint(tmp_path / "m.keras.run", tmp_path / "m.keras", tmp_path / "l.csv",
                               monitor="val_dice_mean", mode="max")
    checkpoint.set_model(model)
    for epoch, value in enumerate([0.2, 0.5, 0.4]):
        model.layers[-1].kernel.assign(np.full((3, 1), float(epoch), np.float32))
        checkpoint.on_epoch_end(epoch, {"loss": 1.0, "val_dice_mean": value})
    assert checkpoint.state["best"] == 0.5
    assert load_old_model(tmp_path / "m.keras", compile=False).get_weights()[0].ravel().tolist() \
        == [1, 1, 1]
    assert load_old_model(tmp_path / "m.keras.run" / "last.keras",
                          compile=False).get_weights()[0][0, 0] == 2


def test_non_finite_weights_are_never_saved(tmp_path):
    """The last update of an epoch can make weights NaN while the epoch's loss is finite: the
    run stops as on a NaN loss and keeps the checkpoint before (regression: a NaN checkpoint
    was saved and every resume failed at its first batch)."""
    model = tiny_model()
    checkpoint = RunCheckpoint(tmp_path / "m.keras.run", tmp_path / "m.keras", tmp_path / "l.csv")
    checkpoint.set_model(model)
    checkpoint.on_epoch_end(0, {"loss": 1.0})
    model.layers[-1].kernel.assign(np.full((3, 1), np.nan, np.float32))
    checkpoint.on_epoch_end(1, {"loss": 0.5})
    assert model.stop_training and "weights became NaN or infinite in epoch 2" in \
        checkpoint.message
    assert checkpoint.state["epochs_done"] == 1
    assert np.isfinite(load_old_model(tmp_path / "m.keras.run" / "last.keras",
                                         compile=False).get_weights()[0]).all()


def test_epoch_sync_draws_each_epoch_from_its_number():
    data = RecordingDataset(n_batches=3)
    seen = {}

    class Window(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            seen[epoch] = len(data.requests)

        def on_epoch_end(self, epoch, logs=None):
            seen[epoch] = data.requests[seen[epoch]:]

    model = tiny_model()
    model.fit(data, epochs=5, initial_epoch=2, verbose=0, callbacks=[EpochSync(data), Window()])
    assert sorted(seen) == [2, 3, 4]
    for epoch, requests in seen.items():  # every batch of fit's epoch e is drawn for epoch e
        assert sorted(requests) == [(epoch, i) for i in range(3)]


def test_run_training_resume_restores_plateau_counters(tmp_path):
    """ReduceLROnPlateau's counters survive a restart: a run stopped after 2 epochs and resumed
    to 4 lowers the rate at the same epoch as an uninterrupted one (loss cannot improve: the
    data never change and the rate is tiny)."""
    def plateau():
        return keras.callbacks.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=2)

    def build():
        return tiny_model(1e-9, "sgd")

    def rates(folder, stops):
        for n_epochs in stops:
            result = run_training(build, lambda: (RecordingDataset(3, depends_on_epoch=False), None),
                                  folder / "m.keras", folder / "log.csv", n_epochs,
                                  callbacks=[plateau()], verbose=0)
        return result, [float(row["learning_rate"]) for row in read_log(folder / "log.csv")]

    whole, whole_rates = rates(tmp_path / "whole", [4])
    resumed, resumed_rates = rates(tmp_path / "resumed", [2, 4])
    assert resumed.resumed_from == 2 and resumed.epochs_done == 4
    # epochs 0, 1: no reduction; epoch 2: wait reaches the patience -> halved; epoch 3: kept
    assert whole_rates == pytest.approx([1e-9, 1e-9, 5e-10, 5e-10], rel=1e-6)
    assert resumed_rates == whole_rates


def test_resumed_run_reproduces_an_uninterrupted_one(tmp_path):
    """Stop after 1 epoch, resume to 3: the same weights as 3 epochs in one go (regression:
    model.fit's default shuffle=True reordered each epoch's batches with the unseeded `random`
    module, so neither a rerun nor a resumed run reproduced a run)."""
    schedule = make_schedule("exponential", 0.05, 3)

    def train(folder, n_epochs):
        return run_training(tiny_model, lambda: (RecordingDataset(), None), folder / "m.keras",
                            folder / "log.csv", n_epochs, schedule, verbose=0)

    train(tmp_path / "a", 3)
    train(tmp_path / "b", 1)
    assert train(tmp_path / "b", 3).resumed_from == 1
    a = load_old_model(tmp_path / "a" / "m.keras.run" / "last.keras")
    b = load_old_model(tmp_path / "b" / "m.keras.run" / "last.keras")
    assert int(b.optimizer.iterations) == int(a.optimizer.iterations) == 18
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_allclose(wb, wa, rtol=1e-6, atol=1e-7)


# --------------------------------------------------------------------------- 3. replicas

MIRROR_PROGRAM = """
import json
import numpy as np
from unet3d.errors import InputError
from unet3d.distribution import make_strategy

mirrored = make_strategy("mirrored", cpu_replicas=2)  # first TensorFlow thing in the process
import keras
import tensorflow as tf

one = tf.distribute.OneDeviceStrategy("/cpu:0")
data = np.random.default_rng(0)
x = data.normal(size=(12, 8, 8, 8, 2)).astype("float32")
y = (data.random((12, 8, 8, 8, 1)) < 0.3).astype("float32")
initial = None

def build():
    model = keras.Sequential([keras.Input((8, 8, 8, 2)),
                              keras.layers.Conv3D(4, 3, padding="same", activation="relu"),
                              keras.layers.Conv3D(3, 3, padding="same", activation="relu"),
                              keras.layers.Conv3D(1, 1, activation="sigmoid")])
    rng = np.random.default_rng(1)
    model.set_weights([rng.normal(scale=0.3, size=w.shape).astype("float32")
                       for w in model.get_weights()])
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss="binary_crossentropy")
    return model

out = {"replicas": mirrored.num_replicas_in_sync,
       "devices": list(mirrored.extended.worker_devices)}
for name, strategy in (("mirrored", mirrored), ("one", one)):
    with strategy.scope():
        model = build()
    initial = [w.tolist() for w in model.get_weights()]
    history = model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)  # 3 steps
    out[name] = [w.tolist() for w in model.get_weights()]
    out[name + "_loss"] = history.history["loss"][0]
    out[name + "_steps"] = int(model.optimizer.iterations.numpy())
out["initial"] = initial
try:
    make_strategy("mirrored", cpu_replicas=3)  # too late: TensorFlow has started
    out["late"] = None
except InputError as error:
    out["late"] = str(error)
print(json.dumps(out))
"""


@pytest.mark.slow
def test_two_cpu_replicas_train_like_one_device(tmp_path):
    out = run_python(tmp_path, MIRROR_PROGRAM)
    assert out["replicas"] == 2
    assert len(set(out["devices"])) == 2 and all("CPU" in d for d in out["devices"])
    assert out["mirrored_steps"] == out["one_steps"] == 3
    assert out["mirrored_loss"] == pytest.approx(out["one_loss"], rel=1e-5)
    moved = 0.0
    for mirrored, one, initial in zip(out["mirrored"], out["one"], out["initial"]):
        mirrored, one, initial = np.array(mirrored), np.array(one), np.array(initial)
        np.testing.assert_allclose(mirrored, one, rtol=1e-5, atol=1e-6)
        moved = max(moved, np.abs(one - initial).max())
    # the updates are far larger than the agreement asked for: summing the replicas' gradients
    # instead of averaging them (or training each replica on its own) could not pass
    assert moved > 0.05
    assert out["late"] is not None and "before TensorFlow starts" in out["late"]


# --------------------------------------------------------------------------- 4, 5. kill + resume

TRAIN_ARGS = ["--run_dir", ".", "--model_file", "m.keras", "--training_log", "training.log",
              "--patch_shape", "32,32,32", "--batch_size", "2", "--steps_per_epoch", "4",
              "--n_epochs", "4", "--n_base_filters", "4", "--workers", "0",
              "--precision", "float32", "--seed", "1"]


def train_command(folder: Path) -> list[str]:
    return [sys.executable, str(REPO / "brats" / "train_isensee2017.py"),
            "--data_file", str(folder / "data.h5"), *TRAIN_ARGS]


def start_training(folder: Path) -> subprocess.Popen:
    with open(folder / "stdout.txt", "ab") as out, open(folder / "stderr.txt", "ab") as err:
        return subprocess.Popen(train_command(folder), cwd=folder, env=ENV, stdout=out, stderr=err)


def epochs_done(folder: Path) -> int:
    try:
        return json.loads((folder / "m.keras.run" / "state.json").read_text())["epochs_done"]
    except FileNotFoundError:
        return 0


def kill_and_resume(folder: Path) -> dict:
    """SIGKILL the run in `folder` at the end of its second epoch, run it again to the end
    (saving what it left), then a third time."""
    first = start_training(folder)
    try:
        deadline = time.monotonic() + 300
        while epochs_done(folder) < 1:
            assert first.poll() is None, (folder / "stderr.txt").read_text()[-3000:]
            assert time.monotonic() < deadline, "no epoch finished in 300 s"
            time.sleep(0.05)
        # Kill it at the worst moment: while it writes the end of its second epoch (a model
        # save into a temporary file); epochs are too short here to aim a kill by time alone.
        while not partial_files(folder) and epochs_done(folder) < 3 and first.poll() is None:
            time.sleep(0.002)
        running = first.poll() is None
        first.send_signal(signal.SIGKILL)
    finally:
        if first.poll() is None:
            first.kill()
        returncode = first.wait()
    info = {"running_at_kill": running, "first_returncode": returncode,
            "done_at_kill": epochs_done(folder), "partials_at_kill": partial_files(folder)}
    info["second"] = subprocess.run(train_command(folder), cwd=folder, env=ENV,
                                    capture_output=True, text=True, timeout=600)
    info["log_after_second"] = (folder / "training.log").read_bytes()
    info["state_after_second"] = (folder / "m.keras.run" / "state.json").read_bytes()
    info["last_mtime"] = (folder / "m.keras.run" / "last.keras").stat().st_mtime_ns
    started = time.monotonic()
    info["third"] = subprocess.run(train_command(folder), cwd=folder, env=ENV,
                                   capture_output=True, text=True, timeout=600)
    info["third_seconds"] = time.monotonic() - started
    return info


@pytest.fixture(scope="module")
def runs(store_path, tmp_path_factory):
    """Folder "killed": the run SIGKILLed at the end of epoch 2 and run again to the end, then
    a third time; folder "whole": the same command run once, uninterrupted (started alongside)."""
    root = tmp_path_factory.mktemp("resume")
    killed, whole = root / "killed", root / "whole"
    for folder in (killed, whole):
        folder.mkdir()
        shutil.copy(store_path, folder / "data.h5")
    uninterrupted = start_training(whole)
    try:
        info = kill_and_resume(killed)
        assert uninterrupted.wait(timeout=600) == 0, (whole / "stderr.txt").read_text()[-3000:]
    finally:
        if uninterrupted.poll() is None:
            uninterrupted.kill()
            uninterrupted.wait()
    return killed, whole, info


@pytest.mark.slow
def test_sigkilled_run_resumes_to_a_complete_log(runs):
    killed, _, info = runs
    assert info["running_at_kill"] and 1 <= info["done_at_kill"] < 4  # really killed mid-run
    assert info["first_returncode"] == -signal.SIGKILL
    second = info["second"]
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"resuming {Path('m.keras')} after epoch {info['done_at_kill']} of 4" in second.stderr
    rows = read_log(killed / "training.log")
    assert [int(row["epoch"]) for row in rows] == [0, 1, 2, 3]
    for row in rows:
        expected = 5e-4 * 0.985 ** int(row["epoch"])
        assert float(row["learning_rate"]) == pytest.approx(expected, rel=1e-6)  # float32
        assert math.isfinite(float(row["loss"])) and 0 <= float(row["val_dice_mean"]) <= 1
    state = json.loads((killed / "m.keras.run" / "state.json").read_text())
    assert state["epochs_done"] == 4 and state["monitor"] == "val_dice_mean"
    assert [row["epoch"] for row in state["history"]] == [0, 1, 2, 3]
    assert state["best"] == pytest.approx(max(float(r["val_dice_mean"]) for r in rows))
    # quiet logs: no TensorFlow start-up noise, no progress bars in redirected output, a line
    # per epoch in the run's log
    for output in (second.stdout, second.stderr, (killed / "run.log").read_text()):
        assert "\r" not in output and "cuInit" not in output and "oneDNN" not in output
    assert "epoch 4/4: loss" in (killed / "run.log").read_text()
    # the validation cases predicted with the best model and scored at the end
    assert (killed / "validation" / "scores.csv").is_file()
    model = load_old_model(killed / "m.keras")
    assert model.output_shape[-1] == 3  # WT, TC, ET
    # the split of the first run was kept (keys files in the working directory)
    training = pickle.loads((killed / "training_ids.pkl").read_bytes())
    validation = pickle.loads((killed / "validation_ids.pkl").read_bytes())
    assert sorted(training + validation) == [0, 1, 2, 3] and len(validation) == 1


@pytest.mark.slow
def test_resumed_run_leaves_no_temporary_files(runs):
    """The temporary file of the save the kill interrupted is gone after the resumed run
    (regression: it stayed beside the checkpoint for good, one more per preemption)."""
    killed, _, info = runs
    if not info["partials_at_kill"]:
        pytest.skip("the kill did not land during a save this time")
    assert partial_files(killed) == []


@pytest.mark.slow
def test_rerunning_a_finished_run_changes_nothing(runs):
    killed, _, info = runs
    third = info["third"]
    assert third.returncode == 0, third.stderr[-3000:]
    assert "all 4 epochs are done" in third.stderr
    assert "Epoch 1/" not in third.stdout and "Epoch 4/" not in third.stdout
    assert (killed / "training.log").read_bytes() == info["log_after_second"]
    assert (killed / "m.keras.run" / "state.json").read_bytes() == info["state_after_second"]
    assert (killed / "m.keras.run" / "last.keras").stat().st_mtime_ns == info["last_mtime"]
    assert info["third_seconds"] < 60


@pytest.mark.slow
def test_resumed_run_has_the_uninterrupted_learning_rates(runs):
    killed, whole, _ = runs
    resumed_rows, whole_rows = read_log(killed / "training.log"), read_log(whole / "training.log")
    assert list(resumed_rows[0]) == list(whole_rows[0])  # same columns
    assert [r["learning_rate"] for r in resumed_rows] == [r["learning_rate"] for r in whole_rows]
    assert [r["epoch"] for r in resumed_rows] == [r["epoch"] for r in whole_rows]


@pytest.mark.slow
def test_resumed_run_logs_the_uninterrupted_losses(runs):
    """Same data order, weights, optimizer state and dropout masks: every epoch's loss (and
    validation scores) of the killed-and-resumed run equal the uninterrupted run's (float32, one
    replica) to 1e-6, the resumed epochs included."""
    killed, whole, info = runs
    resumed_rows, whole_rows = read_log(killed / "training.log"), read_log(whole / "training.log")
    assert len(resumed_rows) == len(whole_rows) == 4 and info["done_at_kill"] < 4
    for resumed, uninterrupted in zip(resumed_rows, whole_rows):
        for key, value in uninterrupted.items():
            if key not in ("epoch", "learning_rate") and value not in ("", "NA"):
                assert float(resumed[key]) == pytest.approx(float(value), rel=1e-6), (
                    resumed["epoch"], key)


@pytest.mark.slow
def test_resumed_run_keeps_the_optimizer_state(runs):
    killed, whole, _ = runs
    for folder in (killed, whole):
        last = load_old_model(folder / "m.keras.run" / "last.keras")
        assert int(last.optimizer.iterations) == 4 * 4  # n_epochs x steps_per_epoch
        assert float(last.optimizer.learning_rate) == pytest.approx(5e-4 * 0.985 ** 3, rel=1e-6)


# --------------------------------------------------------------------------- 6. bad settings

def nothing_written(folder: Path, present=("data.h5",)) -> bool:
    """Only the files put there before, and logs."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if p.is_file() and p.suffix != ".log") == sorted(present)


@pytest.mark.parametrize("overrides, expected", [
    (dict(patch_shape=(30, 30, 30)), "--patch_shape 30,30,30: every size must be divisible by 16"),
    (dict(data_file="missing.h5"), "missing.h5 does not exist.*--preprocessed_dir"),
    (dict(data_file="built.h5", preprocessed_dir="cases", patch_shape=(40, 40, 40)),
     "--patch_shape 40,40,40"),
    (dict(convention="brats1999"), "unknown convention 'brats1999'"),
    (dict(data_file="store40.h5", patch_shape=None, random_patches=False, batch_size=1),
     "the store's image shape 40,40,40: every size must be divisible by 16"),
], ids=["patch", "data_file", "patch_before_building_the_store", "labels", "whole_images"])
def test_bad_settings_stop_before_training(overrides, expected, tmp_path, store_path, monkeypatch,
                                           float32_policy, synthetic_brats):
    """Nothing is written, not even the split or a store to build: the patch is checked against
    the network's divisors before the store is built and the data are prepared."""
    from unet3d.recipes import train

    shutil.copy(store_path, tmp_path / "data.h5")
    monkeypatch.chdir(tmp_path)
    if overrides.get("data_file") == "store40.h5":  # whole resampled images of a bad size
        write_data_to_file([case.files() for case in find_cases(synthetic_brats)[:2]],
                           tmp_path / "store40.h5", image_shape=(40, 40, 40))
    if overrides.get("preprocessed_dir"):
        overrides["preprocessed_dir"] = str(synthetic_brats)
    config = preset("paper", **{**dict(data_file="data.h5", model_file="m.keras", n_epochs=1,
                                       n_base_filters=4, workers=0, precision="float32"),
                                **overrides})
    with pytest.raises(InputError, match=expected):
        train(config)
    assert nothing_written(tmp_path, ["data.h5", "store40.h5"] if
                           overrides.get("data_file") == "store40.h5" else ["data.h5"])


def test_the_training_script_exits_2_on_bad_settings(tmp_path, store_path, monkeypatch):
    shutil.copy(store_path, tmp_path / "data.h5")
    monkeypatch.chdir(tmp_path)
    result = run_script("train_isensee2017.py", "--data_file", "data.h5", "--model_file",
                        "m.keras", "--n_epochs", "1", "--workers", "0", "--batch_size", "3",
                        "--cpu_replicas", "2", "--strategy", "mirrored")
    assert result.returncode == 2, result.stderr[-3000:]
    assert "--batch_size 3" in result.stderr and "multiple of the 2 replicas" in result.stderr
    assert "Traceback" not in result.stderr and nothing_written(tmp_path)


# --------------------------------------------------------------------------- 7. store building

@pytest.mark.slow
def test_store_is_built_from_preprocessed_dir(synthetic_brats, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data_file = tmp_path / "built.h5"
    result = run_script("train_isensee2017.py", "--data_file", str(data_file),
                        "--preprocessed_dir", str(synthetic_brats), "--model_file", "m.keras",
                        "--training_log", "training.log", "--patch_shape", "32,32,32",
                        "--batch_size", "2", "--steps_per_epoch", "2", "--n_epochs", "1",
                        "--n_base_filters", "4", "--workers", "0", "--precision", "float32")
    assert result.returncode == 0, result.stderr[-3000:]
    with DataStore(data_file) as store:
        assert store.n_cases == 4 and store.has_truth and store.n_channels == 4
    assert [row["epoch"] for row in read_log(tmp_path / "training.log")] == ["0"]
    assert json.loads((tmp_path / "m.keras.run" / "state.json").read_text())["epochs_done"] == 1


# --------------------------------------------------------------------------- multi-worker

def free_port() -> int:
    import socket
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_workers_with_tf_config_train_an_epoch_and_only_the_chief_writes(store_path,
                                                                             tmp_path):
    """Two processes on localhost form a MultiWorkerMirroredStrategy cluster through TF_CONFIG;
    each has its own folder, so whatever the non-chief wrote would show up in its folder."""
    data_file = tmp_path / "data.h5"
    shutil.copy(store_path, data_file)
    ports = [free_port(), free_port()]
    processes = []
    for index in range(2):
        folder = tmp_path / f"worker{index}"
        folder.mkdir()
        tf_config = {"cluster": {"worker": [f"localhost:{port}" for port in ports]},
                     "task": {"type": "worker", "index": index}}
        env = dict(os.environ, PYTHONPATH=str(REPO), TF_CONFIG=json.dumps(tf_config))
        processes.append(subprocess.Popen(
            [sys.executable, str(REPO / "brats" / "train_isensee2017.py"), "--data_file",
             str(data_file), "--run_dir", ".", "--model_file", "m.keras", "--training_log",
             "training.log", "--patch_shape", "32,32,32", "--batch_size", "4",
             "--steps_per_epoch", "2",
             "--n_epochs", "1", "--n_base_filters", "4", "--workers", "0",
             "--precision", "float32", "--seed", "3"],
            cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=400)[0] for p in processes]
    for process, output in zip(processes, outputs):
        assert process.returncode == 0, output[-3000:]
    assert "2 replicas, global batch 4" in outputs[0]
    chief, worker = tmp_path / "worker0", tmp_path / "worker1"
    assert [row["epoch"] for row in read_log(chief / "training.log")] == ["0"]
    assert (chief / "m.keras").exists() and (chief / "training_ids.pkl").exists()
    assert json.loads((chief / "m.keras.run" / "state.json").read_text())["epochs_done"] == 1
    assert "val Dice WT" in outputs[0]  # both workers validated whole cases, each on its own
    assert (chief / "validation" / "scores.csv").exists()
    assert sorted(p.name for p in worker.iterdir()) == []


# --------------------------------------------------------------------------- 8. legacy preset

@pytest.fixture(scope="module")
def store_32(cases, tmp_path_factory):
    """The synthetic cases resampled to 32^3, as the legacy port's store."""
    path = tmp_path_factory.mktemp("store32") / "data32.h5"
    write_data_to_file([c.files() for c in cases], path, image_shape=(32, 32, 32),
                       subject_ids=[c.name for c in cases], modalities=MODALITIES)
    return path


@pytest.mark.slow
def test_legacy_preset_runs_one_epoch(store_32, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    common = ["--preset", "legacy", "--data_file", str(store_32), "--n_epochs", "1",
              "--n_base_filters", "4", "--workers", "0", "--precision", "float32"]
    # whole images: the legacy recipe is for 128^3 stores
    refused = run_script("train_isensee2017.py", *common)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "(32, 32, 32)" in refused.stderr and "--patch_shape" in refused.stderr
    result = run_script("train_isensee2017.py", *common, "--patch_shape", "32,32,32")
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "runs" / "legacy"  # the legacy recipe's own run folder
    rows = read_log(run / "training.log")
    assert [row["epoch"] for row in rows] == ["0"]
    for name in ("dice_coefficient", "label_0_dice_coef", "label_1_dice_coef",
                 "label_2_dice_coef", "val_dice_coefficient", "val_loss"):
        assert name in rows[0]
    assert "dice_wt" not in rows[0]
    # the weighted Dice loss is minus a Dice: in [-1, 0]
    assert -1 <= float(rows[0]["loss"]) <= 0
    assert (run / "training_ids.pkl").exists() and (run / "validation_ids.pkl").exists()
    assert (run / "model.keras").exists() and (run / "validation" / "scores.csv").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]
    assert float(rows[0]["learning_rate"]) == pytest.approx(5e-4, rel=1e-6)


# --------------------------------------------------------------------------- 9. it learns

def whole_case_dice(model, store, case):
    """WT Dice of `model` on a whole store case (padded to multiples of 16) and of the baseline
    that calls the whole brain (image > 0) tumour."""
    from unet3d.labels import labels_to_regions

    image, truth = store.read_image(case), store.read_truth(case)
    wt = labels_to_regions(truth)[..., 0] > 0
    shape = np.array(image.shape[:3])
    padded = np.pad(image, [(0, p) for p in (-shape) % 16] + [(0, 0)])
    probability = model.predict(padded[None], verbose=0)[0, :shape[0], :shape[1], :shape[2], 0]
    prediction = probability >= 0.5
    brain = (image > 0).any(axis=-1)

    def dice(p):
        return 2 * (p & wt).sum() / (p.sum() + wt.sum())

    return dice(prediction), dice(brain), wt.sum() / brain.sum()


@pytest.mark.slow
def test_short_synthetic_run_learns(store_path, tmp_path, float32_policy):
    from unet3d.recipes import train

    config = paper_run(tmp_path, store_path, patch_shape=(32, 32, 32), batch_size=4,
                       steps_per_epoch=8, n_epochs=12, n_base_filters=8,
                       initial_learning_rate=5e-3, seed=0)
    result = train(config)
    assert result.epochs_done == 12 and not result.stopped_by_nan
    losses = [row["loss"] for row in result.history]
    assert losses[-1] < 0.5 * losses[0]
    validation = pickle.loads((tmp_path / "validation_ids.pkl").read_bytes())
    model = load_old_model(tmp_path / "m.keras")
    with DataStore(tmp_path / "data.h5") as store:
        for case in validation:
            dice, baseline, fraction = whole_case_dice(model, store, case)
            print(f"case {case}: WT Dice {dice:.3f}, whole-brain baseline {baseline:.3f}, "
                  f"tumour fraction of the brain {fraction:.3f}")
            # Calling the whole brain tumour scores 2f / (1 + f) for a tumour fraction f of the
            # brain (about 0.1 here); calling nothing scores 0; any prediction that does not
            # locate the tumour (random voxels, a blob at the wrong place) scores at most about
            # the baseline. Dice >= 0.5 needs most predicted voxels inside the tumour and most
            # of the tumour found, which only a model that learned the contrasts can do.
            assert fraction < 0.25
            assert dice > 0.5
            assert dice > 3 * baseline


# --------------------------------------------------------------------------- 10. paper2017

def test_paper2017_preset_is_the_papers_recipe():
    from unet3d.augment import AUGMENTATIONS
    from unet3d.losses import SoftDiceLoss
    from unet3d.recipes import build_model

    config = preset("paper2017")
    # the list (Isensee et al. 2017)
    assert (config.model, config.patch_shape, config.batch_size) == ("isensee2017",
                                                                     (128, 128, 128), 2)
    assert (config.steps_per_epoch, config.n_epochs, config.initial_learning_rate,
            config.lr_schedule) == (100, 300, 5e-4, "exponential")
    assert exponential_decay(10, 5e-4) == pytest.approx(5e-4 * 0.985 ** 10)
    assert config.preactivation and config.l2 == 1e-5 and not config.legacy_model
    assert (config.target, config.loss) == ("classes", "dice")
    assert (config.predict_whole_volume, config.predict_tta) == (True, "mirror")
    paper = AUGMENTATIONS[config.augmentation]
    assert paper.p_brightness == paper.p_noise == 0 and not paper.scale_per_axis
    assert min(paper.p_rotation, paper.p_scaling, paper.p_elastic, paper.p_gamma) > 0
    model = build_model(config, 4, 4)  # background + labels 1, 2, 4
    assert model.count_params() == 8_269_561 + (16 + 32 + 64) + 3
    assert len(model.losses) == sum(isinstance(layer, keras.layers.Conv3D)
                                    for layer in model.layers)  # L2 on every kernel
    assert isinstance(model.loss, SoftDiceLoss)
    output = keras.ops.convert_to_numpy(model(np.random.default_rng(0).random(
        (1, 16, 16, 16, 4), dtype=np.float32)))
    assert output.shape == (1, 16, 16, 16, 4)
    assert np.allclose(output.sum(axis=-1), 1.0, atol=1e-5)  # a softmax over the 4 classes
    with pytest.raises(InputError, match="options of the isensee2017 network"):
        check_config(preset("paper2017", model="unet3d"))


@pytest.mark.slow
def test_paper2017_run_learns_and_its_model_predicts_whole_volumes_mirrored(
        store_path, synthetic_brats, tmp_path, float32_policy):
    from unet3d.config import Inference, PredictConfig
    from unet3d.io import read_nifti
    from unet3d.model import read_card
    from unet3d.prediction import predict_cases
    from unet3d.recipes import train

    config = paper_run(tmp_path / "run", store_path, "paper2017", patch_shape=(32, 32, 32),
                       steps_per_epoch=6, n_epochs=5, n_base_filters=8,
                       initial_learning_rate=5e-3, validation_cases=1, seed=0)
    result = train(config)
    losses = [row["loss"] for row in result.history]
    assert result.epochs_done == 5 and losses[-1] < losses[0], losses
    assert {"label_1_dice", "label_2_dice", "label_4_dice"} <= set(result.history[0])
    assert "dice_coefficient" not in result.history[0]  # background would dominate it
    card = read_card(tmp_path / "run" / "m.keras")
    assert card.target == "classes" and card.output_names == (
        "background", "label_1", "label_2", "label_4")
    assert card.inference == Inference(whole_volume=True, tta="mirror")
    lines = []
    report = predict_cases(tmp_path / "run" / "m.keras", synthetic_brats, tmp_path / "out",
                           PredictConfig(probabilities=True), progress=lines.append)
    assert not report.failed and len(report.done) == 4
    assert lines[0] == "predicting with one whole-volume pass, test-time augmentation mirror"
    case = report.done[0]
    labels = read_nifti(tmp_path / "out" / f"{case}.nii.gz")[0]
    assert set(np.unique(labels)) <= {0, 1, 2, 4}
    classes = np.stack([read_nifti(tmp_path / "out" / f"{case}_{name}.nii.gz")[0]
                        for name in card.output_names], axis=-1)
    predicted = classes.sum(axis=-1) > 0  # the brain box; outside it nothing is predicted
    assert np.allclose(classes.sum(axis=-1)[predicted], 1.0, atol=1e-4)
    lookup = np.array((0, 1, 2, 4))
    assert np.array_equal(labels[predicted], lookup[np.argmax(classes, axis=-1)][predicted])


def test_auto_precision_on_a_gpu_trains_mixed_float16_with_loss_scaling(monkeypatch,
                                                                         float32_policy):
    from unet3d import distribution
    from unet3d.recipes import build_model

    monkeypatch.setattr(distribution, "has_gpu", lambda: True)
    assert distribution.set_precision("auto") == "mixed_float16"
    model = build_model(preset("paper", n_base_filters=2), 4, 3)
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert model.compute_dtype == "float16" and model.outputs[0].dtype == "float32"
