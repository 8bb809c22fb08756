"""Training: learning-rate schedules, callbacks, resumable runs.

- `run_training`: the resumable loop the BraTS scripts use. A run keeps, next to the model file,
  a checkpoint folder `<model_file>.run/` holding the last completed epoch's full model (weights,
  optimizer state, learning rate) and `state.json` (epochs done, every epoch's logs, the
  callbacks' counters). Both are replaced atomically at the end of each epoch, `state.json` last,
  so a run killed at any moment (SIGKILL included) restarts with the same command from the last
  completed epoch: same weights, optimizer state, learning rate, epoch counter, data order
  (datasets draw from (seed, epoch)) and dropout masks (`EpochSeeds`: Keras does not restore its
  random-generator states from a saved model, so they are set from (seed, epoch) instead); the
  CSV log is rewritten from `state.json`, so no epoch is lost or repeated in it. The best and the
  last model carry the run's model card.
- The legacy port's `step_decay`, `load_old_model`, and `get_callbacks` and `train_model`
  (`unet3d.legacy.training`, importable from here as in the port).
- Devices, strategies and precision are in `unet3d.distribution`.

Global batch = per-replica batch x replicas. Learning-rate rule: the paper's rate (5e-4) is for a
global batch of 2; when the global batch grows, scale the rate linearly
(`scaled_learning_rate`), the usual rule for Adam at these small batches.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import keras
import numpy as np

from unet3d.config import PAPER, SCHEDULES
from unet3d.distribution import DataParallelStrategy, is_chief, prepare_model
from unet3d.errors import InputError
from unet3d.atomic import atomic_write, remove_stale_temporaries
from unet3d.logs import get_logger
from unet3d.model.card import ModelCard
from unet3d.model.saving import load_old_model, save_model

__all__ = ["step_decay", "exponential_decay", "poly_decay", "make_schedule", "get_callbacks",
           "train_model", "load_old_model", "NaNGuard", "EpochSync", "RunCheckpoint",
           "run_training", "scaled_learning_rate"]

#: The port's callbacks and training function (`unet3d.legacy.training`).
LEGACY_NAMES = ("get_callbacks", "train_model")


def __getattr__(name: str):
    if name in LEGACY_NAMES:
        from unet3d.legacy import training as legacy
        return getattr(legacy, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --------------------------------------------------------------------------- schedules

def step_decay(epoch: int, initial_lrate: float, drop: float, epochs_drop: int) -> float:
    """The port's step decay: initial_lrate * drop ** floor((1 + epoch) / epochs_drop)."""
    return initial_lrate * math.pow(drop, math.floor((1 + epoch) / epochs_drop))


def exponential_decay(epoch: int, initial_lrate: float, gamma: float = 0.985) -> float:
    """The paper's schedule: initial_lrate * gamma ** epoch."""
    return initial_lrate * gamma ** epoch


def poly_decay(epoch: int, initial_lrate: float, n_epochs: int, exponent: float = 0.9) -> float:
    """nnU-Net's poly schedule: initial_lrate * (1 - epoch / n_epochs) ** exponent."""
    return initial_lrate * max(1.0 - epoch / n_epochs, 0.0) ** exponent


def make_schedule(name: str, initial_learning_rate: float, n_epochs: int,
                  learning_rate_drop: float = 0.5, learning_rate_epochs: int | None = None
                  ) -> Callable[[int], float] | None:
    """epoch -> learning rate for `name` in SCHEDULES; None for "plateau" (a callback instead)."""
    if name == "exponential":
        return lambda epoch: exponential_decay(epoch, initial_learning_rate)
    if name == "step":
        if not learning_rate_epochs:
            raise InputError("the step schedule needs learning_rate_epochs (epochs per drop)")
        return lambda epoch: step_decay(epoch, initial_learning_rate, learning_rate_drop,
                                        learning_rate_epochs)
    if name == "poly":
        return lambda epoch: poly_decay(epoch, initial_learning_rate, n_epochs)
    if name == "constant":
        return lambda epoch: initial_learning_rate
    if name == "plateau":
        return None
    raise InputError(f"unknown learning-rate schedule {name!r}: choose one of {', '.join(SCHEDULES)}")


