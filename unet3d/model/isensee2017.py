"""The 3D U-Net of Isensee et al. 2017 ("Brain Tumor Segmentation and Radiomics Survival
Prediction: Contribution to the BRATS 2017 Challenge"), channels-last.

Encoder level `l` (filters `n_base_filters * 2**l`): conv block (stride 2 except at level 0),
then a context module (conv block, spatial dropout, conv block) added to the block's output; with
`preactivation` (the paper's), the convolution alone, a pre-activation residual context module
added to it, the sum normalised and activated.
Decoder level `l` (from `depth - 2` to 0): upsampling module (nearest x2, conv block),
concatenation with the encoder output of level `l`, localization module (3x3x3 conv block, 1x1x1
conv block). Levels below `n_segmentation_levels` feed a 1x1x1 segmentation head; the heads are
summed coarse to fine with x2 upsampling, then the output activation is applied. A conv block is
convolution, instance normalisation, leaky ReLU.

The paper's leaky ReLU slope is 0.01 and this module's instance-normalisation epsilon 1e-5 (the
usual default; the paper states none); the legacy Keras port used a slope of 0.3 and an epsilon of
1e-3. `legacy=True` restores the port's values. With 4 input channels, 3 labels and the default
sizes the network has 8,269,561 parameters, like the port's (instance normalisation has a scale
and an offset per channel), with or without `preactivation`; with a softmax over background and
the three labels (4 outputs), 8,269,676.
"""

from __future__ import annotations

from typing import Sequence

import keras

from unet3d.brats import MODALITIES
from unet3d.config import PAPER as PAPER_RECIPE
from unet3d.errors import InputError
from unet3d.metrics import weighted_dice_coefficient_loss
from unet3d.model.blocks import (
    SPATIAL_DROPOUT,
    OptimizerLike,
    SpatialSizeCheck,
    activate,
    check_input_shape,
    compile_model,
    conv_block,
    convolution,
    output_activation,
    segmentation_logits,
    size_divisors,
    spatial_rank,
    upsample,
)

#: The default input: the paper recipe's patch, one channel per BraTS modality.
PAPER_INPUT_SHAPE = (*PAPER_RECIPE.patch_shape, len(MODALITIES))
PAPER = {"negative_slope": 0.01, "norm_epsilon": 1e-5}
LEGACY_PORT = {"negative_slope": 0.3, "norm_epsilon": 1e-3}


def level_output_name(level: int) -> str:
    """Name of the deep-supervision output of decoder `level` (0 is the full-resolution output)."""
    return "segmentation" if level == 0 else f"segmentation_level_{level}"


