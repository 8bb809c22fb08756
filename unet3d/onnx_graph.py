"""The ONNX graph of a Keras model of this package, written layer by layer.

    proto = onnx_model(model, card)          # onnx.ModelProto, float32
    onnx.save(proto, "model.onnx")

The graph takes `image`, float32 `(batch, *spatial, channels)` (channels-last, as the Keras
model), transposes it once to channels-first, runs every layer as the one ONNX operator that
computes it (`Conv`, `InstanceNormalization`, `BatchNormalization`, `Relu`, `LeakyRelu`,
`Resize`, `ConvTranspose`, `MaxPool`, `Concat`, `Sum` for Keras' `Add`, `Sigmoid`, `Softmax`;
the legacy port's instance
normalisation, which no operator computes, as its formula), and transposes the result
back to `segmentation`, float32 `(batch, *spatial, outputs)`. Batch and spatial axes are dynamic.

Why not tf2onnx (which Keras' own `model.export(format="onnx")` calls on TensorFlow): it
translates the TensorFlow graph op by op, so the instance normalisation of
`GroupNormalization(groups=-1)` becomes reshapes, transposes and reductions in channels-last
layout. Runtimes then run the network 3x slower than the same network exported from PyTorch, and
its probabilities differed from Keras' by up to 0.07 (issue 17). Writing each layer as one operator
of the channels-first layout the runtimes optimise gives their fast paths (fused convolutions,
native instance normalisation) and the Keras model's outputs to float32 rounding.

Layers without an operator here (a custom layer, a Lambda, group normalisation with fewer groups
than channels) raise `InputError` naming the first one, so an export is never approximate.
Dropout layers and the `SpatialSizeCheck` are identities at inference.
"""

from __future__ import annotations

import json
import os
from typing import Callable

import keras
import numpy as np

import unet3d
from unet3d.errors import InputError, OutputError
from unet3d.logs import get_logger
from unet3d.model import ModelCard, model_divisors
from unet3d.model.card import card_from_dict

#: The ONNX operator set: InstanceNormalization, Resize and friends as ONNX Runtime 1.14+ and
#: OpenVINO 2023+ run them.
OPSET = 17
INPUT_NAME = "image"
OUTPUT_NAME = "segmentation"
#: The largest difference from the Keras model's outputs a graph may show on `check_onnx`'s
#: input (float32 rounding differs between runtimes by about 1e-5 there).
ONNX_TOLERANCE = 1e-4
#: Metadata keys of the exported file.
CARD_KEY, LAYOUT_KEY, MULTIPLE_KEY, VERSION_KEY = (
    "unet3d_model_card", "unet3d_layout", "unet3d_spatial_multiple_of", "unet3d_version")
IDENTITIES = {"InputLayer", "SpatialSizeCheck", "Dropout", "SpatialDropout1D",
              "SpatialDropout2D", "SpatialDropout3D", "GaussianNoise", "GaussianDropout"}
ACTIVATIONS = {"sigmoid": "Sigmoid", "relu": "Relu", "tanh": "Tanh", "linear": "Identity",
               "softmax": "Softmax"}


def _onnx():
    try:
        import onnx
    except ImportError:
        raise InputError("the ONNX graph needs the onnx package: pip install -e .[onnx] "
                         "(.[openvino] for --runtime openvino)") from None
    return onnx


class _Graph:
    """Nodes and weights of the graph being written; tensors are named after Keras layers."""

    def __init__(self, rank: int):
        self.onnx = _onnx()
        self.rank = rank
        self.nodes, self.weights = [], []

    def node(self, op: str, inputs: list[str], output: str, io: bool = False, **attributes) -> str:
        """Append a node; returns its output tensor: `output` for the graph's own input and
        output transposes (`io`), else `keras/<output>` (a Keras layer's name may be
        "segmentation", the graph output's)."""
        output = output if io else f"keras/{output}"
        self.nodes.append(self.onnx.helper.make_node(op, inputs, [output], name=output,
                                                     **attributes))
        return output

    def weight(self, array: np.ndarray, name: str) -> str:
        array = np.ascontiguousarray(array)
        self.weights.append(self.onnx.numpy_helper.from_array(array, name))
        return name

    def activation(self, name: str, x: str, output: str, layer: str) -> str:
        if name not in ACTIVATIONS:
            raise InputError(f"layer {layer}: activation {name!r} has no ONNX operator here "
                             f"(supported: {', '.join(ACTIVATIONS)})")
        extra = {"axis": 1} if name == "softmax" else {}  # channels-first
        return self.node(ACTIVATIONS[name], [x], output, **extra)


def _spatial(value, rank: int) -> list[int]:
    return [int(v) for v in (value if isinstance(value, (list, tuple)) else (value,) * rank)]