def scaled_learning_rate(learning_rate: float, global_batch_size: int,
                         reference_batch_size: int = PAPER.batch_size) -> float:
    """Linear scaling rule: the rate for `global_batch_size` given one tuned for the reference."""
    return learning_rate * global_batch_size / reference_batch_size


# --------------------------------------------------------------------------- callbacks

NAN_ADVICE = ("Rerun the same command (without --overwrite) to go on from it; if it happens "
              "again, start the run over (--overwrite, or another --run_dir) with a lower "
              "learning rate (--initial_learning_rate) or --precision float32 (or "
              "mixed_bfloat16 instead of mixed_float16), and check the data for NaNs "
              "(brats/preprocess.py rejects them)")


class NaNGuard(keras.callbacks.Callback):
    """Stop training at the first batch whose loss is NaN or infinite, saying what to try."""

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.model.stop_training = True
            self.message = (f"loss became {float(loss)} at batch {batch}: training stopped, the "
                            f"last good checkpoint is kept. {NAN_ADVICE}")
            get_logger().error(self.message)


class EpochSync(keras.callbacks.Callback):
    """Sets `dataset.epoch` to `fit`'s epoch before each epoch's batches are drawn (and before
    Keras starts the epoch's worker processes), so the data order follows the epoch number."""

    def __init__(self, dataset):
        super().__init__()
        self.dataset = dataset

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.dataset.epoch = epoch


class EpochSeeds(keras.callbacks.Callback):
    """Sets the state of every random generator of the model (dropout's) from (`seed`, epoch,
    its position) before each epoch, so the epoch's random draws depend on the seed and the
    epoch only: a resumed run draws what an uninterrupted one does. (A saved model does not
    carry these states: loading one gives fresh random ones.)"""

    def __init__(self, seed: int):
        super().__init__()
        self.seed = int(seed)

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        states = [v for v in self.model.variables if v.path.endswith("seed_generator_state")]
        for index, state in enumerate(states):
            start = np.random.default_rng([self.seed, epoch, index]).integers(2 ** 31)
            state.assign(np.asarray([start, 0], dtype=keras.backend.standardize_dtype(
                state.dtype)))


# Counters of Keras callbacks that a resumed run must get back.
_CALLBACK_STATE = {
    keras.callbacks.ReduceLROnPlateau: ("wait", "best", "cooldown_counter"),
    keras.callbacks.EarlyStopping: ("wait", "best", "stopped_epoch"),
}


def _to_json(value):
    value = float(value) if isinstance(value, (np.floating, np.integer)) else value
    return None if isinstance(value, float) and not math.isfinite(value) else value


