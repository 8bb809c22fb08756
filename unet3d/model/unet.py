"""Plain U-Nets: the 3D U-Net of the legacy port (Çiçek et al. 2016) and the classic 2D U-Net
(Ronneberger et al. 2015), channels-last, built from the same blocks.

Each encoder level is two conv blocks (3x3(x3) convolution, optional batch normalisation, ReLU)
followed by max pooling, except the deepest; each decoder level upsamples (nearest neighbour or
transposed convolution), concatenates the encoder output of the same level and applies two conv
blocks with that level's filters; a 1x1(x1) convolution and the output activation end the network.
They differ in the filters: the 3D U-Net doubles them inside a level (32, 64 | 64, 128 | ...) and
its transposed convolutions keep the channel count; the 2D U-Net keeps them inside a level (64, 64 |
128, 128 | ...) and its transposed convolutions halve them.
"""

from __future__ import annotations

from typing import Sequence

import keras

from unet3d.metrics import LabelDiceCoefficient, dice_coefficient, dice_coefficient_loss
from unet3d.model.blocks import (
    MAX_POOLING,
    OptimizerLike,
    SpatialSizeCheck,
    check_input_shape,
    compile_model,
    conv_block,
    output_activation,
    segmentation_logits,
    size_divisors,
    spatial_rank,
    upsample,
)


def unet_backbone(
    x,
    level_filters: Sequence[tuple[int, int]],
    pool_size: int | Sequence[int],
    deconvolution: bool,
    batch_normalization: bool,
    halve_on_upsampling: bool,
):
    """Encoder-decoder with skip connections; `level_filters[l]` are the filters of the two conv
    blocks of encoder level `l` (the last entry is the bottleneck).

    With `deconvolution`, the transposed convolution outputs half its input's channels when
    `halve_on_upsampling`, else as many. `(batch, *spatial, c)` -> `(batch, *spatial,
    level_filters[0][1])`.
    """
    normalization = "batch" if batch_normalization else None
    skips = []
    for level, filters in enumerate(level_filters):
        for f in filters:
            x = conv_block(x, f, normalization=normalization)
        if level < len(level_filters) - 1:
            skips.append(x)
            x = MAX_POOLING[spatial_rank(x)](pool_size)(x)
    for skip in reversed(skips):
        up_filters = None
        if deconvolution:
            up_filters = x.shape[-1] // 2 if halve_on_upsampling else x.shape[-1]
        x = keras.layers.Concatenate()([upsample(x, pool_size, up_filters), skip])
        for _ in range(2):
            x = conv_block(x, skip.shape[-1], normalization=normalization)
    return x


def build_unet(
    input_shape: Sequence[int | None],
    level_filters: Sequence[tuple[int, int]],
    pool_size: int | Sequence[int],
    n_labels: int,
    deconvolution: bool,
    batch_normalization: bool,
    halve_on_upsampling: bool,
    activation_name: str,
    name: str,
) -> keras.Model:
    """Input (size-checked), `unet_backbone`, 1x1 convolution, `activation_name`."""
    divisors = size_divisors(pool_size, len(level_filters) - 1, len(input_shape) - 1)
    check_input_shape(input_shape, divisors)
    inputs = keras.Input(input_shape)
    x = SpatialSizeCheck(divisors)(inputs)
    x = unet_backbone(x, level_filters, pool_size, deconvolution, batch_normalization, halve_on_upsampling)
    return keras.Model(
        inputs, output_activation(segmentation_logits(x, n_labels), activation_name), name=name
    )


def build_unet_3d(
    input_shape: Sequence[int | None],
    pool_size: Sequence[int] = (2, 2, 2),
    n_labels: int = 1,
    deconvolution: bool = False,
    depth: int = 4,
    n_base_filters: int = 32,
    batch_normalization: bool = False,
    activation_name: str = "sigmoid",
) -> keras.Model:
    """The uncompiled 3D U-Net of the legacy port.

    Level `l` has conv blocks of `n_base_filters * 2**l` and `n_base_filters * 2**(l + 1)`
    filters. `input_shape` is channels-last `(x, y, z, channels)`; spatial sizes may be None (any
    multiple of `pool_size**(depth - 1)` per axis is then accepted). Outputs `(batch, x, y, z,
    n_labels)`. With 4 input channels, 3 labels and the other defaults: 19,071,715 parameters
    with `deconvolution`, 16,318,307 without.
    """
    level_filters = [(n_base_filters * 2**level, n_base_filters * 2 ** (level + 1)) for level in range(depth)]
    return build_unet(
        input_shape,
        level_filters,
        pool_size,
        n_labels,
        deconvolution,
        batch_normalization,
        halve_on_upsampling=False,
        activation_name=activation_name,
        name="unet_3d",
    )


