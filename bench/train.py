"""Training throughput of the paper recipe: patches/s, seconds per epoch, bottleneck, peak memory.

Runs on either Keras backend (KERAS_BACKEND); nothing on the JAX path imports TensorFlow. For each
precision and replica count, a fresh process (the CPU split into logical devices must come before
the framework starts) trains the Isensee model as `unet3d.recipes.train` builds it:
- "full": from the store with the paper's random patches and default augmentation, made by
  `--workers` processes, exactly as `brats/train_isensee2017.py` runs;
- "model only": on one fixed batch held in memory (no data cost),
so full / model-only says whether the input pipeline or the model limits training. The first epoch
(graph tracing and compilation, worker start) is left out of the rates and shown on its own.
Replicas: `tf.distribute` (TensorFlow: the GPUs, or the CPU split into logical devices) or
`keras.distribution.DataParallel` (JAX: the local devices; on a CPU host the CPU is split into N
devices). mixed_float16 trains with dynamic loss scaling (Keras wraps the optimizer in a
`LossScaleOptimizer`). Also reported: the seconds per epoch the training loop waited for data (not
on TensorFlow, whose tf.data pipeline prefetches in its own threads), the process's peak RSS and,
on a JAX GPU, the device's peak memory.

    python bench/train.py                          # 128^3, batch 2, 4 steps x 2 epochs
    python bench/train.py --patch 64 --steps 10 --precisions float32,mixed_bfloat16 --replicas 1,2
    KERAS_BACKEND=jax python bench/train.py --replicas 1 --modes "model only" \
        --precisions float32,mixed_bfloat16,mixed_float16 --steps 20 --epochs 3
    KERAS_BACKEND=jax python bench/train.py --data_file store.h5 --modes full --workers 8,14
"""

from __future__ import annotations

import contextlib
import json
import resource
import time

import keras
import numpy as np
from absl import app, flags

from common import run_child, synthetic_cases, work_folder
from unet3d import distribution, recipes
from unet3d.config import preset
from unet3d.data import write_data_to_file
from unet3d.logs import setup_logging

MODES = ("full", "model only")

FLAGS = flags.FLAGS
flags.DEFINE_integer("n_cases", 4, "Synthetic cases (240x240x155) in the store.")
flags.DEFINE_string("data_file", None, "An existing store to train from instead of writing "
                    "--n_cases synthetic cases (e.g. one made beforehand, on a host without "
                    "SimpleITK).")
flags.DEFINE_integer("patch", 128, "Cubic training patch edge.")
flags.DEFINE_integer("batch_size", 2, "Global batch.")
flags.DEFINE_integer("steps", 4, "Batches per epoch.")
flags.DEFINE_integer("epochs", 2, "Epochs per run; the first is not timed.")
flags.DEFINE_list("workers", ["2"], "Batch-making processes for the full runs (several: one "
                  "full run each).")
flags.DEFINE_list("precisions", ["float32", "mixed_bfloat16"], "Precisions to compare.")
flags.DEFINE_list("replicas", ["1", "2"], "Replica (device) counts to compare.")
flags.DEFINE_list("modes", list(MODES), "Which of the data modes to run.")
flags.DEFINE_integer("child_timeout", 0, "Seconds one measurement may take (0: no limit); one "
                     "that fails or runs out is reported as failed and the others go on.")
flags.DEFINE_string("json", None, "Also write the results to this JSON file.")
flags.DEFINE_string("work_dir", None, "Folder for the files (default: a temporary folder).")
flags.DEFINE_string("child", None, "Internal: run one measurement (JSON arguments).")


class EpochTimer(keras.callbacks.Callback):
    """Wall-clock seconds of each epoch, and the seconds of it spent waiting for data."""

    def __init__(self, wait: list[float]):
        super().__init__()
        self.seconds, self.waits, self._wait = [], [], wait

    def on_epoch_begin(self, epoch, logs=None):
        self._wait[0] = 0.0
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self.start)
        self.waits.append(self._wait[0])