class RunCheckpoint(keras.callbacks.Callback):
    """Keeps a run resumable: at each epoch end, atomically, the last model, the best model (by
    `monitor`), `state.json` and the CSV log. Only the chief of a multi-worker run writes.

    Args:
        run_dir: checkpoint folder (`last.keras`, `state.json`).
        model_file: where the best model goes (a `.keras` file).
        csv_file: the training log, one row per epoch (rewritten from the state on resume).
        monitor: the log that chooses the best model, e.g. "val_loss" or "val_dice_mean".
        mode: "min" (lower is better) or "max".
        callbacks: callbacks whose counters are saved and restored (plateau, early stopping).
        is_chief: whether this process writes.
        card: the model card saved inside both models (and beside the best one).
        settings: the run's settings, kept in `state.json` (to refuse resuming another run).
    """

    def __init__(self, run_dir: str | os.PathLike, model_file: str | os.PathLike,
                 csv_file: str | os.PathLike, monitor: str = "val_loss", mode: str = "min",
                 callbacks: Sequence[keras.callbacks.Callback] = (), is_chief: bool = True,
                 card: ModelCard | None = None, settings: dict | None = None):
        super().__init__()
        self.run_dir, self.model_file, self.csv_file = Path(run_dir), Path(model_file), Path(csv_file)
        self.monitor, self.mode, self.is_chief, self.card = monitor, mode, is_chief, card
        self.tracked = [c for c in callbacks if type(c) in _CALLBACK_STATE]
        self.settings = settings
        self.state = self.load_state(self.run_dir) or {"epochs_done": 0, "history": [],
                                                       "best": None, "callbacks": []}

    @staticmethod
    def load_state(run_dir: str | os.PathLike) -> dict | None:
        """The saved state of the run in `run_dir`, or None for a new run."""
        path = Path(run_dir) / "state.json"
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise InputError(f"{path}: unreadable run state ({error}); delete {run_dir} to start "
                             "the run over") from None

    @property
    def last_model(self) -> Path:
        return self.run_dir / "last.keras"

    def on_train_begin(self, logs: dict | None = None) -> None:
        """Give the tracked callbacks their saved counters: they reset them in their own
        `on_train_begin`, so this callback must come after them in the list."""
        for callback, saved in zip(self.tracked, self.state["callbacks"]):
            for name, value in saved.items():
                if value is not None or name != "best":  # None: +-inf, as the callback reset it
                    setattr(callback, name, value)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = dict(logs or {})
        if not math.isfinite(float(logs.get("loss", 0.0))):
            return  # stopped by NaNGuard: keep the last good checkpoint, redo this epoch
        if not all(np.isfinite(weights).all() for weights in self.model.get_weights()):
            # the last update made weights non-finite although the epoch's loss was finite
            self.model.stop_training = True
            self.message = (f"weights became NaN or infinite in epoch {epoch + 1}: training "
                            f"stopped, the checkpoint of epoch {epoch} is kept. {NAN_ADVICE}")
            get_logger().error(self.message)
            return
        logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        row = {"epoch": epoch, **{k: _to_json(v) for k, v in logs.items()}}
        value, best = logs.get(self.monitor), self.state["best"]
        improved = value is not None and math.isfinite(value) and (
            best is None or (value > best if self.mode == "max" else value < best))
        self.state = {
            **self.state, "monitor": self.monitor, "mode": self.mode, "settings": self.settings,
            "epochs_done": epoch + 1,
            "history": self.state["history"] + [row],
            "best": value if improved else best,
            "callbacks": [{name: _to_json(getattr(c, name)) for name in _CALLBACK_STATE[type(c)]}
                          for c in self.tracked],
        }
        if not self.is_chief:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        save_model(self.model, self.last_model, self.card, readable_copy=False)
        if improved:
            save_model(self.model, self.model_file, self.card)
        with atomic_write(self.run_dir / "state.json") as tmp:
            tmp.write_text(json.dumps(self.state, indent=1))
        self.write_csv()

    def write_csv(self) -> None:
        """Write the CSV log from the state: one row per completed epoch, nothing else."""
        rows = self.state["history"]
        if not self.is_chief or not rows:
            return
        fields = list(dict.fromkeys(key for row in rows for key in row))
        with atomic_write(self.csv_file) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)


# --------------------------------------------------------------------------- the resumable loop

@dataclasses.dataclass
class RunResult:
    history: list[dict]
    epochs_done: int
    resumed_from: int
    stopped_by_nan: bool = False


def checkpoint_dir(model_file: str | os.PathLike) -> Path:
    """The checkpoint folder of the run whose best model is `model_file`: `<model_file>.run/`."""
    model_file = Path(model_file)
    return model_file.with_name(model_file.name + ".run")


class EpochLog(keras.callbacks.Callback):
    """A line per epoch in the log: the epoch (numbered from 1, as Keras prints it), the losses,
    the validation Dice, the learning rate and the time; and one after the first step, which
    traces the network and takes longest."""

    def __init__(self, n_epochs: int):
        super().__init__()
        self.n_epochs = n_epochs
        self.start = self.first_step = None

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.start = time.monotonic()

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if self.first_step is None:
            self.first_step = time.monotonic() - self.start
            get_logger().info(f"first step done in {self.first_step:.0f} s")

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        parts = [f"{name} {logs[name]:.4f}" for name in ("loss", "val_loss") if name in logs]
        if "val_dice_mean" in logs:
            regions = [key[len("val_dice_"):] for key in logs
                       if key.startswith("val_dice_") and key != "val_dice_mean"]
            parts.append("val Dice " + " ".join(f"{r.upper()} {logs[f'val_dice_{r}']:.3f}"
                                                for r in regions)
                         + f" (mean {logs['val_dice_mean']:.3f})")
        rate = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        get_logger().info(f"epoch {epoch + 1}/{self.n_epochs}: {', '.join(parts)}, learning rate "
                          f"{rate:.3g}, {time.monotonic() - self.start:.0f} s")