def _padding(config: dict) -> str:
    # Keras' (TensorFlow's) "same" puts the odd voxel of padding after: ONNX's SAME_UPPER.
    return {"same": "SAME_UPPER", "valid": "VALID"}[config["padding"]]


def _conv(g: _Graph, layer, x: str, name: str) -> str:
    config = layer.get_config()
    if config.get("data_format", "channels_last") != "channels_last":
        raise InputError(f"layer {name}: only channels-last models are exported")
    kernel, *bias = layer.get_weights()
    transposed = type(layer).__name__.endswith("Transpose")
    # Keras: (*k, in, out) (transposed: (*k, out, in)); ONNX Conv (out, in, *k), ConvTranspose
    # (in, out, *k): the same permutation.
    order = (g.rank + 1, g.rank, *range(g.rank))
    inputs = [x, g.weight(kernel.transpose(order).astype(np.float32), f"{name}/kernel")]
    if bias:
        inputs.append(g.weight(bias[0].astype(np.float32), f"{name}/bias"))
    attributes = {"kernel_shape": _spatial(config["kernel_size"], g.rank),
                  "strides": _spatial(config["strides"], g.rank),
                  "dilations": _spatial(config.get("dilation_rate", 1), g.rank),
                  "auto_pad": _padding(config)}
    if transposed:
        if attributes["kernel_shape"] != attributes["strides"] or config["padding"] != "valid":
            raise InputError(f"layer {name}: only transposed convolutions with kernel = stride "
                             "and 'valid' padding (this package's upsampling) are exported")
        attributes["auto_pad"] = "NOTSET"
    else:
        attributes["group"] = int(config.get("groups", 1))
    activation = config.get("activation", "linear")
    out = g.node("ConvTranspose" if transposed else "Conv", inputs,
                 name if activation == "linear" else f"{name}/linear", **attributes)
    return out if activation == "linear" else g.activation(activation, out, name, name)


def _normalization(g: _Graph, layer, x: str, name: str) -> str:
    config, weights = layer.get_config(), layer.get_weights()
    axis = config["axis"]
    if (axis if isinstance(axis, int) else axis[0]) not in (-1, g.rank + 1):
        raise InputError(f"layer {name}: only normalisation over the channel axis is exported")
    channels = layer.input.shape[-1]
    gamma = weights.pop(0) if config["scale"] else np.ones(channels, np.float32)
    beta = weights.pop(0) if config["center"] else np.zeros(channels, np.float32)
    parameters = [g.weight(gamma.astype(np.float32), f"{name}/gamma"),
                  g.weight(beta.astype(np.float32), f"{name}/beta")]
    if type(layer).__name__ == "GroupNormalization":
        if config["groups"] not in (-1, channels):
            raise InputError(f"layer {name}: group normalisation of {config['groups']} groups "
                             f"over {channels} channels has no ONNX operator here (only instance "
                             "normalisation, one group per channel)")
        return g.node("InstanceNormalization", [x, *parameters], name,
                      epsilon=float(config["epsilon"]))
    mean, variance = weights
    parameters += [g.weight(mean.astype(np.float32), f"{name}/mean"),
                   g.weight(variance.astype(np.float32), f"{name}/variance")]
    return g.node("BatchNormalization", [x, *parameters], name, epsilon=float(config["epsilon"]))


def _legacy_instance_normalization(g: _Graph, layer, x: str, name: str) -> str:
    """keras_contrib's formula, `(x - mean) / (std + epsilon) * gamma + beta`, which ONNX's
    InstanceNormalization (epsilon under the square root) does not compute: written out."""
    axes = list(range(2, g.rank + 2))
    gamma, beta = (w.astype(np.float32).reshape(-1, *[1] * g.rank) for w in layer.get_weights())
    mean = g.node("ReduceMean", [x], f"{name}/mean", axes=axes, keepdims=1)
    centred = g.node("Sub", [x, mean], f"{name}/centred")
    square = g.node("Mul", [centred, centred], f"{name}/square")
    std = g.node("Sqrt", [g.node("ReduceMean", [square], f"{name}/variance", axes=axes,
                                 keepdims=1)], f"{name}/std")
    epsilon = g.weight(np.array(layer.epsilon, np.float32), f"{name}/epsilon")
    normed = g.node("Div", [centred, g.node("Add", [std, epsilon], f"{name}/denominator")],
                    f"{name}/normed")
    scaled = g.node("Mul", [normed, g.weight(gamma, f"{name}/gamma")], f"{name}/scaled")
    return g.node("Add", [scaled, g.weight(beta, f"{name}/beta")], name)