def time_data_waits() -> list[float] | None:
    """Make the training loop's iterator over a `PyDataset` count the seconds it blocks for the
    next batch (into the returned one-element list, reset by `EpochTimer`). Not on TensorFlow
    (tf.data pulls batches in its own threads, ahead of the step) and None where this Keras has
    no `PyDatasetAdapter._get_iterator` (private) to wrap."""
    if keras.backend.backend() == "tensorflow":
        return None
    try:
        from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter
        original = PyDatasetAdapter._get_iterator  # noqa: SLF001 - benchmark instrumentation
    except (ImportError, AttributeError):
        return None
    wait = [0.0]

    def timed_iterator(self):
        iterator = iter(original(self))
        while True:
            start = time.perf_counter()
            try:
                batch = next(iterator)
            except StopIteration:
                return
            finally:
                wait[0] += time.perf_counter() - start
            yield batch

    PyDatasetAdapter._get_iterator = timed_iterator  # noqa: SLF001
    return wait


def replica_scope(replicas: int, config):
    """The context the model is built and fit in: the scope of `make_strategy` (a `tf.distribute`
    strategy on TensorFlow, data parallel over the local devices on JAX), checked to hold
    `replicas` devices."""
    strategy = distribution.make_strategy(config.strategy, config.cpu_replicas)
    found = strategy.num_replicas_in_sync if strategy is not None else 1
    if found != replicas:
        raise SystemExit(f"{replicas} replicas asked for, but the backend gives {found}")
    return strategy.scope() if strategy is not None else contextlib.nullcontext()


def device_memory() -> dict:
    """Peak and limit of the first device's memory (GB) where the backend tells (JAX on GPU)."""
    if keras.backend.backend() != "jax":
        return {}
    import jax
    device = jax.devices()[0]
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if not stats or "peak_bytes_in_use" not in stats:
        return {"device": str(device)}
    return {"device": str(device), "peak_device_gb": stats["peak_bytes_in_use"] / 2 ** 30,
            "device_limit_gb": stats.get("bytes_limit", 0) / 2 ** 30}


def child(args: dict) -> dict:
    """One measurement in this (fresh) process; returns seconds per timed epoch and memory."""
    setup_logging()
    config = preset(
        "paper", data_file=args["data_file"], run_dir=args["out"], data_split=1.0,
        patch_shape=(args["patch"],) * 3, batch_size=args["batch_size"],
        steps_per_epoch=args["steps"], n_epochs=args["epochs"], precision=args["precision"],
        strategy="mirrored" if args["replicas"] > 1 else "one_device",
        cpu_replicas=args["replicas"], workers=args["workers"], verbose=0)
    scope = replica_scope(args["replicas"], config)
    distribution.set_precision(config.precision)
    wait = time_data_waits()
    store = recipes.ensure_store(config)
    training = list(range(len(store)))
    train_data, _ = recipes.make_datasets(config, store, training, [], config.batch_size,
                                          config.batch_size)
    if args["mode"] == "model only":
        batch = train_data[0]

        class Fixed(keras.utils.PyDataset):
            def __len__(self):
                return config.steps_per_epoch

            def __getitem__(self, index):
                return batch

        train_data = Fixed()
    timer = EpochTimer(wait if wait is not None else [0.0])
    with scope:
        model = recipes.build_model(config, store.n_channels, 3)
        model.fit(train_data, epochs=config.n_epochs, callbacks=[timer], verbose=0)
    timed = timer.seconds[1:]
    seconds = float(np.mean(timed))
    result = {"seconds_per_epoch": seconds,
              "patches_per_second": config.steps_per_epoch * config.batch_size / seconds,
              "first_epoch_seconds": timer.seconds[0],
              "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20,
              "backend": keras.backend.backend(), "optimizer": type(model.optimizer).__name__}
    if wait is not None:
        result["data_wait_seconds_per_epoch"] = float(np.mean(timer.waits[1:]))
    result.update(device_memory())
    return result


def cell(result: dict | None, key: str, form: str) -> str:
    value = (result or {}).get(key)
    return "-" if value is None else format(value, form)