def run_training(build_model: Callable[[], keras.Model],
                 make_datasets: Callable[[], tuple], model_file: str | os.PathLike,
                 training_log: str | os.PathLike, n_epochs: int,
                 schedule: Callable[[int], float] | None = None,
                 callbacks: Sequence[keras.callbacks.Callback] = (), strategy=None,
                 verbose: int | str = "auto", card: ModelCard | None = None,
                 monitor: tuple[str, str] | None = None,
                 settings: dict | None = None, seed: int = 0) -> RunResult:
    """Train (or resume) a run; returns the whole run's per-epoch logs.

    Args:
        build_model: returns a new compiled model (called inside the strategy's scope).
        make_datasets: returns (training, validation) datasets with an `epoch` attribute
            (unet3d.generator); validation may be None. Called once the model exists, and not
            for a finished run.
        model_file: the best model (`.keras`); the run folder is `<model_file>.run/`.
        training_log: CSV log, one row per epoch.
        n_epochs: total epochs of the run (a finished run returns at once).
        schedule: epoch -> learning rate (None: the optimizer's rate, or a plateau callback).
        callbacks: more callbacks, before the checkpoint (ReduceLROnPlateau and EarlyStopping
            counters are resumed).
        strategy: a tf.distribute strategy, a `DataParallelStrategy` (JAX) or None
            (`unet3d.distribution.make_strategy`).
        verbose: Keras' progress output; "auto": a bar on a terminal, else none (the log has a
            line per epoch).
        card: the model card saved with the models (`unet3d.model.card`).
        monitor: (log, "min" or "max") choosing the best model; default val_loss (loss without
            validation data), lower is better.
        settings: the run's settings, kept in its state.
        seed: seeds the model's random generators (dropout) each epoch (`EpochSeeds`).
    """
    model_file = Path(model_file)
    run_dir = checkpoint_dir(model_file)
    chief = is_chief()
    log = get_logger()
    checkpoint = RunCheckpoint(run_dir, model_file, training_log, *(monitor or ("loss", "min")),
                               callbacks=callbacks, is_chief=chief, card=card, settings=settings)
    start = int(checkpoint.state["epochs_done"])
    scope = strategy.scope() if strategy is not None else contextlib.nullcontext()
    with scope:
        if start == 0:
            model = build_model()
        else:
            log.info("resuming %s after epoch %d of %d (%s)", model_file, start, n_epochs,
                     checkpoint.last_model)
            model = load_old_model(checkpoint.last_model)
    if chief:  # saves a killed run was making
        for path in (checkpoint.last_model, run_dir / "state.json", model_file, training_log):
            remove_stale_temporaries(path)
    checkpoint.write_csv()
    if start >= n_epochs:
        log.info("%s: all %d epochs are done", model_file, n_epochs)
        return RunResult(checkpoint.state["history"], start, start)
    training_data, validation_data = make_datasets()
    if monitor is None and validation_data is not None:
        checkpoint.monitor = "val_loss"
    prepare_model(model, strategy, training_data[0])
    nan_guard = NaNGuard()
    all_callbacks = [EpochSync(training_data), EpochSeeds(seed), nan_guard, *callbacks,
                     EpochLog(n_epochs), checkpoint]
    if schedule is not None:
        all_callbacks.insert(0, keras.callbacks.LearningRateScheduler(schedule))
    if verbose == "auto":
        verbose = 1 if sys.stdout.isatty() else 0
    log.info("the first step traces the network before it runs: tens of seconds on a CPU "
             "(about 40 s for 128^3 patches on 2 cores)")
    # JAX's data-parallel distribution must be in effect while fit runs (it places each batch);
    # tf.distribute's scope must not be (a chief saving its checkpoint inside it would wait on
    # the other workers, which do not save): Keras enters it where it needs it.
    with strategy.scope() if isinstance(strategy, DataParallelStrategy) else \
            contextlib.nullcontext():
        # shuffle=False: Keras would reorder each epoch's batches with an unseeded generator;
        # the datasets already draw their order from (seed, epoch).
        model.fit(training_data, validation_data=validation_data, epochs=n_epochs,
                  initial_epoch=start, callbacks=all_callbacks, verbose=verbose, shuffle=False)
    return RunResult(checkpoint.state["history"], checkpoint.state["epochs_done"], start,
                     stopped_by_nan=hasattr(nan_guard, "message") or hasattr(checkpoint,
                                                                            "message"))
