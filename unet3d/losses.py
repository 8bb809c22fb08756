"""Segmentation losses for sigmoid outputs: soft Dice, BCE + soft Dice, focal, class-weighted BCE.

Tensors are channels-last, `(batch, *spatial, channels)`; each channel is an independent binary
target (a label of the legacy port, or one of the nested regions WT, TC, ET). `y_pred` holds
probabilities, or logits when `from_logits=True` (then the sigmoid is applied here, in a
numerically stable form: `log p = log_sigmoid(z)`, `log(1 - p) = log_sigmoid(-z)`).

Every loss casts its inputs to float32 first (mixed precision), clips probabilities away from 0
and 1 before taking logs, and is finite, with finite gradients, on empty labels and on saturated
predictions. Each returns one value per sample, shape `(batch,)` (a scalar for batch Dice), all
non-negative, so Keras can apply sample weights and reductions.

- `soft_dice_loss`: 1 - the multiclass soft Dice of Isensee et al. 2017 (mean over channels of
  each channel's soft Dice; smooth 1e-5).
- `bce_dice_loss`: binary cross-entropy + soft Dice loss, nnU-Net's region-based training loss.
- `focal_loss`: `-alpha_t * (1 - p_t)**gamma * log(p_t)` (Lin et al. 2017).
- `class_weighted_crossentropy`: binary cross-entropy with the foreground voxels of channel `c`
  weighted by `class_weights[c]`.

The classes (`SoftDiceLoss`, `BCEDiceLoss`, `FocalLoss`, `ClassWeightedCrossentropy`) carry the
options and are serialisable, for `model.compile(loss=...)` and `.keras` files.
"""

from __future__ import annotations

from typing import Sequence

import keras
from keras import ops

from unet3d.metrics import as_float32, soft_dice, spatial_axes

# Probabilities are clipped to [EPSILON, 1 - EPSILON] before logs.
EPSILON = 1e-7


def log_probabilities(y_pred, from_logits: bool):
    """`(log p, log(1 - p))` of sigmoid channels, finite for saturated logits or probabilities."""
    if from_logits:
        return ops.log_sigmoid(y_pred), ops.log_sigmoid(-y_pred)
    p = ops.clip(y_pred, EPSILON, 1.0 - EPSILON)
    return ops.log(p), ops.log(1.0 - p)


def mean_per_sample(x):
    """Mean over every axis but the batch axis: shape `(batch,)`."""
    return ops.mean(x, axis=tuple(range(1, len(x.shape))))


@keras.saving.register_keras_serializable(package="unet3d")
def soft_dice_loss(y_true, y_pred, from_logits: bool = False, smooth: float = 1e-5, batch_dice: bool = False):
    """1 - mean over channels of the soft Dice per sample and channel. Shape `(batch,)`.

    With `batch_dice=True` the sums run over the batch as well (nnU-Net's batch Dice): one value,
    shape `()`. An empty channel predicted empty scores Dice 1 (loss 0) thanks to `smooth`.
    """
    y_true, y_pred = as_float32(y_true, y_pred)
    if from_logits:
        y_pred = ops.sigmoid(y_pred)
    axis = spatial_axes(y_pred)
    if batch_dice:
        axis = (0,) + axis
    return 1.0 - ops.mean(soft_dice(y_true, y_pred, axis=axis, smooth=smooth), axis=-1)


@keras.saving.register_keras_serializable(package="unet3d")
def binary_crossentropy(y_true, y_pred, from_logits: bool = False):
    """Binary cross-entropy averaged over voxels and channels. Shape `(batch,)`."""
    y_true, y_pred = as_float32(y_true, y_pred)
    log_p, log_not_p = log_probabilities(y_pred, from_logits)
    return mean_per_sample(-(y_true * log_p + (1.0 - y_true) * log_not_p))


@keras.saving.register_keras_serializable(package="unet3d")
def bce_dice_loss(y_true, y_pred, from_logits: bool = False, smooth: float = 1e-5, batch_dice: bool = False):
    """`binary_crossentropy + soft_dice_loss`, equally weighted (nnU-Net's region-based loss)."""
    return binary_crossentropy(y_true, y_pred, from_logits) + soft_dice_loss(
        y_true, y_pred, from_logits, smooth, batch_dice
    )


