"""Seconds per BraTS-size case (4 x 240 x 240 x 155) for each runtime, precision and way of
predicting it, timed side by side.

One synthetic case of BraTS size is prepared as `brats/predict.py` does (reading and N4 in
memory, then brain crop and per-case normalisation; both timed separately) and predicted with the
Isensee network (16 base filters; random weights unless `--model_file`: speed does not depend on
them) by every `--runtimes` x `--precisions` pair (`unet3d.runtimes`; pairs a runtime or this CPU
cannot run are listed and skipped) in every mode:
- sliding windows of 128^3, step 0.5, Gaussian weights (the paper / nnU-Net inference),
- the same with mirroring test-time augmentation (8 flips),
- one whole-volume pass (the volume padded to multiples of 16).
After one warm-up pass of each, the `--repeats` rounds run every pair and mode in turn
(interleaved, so that the machine's load reaches all of them alike); the table gives the median
and best seconds, the ratio to Keras float32 in the same mode, and the achieved convolution
GFLOP/s.

With `--model_file` (a trained model) and `--cases_dir` (labelled cases it did not train on, e.g.
the demo's held-out cases), bfloat16's effect on the segmentation is measured too: each pair's
label maps of those cases (brats/predict.py's pipeline) are scored by Dice per region against
Keras float32's and against the truth.

    python bench/predict.py                                  # every runtime, float32 + bfloat16
    python bench/predict.py --modes sliding+mirror --repeats 1
    python bench/predict.py --model_file demo/run/model.keras --cases_dir demo/test --modes=
    KERAS_BACKEND=jax python bench/predict.py --runtimes keras --repeats 5   # e.g. a GPU host
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import tempfile
import time
from pathlib import Path

import keras
import numpy as np
from absl import app, flags

from common import conv_flops, synthetic_cases, work_folder
from unet3d.brats import find_cases
from unet3d.case_metrics import dice, region_masks
from unet3d.config import INFERENCE_PRECISIONS, RUNTIMES, PredictConfig
from unet3d.errors import InputError
from unet3d.inference import predict_volume, window_corners
from unet3d.io import read_nifti
from unet3d.model import isensee2017_model, load_old_model, read_card
from unet3d.model_space import to_model_space
from unet3d.prediction import predict_cases
from unet3d.preprocessing import PreprocessConfig, correct_case
from unet3d.runtimes import predictor

FLAGS = flags.FLAGS
flags.DEFINE_integer("patch", 128, "Cubic window edge.")
flags.DEFINE_float("step", 0.5, "Window step as a fraction of the window.")
flags.DEFINE_integer("batch_size", 1, "Windows per model call.")
flags.DEFINE_list("modes", ["sliding", "sliding+mirror", "whole"], "Prediction modes to time.")
flags.DEFINE_list("runtimes", list(RUNTIMES), "Runtimes to time.")
flags.DEFINE_list("precisions", ["float32", "bfloat16"], "Inference precisions to time ("
                  f"{', '.join(INFERENCE_PRECISIONS)}).")
flags.DEFINE_integer("repeats", 3, "Timed rounds (after one warm-up pass of each pair and mode).")
flags.DEFINE_string("model_file", None, "A trained .keras model (default: random weights).")
flags.DEFINE_string("cases_dir", None, "With --model_file: labelled held-out cases on which "
                    "each pair's label maps are scored against Keras float32's and the truth.")
flags.DEFINE_string("work_dir", None, "Folder for the case (default: a temporary folder).")
flags.DEFINE_string("case_file", None, "Time this case, already in the model's space, instead of "
                    "preparing a synthetic one (hosts without SimpleITK): a .npy (x, y, z, "
                    "channels) or a store (.h5: its first case).")


def mode_config(mode: str) -> PredictConfig:
    if mode == "whole":
        return PredictConfig(whole_volume=True)
    patch = (FLAGS.patch,) * 3
    tta = "mirror" if mode.endswith("+mirror") else "none"
    return PredictConfig(patch_shape=patch, step=FLAGS.step, batch_size=FLAGS.batch_size, tta=tta)


def evaluated_flops(image: np.ndarray, config: PredictConfig, n_labels: int
                    ) -> tuple[float, int]:
    """Convolution FLOPs of one prediction of `image` by an Isensee network of `n_labels`
    outputs, and the number of model calls."""
    if config.whole_volume:
        padded = [int(np.ceil(n / 16)) * 16 for n in image.shape[:3]]
        model = isensee2017_model((*padded, 4), n_labels=n_labels)
        return conv_flops(model), 1
    shape = [max(n, p) for n, p in zip(image.shape[:3], config.patch_shape)]
    windows = len(window_corners(shape, config.patch_shape, config.step))
    passes = windows * (8 if config.tta == "mirror" else 1)
    model = isensee2017_model((*config.patch_shape, 4), n_labels=n_labels)
    return conv_flops(model) * passes, int(np.ceil(windows / config.batch_size)) * (passes // windows)


def pairs() -> dict[tuple[str, str], object]:
    """{(runtime, precision): predictor} for the pairs this machine runs; the model is the
    trained one or the Isensee network with seeded random weights."""
    if FLAGS.model_file:
        model = load_old_model(FLAGS.model_file, compile=False)
    else:
        keras.utils.set_random_seed(0)
        model = isensee2017_model((None, None, None, 4), n_labels=3)
    found = {}
    for runtime in FLAGS.runtimes:
        for precision in FLAGS.precisions:
            try:  # a pair this runtime or CPU cannot run raises InputError
                found[runtime, precision] = predictor(model, runtime, precision)
            except InputError as error:
                print(f"skipped {runtime} {precision}: {error}")
    return found


def prepared_case(work: Path) -> np.ndarray:
    """The brain crop of a BraTS-size synthetic case, prepared as brats/predict.py does."""
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
    return image


def timing_table(image: np.ndarray, predictors: dict) -> None:
    """Time every pair and mode, interleaved over the rounds; print the table."""
    configs = {mode: mode_config(mode) for mode in FLAGS.modes}
    seconds = {(pair, mode): [] for pair in predictors for mode in configs}
    for (pair, mode) in seconds:  # warm-up: tracing, graph compilation
        probabilities = predict_volume(predictors[pair], image, configs[mode], divisor=16)
        assert probabilities.shape[:3] == image.shape[:3]
        n_labels = probabilities.shape[-1]
    for round_ in range(FLAGS.repeats):
        for (pair, mode), times in seconds.items():
            start = time.perf_counter()
            predict_volume(predictors[pair], image, configs[mode], divisor=16)
            times.append(time.perf_counter() - start)
            print(f"round {round_ + 1}: {' '.join(pair)} {mode}: {times[-1]:.1f} s", flush=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    print(f"\nwindow {FLAGS.patch}^3, step {FLAGS.step}, batch {FLAGS.batch_size}; median and "
          f"best of {FLAGS.repeats} interleaved rounds after a warm-up; peak RSS {peak:.1f} GB\n")
    print("| runtime | precision | mode | model calls | s/case (median) | s/case (best) | "
          "conv GFLOP/s | vs keras float32 |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for (pair, mode), times in seconds.items():
        flops, calls = evaluated_flops(image, configs[mode], n_labels)
        median = statistics.median(times)
        base = seconds.get((("keras", "float32"), mode))
        ratio = f"{statistics.median(base) / median:.2f}x" if base else "-"
        print(f"| {pair[0]} | {pair[1]} | {mode} | {calls} | {median:.1f} | {min(times):.1f} | "
              f"{flops / median / 1e9:.0f} | {ratio} |")


def dice_table(predictors: dict) -> None:
    """Dice per region of each pair's label maps of `--cases_dir` against Keras float32's and
    against the truth."""
    card = read_card(FLAGS.model_file)
    convention = card.entry
    cases = find_cases(FLAGS.cases_dir)
    with tempfile.TemporaryDirectory() as folder:
        labels = {}
        for runtime, precision in predictors:
            out = Path(folder) / f"{runtime}_{precision}"
            config = PredictConfig(runtime=runtime, precision=precision)
            report = predict_cases(FLAGS.model_file, FLAGS.cases_dir, out, config,
                                   progress=lambda line: None)
            assert not report.failed, report.failed
            labels[runtime, precision] = {c.name: read_nifti(out / f"{c.name}.nii.gz")[0]
                                          for c in cases}
    truth = {c.name: read_nifti(c.label)[0] for c in cases}
    reference = labels.get(("keras", "float32"))
    regions = list(region_masks(next(iter(truth.values())), convention))
    print(f"\nDice per region, mean (min) over {len(cases)} cases of {FLAGS.cases_dir}, "
          f"model {FLAGS.model_file}\n")
    print("| runtime | precision | " + " | ".join(
        f"{r} vs keras float32 | {r} vs truth" for r in regions) + " |")
    print("|---|---|" + "---:|---:|" * len(regions))
    for pair, maps in labels.items():
        cells = []
        for region in regions:
            for other in (reference, truth):
                if other is None:
                    cells.append("-")
                    continue
                scores = [dice(region_masks(other[c], convention)[region],
                               region_masks(maps[c], convention)[region]) for c in maps]
                cells.append(f"{np.nanmean(scores):.4f} ({np.nanmin(scores):.4f})")
        print(f"| {pair[0]} | {pair[1]} | " + " | ".join(cells) + " |")


def read_case(path: str) -> np.ndarray:
    """A case already in the model's space: a .npy, or a store's first case."""
    if path.endswith(".npy"):
        image = np.load(path).astype(np.float32, copy=False)
    else:
        from unet3d.data import DataStore
        with DataStore(path) as store:
            image = store.read_image(0)
    print(f"case from {path}: brain crop {image.shape[:3]}, already in the model's space; "
          f"backend {keras.backend.backend()}, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores\n", flush=True)
    return image


def main(argv):
    del argv
    predictors = pairs()
    if FLAGS.case_file:
        timing_table(read_case(FLAGS.case_file), predictors)
    elif FLAGS.modes:  # --modes= : the Dice table alone
        with work_folder(FLAGS.work_dir, "bench_predict_") as work:
            image = prepared_case(work)
        timing_table(image, predictors)
    if FLAGS.cases_dir:
        if not FLAGS.model_file:
            raise app.UsageError("--cases_dir needs --model_file (a trained model)")
        dice_table(predictors)


if __name__ == "__main__":
    app.run(main)
