"""Shared set-up of the benchmark scripts: a work folder and synthetic BraTS cases in it."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
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


def _kill_group(process: subprocess.Popen) -> None:
    """Kill a child started in its own process group, and the processes it started."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


def run_child(script: str, args: dict, env: dict | None = None, timeout: float | None = None,
              keep_going: bool = False) -> dict | None:
    """Run `script --child <args as JSON>` in a fresh process (one measurement) and return the
    dict it prints on its `RESULT ` line; stops the benchmark with the child's errors if it fails
    (with `keep_going`: prints them and returns None). `env`: the child's environment (default
    this one's); `timeout`: seconds after which the child and the processes it started (its
    process group) are killed, a failure."""
    process = subprocess.Popen([sys.executable, script, "--child", json.dumps(args)], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               process_group=0 if timeout is not None else None)
    if timeout is not None:  # a SIGTERM of this process (e.g. timeout(1)) ends the child too
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(process)
        stdout, stderr = process.communicate()
        stderr += f"\n(killed after {timeout:g} s)"
    except BaseException:
        if timeout is not None:
            _kill_group(process)
        raise
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    if process.returncode or not lines:
        print(stderr[-3000:], flush=True)
        if keep_going:
            print(f"measurement {args} failed", flush=True)
            return None
        raise SystemExit(f"measurement {args} failed")
    return json.loads(lines[-1][len("RESULT "):])
