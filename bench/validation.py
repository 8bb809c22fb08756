"""What the whole-case validation costs during training, against the epoch it follows.

Writes `--n_cases` synthetic cases of `--shape` into a store (as brats/preprocess.py's store:
brain-cropped, normalised), then for each window size: times the training step of the paper
recipe's network (16 base filters, batch 2, random weights; the first steps trace and are not
timed) and the validation of one case as `unet3d.validation.CaseValidation` does it (sliding
windows of the training patch, step 0.5, Gaussian weights; label maps back on the native grid;
Dice per region). Prints seconds per validated case and what the default validation (10 cases)
adds to an epoch of `--steps` steps:

    python bench/validation.py                                # 64^3 and 128^3 on BraTS-size cases
    python bench/validation.py --patches 48 --shape 96,96,64  # the demo's size
"""

from __future__ import annotations

import os
import platform
import time

import keras
import numpy as np
from absl import app, flags

from common import synthetic_cases, work_folder
from unet3d.config import PAPER, PredictConfig
from unet3d.data import DataStore, write_data_to_file
from unet3d.model import isensee2017_model
from unet3d.validation import score_cases

FLAGS = flags.FLAGS
flags.DEFINE_list("patches", ["64", "128"], "Cubic patch (and validation window) edges.")
flags.DEFINE_list("shape", ["240", "240", "155"], "Case grid.")
flags.DEFINE_integer("n_cases", 2, "Cases in the store (validated one after the other).")
flags.DEFINE_integer("steps", PAPER.steps_per_epoch, "Training steps per epoch.")
flags.DEFINE_integer("timed_steps", 3, "Training steps timed (after 2 untimed ones).")
flags.DEFINE_integer("validated_cases", PAPER.validation_cases, "Cases the default validation "
                     "predicts.")
flags.DEFINE_string("work_dir", None, "Folder for the cases (default: a temporary folder).")


def step_seconds(model: keras.Model, patch: int) -> float:
    """Seconds of one training step of batch 2 (median of the timed steps)."""
    rng = np.random.default_rng(0)
    x = rng.random((PAPER.batch_size, patch, patch, patch, 4), dtype=np.float32)
    y = (rng.random((PAPER.batch_size, patch, patch, patch, 3)) < 0.1).astype(np.float32)
    seconds = []
    for step in range(2 + FLAGS.timed_steps):
        start = time.perf_counter()
        model.train_on_batch(x, y)
        seconds.append(time.perf_counter() - start)
    return float(np.median(seconds[2:]))


def main(argv):
    del argv
    with work_folder(FLAGS.work_dir, "bench_validation_") as work:
        files, names = synthetic_cases(work, FLAGS.n_cases, [int(n) for n in FLAGS.shape], 0)
        write_data_to_file(files, work / "store.h5", subject_ids=names,
                           progress=lambda line: None)
        rows = []
        with DataStore(work / "store.h5") as store:
            for patch in (int(p) for p in FLAGS.patches):
                keras.utils.set_random_seed(0)
                model = isensee2017_model((None, None, None, 4), n_labels=3)
                step = step_seconds(model, patch)
                config = PredictConfig(patch_shape=(patch,) * 3)
                score_cases(model, store, [0], config, "regions", (1, 2, 4))  # warm-up
                start = time.perf_counter()
                score_cases(model, store, list(range(len(store))), config, "regions", (1, 2, 4))
                per_case = (time.perf_counter() - start) / len(store)
                epoch = step * FLAGS.steps
                added = per_case * FLAGS.validated_cases
                rows.append((patch, store.case_shape(0), step, epoch, per_case, added,
                             added / epoch))
                print(f"{patch}^3: step {step:.2f} s, validation {per_case:.1f} s per case",
                      flush=True)
    print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} cores, backend "
          f"{keras.backend.backend()}, float32, cases {tuple(int(n) for n in FLAGS.shape)}; "
          f"an epoch = {FLAGS.steps} steps of batch {PAPER.batch_size}, the validation = "
          f"{FLAGS.validated_cases} cases\n")
    print("| window | brain box | s/step | s/epoch | s/validated case | validation s | "
          "validation / epoch |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for patch, box, step, epoch, per_case, added, ratio in rows:
        print(f"| {patch}^3 | {'x'.join(map(str, box))} | {step:.2f} | {epoch:.0f} | "
              f"{per_case:.1f} | {added:.0f} | {ratio:.1%} |")


if __name__ == "__main__":
    app.run(main)
