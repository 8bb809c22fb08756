"""Training throughput of the paper recipe: patches/s, seconds per epoch, bottleneck, peak memory.

For each precision and replica count, a fresh process (the CPU split into logical devices must
come before TensorFlow starts) trains the Isensee model through `unet3d.recipes.train` twice:
- "full": from the store with the paper's random patches and default augmentation, made by
  `--workers` processes, exactly as `brats/train_isensee2017.py` runs;
- "model only": on one fixed batch held in memory (no data cost),
so full / model-only says whether the input pipeline or the model limits training. The first epoch
(graph tracing, worker start) is left out of the rates. Peak memory is the process's max RSS.

    python bench/train.py                          # 128^3, batch 2, 4 steps x 2 epochs
    python bench/train.py --patch 64 --steps 10 --precisions float32,mixed_bfloat16 --replicas 1,2
"""

from __future__ import annotations

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

FLAGS = flags.FLAGS
flags.DEFINE_integer("n_cases", 4, "Synthetic cases (240x240x155) in the store.")
flags.DEFINE_integer("patch", 128, "Cubic training patch edge.")
flags.DEFINE_integer("batch_size", 2, "Global batch.")
flags.DEFINE_integer("steps", 4, "Batches per epoch.")
flags.DEFINE_integer("epochs", 2, "Epochs per run; the first is not timed.")
flags.DEFINE_integer("workers", 2, "Batch-making processes for the full runs.")
flags.DEFINE_list("precisions", ["float32", "mixed_bfloat16"], "Precisions to compare.")
flags.DEFINE_list("replicas", ["1", "2"], "CPU replica counts to compare.")
flags.DEFINE_string("work_dir", None, "Folder for the files (default: a temporary folder).")
flags.DEFINE_string("child", None, "Internal: run one measurement (JSON arguments).")


class EpochTimer(keras.callbacks.Callback):
    """Wall-clock seconds of each epoch."""

    def __init__(self):
        super().__init__()
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self.start)


def child(args: dict) -> dict:
    """One measurement in this (fresh) process; returns seconds per timed epoch and memory."""
    setup_logging()
    config = preset(
        "paper", data_file=args["data_file"], run_dir=args["out"], data_split=1.0,
        patch_shape=(args["patch"],) * 3, batch_size=args["batch_size"],
        steps_per_epoch=args["steps"], n_epochs=args["epochs"], precision=args["precision"],
        strategy="mirrored" if args["replicas"] > 1 else "one_device",
        cpu_replicas=args["replicas"], workers=args["workers"], verbose=0)
    strategy = distribution.make_strategy(config.strategy, config.cpu_replicas)
    distribution.set_precision(config.precision)
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
    timer = EpochTimer()
    with strategy.scope():
        model = recipes.build_model(config, store.n_channels, 3)
    model.fit(train_data, epochs=config.n_epochs, callbacks=[timer], verbose=0)
    timed = timer.seconds[1:]
    return {"seconds_per_epoch": float(np.mean(timed)),
            "patches_per_second": config.steps_per_epoch * config.batch_size / float(np.mean(timed)),
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20}


def main(argv):
    del argv
    if FLAGS.child:
        print("RESULT " + json.dumps(child(json.loads(FLAGS.child))))
        return
    with work_folder(FLAGS.work_dir, "bench_train_") as work:
        files, names = synthetic_cases(work, FLAGS.n_cases, (240, 240, 155), 0)
        write_data_to_file(files, work / "store.h5", subject_ids=names, progress=lambda line: None)
        rows = []
        for precision in FLAGS.precisions:
            for replicas in (int(r) for r in FLAGS.replicas):
                for mode in ("full", "model only"):
                    out = work / f"{precision}_{replicas}_{mode.replace(' ', '_')}"
                    args = dict(data_file=str(work / "store.h5"), out=str(out), patch=FLAGS.patch,
                                batch_size=FLAGS.batch_size, steps=FLAGS.steps,
                                epochs=FLAGS.epochs, precision=precision, replicas=replicas,
                                workers=FLAGS.workers, mode=mode)
                    result = run_child(__file__, args)
                    rows.append((precision, replicas, mode, result))
                    print(f"{precision} {replicas} replica(s) {mode}: {result}", flush=True)
        print(f"\npaper recipe, {FLAGS.patch}^3 patches, global batch {FLAGS.batch_size}, "
              f"{FLAGS.steps} steps per epoch, {FLAGS.workers} data workers; first epoch not "
              "timed\n")
        print("| precision | replicas | data | s/epoch | patches/s | vs float32 1 replica | "
              "full / model only | peak RSS GB |")
        print("|---|---:|---|---:|---:|---:|---:|---:|")
        rate = {(p, r, m): res["patches_per_second"] for p, r, m, res in rows}
        base = rate.get(("float32", 1, "full"))
        for precision, replicas, mode, result in rows:
            speed = result["patches_per_second"]
            ratio = f"{speed / base:.2f}x" if base and mode == "full" else "-"
            limit = (f"{speed / rate[(precision, replicas, 'model only')]:.2f}"
                     if mode == "full" else "-")
            print(f"| {precision} | {replicas} | {mode} | {result['seconds_per_epoch']:.1f} | "
                  f"{speed:.2f} | {ratio} | {limit} | {result['peak_rss_gb']:.1f} |")


if __name__ == "__main__":
    app.run(main)
