"""Devices, distribution and precision for training.

- `make_strategy`: one device, `MirroredStrategy` over the visible GPUs (or the CPU split into
  logical devices), or `MultiWorkerMirroredStrategy` across hosts when `TF_CONFIG` is set; on JAX,
  `keras.distribution.DataParallel` over the local devices (`DataParallelStrategy`); None for one
  device on the other backends. `is_chief`: whether this process writes (checkpoints, logs,
  splits).
- `set_precision`: `mixed_float16` on GPUs, `mixed_bfloat16` on CPUs with bfloat16 units, float32
  otherwise; model outputs and losses stay float32.
- `check_memory`: refuses a CPU training patch and batch that cannot fit the machine's memory
  (the estimate of docs/memory.md's measured table), naming the patch that fits.
- The workaround for keras-team/keras#20585 (multi-worker `fit`), which patches private Keras
  functions: applied only on the Keras versions it was tested on (`TESTED_KERAS`, setup.py's
  bounds) whose private functions have the signatures it was written for (`PATCHED_FUNCTIONS`);
  anything else is refused with what to do.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
from pathlib import Path

import keras
import numpy as np
from packaging.version import Version

from unet3d.config import PRECISIONS, STRATEGIES
from unet3d.errors import InputError


def _tensorflow():
    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf
    return tf


class DataParallelStrategy:
    """The JAX path's counterpart of a `tf.distribute` strategy: `keras.distribution.DataParallel`
    over `devices` (each batch split along its first axis, the variables replicated, the
    gradients averaged), with the two members training uses: `scope()` (build and fit inside it)
    and `num_replicas_in_sync`."""

    def __init__(self, devices: list):
        self.distribution = keras.distribution.DataParallel(devices=list(devices))
        self.num_replicas_in_sync = len(devices)

    def scope(self):
        return self.distribution.scope()


def _jax_strategy(name: str, cpu_replicas: int) -> DataParallelStrategy | None:
    """`make_strategy` on JAX: None (one device) or data parallel over the local devices."""
    import jax

    if name == "multi_worker":
        raise InputError("--strategy multi_worker (several hosts) runs on the TensorFlow backend "
                         "only for now; on JAX use one host's devices (--strategy mirrored)")
    if cpu_replicas > 1:
        try:
            jax.config.update("jax_num_cpu_devices", cpu_replicas)
        except RuntimeError:
            raise InputError("cpu_replicas must be set before JAX starts (call make_strategy "
                             "first)") from None
    devices = jax.local_devices()
    if name == "auto":
        name = "mirrored" if len(devices) > 1 else "one_device"
    if name == "one_device":
        return None
    if name == "mirrored":
        return DataParallelStrategy(devices)
    raise InputError(f"unknown strategy {name!r}: choose one of {', '.join(STRATEGIES)}")


def make_strategy(name: str = "auto", cpu_replicas: int = 1):
    """How training is spread over devices. TensorFlow: a `tf.distribute` strategy: "auto"
    (multi_worker if TF_CONFIG is set, mirrored with several GPUs, else one_device),
    "one_device", "mirrored" (all GPUs, or the CPU split into `cpu_replicas` logical devices when
    there is none) or "multi_worker". JAX: "mirrored" (and "auto" with several local devices) is
    a `DataParallelStrategy` over the local devices (GPUs, or `cpu_replicas` CPU devices), else
    None (one device); several hosts are refused. Other backends: None. Call it before the
    backend runs anything (the CPU split must come first)."""
    if keras.backend.backend() == "jax":
        return _jax_strategy(name, cpu_replicas)
    tf = _tensorflow()
    if tf is None:
        if name not in ("auto", "one_device"):
            raise InputError(f"--strategy {name} needs the TensorFlow or JAX backend "
                             "(KERAS_BACKEND)")
        return None
    n_gpus = len(tf.config.list_physical_devices("GPU"))  # listing does not start TensorFlow
    if name == "auto":
        name = ("multi_worker" if os.environ.get("TF_CONFIG") else
                "mirrored" if n_gpus > 1 or cpu_replicas > 1 else "one_device")
    if name == "multi_worker":  # must come before anything starts TensorFlow's runtime
        if not os.environ.get("TF_CONFIG"):
            raise InputError("--strategy multi_worker needs TF_CONFIG describing the cluster "
                             "(see docs/multi_gpu.md)")
        check_keras_workaround()
        return tf.distribute.MultiWorkerMirroredStrategy()
    if cpu_replicas > 1:
        cpus = tf.config.list_physical_devices("CPU")
        try:
            tf.config.set_logical_device_configuration(
                cpus[0], [tf.config.LogicalDeviceConfiguration()] * cpu_replicas)
        except RuntimeError:
            raise InputError("cpu_replicas must be set before TensorFlow starts (call "
                             "make_strategy first)") from None
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy("/gpu:0" if n_gpus else "/cpu:0")
    if name == "mirrored":
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([d.name for d in devices])
    raise InputError(f"unknown strategy {name!r}: choose one of {', '.join(STRATEGIES)}")


def is_chief() -> bool:
    """Whether this process writes checkpoints, logs and splits: always, unless TF_CONFIG names
    another task the chief (the "chief" task, else worker 0)."""
    config = os.environ.get("TF_CONFIG")
    if not config:
        return True
    try:
        config = json.loads(config)
        task, cluster = config.get("task", {}), config.get("cluster", {})
    except (ValueError, AttributeError):
        raise InputError("TF_CONFIG is not valid JSON with 'cluster' and 'task' "
                         "(see docs/multi_gpu.md)") from None
    if task.get("type") == "chief":
        return True
    return "chief" not in cluster and task.get("type") == "worker" and int(task.get("index", 0)) == 0


def cpu_has_bfloat16() -> bool:
    """Whether this CPU has bfloat16 matrix units (AMX or AVX-512 BF16)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def gpu_has_bfloat16() -> bool:
    """Whether the backend's first GPU computes bfloat16 natively (compute capability >= 8.0:
    A100, H100 and later; a T4 or V100 would emulate it slowly). False without a GPU."""
    tf = _tensorflow()
    if tf is not None:
        gpus = tf.config.list_physical_devices("GPU")
        details = tf.config.experimental.get_device_details(gpus[0]) if gpus else {}
        return tuple(details.get("compute_capability", (0, 0))) >= (8, 0)
    gpus = [d for d in _jax_devices() if d.platform == "gpu"]
    return bool(gpus) and float(getattr(gpus[0], "compute_capability", 0)) >= 8.0


