"""The whole pipeline on built-in synthetic data, in one call: what `brats/demo.py` runs.

    synthetic BraTS cases -> preprocess (N4) -> data store -> train the Isensee network (paper
    recipe, small) -> predict the held-out cases on their original grid -> evaluate (Dice, HD95,
    plots)

Everything lives under `work_dir`:

    work_dir/train/<case>/...        synthetic training cases (BraTS 2020 naming)
    work_dir/test/<case>/...         held-out cases (their labels are only used to score)
    work_dir/preprocessed/           N4-corrected training cases (brats/preprocess.py's layout)
    work_dir/brats_data.h5           the data store
    work_dir/run/                    the training run (unet3d/runs.py): model.keras (its model
                                     card inside), logs, split, checkpoint
    work_dir/predictions/<case>.nii.gz
    work_dir/evaluation/             scores.csv, summary.csv, boxplot.png, loss_graph.png, overlays/

Data steps are skipped when their output exists and training resumes (more epochs continue it),
so rerunning the same command after an interruption goes on where it stopped; other training
settings (patch, precision, ...) start the training over; the held-out cases are predicted and
scored again with the final model.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Callable

from unet3d import recipes
from unet3d.config import DemoConfig, PredictConfig, preset
from unet3d.data import write_store_from_folder
from unet3d.errors import InputError
from unet3d.evaluation import evaluate_folder, format_summary
from unet3d.atomic import atomic_write
from unet3d.logs import get_logger
from unet3d.prediction import predict_cases
from unet3d.preprocessing import preprocess_brats
from unet3d.runs import recorded_state, run_differences, with_run_files
from unet3d.synthetic import make_synthetic_brats


def _split_cases(config: DemoConfig, work: Path, progress: Callable[[str], None]) -> None:
    """Write the synthetic cases and move the last `n_test` to work/test."""
    train, test, record = work / "train", work / "test", work / "demo_data.json"
    data = {"n_cases": config.n_cases, "n_test": config.n_test, "shape": list(config.shape),
            "seed": config.seed}
    if train.is_dir() and test.is_dir() and record.is_file():
        if json.loads(record.read_text()) != data:
            raise InputError(f"{work} holds the demo data of {record.read_text().strip()}, not "
                             f"{data}: use another --work_dir, or delete {work} to start over")
        progress(f"synthetic cases: found in {train} and {test}")
        return
    if not 1 <= config.n_test < config.n_cases:
        raise InputError(f"--n_test {config.n_test}: hold out at least 1 and fewer than "
                         f"--n_cases {config.n_cases} cases")
    staging = work / "synthetic.partial"
    shutil.rmtree(staging, ignore_errors=True)
    progress(f"writing {config.n_cases} synthetic cases of {config.shape} ...")
    folders = make_synthetic_brats(staging / "train", config.n_cases, config.shape, config.seed)
    (staging / "test").mkdir()
    for folder in folders[-config.n_test:]:
        shutil.move(str(folder), str(staging / "test" / folder.name))
    for name in ("train", "test"):
        shutil.rmtree(work / name, ignore_errors=True)
        (staging / name).rename(work / name)
    staging.rmdir()
    with atomic_write(record, ".json") as tmp:
        tmp.write_text(json.dumps(data) + "\n")


def run_demo(config: DemoConfig = DemoConfig(),
             progress: Callable[[str], None] | None = None) -> list[dict]:
    """Run every step of the demo (see the module docstring); returns the per-case scores of the
    held-out cases (rows of `evaluation/scores.csv`)."""
    progress = progress or get_logger().info
    work = Path(config.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()

    def step(title: str) -> None:
        progress(f"=== {title} ({time.monotonic() - started:.0f} s so far)")

    step("1/5 synthetic data")
    _split_cases(config, work, progress)
    step("2/5 preprocessing (N4 bias correction) and the data store")
    report = preprocess_brats(work / "train", work / "preprocessed", workers=2, progress=progress)
    if report.failed:
        raise InputError(f"preprocessing failed for {sorted(report.failed)}; see the log")
    store = work / "brats_data.h5"
    if not store.exists():
        write_store_from_folder(work / "preprocessed", store, progress=progress)
    step("3/5 training")
    train_config = with_run_files(preset(
        "paper", data_file=str(store), run_dir=str(work / "run"), data_split=1.0,
        patch_shape=config.patch_shape, batch_size=config.batch_size,
        steps_per_epoch=config.steps_per_epoch, n_epochs=config.n_epochs,
        initial_learning_rate=config.initial_learning_rate,
        n_base_filters=config.n_base_filters, workers=config.workers,
        precision=config.precision, seed=config.seed))
    state = recorded_state(train_config)
    changed = run_differences(state, train_config) if state is not None else []
    if changed:
        progress(f"the training settings changed ({'; '.join(changed)}): training starts over")
        train_config = dataclasses.replace(train_config, overwrite=True)
    if recipes.train(train_config).stopped_by_nan:
        raise InputError("training stopped on a non-finite loss or weights (see above): rerun "
                         "the same command to go on from the last good checkpoint, or try "
                         "--precision float32 or a lower --initial_learning_rate")
    step("4/5 prediction of the held-out cases (native space)")
    report = predict_cases(train_config.model_file, work / "test", work / "predictions",
                           PredictConfig(), overwrite=True, progress=progress)
    if report.failed:
        raise InputError(f"prediction failed for {sorted(report.failed)}: "
                         f"{next(iter(report.failed.values()))}")
    step("5/5 evaluation")
    evaluation = evaluate_folder(work / "predictions", work / "test", work / "evaluation",
                           training_log=train_config.training_log)
    progress(format_summary(evaluation))
    step(f"done: scores and plots in {work / 'evaluation'}")
    return evaluation.scores
