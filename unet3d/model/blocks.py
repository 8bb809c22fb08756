"""Building blocks shared by the 2D and 3D U-Net builders.

Every block takes and returns channels-last Keras tensors, `(batch, *spatial, channels)`, and picks
its 2D or 3D layers from the number of spatial axes of its input. Only `keras` is used, so the
models run on the TensorFlow and JAX backends.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import keras
import numpy as np

from unet3d.errors import InputError

CONV = {2: keras.layers.Conv2D, 3: keras.layers.Conv3D}
CONV_TRANSPOSE = {2: keras.layers.Conv2DTranspose, 3: keras.layers.Conv3DTranspose}
UPSAMPLING = {2: keras.layers.UpSampling2D, 3: keras.layers.UpSampling3D}
MAX_POOLING = {2: keras.layers.MaxPooling2D, 3: keras.layers.MaxPooling3D}
SPATIAL_DROPOUT = {2: keras.layers.SpatialDropout2D, 3: keras.layers.SpatialDropout3D}

# What the builders accept as `optimizer`: a name, a class or factory taking `learning_rate=`, or
# an instance.
OptimizerLike = str | type | Callable | keras.optimizers.Optimizer


def spatial_rank(x) -> int:
    """Number of spatial axes of a channels-last tensor (2 or 3)."""
    rank = len(x.shape) - 2
    if rank not in CONV:
        raise InputError(f"expected a 2D or 3D channels-last tensor, got shape {x.shape}")
    return rank


def size_divisors(pool_size: int | Sequence[int], n_poolings: int, rank: int) -> tuple[int, ...]:
    """Per spatial axis, the factor every input size must be a multiple of: `pool**n_poolings`."""
    pool = (pool_size,) * rank if isinstance(pool_size, int) else tuple(pool_size)
    return tuple(p**n_poolings for p in pool)


def check_spatial_shape(shape: Sequence[int | None], divisors: Sequence[int], argument: str) -> None:
    """Raise `InputError` unless every known size in `shape` is a multiple of its divisor."""
    pairs = list(zip(shape, divisors, strict=True))
    if all(size is None or (size > 0 and size % d == 0) for size, d in pairs):
        return
    suggestion = tuple(size if size is None else max(d, math.ceil(size / d) * d) for size, d in pairs)
    raise InputError(
        f"{argument}: spatial size {tuple(shape)} must be a positive multiple of {tuple(divisors)} "
        f"(the total downsampling of the network); crop or pad the volume, e.g. to {suggestion}. "
        "Shapes are channels-last: (*spatial sizes, channels)."
    )


def check_input_shape(input_shape: Sequence[int | None], divisors: Sequence[int]) -> None:
    """Validate a builder's `input_shape = (*spatial, channels)` against the network's divisors."""
    if len(input_shape) != len(divisors) + 1 or input_shape[-1] is None or input_shape[-1] <= 0:
        raise InputError(
            f"input_shape {tuple(input_shape)} must be channels-last, (*{len(divisors)} spatial sizes, "
            "channels), with a known number of channels; spatial sizes may be None"
        )
    check_spatial_shape(input_shape[:-1], divisors, "input_shape")


@keras.saving.register_keras_serializable(package="unet3d")
class SpatialSizeCheck(keras.layers.Layer):
    """Identity layer that raises `InputError` for inputs of a spatial size the network cannot take.

    Models with `None` spatial sizes accept any size that is a multiple of `divisors`; this layer
    turns the shape mismatch a wrong size would cause deep inside the network into a clear message.
    The check runs wherever the size is known when the model is called or traced (eager calls,
    `predict` on arrays, the JAX backend).
    """

    def __init__(self, divisors: Sequence[int], **kwargs):
        super().__init__(**kwargs)
        self.divisors = tuple(divisors)

    def call(self, inputs):
        check_spatial_shape(inputs.shape[1:-1], self.divisors, "model input")
        return inputs

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "divisors": list(self.divisors)}


@keras.saving.register_keras_serializable(package="unet3d")
class LegacyInstanceNormalization(keras.layers.Layer):
    """keras_contrib's `InstanceNormalization`, as the legacy port's models were trained with it:
    per sample and channel, `(x - mean) / (std + epsilon) * gamma + beta` over the spatial axes
    (the epsilon added to the standard deviation, where `GroupNormalization` adds it to the
    variance). Models converted from the port's files use it, so that they compute what the port
    computed (`unet3d.legacy.models`). Channels-last: `(batch, *spatial, channels)`, one `gamma`
    and one `beta` per channel."""

    def __init__(self, epsilon: float = 1e-3, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = float(epsilon)

    def build(self, input_shape):
        channels = (input_shape[-1],)
        self.gamma = self.add_weight(shape=channels, initializer="ones", name="gamma")
        self.beta = self.add_weight(shape=channels, initializer="zeros", name="beta")

    def call(self, inputs):
        # Statistics in float32 under mixed precision too, as GroupNormalization computes them.
        x = keras.ops.cast(inputs, "float32")
        axes = tuple(range(1, len(x.shape) - 1))
        mean = keras.ops.mean(x, axis=axes, keepdims=True)
        std = keras.ops.sqrt(keras.ops.mean(keras.ops.square(x - mean), axis=axes, keepdims=True))
        normed = (x - mean) / (std + self.epsilon) * keras.ops.cast(self.gamma, "float32")
        return keras.ops.cast(normed + keras.ops.cast(self.beta, "float32"), inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "epsilon": self.epsilon}


def model_divisors(model: keras.Model) -> tuple[int, ...]:
    """What every spatial input size of `model` must be a multiple of: the divisors of its
    `SpatialSizeCheck` layer (the builders of this package add one), else 1 per spatial axis;
    for a model of nested models (an ensemble), the least common multiple of theirs."""
    divisors = np.ones(len(model.inputs[0].shape) - 2, dtype=int)
    for layer in model.layers:
        if isinstance(layer, SpatialSizeCheck):
            divisors = np.lcm(divisors, [int(d) for d in layer.divisors])
        elif isinstance(layer, keras.Model):
            divisors = np.lcm(divisors, model_divisors(layer))
    return tuple(int(d) for d in divisors)


def conv_block(
    x,
    filters: int,
    kernel_size: int = 3,
    strides: int = 1,
    normalization: str | None = None,
    norm_epsilon: float = 1e-3,
    negative_slope: float = 0.0,
    l2: float = 0.0,
):
    """Convolution ('same' padding, with bias), optional normalisation, (leaky) ReLU.

    Args:
        x: `(batch, *spatial, channels)`.
        filters: output channels.
        kernel_size, strides: of the convolution, the same on every axis.
        normalization: None, `"batch"` or `"instance"` (per-sample, per-channel statistics with a
            learned per-channel scale and offset: `GroupNormalization(groups=-1)`).
        norm_epsilon: variance epsilon of the normalisation.
        negative_slope: 0 for ReLU, else the slope of a LeakyReLU.
        l2: weight of the L2 penalty `l2 * sum(kernel**2)` added to the loss (0: none).

    Returns:
        `(batch, *spatial / strides, filters)`.
    """
    x = convolution(x, filters, kernel_size, strides, l2)
    return activate(x, normalization, norm_epsilon, negative_slope)


def convolution(x, filters: int, kernel_size: int = 3, strides: int = 1, l2: float = 0.0):
    """Convolution alone ('same' padding, with bias; `l2`: its kernel's L2 penalty weight):
    `(batch, *spatial, c)` -> `(batch, *spatial / strides, filters)`."""
    regularizer = keras.regularizers.L2(l2) if l2 else None
    return CONV[spatial_rank(x)](filters, kernel_size, strides=strides, padding="same",
                                 kernel_regularizer=regularizer)(x)


def activate(x, normalization: str | None = None, norm_epsilon: float = 1e-3,
             negative_slope: float = 0.0):
    """Optional normalisation (see `conv_block`), then (leaky) ReLU; shape unchanged."""
    if normalization == "batch":
        x = keras.layers.BatchNormalization(epsilon=norm_epsilon)(x)
    elif normalization == "instance":
        x = keras.layers.GroupNormalization(groups=-1, epsilon=norm_epsilon)(x)
    elif normalization is not None:
        raise InputError(f"normalization={normalization!r}: use None, 'batch' or 'instance'")
    if negative_slope:
        return keras.layers.LeakyReLU(negative_slope=negative_slope)(x)
    return keras.layers.ReLU()(x)


def upsample(x, size: int | Sequence[int], filters: int | None = None):
    """Nearest-neighbour upsampling by `size`, or a transposed convolution (kernel = stride = `size`)
    to `filters` channels when `filters` is given. `(batch, *spatial, c)` -> `(batch, *spatial * size, c
    or filters)`."""
    rank = spatial_rank(x)
    if filters is None:
        return UPSAMPLING[rank](size=size)(x)
    return CONV_TRANSPOSE[rank](filters, size, strides=size)(x)


def segmentation_logits(x, n_labels: int, l2: float = 0.0):
    """1x1 convolution to `n_labels` channels (with bias, no activation; `l2`: its kernel's L2
    penalty weight)."""
    regularizer = keras.regularizers.L2(l2) if l2 else None
    return CONV[spatial_rank(x)](n_labels, 1, kernel_regularizer=regularizer)(x)


def output_activation(logits, activation_name: str, name: str = "segmentation"):
    """The output activation, computed in float32 so that under mixed precision the probabilities,
    and the losses fed by them, are float32. `activation_name="linear"` outputs logits."""
    return keras.layers.Activation(activation_name, dtype="float32", name=name)(logits)


def make_optimizer(optimizer: OptimizerLike, learning_rate: float) -> keras.optimizers.Optimizer:
    """An optimizer instance: a name (`"adam"`), a class or factory called with `learning_rate=`
    (the port passed `keras.optimizers.Adam`), or an instance, used as is (its own learning rate)."""
    if isinstance(optimizer, keras.optimizers.Optimizer):
        return optimizer
    if isinstance(optimizer, str):
        optimizer = type(keras.optimizers.get(optimizer))
    return optimizer(learning_rate=learning_rate)


def compile_model(
    model: keras.Model,
    optimizer: OptimizerLike,
    learning_rate: float,
    loss,
    metrics=None,
    loss_weights=None,
    jit_compile: bool | str = "auto",
) -> keras.Model:
    """Compile `model` in place with `make_optimizer(optimizer, learning_rate)`; returns it."""
    model.compile(
        optimizer=make_optimizer(optimizer, learning_rate),
        loss=loss,
        loss_weights=loss_weights,
        metrics=metrics,
        jit_compile=jit_compile,
    )
    return model