def has_gpu() -> bool:
    """Whether the backend sees a GPU."""
    tf = _tensorflow()
    return (bool(tf.config.list_physical_devices("GPU")) if tf is not None
            else any(d.platform == "gpu" for d in _jax_devices()))


#: Memory of a training step of the Isensee network on a CPU (docs/memory.md, measured with
#: bench/memory.py, float32): a fixed part and a part per patch voxel x batch x base filter (GB);
#: the mixed precisions need about 0.8 of it.
STEP_FIXED_GB = 0.4
STEP_GB_PER_VOXEL_FILTER = 2.05e-6 / 16
MIXED_PRECISION_FACTOR = 0.8


def step_memory_gb(patch_shape: tuple[int, int, int], batch_size: int, n_base_filters: int,
                   precision: str = "float32") -> float:
    """Estimated memory (GB) a CPU training step adds to the process (the fit of the measured
    table: within 10 % of each of its rows)."""
    voxels = float(np.prod(patch_shape)) * batch_size * n_base_filters
    factor = MIXED_PRECISION_FACTOR if precision.startswith("mixed") else 1.0
    return factor * (STEP_FIXED_GB + STEP_GB_PER_VOXEL_FILTER * voxels)


def available_memory_gb() -> float | None:
    """Memory the machine can still give (GB, Linux's MemAvailable); None when unknown."""
    try:
        with open("/proc/meminfo") as stream:
            for line in stream:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024 ** 2
    except OSError:
        return None
    return None


def check_memory(patch_shape: tuple[int, int, int] | None, batch_size: int,
                 n_base_filters: int, precision: str = "float32",
                 available_gb: float | None = None, divisor: int = 16) -> None:
    """InputError when the CPU training step of this patch and (this machine's) batch cannot
    fit the memory the machine still has (`step_memory_gb` against `available_gb`, default
    `available_memory_gb`: the framework is loaded by then), naming the largest cubic patch (a
    multiple of `divisor`) that fits; a message instead of the kernel killing the process.
    Whole images (`patch_shape` None) are not estimated."""
    available = available_memory_gb() if available_gb is None else available_gb
    if patch_shape is None or available is None:
        return
    need = step_memory_gb(patch_shape, batch_size, n_base_filters, precision)
    if need <= available:
        return
    fits = [edge for edge in range(divisor, max(patch_shape) + 1, divisor)
            if step_memory_gb((edge,) * 3, batch_size, n_base_filters, precision) <= available]
    suggestion = (f"--patch_shape {fits[-1]},{fits[-1]},{fits[-1]} fits with this batch"
                  if fits else "not even the smallest patch fits with this batch: lower "
                  "--batch_size or --n_base_filters")
    raise InputError(
        f"--patch_shape {','.join(map(str, patch_shape))} with a batch of {batch_size} on this "
        f"machine, --n_base_filters {n_base_filters} and {precision} needs about {need:.1f} GB "
        f"for a training step on this CPU (docs/memory.md), but {available:.1f} GB are "
        f"available: {suggestion} (or use a smaller batch, or a machine with more memory)")


