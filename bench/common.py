"""Shared set-up of the benchmark scripts: a work folder and synthetic BraTS cases in it."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator, Sequence

import keras
import numpy as np

from unet3d.brats import MODALITIES, find_cases
from unet3d.synthetic import make_synthetic_brats


@contextlib.contextmanager
def work_folder(path: str | None, prefix: str) -> Iterator[Path]:
    """`path` (kept afterwards), or a temporary folder removed at the end."""
    work = Path(path or tempfile.mkdtemp(prefix=prefix))
    work.mkdir(parents=True, exist_ok=True)
    try:
        yield work
    finally:
        if path is None:
            shutil.rmtree(work, ignore_errors=True)


def synthetic_cases(work: Path, n_cases: int, shape: Sequence[int], seed: int
                    ) -> tuple[list[list[Path]], list[str]]:
    """Write synthetic cases under work/cases; returns (files per case, case names)."""
    print(f"writing {n_cases} synthetic cases of {tuple(shape)} under {work}")
    make_synthetic_brats(work / "cases", n_cases=n_cases, shape=shape, seed=seed, overwrite=True)
    cases = find_cases(work / "cases")
    return [case.files(MODALITIES) for case in cases], [case.name for case in cases]


def conv_flops(model: keras.Model) -> float:
    """Forward-pass convolution FLOPs of one sample, from the layer shapes of a fixed-size model."""
    total = 0.0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv3D):
            voxels = np.prod(layer.output.shape[1:-1])
        elif isinstance(layer, keras.layers.Conv3DTranspose):
            voxels = np.prod(layer.input.shape[1:-1])
        else:
            continue
        total += 2.0 * np.prod(layer.kernel_size) * layer.input.shape[-1] * layer.filters * voxels
    return total


def run_child(script: str, args: dict) -> dict:
    """Run `script --child <args as JSON>` in a fresh process (one measurement) and return the
    dict it prints on its `RESULT ` line; stops the benchmark with the child's errors if it fails."""
    run = subprocess.run([sys.executable, script, "--child", json.dumps(args)],
                         capture_output=True, text=True)
    lines = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
    if run.returncode or not lines:
        print(run.stderr[-3000:])
        raise SystemExit(f"measurement {args} failed")
    return json.loads(lines[-1][len("RESULT "):])