def _relu(g: _Graph, layer, x: str, name: str) -> str:
    config = layer.get_config()
    if config.get("max_value") is not None or config.get("threshold", 0.0) != 0.0:
        raise InputError(f"layer {name}: a ReLU with max_value or threshold is not exported")
    slope = float(config.get("negative_slope", 0.0))
    if slope:
        return g.node("LeakyRelu", [x], name, alpha=slope)
    return g.node("Relu", [x], name)


def _leaky_relu(g: _Graph, layer, x: str, name: str) -> str:
    return g.node("LeakyRelu", [x], name, alpha=float(layer.get_config()["negative_slope"]))


def _activation(g: _Graph, layer, x: str, name: str) -> str:
    return g.activation(layer.get_config()["activation"], x, name, name)


def _upsampling(g: _Graph, layer, x: str, name: str) -> str:
    config = layer.get_config()
    if config.get("interpolation", "nearest") != "nearest":
        raise InputError(f"layer {name}: only nearest-neighbour upsampling is exported")
    scales = g.weight(np.array([1, 1, *_spatial(config["size"], g.rank)], np.float32),
                      f"{name}/scales")
    # Nearest, asymmetric coordinates, floor: each voxel repeated `size` times, as Keras does.
    return g.node("Resize", [x, "", scales], name, mode="nearest",
                  coordinate_transformation_mode="asymmetric", nearest_mode="floor")


def _max_pooling(g: _Graph, layer, x: str, name: str) -> str:
    config = layer.get_config()
    return g.node("MaxPool", [x], name, kernel_shape=_spatial(config["pool_size"], g.rank),
                  strides=_spatial(config["strides"], g.rank), auto_pad=_padding(config))


CONVERTERS: dict[str, Callable] = {
    "Conv2D": _conv, "Conv3D": _conv, "Conv2DTranspose": _conv, "Conv3DTranspose": _conv,
    "GroupNormalization": _normalization, "BatchNormalization": _normalization,
    "LegacyInstanceNormalization": _legacy_instance_normalization,
    "ReLU": _relu, "LeakyReLU": _leaky_relu, "Activation": _activation,
    "UpSampling2D": _upsampling, "UpSampling3D": _upsampling,
    "MaxPooling2D": _max_pooling, "MaxPooling3D": _max_pooling,
}


def _inbound(layer_config: dict) -> list[str]:
    """Names of the layers whose outputs feed a layer (from its functional config)."""
    names = []

    def visit(value):
        if isinstance(value, dict) and value.get("class_name") == "__keras_tensor__":
            history = value["config"]["keras_history"]
            if history[1] != 0 or history[2] != 0:
                raise InputError(f"layer {layer_config['name']}: shared layers are not exported")
            names.append(history[0])
        elif isinstance(value, (list, tuple)):
            for item in value:
                visit(item)
        elif isinstance(value, dict):
            for item in value.values():
                visit(item)
    for node in layer_config["inbound_nodes"]:
        visit(node["args"])
    return names


def _endpoint(history: list) -> str:
    """The layer name of a functional config's single input or output entry (Keras writes
    `[name, 0, 0]` for one tensor, `[[name, 0, 0], ...]` for several)."""
    return history[0] if isinstance(history[0], str) else history[0][0]


def _layers(g: _Graph, model: keras.Model, x: str, rank: int, prefix: str = "") -> str:
    """Write the layers of the functional `model` into `g`, from the channels-first tensor `x`;
    returns the name of its output. A nested model (an ensemble's member) is written inline, its
    names prefixed with its own (`prefix`); Average (the ensemble's mean) is ONNX's Mean."""
    config = model.get_config()
    input_layer, output_layer = _endpoint(config["input_layers"]), _endpoint(config["output_layers"])
    tensors = {input_layer: x}
    for layer_config in config["layers"]:
        name, kind = layer_config["name"], layer_config["class_name"]
        if name == input_layer:
            continue
        inputs = [tensors[n] for n in _inbound(layer_config)]
        layer, output = model.get_layer(name), prefix + name
        if isinstance(layer, keras.Model) and len(layer.inputs) == len(layer.outputs) == 1:
            tensors[name] = _layers(g, layer, inputs[0], rank, output + "/")
        elif kind in IDENTITIES:
            tensors[name] = inputs[0]
        elif kind in ("Add", "Average"):
            tensors[name] = g.node("Sum" if kind == "Add" else "Mean", inputs, output)
        elif kind == "Concatenate":
            if layer.get_config()["axis"] not in (-1, rank + 1):
                raise InputError(f"layer {name}: only concatenation of channels is exported")
            tensors[name] = g.node("Concat", inputs, output, axis=1)
        elif kind in CONVERTERS:
            tensors[name] = CONVERTERS[kind](g, layer, inputs[0], output)
        else:
            raise InputError(f"layer {name} ({kind}) has no ONNX operator here: the export "
                             f"knows {', '.join(sorted({*CONVERTERS, 'Add', 'Average'}))}, "
                             "Concatenate, the identities at inference and nested models of "
                             "these (ensembles)")
    return tensors[output_layer]