def build_isensee2017(
    input_shape: Sequence[int | None] = PAPER_INPUT_SHAPE,
    n_base_filters: int = PAPER_RECIPE.n_base_filters,
    depth: int = 5,
    dropout_rate: float = 0.3,
    n_segmentation_levels: int = 3,
    n_labels: int = 3,
    activation_name: str = "sigmoid",
    legacy: bool = False,
    negative_slope: float | None = None,
    norm_epsilon: float | None = None,
    deep_supervision: bool = False,
    preactivation: bool = False,
    l2: float = 0.0,
) -> keras.Model:
    """The uncompiled Isensee 2017 network.

    Args:
        input_shape: channels-last `(x, y, z, channels)`; spatial sizes may be None (any multiple
            of `2**(depth - 1)` is then accepted; other sizes raise `InputError`).
        n_base_filters: filters of level 0, doubled at each level.
        depth: number of encoder levels (`depth - 1` stride-2 downsamplings).
        dropout_rate: spatial dropout rate inside the context modules.
        n_segmentation_levels: decoder levels (finest first) with a segmentation head, 1 to
            `depth - 1`.
        n_labels: output channels.
        activation_name: output activation; `"linear"` for logits.
        legacy: use the legacy port's leaky ReLU slope 0.3 and epsilon 1e-3 instead of 0.01 and
            1e-5.
        negative_slope, norm_epsilon: override the leaky ReLU slope and the instance-normalisation
            epsilon chosen by `legacy`.
        deep_supervision: instead of one output of summed heads, output a dict with one activated
            head per segmentation level: `"segmentation"` at full resolution, then
            `"segmentation_level_<l>"` at `1 / 2**l` of it (nnU-Net style; see
            `deep_supervision_targets`).
        preactivation: the paper's context modules, pre-activation residual blocks: each
            level's (strided) convolution alone, then normalisation, leaky ReLU, convolution,
            dropout, normalisation, leaky ReLU, convolution, added to it, and the sum normalised
            and activated. False: the legacy port's encoder (conv blocks of convolution,
            normalisation, leaky ReLU). Both have the same parameters, and the decoder is the
            port's either way; the authors' Lasagne code differs in details the paper does not
            state (no normalisation opening the level-0 context module, the decoder's heads and
            upsampling module), which would change the parameter count.
        l2: L2 penalty weight on every convolution kernel (the paper: 1e-5; 0: none).

    Returns:
        A `keras.Model` mapping `(batch, x, y, z, channels)` to `(batch, x, y, z, n_labels)` (a
        dict of such tensors at decreasing resolutions with `deep_supervision`).
    """
    if not 1 <= n_segmentation_levels < depth:
        raise InputError(
            f"n_segmentation_levels={n_segmentation_levels} must be between 1 and depth - 1 = {depth - 1}"
        )
    block = {**block_settings(legacy, negative_slope, norm_epsilon), "l2": l2}
    divisors = size_divisors(2, depth - 1, len(input_shape) - 1)
    check_input_shape(input_shape, divisors)

    inputs = keras.Input(input_shape)
    levels = (preactivation_encoder if preactivation else encoder)(
        SpatialSizeCheck(divisors)(inputs), depth, n_base_filters, dropout_rate, **block)
    heads = decoder(levels, n_base_filters, n_segmentation_levels, n_labels, **block)
    if deep_supervision:
        outputs = {level_output_name(level): output_activation(
            heads[level], activation_name, level_output_name(level)) for level in sorted(heads)}
        return keras.Model(inputs, outputs, name="isensee2017_deep_supervision")
    output = heads[n_segmentation_levels - 1]
    for level in range(n_segmentation_levels - 2, -1, -1):
        output = keras.layers.Add()([upsample(output, 2), heads[level]])
    return keras.Model(inputs, output_activation(output, activation_name), name="isensee2017")


def block_settings(legacy: bool = False, negative_slope: float | None = None,
                   norm_epsilon: float | None = None) -> dict:
    """The conv blocks' settings: instance normalisation, the paper's (or with `legacy` the
    port's) leaky ReLU slope and epsilon, unless given."""
    defaults = LEGACY_PORT if legacy else PAPER
    return {"normalization": "instance",
            "negative_slope": defaults["negative_slope"] if negative_slope is None
            else negative_slope,
            "norm_epsilon": defaults["norm_epsilon"] if norm_epsilon is None else norm_epsilon}


def encoder(x, depth: int, n_base_filters: int, dropout_rate: float, **block) -> list:
    """The encoder's output at each of its `depth` levels (level `l`: `n_base_filters * 2**l`
    filters, stride 2 but at level 0, a context module added)."""
    levels = []
    for level in range(depth):
        filters = n_base_filters * 2**level
        x = conv_block(x, filters, strides=1 if level == 0 else 2, **block)
        x = keras.layers.Add()([x, context_module(x, filters, dropout_rate, **block)])
        levels.append(x)
    return levels


def decoder(levels: list, n_base_filters: int, n_segmentation_levels: int, n_labels: int,
            **block) -> dict:
    """The segmentation logits of the finest `n_segmentation_levels` decoder levels, {level:
    logits}: each level upsamples, concatenates the encoder's output and localises."""
    x, heads = levels[-1], {}
    for level in range(len(levels) - 2, -1, -1):
        filters = n_base_filters * 2**level
        x = conv_block(upsample(x, 2), filters, **block)
        x = keras.layers.Concatenate()([levels[level], x])
        x = conv_block(conv_block(x, filters, **block), filters, kernel_size=1, **block)
        if level < n_segmentation_levels:
            heads[level] = segmentation_logits(x, n_labels, block.get("l2", 0.0))
    return heads


