"""Speed of `isensee2017_model` on this machine: float32 against mixed precision (bfloat16).

For each input size and batch size it times a training step (`train_on_batch`) and a forward pass
(`predict_on_batch`) after warm-up steps, under each dtype policy, and prints seconds per step,
the achieved convolution GFLOP/s and the speed-up over float32. Convolution FLOPs are counted
from the layer shapes: `2 * k**3 * c_in * c_out` per output voxel (per input voxel for transposed
convolutions); a training step is counted as 3x the forward pass. Then it trains the same
network from the same weights for a few steps on one fixed synthetic batch under each policy and
prints both loss curves and their largest relative difference.

    python bench/model.py                      # 128^3 and 64^3, batch 1 and 2
    python bench/model.py --quick              # 64^3, batch 1: a couple of minutes
    python bench/model.py --sizes 128 --batches 2 --steps 3 --jit-compile
"""

from __future__ import annotations

import argparse
import datetime
import gc
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from unet3d.model import isensee2017_model  # noqa: E402

POLICIES = ("float32", "mixed_bfloat16")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="128,64", help="cubic input sizes, comma-separated (default 128,64)")
    parser.add_argument("--batches", default="1,2", help="batch sizes, comma-separated (default 1,2)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per measurement (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (default 1)")
    parser.add_argument("--policies", default=",".join(POLICIES), help="dtype policies (default: %(default)s)")
    parser.add_argument("--jit-compile", action="store_true", help="compile the steps with XLA")
    parser.add_argument("--curve-size", type=int, default=64, help="input size of the loss-curve run (default 64)")
    parser.add_argument("--curve-steps", type=int, default=10, help="training steps of the loss-curve run (default 10)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="64^3, batch 1, 2 timed steps, 5-step curves at 32^3")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.batches, args.steps, args.curve_size, args.curve_steps = "64", "1", 2, 32, 5
    args.sizes = [int(s) for s in args.sizes.split(",")]
    args.batches = [int(b) for b in args.batches.split(",")]
    args.policies = args.policies.split(",")
    return args


def conv_flops(model: keras.Model) -> float:
    """Forward-pass convolution FLOPs of one sample, from the layer shapes of a fixed-size model."""
    total = 0.0
    for layer in model.layers:
        if isinstance(layer, (keras.layers.Conv3D, keras.layers.Conv3DTranspose)):
            c_in, c_out = layer.input.shape[-1], layer.filters
            voxels = np.prod(layer.output.shape[1:-1] if isinstance(layer, keras.layers.Conv3D) else layer.input.shape[1:-1])
            total += 2.0 * np.prod(layer.kernel_size) * c_in * c_out * voxels
    return total


def build(size: int, policy: str, args: argparse.Namespace) -> keras.Model:
    """The BraTS configuration (4 modalities, 3 labels) at `size`^3, with seeded weights."""
    keras.config.set_dtype_policy(policy)
    keras.utils.set_random_seed(args.seed)
    try:
        return isensee2017_model(input_shape=(size, size, size, 4), n_labels=3, jit_compile=args.jit_compile)
    finally:
        keras.config.set_dtype_policy("float32")


def synthetic_batch(size: int, batch: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random images and labels the network can learn: label c is `image channel c > 0.5`."""
    x = np.random.default_rng(seed).normal(size=(batch, size, size, size, 4)).astype("float32")
    return x, (x[..., :3] > 0.5).astype("float32")


def release(model: keras.Model) -> None:
    del model
    keras.backend.clear_session()
    gc.collect()


def seconds_per_call(function, steps: int, warmup: int) -> float:
    for _ in range(warmup):
        function()
    start = time.perf_counter()
    for _ in range(steps):
        function()
    return (time.perf_counter() - start) / steps


def measure(size: int, batch: int, policy: str, args: argparse.Namespace) -> dict:
    model = build(size, policy, args)
    x, y = synthetic_batch(size, batch, args.seed)
    forward_flops = conv_flops(model) * batch
    train = seconds_per_call(lambda: model.train_on_batch(x, y), args.steps, args.warmup)
    forward = seconds_per_call(lambda: model.predict_on_batch(x), args.steps, args.warmup)
    release(model)
    return {
        "train_s": train,
        "forward_s": forward,
        "train_gflops": 3 * forward_flops / train / 1e9,
        "forward_gflops": forward_flops / forward / 1e9,
        "forward_tflop": forward_flops / 1e12,
    }


def loss_curve(policy: str, args: argparse.Namespace) -> list[float]:
    model = build(args.curve_size, policy, args)
    x, y = synthetic_batch(args.curve_size, 1, args.seed)
    losses = [float(model.train_on_batch(x, y)) for _ in range(args.curve_steps)]
    release(model)
    return losses


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def main(argv=None) -> None:
    args = parse_args(argv)
    print(f"date: {datetime.date.today()}  command: python bench/{Path(__file__).name} {' '.join(sys.argv[1:])}")
    print(
        f"machine: {cpu_model()}, {os.cpu_count()} cores; keras {keras.__version__}, backend {keras.backend.backend()}, "
        f"TF_ENABLE_ONEDNN_OPTS={os.environ.get('TF_ENABLE_ONEDNN_OPTS', 'unset')}, jit_compile={args.jit_compile}"
    )
    print()
    print("| input | batch | policy | forward TFLOP | train s/step | train GFLOP/s | train speed-up "
          "| forward s | forward GFLOP/s | forward speed-up |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for size in args.sizes:
        for batch in args.batches:
            baseline = None
            for policy in args.policies:
                r = measure(size, batch, policy, args)
                baseline = baseline or r
                print(
                    f"| {size}^3 | {batch} | {policy} | {r['forward_tflop']:.3f} | {r['train_s']:.2f} "
                    f"| {r['train_gflops']:.0f} | {baseline['train_s'] / r['train_s']:.2f}x | {r['forward_s']:.2f} "
                    f"| {r['forward_gflops']:.0f} | {baseline['forward_s'] / r['forward_s']:.2f}x |",
                    flush=True,
                )
    print()
    print(f"loss curves: {args.curve_steps} training steps at {args.curve_size}^3, batch 1, seed {args.seed}")
    curves = {policy: loss_curve(policy, args) for policy in args.policies}
    for policy, losses in curves.items():
        print(f"{policy:>15}: " + " ".join(f"{loss:.4f}" for loss in losses))
    reference = np.array(curves[args.policies[0]])
    for policy in args.policies[1:]:
        difference = np.max(np.abs(np.array(curves[policy]) - reference) / np.abs(reference))
        print(f"max relative difference {policy} vs {args.policies[0]}: {difference:.4f}")


if __name__ == "__main__":
    main()