def build_unet_2d(
    input_shape: Sequence[int | None],
    n_labels: int = 1,
    depth: int = 5,
    n_base_filters: int = 64,
    pool_size: Sequence[int] = (2, 2),
    deconvolution: bool = True,
    batch_normalization: bool = True,
    activation_name: str = "sigmoid",
) -> keras.Model:
    """The uncompiled classic 2D U-Net, for slice-wise work.

    Level `l` has two conv blocks of `n_base_filters * 2**l` filters (64 ... 1024 by default: 4
    downsamplings). `input_shape` is channels-last `(x, y, channels)`; spatial sizes may be None
    (any multiple of `pool_size**(depth - 1)` per axis). Outputs `(batch, x, y, n_labels)`.
    """
    level_filters = [(n_base_filters * 2**level,) * 2 for level in range(depth)]
    return build_unet(
        input_shape,
        level_filters,
        pool_size,
        n_labels,
        deconvolution,
        batch_normalization,
        halve_on_upsampling=True,
        activation_name=activation_name,
        name="unet_2d",
    )


def label_wise_metrics(metrics, n_labels: int, include_label_wise_dice_coefficients: bool) -> list:
    """`metrics` as a list, plus one `LabelDiceCoefficient` per label when asked (as the port did)."""
    if metrics is None:
        metrics = []
    elif not isinstance(metrics, (list, tuple)):
        metrics = [metrics]
    if include_label_wise_dice_coefficients and n_labels > 1:
        return [*metrics, *(LabelDiceCoefficient(index) for index in range(n_labels))]
    return list(metrics)


def unet_model_3d(
    input_shape: Sequence[int | None],
    pool_size: Sequence[int] = (2, 2, 2),
    n_labels: int = 1,
    initial_learning_rate: float = 1e-5,
    deconvolution: bool = False,
    depth: int = 4,
    n_base_filters: int = 32,
    include_label_wise_dice_coefficients: bool = False,
    metrics=dice_coefficient,
    batch_normalization: bool = False,
    activation_name: str = "sigmoid",
    optimizer: OptimizerLike = "adam",
    loss_function=dice_coefficient_loss,
    jit_compile: bool | str = "auto",
) -> keras.Model:
    """`build_unet_3d(...)` compiled as the port did: Adam (`initial_learning_rate`), the Dice
    loss, the Dice coefficient (and per-label Dice metrics) as metrics."""
    model = build_unet_3d(
        input_shape,
        pool_size=pool_size,
        n_labels=n_labels,
        deconvolution=deconvolution,
        depth=depth,
        n_base_filters=n_base_filters,
        batch_normalization=batch_normalization,
        activation_name=activation_name,
    )
    metrics = label_wise_metrics(metrics, n_labels, include_label_wise_dice_coefficients)
    return compile_model(
        model, optimizer, initial_learning_rate, loss_function, metrics, jit_compile=jit_compile
    )


def unet_model_2d(
    input_shape: Sequence[int | None],
    n_labels: int = 1,
    depth: int = 5,
    n_base_filters: int = 64,
    pool_size: Sequence[int] = (2, 2),
    deconvolution: bool = True,
    batch_normalization: bool = True,
    activation_name: str = "sigmoid",
    initial_learning_rate: float = 1e-4,
    optimizer: OptimizerLike = "adam",
    loss_function=dice_coefficient_loss,
    metrics=dice_coefficient,
    include_label_wise_dice_coefficients: bool = False,
    jit_compile: bool | str = "auto",
) -> keras.Model:
    """`build_unet_2d(...)` compiled like `unet_model_3d` (Adam, Dice loss, Dice metrics)."""
    model = build_unet_2d(
        input_shape,
        n_labels=n_labels,
        depth=depth,
        n_base_filters=n_base_filters,
        pool_size=pool_size,
        deconvolution=deconvolution,
        batch_normalization=batch_normalization,
        activation_name=activation_name,
    )
    metrics = label_wise_metrics(metrics, n_labels, include_label_wise_dice_coefficients)
    return compile_model(
        model, optimizer, initial_learning_rate, loss_function, metrics, jit_compile=jit_compile
    )
