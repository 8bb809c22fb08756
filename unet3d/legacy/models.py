"""The legacy port's trained models (Keras 2 HDF5, channels-first), rebuilt channels-last.

    model = convert_port_model("isensee_2017_model.h5")      # a keras.Model, channels-last

The port saved its models with Keras 2: an HDF5 file whose `model_config` attribute holds the
graph (channels-first, keras_contrib's `InstanceNormalization` with `axis=1`) and whose
`model_weights` group holds each layer's arrays under `weight_names`. Keras 3 cannot rebuild such
a graph, but nothing in it is hard to carry over:

- the architecture's settings are read from `model_config`: the Isensee 2017 network (depth, base
  filters, segmentation levels, labels, leaky ReLU slope, epsilon, dropout, output activation)
  or the plain 3D U-Net (depth, base filters, pool size, transposed convolutions, batch
  normalisation, labels, activation), and the input channels;
- the network is built channels-last by this package's builders (`build_isensee2017`,
  `build_unet_3d`), which create their layers in the port's order, with keras_contrib's
  instance normalisation (`LegacyInstanceNormalization`: the epsilon added to the standard
  deviation);
- the weights are copied layer by layer in that order: a 3D convolution kernel is stored as
  `(kx, ky, kz, in, out)` whatever the data format (transposed: `(kx, ky, kz, out, in)`), an
  instance normalisation has one scale and one offset per channel, a batch normalisation its
  scale, offset, mean and variance per channel.

The converted model's outputs equal the old model's with inputs and outputs transposed from
channels-first `(batch, channels, x, y, z)` to channels-last `(batch, x, y, z, channels)`.
Graphs with a layer the builders do not make are refused, naming the first such layer.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import keras
import numpy as np

from unet3d.brats import MODALITIES
from unet3d.errors import InputError
from unet3d.logs import get_logger
from unet3d.model.card import ModelCard
from unet3d.model.blocks import LegacyInstanceNormalization
from unet3d.model.isensee2017 import build_isensee2017
from unet3d.model.saving import save_model
from unet3d.model.unet import build_unet_3d
from unet3d.model_space import ModelSpace
from unet3d.preprocessing import PreprocessConfig

#: What the port's BraTS script trained on: labels 1, 2, 4 as channels, four modalities.
PORT_LABELS, PORT_CONVENTION = (1, 2, 4), "brats2020"
#: The layer classes of each port network, as Keras 2 names them.
ISENSEE_LAYERS = {"InputLayer", "Conv3D", "InstanceNormalization", "LeakyReLU",
                  "SpatialDropout3D", "Add", "UpSampling3D", "Concatenate", "Activation"}
UNET_LAYERS = {"InputLayer", "Conv3D", "BatchNormalization", "Activation", "MaxPooling3D",
               "UpSampling3D", "Conv3DTranspose", "Deconvolution3D", "Concatenate"}
#: Port layer class -> the Keras 3 layer class our builders use for it (layers with weights).
WEIGHTED = {"Conv3D": keras.layers.Conv3D, "Conv3DTranspose": keras.layers.Conv3DTranspose,
            "Deconvolution3D": keras.layers.Conv3DTranspose,
            "InstanceNormalization": LegacyInstanceNormalization,
            "BatchNormalization": keras.layers.BatchNormalization}


@dataclass(frozen=True)
class PortLayer:
    """A layer of a port file: its name, Keras 2 class name and config."""

    name: str
    kind: str
    config: dict


def is_port_file(path: str | os.PathLike) -> bool:
    """Whether `path` is an HDF5 model written by Keras 2 with a channels-first graph (the legacy
    port's format; Keras 3 loads other Keras 2 HDF5 models itself)."""
    try:
        with h5py.File(path, "r") as file:
            version, raw = file.attrs.get("keras_version", b""), file.attrs.get("model_config")
    except OSError:
        return False
    version = version.decode() if isinstance(version, bytes) else str(version)
    if not version.startswith("2."):
        return False
    if raw is None:
        return True  # weights only: convert_port_model says what is missing
    config = raw.decode() if isinstance(raw, bytes) else str(raw)
    return '"channels_first"' in config or '"InstanceNormalization"' in config


def read_port_layers(path: Path) -> list[PortLayer]:
    """The layers of the graph saved in a Keras 2 HDF5 file, in the file's order."""
    with h5py.File(path, "r") as file:
        raw = file.attrs.get("model_config")
    if raw is None:
        raise InputError(f"{path} holds no model_config (weights only?): the port's "
                         "checkpoints hold the whole model; convert that file instead")
    config = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
    if config.get("class_name") not in ("Model", "Functional"):
        raise InputError(f"{path}: a {config.get('class_name')} model, not the port's functional "
                         "networks (isensee2017, unet_model_3d)")
    return [PortLayer(layer["name"], layer["class_name"], layer["config"])
            for layer in config["config"]["layers"]]


def read_port_weights(file: h5py.File, layer: str) -> list[np.ndarray]:
    """The arrays of one layer of an open Keras 2 HDF5 file, in the layer's weight order."""
    group = file["model_weights"][layer]
    names = [n.decode() if isinstance(n, bytes) else n for n in group.attrs["weight_names"]]
    return [np.asarray(group[name]) for name in names]


def _input_channels(layers: list[PortLayer], path: Path) -> int:
    shape = layers[0].config.get("batch_input_shape") or layers[0].config.get("batch_shape")
    if layers[0].kind != "InputLayer" or not shape or len(shape) != 5:
        raise InputError(f"{path}: the first layer is not a 3D input (batch, channels, x, y, z)")
    if layers[0].config.get("data_format", "channels_first") == "channels_last" or any(
            l.config.get("data_format") == "channels_last" for l in layers):
        raise InputError(f"{path}: a channels-last graph; the port's models are channels-first "
                         "(a Keras 3 or tf.keras channels-last model loads with "
                         "keras.saving.load_model)")
    return int(shape[1])


def port_architecture(layers: list[PortLayer], path: Path) -> tuple[str, dict]:
    """("isensee2017" or "unet3d", the builder's keyword arguments) of a port graph.

    Raises `InputError` naming the first layer neither network has."""
    channels = _input_channels(layers, path)
    kinds = {layer.kind for layer in layers}
    architecture = "isensee2017" if kinds & {"InstanceNormalization", "LeakyReLU", "Add"} else \
        "unet3d"
    known = ISENSEE_LAYERS if architecture == "isensee2017" else UNET_LAYERS
    unknown = next((layer for layer in layers if layer.kind not in known), None)
    if unknown is not None:
        raise InputError(f"{path}: layer {unknown.name!r} ({unknown.kind}) has no place in the "
                         f"port's {architecture} network (found by its other layers): this file "
                         "holds another architecture, which cannot be converted")
    convs = [l for l in layers if l.kind == "Conv3D"]
    activations = [l for l in layers if l.kind == "Activation"]
    settings = {"input_shape": (None, None, None, channels),
                "n_base_filters": int(convs[0].config["filters"]),
                "n_labels": int(convs[-1].config["filters"]),
                "activation_name": activations[-1].config["activation"] if activations
                else convs[-1].config.get("activation", "linear")}
    if architecture == "unet3d":
        pools = [l for l in layers if l.kind == "MaxPooling3D"]
        return architecture, {**settings, "depth": len(pools) + 1,
                              "pool_size": tuple(pools[0].config["pool_size"]),
                              "deconvolution": bool(kinds & {"Conv3DTranspose", "Deconvolution3D"}),
                              "batch_normalization": "BatchNormalization" in kinds}
    strided = [l for l in convs if tuple(l.config["strides"]) != (1, 1, 1)]
    depth = len(strided) + 1
    upsamplings = sum(l.kind == "UpSampling3D" for l in layers)
    norms = [l for l in layers if l.kind == "InstanceNormalization"]
    relus = [l for l in layers if l.kind == "LeakyReLU"]
    dropouts = [l for l in layers if l.kind == "SpatialDropout3D"]
    for norm in norms:
        if norm.config.get("axis") not in (1, -4):
            raise InputError(f"{path}: layer {norm.name!r} normalises over axis "
                             f"{norm.config.get('axis')}, not the channels (axis 1): it has no "
                             "place in the port's isensee2017 network")
    return architecture, {**settings, "depth": depth,
                          "n_segmentation_levels": upsamplings - (depth - 1) + 1,
                          "negative_slope": float(relus[0].config.get("alpha", 0.3)),
                          "norm_epsilon": float(norms[0].config.get("epsilon", 1e-3)),
                          "dropout_rate": float(dropouts[0].config["rate"]) if dropouts else 0.0}


def _contrib_normalization(epsilon: float):
    """A `clone_model` function replacing each `GroupNormalization` by the port's
    `LegacyInstanceNormalization` (same name, `epsilon`)."""
    def clone(layer: keras.layers.Layer) -> keras.layers.Layer:
        if isinstance(layer, keras.layers.GroupNormalization):
            return LegacyInstanceNormalization(epsilon, name=layer.name)
        return type(layer).from_config(layer.get_config())
    return clone


def convert_port_model(path: str | os.PathLike) -> keras.Model:
    """The channels-last Keras 3 model of a port HDF5 file, with its weights (see the module
    docstring). Raises `InputError` naming the file and the first layer it cannot place."""
    path = Path(path)
    layers = read_port_layers(path)
    architecture, settings = port_architecture(layers, path)
    build = build_isensee2017 if architecture == "isensee2017" else build_unet_3d
    try:
        model = build(**settings)
    except InputError as error:
        raise InputError(f"{path}: the port's {architecture} network with {settings} cannot be "
                         f"built: {error}") from None
    if architecture == "isensee2017":  # keras_contrib's normalisation, not GroupNormalization's
        model = keras.models.clone_model(model, clone_function=_contrib_normalization(
            settings["norm_epsilon"]))
    _check_uniform_settings(layers, path)
    ours = [l for l in model.layers if type(l) in WEIGHTED.values()]
    theirs = [l for l in layers if l.kind in WEIGHTED]
    described = (f"the {architecture} network rebuilt from the file's settings "
                 f"({', '.join(f'{k}={v}' for k, v in settings.items())})")
    with h5py.File(path, "r") as file:
        for index, port_layer in enumerate(theirs):
            if index >= len(ours):
                raise InputError(f"{path}: layer {port_layer.name!r} ({port_layer.kind}) has no "
                                 f"place in {described}: another architecture, which cannot be "
                                 "converted")
            layer = ours[index]
            weights = read_port_weights(file, port_layer.name)
            shapes = [tuple(w.shape) for w in weights]
            expected = [tuple(w.shape) for w in layer.get_weights()]
            difference = _differences(port_layer, layer) or (
                "" if isinstance(layer, WEIGHTED[port_layer.kind]) and shapes == expected
                else f"weights {shapes}, expected {expected} ({type(layer).__name__})")
            if difference:
                raise InputError(f"{path}: layer {port_layer.name!r} ({port_layer.kind}) does "
                                 f"not fit {described}: {difference}; another architecture, "
                                 "which cannot be converted")
            layer.set_weights(weights)
    if len(ours) != len(theirs):
        placed = theirs[-1].name if theirs else "none"
        raise InputError(f"{path}: {len(theirs)} layers with weights (the last: {placed!r}), "
                         f"but {described} has {len(ours)}: another architecture, which cannot "
                         "be converted")
    return model


#: Convolution settings that must equal those of the rebuilt layer.
CONV_SETTINGS = ("kernel_size", "strides", "padding", "dilation_rate", "use_bias", "activation")


def _differences(port_layer: PortLayer, layer: keras.layers.Layer) -> str:
    """The first convolution setting in which a port layer differs from the rebuilt one, as
    text ("" when they agree)."""
    if port_layer.kind not in ("Conv3D", "Conv3DTranspose", "Deconvolution3D"):
        return ""
    ours = layer.get_config()
    for key in CONV_SETTINGS:
        theirs = port_layer.config.get(key, ours[key])
        normal = (list(theirs) if isinstance(theirs, (list, tuple)) else theirs,
                  list(ours[key]) if isinstance(ours[key], (list, tuple)) else ours[key])
        if normal[0] != normal[1]:
            return f"{key} {theirs}, expected {ours[key]}"
    return ""


def _check_uniform_settings(layers: list[PortLayer], path: Path) -> None:
    """The builders give every leaky ReLU, instance normalisation, dropout and upsampling of a
    network the same setting: refuse a file whose layers differ, naming the first that does."""
    for kind, key in (("LeakyReLU", "alpha"), ("InstanceNormalization", "epsilon"),
                      ("SpatialDropout3D", "rate"), ("UpSampling3D", "size")):
        found = [l for l in layers if l.kind == kind]
        for layer in found[1:]:
            if layer.config.get(key) != found[0].config.get(key):
                raise InputError(f"{path}: layer {layer.name!r} ({kind}) has {key} "
                                 f"{layer.config.get(key)}, {found[0].name!r} "
                                 f"{found[0].config.get(key)}: the port's networks use one "
                                 "value throughout; another architecture, which cannot be "
                                 "converted")


def port_input_shape(path: Path) -> tuple[int, int, int] | None:
    """The spatial input size saved in a port file (its resampled image shape), None if free."""
    layers = read_port_layers(path)
    _input_channels(layers, path)
    shape = layers[0].config.get("batch_input_shape") or layers[0].config.get("batch_shape")
    spatial = tuple(shape[2:])
    return None if any(n is None for n in spatial) else tuple(int(n) for n in spatial)


def port_card(model: keras.Model, path: Path, image_shape: tuple[int, int, int] | None = None
              ) -> ModelCard:
    """The model card of a converted port model: the port's modalities (t1, t1ce, flair, t2),
    labels 1, 2, 4 as one output each, N4 on t1, t1ce and t2, each brain box resampled to
    `image_shape` (default: the file's input size) and predicted whole."""
    image_shape = image_shape or port_input_shape(path)
    if image_shape is None:
        raise InputError(f"{path} does not record its input size: give the image shape its store "
                         "was written with (--image_shape, e.g. 128,128,128)")
    channels, outputs = model.inputs[0].shape[-1], model.outputs[0].shape[-1]
    if channels != len(MODALITIES) or outputs != len(PORT_LABELS):
        raise InputError(f"{path}: {channels} inputs and {outputs} outputs, not the port's BraTS "
                         f"model ({len(MODALITIES)} modalities -> labels "
                         f"{', '.join(map(str, PORT_LABELS))}): convert it with "
                         "convert_port_model and describe it with predict.py's --modalities "
                         "and --target")
    architecture = "isensee2017" if any(isinstance(l, LegacyInstanceNormalization)
                                        for l in model.layers) else "unet3d"
    return ModelCard(model=architecture, modalities=MODALITIES, target="labels",
                     convention=PORT_CONVENTION, labels=PORT_LABELS,
                     patch_shape=tuple(image_shape), space=ModelSpace(tuple(image_shape)),
                     preprocessing=PreprocessConfig(), spacing=None, training=None)


def convert_legacy_model(model_file: str | os.PathLike, output: str | os.PathLike,
                         image_shape: tuple[int, int, int] | None = None,
                         overwrite: bool = False) -> ModelCard:
    """Convert the port's `model_file` (`convert_port_model`) and save it as the `.keras` file
    `output` with its card (`port_card`), ready for brats/predict.py; returns the card.

    The port normalised each modality by one mean and standard deviation of its training set
    over the whole box, unclipped; the card records this package's per-case z-score over the
    brain, clipped and rescaled (the closest it can express), and the log warns of it."""
    model_file, output = Path(model_file), Path(output)
    if output.suffix != ".keras":
        raise InputError(f"--output {output}: the converted model is written as a .keras file")
    if output.exists() and not overwrite:
        raise InputError(f"{output} exists: pass --overwrite to replace it")
    if not model_file.is_file():
        raise InputError(f"model file {model_file} does not exist: check the path")
    if not is_port_file(model_file):
        raise InputError(f"{model_file} is not a Keras 2 HDF5 model (the port's format)")
    model = convert_port_model(model_file)
    card = port_card(model, model_file, image_shape)
    save_model(model, output, card)
    get_logger().info(
        f"converted {model_file} ({card.model}, {model.count_params():,} parameters) to {output}: "
        f"inputs {', '.join(card.modalities)}, outputs labels "
        f"{', '.join(map(str, card.labels))}, each brain box resampled to "
        f"{'x'.join(map(str, card.space.image_shape))}")
    get_logger().warning(
        "the port fed each modality as a z-score over the whole box with one mean and standard "
        "deviation of its training set, unclipped; brats/predict.py feeds this package's "
        "per-case z-score over the brain, clipped to [-5, 5] and rescaled to [0, 1] (0 outside). "
        "The Isensee network's instance normalisation absorbs much of that change, the plain "
        "U-Net's convolutions do not: score the converted model on cases with truth "
        "(brats/evaluate.py) before relying on its predictions")
    return card
