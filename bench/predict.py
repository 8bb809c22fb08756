"""Seconds per BraTS-size case (4 x 240 x 240 x 155) for each way of predicting it.

One synthetic case of BraTS size is prepared as `brats/predict.py` does (reading and N4 in
memory, then brain crop and per-case normalisation; both timed separately) and predicted with the trained architecture (the Isensee
network, 16 base filters, random weights: speed does not depend on them) by:
- sliding windows of 128^3, step 0.5, Gaussian weights (the paper / nnU-Net inference),
- the same with mirroring test-time augmentation (8 flips),
- one whole-volume pass (the volume padded to multiples of 16).
Each mode runs `--repeats` times after a warm-up pass (graph tracing); the table gives the best
and mean seconds, the model calls, and the achieved convolution GFLOP/s against the convolution
FLOPs of the windows (or padded volume) evaluated. Works on either Keras backend:

    python bench/predict.py                                    # TensorFlow, float32, CPU
    python bench/predict.py --precisions float32,mixed_bfloat16
    KERAS_BACKEND=jax python bench/predict.py --repeats 5      # e.g. on a GPU host
"""

from __future__ import annotations

import os
import platform
import resource
import time

import keras
import numpy as np
from absl import app, flags

from common import conv_flops, synthetic_cases, work_folder
from unet3d.brats import find_cases
from unet3d.config import PredictConfig
from unet3d.inference import predict_volume, window_corners
from unet3d.model import isensee2017_model
from unet3d.model_space import to_model_space
from unet3d.preprocessing import PreprocessConfig, correct_case

FLAGS = flags.FLAGS
flags.DEFINE_integer("patch", 128, "Cubic window edge.")
flags.DEFINE_float("step", 0.5, "Window step as a fraction of the window.")
flags.DEFINE_integer("batch_size", 1, "Windows per model call.")
flags.DEFINE_list("modes", ["sliding", "sliding+mirror", "whole"], "Prediction modes to time.")
flags.DEFINE_list("precisions", ["float32"], "Dtype policies (e.g. float32,mixed_bfloat16).")
flags.DEFINE_integer("repeats", 2, "Timed passes per mode (after one warm-up pass).")
flags.DEFINE_string("work_dir", None, "Folder for the case (default: a temporary folder).")


def mode_config(mode: str) -> PredictConfig:
    if mode == "whole":
        return PredictConfig(whole_volume=True)
    patch = (FLAGS.patch,) * 3
    tta = "mirror" if mode.endswith("+mirror") else "none"
    return PredictConfig(patch_shape=patch, step=FLAGS.step, batch_size=FLAGS.batch_size, tta=tta)


def evaluated_flops(image: np.ndarray, config: PredictConfig) -> tuple[float, int]:
    """Convolution FLOPs of one prediction of `image` and the number of model calls."""
    if config.whole_volume:
        padded = [int(np.ceil(n / 16)) * 16 for n in image.shape[:3]]
        model = isensee2017_model((*padded, 4), n_labels=3)
        return conv_flops(model), 1
    shape = [max(n, p) for n, p in zip(image.shape[:3], config.patch_shape)]
    windows = len(window_corners(shape, config.patch_shape, config.step))
    passes = windows * (8 if config.tta == "mirror" else 1)
    model = isensee2017_model((*config.patch_shape, 4), n_labels=3)
    return conv_flops(model) * passes, int(np.ceil(windows / config.batch_size)) * (passes // windows)


def main(argv):
    del argv
    with work_folder(FLAGS.work_dir, "bench_predict_") as work:
        synthetic_cases(work, 1, (240, 240, 155), 0)
        case = find_cases(work / "cases")[0]
        start = time.perf_counter()
        images, _, geometry = correct_case(case, PreprocessConfig())
        n4_seconds = time.perf_counter() - start
        start = time.perf_counter()
        image, _, info = to_model_space(list(images.values()), None, geometry, case.name)
        prepare_seconds = time.perf_counter() - start
    print(f"case {case.name}: 4 x 240 x 240 x 155, brain crop {info.shape}; reading + N4 "
          f"{n4_seconds:.1f} s, crop + normalisation {prepare_seconds:.1f} s (as brats/predict.py); "
          f"backend {keras.backend.backend()}, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores\n", flush=True)

    rows = []
    for precision in FLAGS.precisions:
        keras.config.set_dtype_policy(precision)
        keras.utils.set_random_seed(0)
        model = isensee2017_model((None, None, None, 4), n_labels=3)
        keras.config.set_dtype_policy("float32")
        for mode in FLAGS.modes:
            config = mode_config(mode)
            predict_volume(model, image, config)  # warm-up: tracing
            seconds = []
            for _ in range(FLAGS.repeats):
                start = time.perf_counter()
                probabilities = predict_volume(model, image, config)
                seconds.append(time.perf_counter() - start)
            assert probabilities.shape == (*image.shape[:3], 3)
            flops, calls = evaluated_flops(image, config)
            rows.append((precision, mode, calls, min(seconds), float(np.mean(seconds)),
                         flops / min(seconds) / 1e9))
            print(f"{precision} {mode}: {seconds}", flush=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    base = rows[0][3]
    print(f"\nwindow {FLAGS.patch}^3, step {FLAGS.step}, batch {FLAGS.batch_size}; best and mean "
          f"of {FLAGS.repeats} passes after a warm-up; peak RSS {peak:.1f} GB\n")
    print("| precision | mode | model calls | s/case (best) | s/case (mean) | conv GFLOP/s | "
          f"vs {rows[0][0]} {rows[0][1]} |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for precision, mode, calls, best, mean, rate in rows:
        print(f"| {precision} | {mode} | {calls} | {best:.1f} | {mean:.1f} | {rate:.0f} | "
              f"{base / best:.2f}x |")


if __name__ == "__main__":
    app.run(main)