def set_precision(precision: str = "auto") -> str:
    """Set Keras' global dtype policy; returns the policy name. "auto": mixed_float16 with a
    GPU, mixed_bfloat16 on a CPU with bfloat16 units, float32 otherwise."""
    if precision == "auto":
        precision = ("mixed_float16" if has_gpu() else
                     "mixed_bfloat16" if cpu_has_bfloat16() else "float32")
    if precision not in PRECISIONS or precision == "auto":
        raise InputError(f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    keras.mixed_precision.set_global_policy(precision)
    return precision


def _jax_devices():
    import jax
    return jax.devices()


# --------------------------------------------------------------------------- keras#20585

#: The Keras versions the keras#20585 workaround below was tested on (setup.py bounds Keras to
#: them): from the first up to, not including, the second.
TESTED_KERAS = ("3.12", "3.16")
#: The private Keras functions the workaround replaces or calls: (module, name) -> the signature
#: it was written for.
PATCHED_FUNCTIONS = {
    ("keras.src.backend.tensorflow.trainer", "reduce_per_replica"):
        "(values, strategy, reduction)",
    ("keras.src.backend.tensorflow.trainer", "_collective_all_reduce_multi_worker"):
        "(strategy)",
    ("keras.src.backend.tensorflow.trainer", "TensorFlowTrainer._maybe_symbolic_build"):
        "(self, iterator=None, data_batch=None)",
    ("keras.src.trainers.trainer", "Trainer._symbolic_build"):
        "(self, iterator=None, data_batch=None)",
}
UPSTREAM_ISSUE = "https://github.com/keras-team/keras/issues/20585"


def private_signature(module: str, name: str) -> str | None:
    """The signature of `module`'s function or method `name` in the installed Keras, or None."""
    try:
        target = importlib.import_module(module)
        for attribute in name.split("."):
            target = getattr(target, attribute)
        return str(inspect.signature(target))
    except (ImportError, AttributeError, TypeError, ValueError):
        return None


def check_keras_workaround() -> None:
    """Raise `InputError` unless the installed Keras is one the keras#20585 workaround was tested
    on and the private functions it patches are as it was written for."""
    first, stop = (Version(v) for v in TESTED_KERAS)
    installed = Version(keras.__version__)
    changed = [f"{module}.{name}{private_signature(module, name) or ' (missing)'}"
               for (module, name), expected in PATCHED_FUNCTIONS.items()
               if private_signature(module, name) != expected]
    if first <= installed < stop and not changed:
        return
    detail = (f"Keras {installed} is not a version it was tested on (>= {first}, < {stop})"
              if not first <= installed < stop else
              f"the private Keras functions it patches changed: {'; '.join(changed)}")
    raise InputError(f"multi-worker training needs a workaround for {UPSTREAM_ISSUE} (Keras 3 "
                     f"fit under MultiWorkerMirroredStrategy), and {detail}. Install a tested "
                     f"Keras (pip install 'keras>={first},<{stop}'), or check whether the "
                     "upstream issue is fixed and update unet3d/distribution.py")


def apply_keras_workaround(model: keras.Model, batch) -> None:
    """Work around keras-team/keras#20585 (Keras 3 fit under MultiWorkerMirroredStrategy), once
    `check_keras_workaround` passes:
    - before training Keras averages a distributed batch in eager mode to build the metrics and
      optimizer, which the collective strategy cannot do: build them from one local batch;
    - each step's logged metrics (scalars) are averaged over workers along axis 0, which scalars
      do not have: average them as scalars."""
    check_keras_workaround()
    from keras.src import tree
    from keras.src.backend.tensorflow import trainer as tf_trainer

    def build(iterator=None, data_batch=None):
        with model.distribute_strategy.scope():
            model._symbolic_build(data_batch=batch)  # noqa: SLF001 - see above

    model._maybe_symbolic_build = build  # noqa: SLF001
    original = tf_trainer.reduce_per_replica
    if getattr(original, "unet3d_workaround", False):
        return

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and tf_trainer._collective_all_reduce_multi_worker(
                strategy):  # noqa: SLF001
            return tree.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None), values)
        return original(values, strategy, reduction)

    reduce_per_replica.unet3d_workaround = True
    tf_trainer.reduce_per_replica = reduce_per_replica


def prepare_model(model: keras.Model, strategy, batch) -> None:
    """Make `model` ready to `fit` under `strategy` (the multi-worker workaround), given one
    training batch."""
    tf = _tensorflow()
    if tf is not None and isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        apply_keras_workaround(model, batch)
