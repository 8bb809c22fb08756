"""Peak memory of training the Isensee network per patch size, batch and precision (CPU).

Each row is a fresh process: it builds the BraTS configuration (4 modalities, 3 outputs, 16 base
filters, BCE + Dice), runs `--steps` training steps on a random batch and reports the process's
peak resident memory (max RSS) and the RSS before the first step (framework + model), so the
difference is what the training step itself needs.

    python bench/memory.py
    python bench/memory.py --patches 64,96,128 --batches 1,2 --precisions float32,mixed_bfloat16
"""

from __future__ import annotations

import json
import resource
import time

from absl import app, flags

from common import run_child

FLAGS = flags.FLAGS
flags.DEFINE_list("patches", ["64", "96", "128"], "Cubic patch edges.")
flags.DEFINE_list("batches", ["1", "2"], "Batch sizes.")
flags.DEFINE_list("precisions", ["float32"], "Dtype policies.")
flags.DEFINE_integer("steps", 2, "Training steps per row.")
flags.DEFINE_string("child", None, "Internal: one measurement (JSON arguments).")


def child(args: dict) -> dict:
    import keras
    import numpy as np

    from unet3d.losses import BCEDiceLoss
    from unet3d.model import isensee2017_model

    keras.config.set_dtype_policy(args["precision"])
    size, batch = args["patch"], args["batch"]
    model = isensee2017_model((size, size, size, 4), n_labels=3, loss_function=BCEDiceLoss())
    rng = np.random.default_rng(0)
    images = rng.random((batch, size, size, size, 4), dtype=np.float32)
    targets = (rng.random((batch, size, size, size, 3)) > 0.5).astype(np.float32)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    for _ in range(args["steps"]):
        model.train_on_batch(images, targets)
    seconds = (time.perf_counter() - start) / args["steps"]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"before_gb": before / 2 ** 20, "peak_gb": peak / 2 ** 20, "seconds_per_step": seconds}


def main(argv):
    del argv
    if FLAGS.child:
        print("RESULT " + json.dumps(child(json.loads(FLAGS.child))))
        return
    rows = []
    for precision in FLAGS.precisions:
        for patch in (int(p) for p in FLAGS.patches):
            for batch in (int(b) for b in FLAGS.batches):
                args = dict(patch=patch, batch=batch, precision=precision, steps=FLAGS.steps)
                result = run_child(__file__, args)
                rows.append((precision, patch, batch, result))
                print(f"{precision} {patch}^3 batch {batch}: {result}", flush=True)
    print(f"\nIsensee network, 16 base filters, 4 channels, 3 outputs; {FLAGS.steps} training "
          "steps; RSS = resident memory of the process\n")
    print("| precision | patch | batch | RSS before training GB | peak RSS GB | "
          "training step needs GB | s/step |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for precision, patch, batch, r in rows:
        print(f"| {precision} | {patch}^3 | {batch} | {r['before_gb']:.1f} | {r['peak_gb']:.1f} | "
              f"{r['peak_gb'] - r['before_gb']:.1f} | {r['seconds_per_step']:.1f} |")


if __name__ == "__main__":
    app.run(main)