def onnx_model(model: keras.Model, card: ModelCard | None = None):
    """The float32 ONNX model (`onnx.ModelProto`) computing `model` at inference.

    Args:
        model: a functional Keras model of one channels-last input `(batch, *spatial,
            channels)` and one output `(batch, *spatial, k)`, made of the layers this package's
            builders use.
        card: the model card, stored as JSON under the metadata key `unet3d_model_card`.

    Returns:
        The checked model (opset `OPSET`): input `image` float32 `(batch, *spatial, channels)`,
        output `segmentation` float32 `(batch, *spatial, k)`, batch and spatial axes dynamic.

    Raises `InputError` naming the first layer it cannot write, or for several inputs/outputs.
    """
    onnx = _onnx()
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise InputError(f"model {model.name} has {len(model.inputs)} inputs and "
                         f"{len(model.outputs)} outputs: only models of one input and one "
                         "output (not deep-supervision models) are exported to ONNX")
    rank = len(model.inputs[0].shape) - 2
    g = _Graph(rank)
    first, last = (0, rank + 1, *range(1, rank + 1)), (0, *range(2, rank + 2), 1)
    x = g.node("Transpose", [INPUT_NAME], "channels_first", io=True, perm=first)
    g.node("Transpose", [_layers(g, model, x, rank)], OUTPUT_NAME, io=True, perm=last)

    axes = ["batch", *"xyz"[:rank]]
    image = onnx.helper.make_tensor_value_info(
        INPUT_NAME, onnx.TensorProto.FLOAT, [*axes, int(model.inputs[0].shape[-1])])
    output = onnx.helper.make_tensor_value_info(
        OUTPUT_NAME, onnx.TensorProto.FLOAT, [*axes, int(model.outputs[0].shape[-1])])
    graph = onnx.helper.make_graph(g.nodes, model.name, [image], [output], g.weights)
    proto = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", OPSET)],
                                   producer_name="unet3d", producer_version=unet3d.__version__)
    proto.ir_version = min(proto.ir_version, 8)  # readable by ONNX Runtime 1.14+, OpenVINO 2023+
    metadata = {LAYOUT_KEY: f"channels-last ({', '.join([*axes, 'channels'])})",
                MULTIPLE_KEY: json.dumps(list(model_divisors(model))),
                VERSION_KEY: unet3d.__version__}
    if card is not None:
        metadata[CARD_KEY] = card.to_json()
    onnx.helper.set_model_props(proto, metadata)
    onnx.checker.check_model(proto, full_check=True)
    return proto


def card_of(proto, source: str) -> ModelCard | None:
    """The model card stored in an exported ONNX model's metadata (`source` names the file in
    errors), None without one."""
    for prop in proto.metadata_props:
        if prop.key == CARD_KEY:
            return card_from_dict(json.loads(prop.value), source)
    return None


def check_onnx(model: keras.Model, proto, path: str | os.PathLike) -> float:
    """The largest difference between the outputs of `model`, computed in float32 (as the
    graph is, also for a model trained in mixed precision), and of its ONNX graph `proto` in
    ONNX Runtime on a seeded random input of twice the network's divisor per axis; raises
    `OutputError` naming `path` (the file, or what the graph is for) above `ONNX_TOLERANCE`.
    Without onnxruntime installed only the graph is checked (`onnx.checker`) and NaN is
    returned."""
    import onnx

    from unet3d.runtimes import with_dtype_policy

    onnx.checker.check_model(proto, full_check=True)
    try:
        import onnxruntime
    except ImportError:
        get_logger().warning(f"{path}: onnxruntime is not installed, so the graph was not run "
                             "against the Keras model (pip install -e .[onnx] to check it)")
        return float("nan")
    shape = (1, *(2 * d for d in model_divisors(model)), model.inputs[0].shape[-1])
    batch = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    expected = np.asarray(with_dtype_policy(model, "float32").predict_on_batch(batch),
                          np.float32)
    session = onnxruntime.InferenceSession(proto.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    difference = float(np.abs(session.run(None, {INPUT_NAME: batch})[0] - expected).max())
    if not difference <= ONNX_TOLERANCE:
        raise OutputError(f"{path}: the ONNX model's outputs differ from the Keras model's by "
                          f"{difference:.3g} (more than {ONNX_TOLERANCE}), so it is not used; "
                          "please report it with the model file")
    get_logger().info(f"{path}: outputs equal the Keras model's within {difference:.1g} on a "
                      f"{'x'.join(map(str, shape[1:-1]))} input")
    return difference