@keras.saving.register_keras_serializable(package="unet3d")
def focal_loss(y_true, y_pred, alpha: float = 0.25, gamma: float = 2.0, from_logits: bool = False):
    """Binary focal loss averaged over voxels and channels. Shape `(batch,)`.

    Per voxel: `-alpha_t * (1 - p_t)**gamma * log(p_t)` with `p_t = p` and `alpha_t = alpha` on
    foreground (`t = 1`), `p_t = 1 - p` and `alpha_t = 1 - alpha` on background; soft targets
    interpolate linearly. `gamma=0, alpha=0.5` gives half the binary cross-entropy.
    """
    y_true, y_pred = as_float32(y_true, y_pred)
    log_p, log_not_p = log_probabilities(y_pred, from_logits)
    cross_entropy = -(y_true * log_p + (1.0 - y_true) * log_not_p)
    miss_probability = y_true * ops.exp(log_not_p) + (1.0 - y_true) * ops.exp(log_p)  # 1 - p_t
    alpha_t = y_true * alpha + (1.0 - y_true) * (1.0 - alpha)
    return mean_per_sample(alpha_t * miss_probability**gamma * cross_entropy)


@keras.saving.register_keras_serializable(package="unet3d")
def class_weighted_crossentropy(y_true, y_pred, class_weights: Sequence[float], from_logits: bool = False):
    """Binary cross-entropy whose foreground voxels in channel `c` weigh `class_weights[c]`.

    Background voxels weigh 1, so `class_weights[c] = background / foreground voxel count` of
    channel `c` balances the two; all weights 1 give `binary_crossentropy`. Shape `(batch,)`.
    """
    y_true, y_pred = as_float32(y_true, y_pred)
    log_p, log_not_p = log_probabilities(y_pred, from_logits)
    weights = ops.convert_to_tensor(class_weights, dtype="float32")
    return mean_per_sample(-(weights * y_true * log_p + (1.0 - y_true) * log_not_p))


class _ConfiguredLoss(keras.losses.Loss):
    """A `keras.losses.Loss` that calls `loss_function(y_true, y_pred, **options)`."""

    loss_function = None

    def __init__(self, name: str, reduction: str, dtype, **options):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.options = options

    def call(self, y_true, y_pred):
        return type(self).loss_function(y_true, y_pred, **self.options)

    def get_config(self) -> dict:
        return {**super().get_config(), **self.options}


@keras.saving.register_keras_serializable(package="unet3d")
class SoftDiceLoss(_ConfiguredLoss):
    """`soft_dice_loss` as a configurable, serialisable loss."""

    loss_function = staticmethod(soft_dice_loss)
    default_name = "soft_dice_loss"

    def __init__(
        self,
        from_logits: bool = False,
        smooth: float = 1e-5,
        batch_dice: bool = False,
        name: str | None = None,
        reduction: str = "sum_over_batch_size",
        dtype=None,
    ):
        super().__init__(
            name or self.default_name, reduction, dtype, from_logits=from_logits, smooth=smooth,
            batch_dice=batch_dice,
        )


@keras.saving.register_keras_serializable(package="unet3d")
class BCEDiceLoss(SoftDiceLoss):
    """`bce_dice_loss` as a configurable, serialisable loss (same options as `SoftDiceLoss`)."""

    loss_function = staticmethod(bce_dice_loss)
    default_name = "bce_dice_loss"


@keras.saving.register_keras_serializable(package="unet3d")
class FocalLoss(_ConfiguredLoss):
    """`focal_loss` as a configurable, serialisable loss."""

    loss_function = staticmethod(focal_loss)

    def __init__(
        self,
        alpha: float = 0.25,
        gamma: float = 2.0,
        from_logits: bool = False,
        name: str = "focal_loss",
        reduction: str = "sum_over_batch_size",
        dtype=None,
    ):
        super().__init__(name, reduction, dtype, alpha=alpha, gamma=gamma, from_logits=from_logits)


@keras.saving.register_keras_serializable(package="unet3d")
class ClassWeightedCrossentropy(_ConfiguredLoss):
    """`class_weighted_crossentropy` as a configurable, serialisable loss."""

    loss_function = staticmethod(class_weighted_crossentropy)

    def __init__(
        self,
        class_weights: Sequence[float],
        from_logits: bool = False,
        name: str = "class_weighted_crossentropy",
        reduction: str = "sum_over_batch_size",
        dtype=None,
    ):
        super().__init__(name, reduction, dtype, class_weights=list(class_weights), from_logits=from_logits)
