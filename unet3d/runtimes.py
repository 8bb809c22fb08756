"""Where the network runs at prediction: Keras, ONNX Runtime or OpenVINO, in float32 or bfloat16.

    predict = predictor(model, runtime="openvino", precision="auto")
    probabilities = predict(batch)        # float32 (b, x, y, z, c) -> float32 (b, x, y, z, k)

A predictor is what `unet3d.inference` slides over a volume, so the windows, their weights,
test-time augmentation and the native-space output are the same whatever runs the network:
switching runtime changes the speed only. The ONNX runtimes run the graph of
`unet3d.onnx_graph.onnx_model` (made in memory from the Keras model), each in its own package,
an optional extra: `pip install -e .[onnx]` (ONNX Runtime) or `.[openvino]`.

Precision (`unet3d.config.INFERENCE_PRECISIONS`):
- "float32": float32 arithmetic, also for a model trained in mixed precision (ONNX Runtime and
  OpenVINO agree with Keras to float32 rounding; `docs/export.md`).
- "bfloat16": Keras with the `mixed_bfloat16` policy (bfloat16 convolutions, float32 variables,
  normalisation statistics and output), OpenVINO with bfloat16 inference precision. ONNX
  Runtime has no bfloat16 convolutions on CPUs and refuses it.
- "auto": bfloat16 where the runtime has bfloat16 units to run it on (for Keras a GPU of compute
  capability 8.0 or more, e.g. A100, H100; a CPU with AMX or AVX-512 BF16 for Keras and
  OpenVINO), float32 otherwise.
"""

from __future__ import annotations

import importlib

import keras
import numpy as np

from unet3d.config import INFERENCE_PRECISIONS as PRECISIONS, RUNTIMES
from unet3d.distribution import cpu_has_bfloat16, gpu_has_bfloat16
from unet3d.errors import InputError
from unet3d.inference import Predictor, model_predictor
from unet3d.logs import get_logger

#: The package each runtime imports and the extra of setup.py that installs it.
PACKAGES = {"onnxruntime": ("onnxruntime", "onnx"), "openvino": ("openvino", "openvino")}


def runtime_module(runtime: str):
    """The imported package of an ONNX `runtime`, or `InputError` naming the extra to install."""
    package, extra = PACKAGES[runtime]
    try:
        return importlib.import_module(package)
    except ImportError:
        raise InputError(f"--runtime {runtime} needs the {package} package: "
                         f"pip install -e .[{extra}] (or pip install {package})") from None


def resolve_precision(runtime: str, precision: str = "auto") -> str:
    """"float32" or "bfloat16": what `precision` means for `runtime` on this machine (see the
    module docstring). `InputError` for an unknown runtime or precision, bfloat16 on ONNX
    Runtime, or bfloat16 on OpenVINO without bfloat16 units (it would run float32)."""
    if runtime not in RUNTIMES:
        raise InputError(f"unknown runtime {runtime!r}: choose one of {', '.join(RUNTIMES)}")
    if precision not in PRECISIONS:
        raise InputError(f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        units = cpu_has_bfloat16() or (runtime == "keras" and gpu_has_bfloat16())
        return "bfloat16" if units and runtime != "onnxruntime" else "float32"
    if precision == "bfloat16" and runtime == "onnxruntime":
        raise InputError("ONNX Runtime has no bfloat16 convolutions on CPUs: use --runtime "
                         "openvino or keras for bfloat16, or --precision float32")
    if precision == "bfloat16" and runtime == "openvino" and not cpu_has_bfloat16():
        raise InputError("this CPU has no bfloat16 units (AMX or AVX-512 BF16), so OpenVINO "
                         "would run float32: use --precision float32 (or auto)")
    return precision


def with_dtype_policy(model: keras.Model, policy: str) -> keras.Model:
    """A copy of `model` (same weights) whose layers compute under the dtype `policy` (e.g.
    "mixed_bfloat16"), except those the builders pinned to float32 (the output activations).

    A loaded `.keras` model records its policy in every layer (float32, or the mixed policy it
    was trained under), so the global policy does not reach it; the copy is rebuilt layer by
    layer instead. `model` itself is returned when its layers already compute under `policy`."""
    if {layer.dtype_policy.name for layer in model.layers} == {policy}:
        return model

    def clone(layer: keras.layers.Layer) -> keras.layers.Layer:
        config = layer.get_config()
        pinned = layer.name.startswith("segmentation") and layer.dtype_policy.name == "float32"
        if not pinned and "dtype" in config and not isinstance(layer, keras.layers.InputLayer):
            config["dtype"] = policy
        return type(layer).from_config(config)

    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy


def predictor(model: keras.Model, runtime: str = "keras", precision: str = "float32"
              ) -> Predictor:
    """A predictor running `model` on `runtime` in `precision` (resolved by
    `resolve_precision`): float32 batches (b, *spatial, c) -> float32 (b, *spatial, k)."""
    precision = resolve_precision(runtime, precision)
    get_logger().info(f"the network runs on {runtime}, {precision}")
    if runtime == "keras":
        policy = {"float32": "float32", "bfloat16": "mixed_bfloat16"}[precision]
        return model_predictor(with_dtype_policy(model, policy))
    from unet3d.onnx_graph import INPUT_NAME, OUTPUT_NAME, check_onnx, onnx_model
    module = runtime_module(runtime)
    proto = onnx_model(model)
    check_onnx(model, proto, f"the ONNX graph of {model.name} for --runtime {runtime}")
    graph = proto.SerializeToString()
    if runtime == "onnxruntime":
        options = module.SessionOptions()
        options.graph_optimization_level = module.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = module.InferenceSession(graph, options, providers=["CPUExecutionProvider"])

        def run(batch: np.ndarray) -> np.ndarray:
            return session.run([OUTPUT_NAME], {INPUT_NAME: _float32(batch)})[0]
        return run
    return _openvino_predictor(module, graph, precision, INPUT_NAME)


#: Input shapes whose OpenVINO compilation is kept (sliding windows need one; whole volumes
#: differ from case to case).
KEPT_COMPILATIONS = 2


def _openvino_predictor(ov, graph: bytes, precision: str, input_name: str) -> Predictor:
    """OpenVINO compiles the graph for the input shape it meets (sliding windows: one), which
    runs faster than one compilation for dynamic shapes; the last `KEPT_COMPILATIONS` are
    kept."""
    core, compiled = ov.Core(), {}
    network = core.read_model(graph)
    settings = {"INFERENCE_PRECISION_HINT": {"float32": "f32", "bfloat16": "bf16"}[precision],
                "PERFORMANCE_HINT": "LATENCY"}

    def run(batch: np.ndarray) -> np.ndarray:
        if batch.shape not in compiled:
            shaped = network.clone()
            shaped.reshape({input_name: list(batch.shape)})
            if len(compiled) >= KEPT_COMPILATIONS:
                del compiled[next(iter(compiled))]
            compiled[batch.shape] = core.compile_model(shaped, "CPU", settings)
        return np.asarray(compiled[batch.shape](_float32(batch))[0])
    return run


def _float32(batch: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(batch, dtype=np.float32)