def main(argv):
    del argv
    if FLAGS.child:
        print("RESULT " + json.dumps(child(json.loads(FLAGS.child))))
        return
    unknown = set(FLAGS.modes) - set(MODES)
    if unknown:
        raise SystemExit(f"unknown --modes {sorted(unknown)}: choose from {MODES}")
    backend = keras.backend.backend()
    keep_going = bool(FLAGS.child_timeout) or FLAGS.json is not None
    with work_folder(FLAGS.work_dir, "bench_train_") as work:
        data_file = FLAGS.data_file
        if data_file is None:
            files, names = synthetic_cases(work, FLAGS.n_cases, (240, 240, 155), 0)
            data_file = str(work / "store.h5")
            write_data_to_file(files, data_file, subject_ids=names, progress=lambda line: None)
        rows = []
        for precision in FLAGS.precisions:
            for replicas in (int(r) for r in FLAGS.replicas):
                runs = [(mode, int(w)) for mode in MODES if mode in FLAGS.modes
                        for w in (FLAGS.workers if mode == "full" else FLAGS.workers[:1])]
                for mode, workers in runs:
                    out = work / f"{precision}_{replicas}_{mode.replace(' ', '_')}_{workers}"
                    args = dict(data_file=str(data_file), out=str(out), patch=FLAGS.patch,
                                batch_size=FLAGS.batch_size, steps=FLAGS.steps,
                                epochs=FLAGS.epochs, precision=precision, replicas=replicas,
                                workers=workers, mode=mode)
                    result = run_child(__file__, args, timeout=FLAGS.child_timeout or None,
                                       keep_going=keep_going)
                    rows.append((precision, replicas, mode, workers, result))
                    print(f"{precision} {replicas} replica(s) {mode}"
                          f"{f' {workers} workers' if mode == 'full' else ''}: {result}",
                          flush=True)
                    if FLAGS.json:  # after each measurement: a run cut short keeps the rest
                        with open(FLAGS.json, "w") as stream:
                            json.dump([dict(precision=p, replicas=r, mode=m, workers=w,
                                            result=res) for p, r, m, w, res in rows],
                                      stream, indent=1)
        workers = ",".join(FLAGS.workers)
        print(f"\npaper recipe, {FLAGS.patch}^3 patches, global batch {FLAGS.batch_size}, "
              f"{FLAGS.steps} steps per epoch, {workers} data workers; first epoch not "
              f"timed; backend {backend}\n")
        several = len(FLAGS.workers) > 1 and "full" in FLAGS.modes
        print(f"| precision | replicas | data{' (workers)' if several else ''} | s/epoch | "
              "patches/s | vs float32 1 replica | full / model only | peak RSS GB | "
              "first epoch s | data wait s/epoch | peak device GB |")
        print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        rate = {(p, r, m, w): res["patches_per_second"] for p, r, m, w, res in rows if res}
        only = {(p, r): speed for (p, r, m, w), speed in rate.items() if m == "model only"}
        for precision, replicas, mode, workers, result in rows:
            label = f"{mode} ({workers})" if several and mode == "full" else mode
            if result is None:
                print(f"| {precision} | {replicas} | {label} | failed | | | | | | | |")
                continue
            speed = result["patches_per_second"]
            base = rate.get(("float32", 1, "full", workers))
            ratio = f"{speed / base:.2f}x" if base and mode == "full" else "-"
            limit = (f"{speed / only[(precision, replicas)]:.2f}"
                     if mode == "full" and (precision, replicas) in only else "-")
            print(f"| {precision} | {replicas} | {label} | {result['seconds_per_epoch']:.2f} | "
                  f"{speed:.2f} | {ratio} | {limit} | {result['peak_rss_gb']:.1f} | "
                  f"{cell(result, 'first_epoch_seconds', '.1f')} | "
                  f"{cell(result, 'data_wait_seconds_per_epoch', '.2f')} | "
                  f"{cell(result, 'peak_device_gb', '.1f')} |")


if __name__ == "__main__":
    app.run(main)