def preactivation_encoder(x, depth: int, n_base_filters: int, dropout_rate: float, l2: float = 0.0,
                          **norm) -> list:
    """The paper's encoder (`build_isensee2017(preactivation=True)`): per level, the convolution
    alone (stride 2 but at level 0), plus a pre-activation residual context module, the sum
    normalised and activated: the level's output (`n_base_filters * 2**level` filters)."""
    levels = []
    for level in range(depth):
        filters = n_base_filters * 2**level
        x = convolution(x, filters, strides=1 if level == 0 else 2, l2=l2)
        context = convolution(activate(x, **norm), filters, l2=l2)
        context = SPATIAL_DROPOUT[spatial_rank(x)](dropout_rate)(context)
        context = convolution(activate(context, **norm), filters, l2=l2)
        x = activate(keras.layers.Add()([x, context]), **norm)
        levels.append(x)
    return levels


def context_module(x, filters: int, dropout_rate: float, **block):
    """Conv block, spatial dropout (whole channels), conv block: `(batch, *spatial, filters)`."""
    x = conv_block(x, filters, **block)
    x = SPATIAL_DROPOUT[spatial_rank(x)](dropout_rate)(x)
    return conv_block(x, filters, **block)


def deep_supervision_targets(y_true, n_segmentation_levels: int = 3) -> dict:
    """Targets for a deep-supervision model: `y_true` for `"segmentation"` and, for level `l`, its
    average over `2**l`-voxel cubes (the fraction of each coarse voxel inside each label).

    `y_true` is `(batch, x, y, z, n_labels)` (an array or a backend tensor, e.g. inside a
    `tf.data` map); returns a dict keyed like the model's outputs.
    """
    targets = {level_output_name(0): y_true}
    for level in range(1, n_segmentation_levels):
        factor = 2**level
        targets[level_output_name(level)] = keras.ops.average_pool(y_true, factor, strides=factor)
    return targets


def isensee2017_model(
    input_shape: Sequence[int | None] = PAPER_INPUT_SHAPE,
    n_base_filters: int = PAPER_RECIPE.n_base_filters,
    depth: int = 5,
    dropout_rate: float = 0.3,
    n_segmentation_levels: int = 3,
    n_labels: int = 3,
    optimizer: OptimizerLike = "adam",
    initial_learning_rate: float = 5e-4,
    loss_function=weighted_dice_coefficient_loss,
    activation_name: str = "sigmoid",
    metrics=None,
    legacy: bool = False,
    negative_slope: float | None = None,
    norm_epsilon: float | None = None,
    deep_supervision: bool = False,
    deep_supervision_weights: Sequence[float] | None = None,
    jit_compile: bool | str = "auto",
    preactivation: bool = False,
    l2: float = 0.0,
) -> keras.Model:
    """`build_isensee2017(...)` compiled with `optimizer`, `loss_function` and `metrics`.

    The defaults are the legacy port's (Adam 5e-4, the weighted Dice loss, sigmoid outputs) except
    `n_labels=3` (what the BraTS script passed) and the paper's slope and epsilon (`legacy=True`
    for the port's). `optimizer` is a name, a class called with `learning_rate=` (the port passed
    `Adam`) or an instance. With `deep_supervision`, each output gets `loss_function`, weighted by
    `deep_supervision_weights` (finest first; default `1 / 2**level`, normalised), and `metrics`
    are computed on the full-resolution output only.
    """
    model = build_isensee2017(
        input_shape=input_shape,
        n_base_filters=n_base_filters,
        depth=depth,
        dropout_rate=dropout_rate,
        n_segmentation_levels=n_segmentation_levels,
        n_labels=n_labels,
        activation_name=activation_name,
        legacy=legacy,
        negative_slope=negative_slope,
        norm_epsilon=norm_epsilon,
        deep_supervision=deep_supervision,
        preactivation=preactivation,
        l2=l2,
    )
    loss, loss_weights = loss_function, None
    if deep_supervision:
        names = [level_output_name(level) for level in range(n_segmentation_levels)]
        weights = deep_supervision_weights
        if weights is None:
            halving = [0.5**level for level in range(n_segmentation_levels)]
            weights = [w / sum(halving) for w in halving]
        if len(weights) != n_segmentation_levels:
            raise InputError(
                f"deep_supervision_weights has {len(weights)} values: give one per segmentation "
                f"level ({n_segmentation_levels}), finest first"
            )
        loss = {name: loss_function for name in names}
        loss_weights = dict(zip(names, weights, strict=True))
        metrics = {names[0]: metrics} if metrics else None
    return compile_model(model, optimizer, initial_learning_rate, loss, metrics, loss_weights, jit_compile)
