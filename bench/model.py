"""Speed of `isensee2017_model` on this machine: float32 against mixed precision (bfloat16).

For each input size and batch size it builds the BraTS configuration (4 modalities, 3 labels)
once per dtype policy from the same seeded weights, then times training steps (`train_on_batch`)
and forward passes (`predict_on_batch`) after warm-up steps, the policies interleaved step by step
so machine noise hits them alike. It prints seconds per step, the achieved convolution GFLOP/s and
the speed-up over the first policy. Convolution FLOPs are counted from the layer shapes:
`2 * k**3 * c_in * c_out` per output voxel (per input voxel for transposed convolutions); a
training step counts as 3x the forward pass. Then it trains each policy's network from the same
weights for a few steps on one fixed synthetic batch and prints both loss curves and their largest
relative difference.

    python bench/model.py                      # 128^3 and 64^3, batch 1 and 2, 3 timed steps
    python bench/model.py --quick              # 64^3, batch 1, 2 timed steps: a couple of minutes
    python bench/model.py --sizes=128 --batches=2 --steps=5 --jit_compile
"""

from __future__ import annotations

import datetime
import gc
import os
import platform
import sys
import time
from pathlib import Path

import keras
import numpy as np
from absl import app, flags

from common import conv_flops
from unet3d.model import isensee2017_model

FLAGS = flags.FLAGS
flags.DEFINE_list("sizes", ["128", "64"], "Cubic input sizes.")
flags.DEFINE_list("batches", ["1", "2"], "Batch sizes.")
flags.DEFINE_integer("steps", 3, "Timed steps per policy and measurement.")
flags.DEFINE_integer("warmup", 1, "Untimed steps first (tracing, memory pools).")
flags.DEFINE_list("policies", ["float32", "mixed_bfloat16"], "Dtype policies; the first is the reference.")
flags.DEFINE_bool("jit_compile", False, "Compile the training and prediction steps with XLA.")
flags.DEFINE_integer("curve_size", 128, "Input size of the loss-curve run.")
flags.DEFINE_integer("curve_steps", 10, "Training steps of the loss-curve run.")
flags.DEFINE_integer("seed", 0, "Seed of the weights and of the synthetic data.")
flags.DEFINE_bool("quick", False, "64^3, batch 1, 2 timed steps, 5-step loss curves at 32^3.")


def build(size: int, policy: str) -> keras.Model:
    """`isensee2017_model` at `size`^3 with 4 channels and 3 labels, weights seeded by --seed."""
    keras.config.set_dtype_policy(policy)
    keras.utils.set_random_seed(FLAGS.seed)
    try:
        return isensee2017_model(input_shape=(size, size, size, 4), n_labels=3, jit_compile=FLAGS.jit_compile)
    finally:
        keras.config.set_dtype_policy("float32")


def synthetic_batch(size: int, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """Random images and labels the network can learn: label c is `image channel c > 0.5`."""
    x = np.random.default_rng(FLAGS.seed).normal(size=(batch, size, size, size, 4)).astype("float32")
    return x, (x[..., :3] > 0.5).astype("float32")


def interleaved_seconds(calls: dict, steps: int, warmup: int) -> dict[str, float]:
    """Mean seconds per call of each function, called in turn `warmup` times untimed, then `steps`."""
    for _ in range(warmup):
        for call in calls.values():
            call()
    seconds = {name: 0.0 for name in calls}
    for _ in range(steps):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            seconds[name] += time.perf_counter() - start
    return {name: total / steps for name, total in seconds.items()}


def measure(size: int, batch: int) -> dict[str, dict]:
    """Seconds per training step and per forward pass, and GFLOP/s, for each policy."""
    models = {policy: build(size, policy) for policy in FLAGS.policies}
    x, y = synthetic_batch(size, batch)
    forward_flops = conv_flops(models[FLAGS.policies[0]]) * batch
    train = interleaved_seconds(
        {p: (lambda m=m: m.train_on_batch(x, y)) for p, m in models.items()}, FLAGS.steps, FLAGS.warmup
    )
    forward = interleaved_seconds(
        {p: (lambda m=m: m.predict_on_batch(x)) for p, m in models.items()}, FLAGS.steps, FLAGS.warmup
    )
    del models
    release_memory()
    return {
        policy: {
            "forward_tflop": forward_flops / 1e12,
            "train_s": train[policy],
            "train_gflops": 3 * forward_flops / train[policy] / 1e9,
            "forward_s": forward[policy],
            "forward_gflops": forward_flops / forward[policy] / 1e9,
        }
        for policy in FLAGS.policies
    }


def loss_curve(policy: str) -> list[float]:
    """Training losses of `FLAGS.curve_steps` steps on one fixed batch, from the seeded weights."""
    model = build(FLAGS.curve_size, policy)
    x, y = synthetic_batch(FLAGS.curve_size, 1)
    losses = [float(model.train_on_batch(x, y)) for _ in range(FLAGS.curve_steps)]
    del model
    release_memory()
    return losses


def release_memory() -> None:
    """Drop Keras' global state and collect the models just deleted."""
    keras.backend.clear_session()
    gc.collect()


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def main(argv) -> None:
    del argv
    if FLAGS.quick:
        FLAGS.sizes, FLAGS.batches, FLAGS.steps, FLAGS.curve_size, FLAGS.curve_steps = ["64"], ["1"], 2, 32, 5
    reference = FLAGS.policies[0]
    print(f"date: {datetime.date.today()}; command: python bench/model.py {' '.join(sys.argv[1:])}")
    print(
        f"machine: {cpu_model()}, {os.cpu_count()} cores; keras {keras.__version__} "
        f"({keras.backend.backend()} backend); TF_ENABLE_ONEDNN_OPTS="
        f"{os.environ.get('TF_ENABLE_ONEDNN_OPTS', 'unset')}; jit_compile={FLAGS.jit_compile}\n"
    )
    print(
        "| input | batch | policy | forward TFLOP | train s/step | train GFLOP/s | train speed-up "
        "| forward s | forward GFLOP/s | forward speed-up |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for size in map(int, FLAGS.sizes):
        for batch in map(int, FLAGS.batches):
            results = measure(size, batch)
            for policy, r in results.items():
                print(
                    f"| {size}^3 | {batch} | {policy} | {r['forward_tflop']:.3f} | {r['train_s']:.2f} "
                    f"| {r['train_gflops']:.0f} | {results[reference]['train_s'] / r['train_s']:.2f}x "
                    f"| {r['forward_s']:.2f} | {r['forward_gflops']:.0f} "
                    f"| {results[reference]['forward_s'] / r['forward_s']:.2f}x |",
                    flush=True,
                )

    size, steps = FLAGS.curve_size, FLAGS.curve_steps
    print(f"\nloss curves: {steps} training steps at {size}^3, batch 1, seed {FLAGS.seed}")
    curves = {policy: np.array(loss_curve(policy)) for policy in FLAGS.policies}
    for policy, losses in curves.items():
        print(f"{policy:>15}: " + " ".join(f"{loss:.4f}" for loss in losses))
    for policy in FLAGS.policies[1:]:
        difference = np.max(np.abs(curves[policy] - curves[reference]) / np.abs(curves[reference]))
        print(f"largest relative difference, {policy} against {reference}: {difference:.4f}")


if __name__ == "__main__":
    app.run(main)
