"""Dice coefficients and Dice losses of the legacy port, and Keras metrics reporting Dice per region.

Every function takes channels-last tensors, `(batch, *spatial, channels)`, with the target in
`y_true` and the network output (probabilities, not logits) in `y_pred`, and computes in float32
whatever the dtypes it is given (mixed precision). Only `keras.ops` is used, so the same code runs
on the TensorFlow and JAX backends.

The legacy functions keep the port's names, formulas and values:

- `dice_coefficient` (smooth 1): `(2 * sum(t * p) + 1) / (sum(t) + sum(p) + 1)` over the whole
  batch at once.
- `weighted_dice_coefficient` (smooth 1e-5): `(2 * sum(t * p) + smooth) / (sum(t) + sum(p) + smooth)`
  per sample and channel, summed over the spatial axes, then averaged over samples and channels.
  Zeroing one of three label channels in the prediction gives 2/3, an all-blank prediction ~0 and
  a label that is empty in both target and prediction 1.
- The `*_loss` functions are the negatives, so their logged values are negative (between -1 and 0).
  `unet3d.losses` has non-negative alternatives (`1 - Dice`).

`RegionDice` is a stateful metric for training logs: it thresholds one channel at 0.5, accumulates
the intersection and the sums over the epoch and reports the hard Dice, 1 when the region is empty
in both. `region_dice_metrics()` gives the three of them for region targets ordered WT, TC, ET
(`dice_wt`, `dice_tc`, `dice_et`).
"""

from __future__ import annotations

from typing import Callable, Sequence

import keras
from keras import ops

from unet3d.labels import REGION_NAMES


def spatial_axes(x) -> tuple[int, ...]:
    """The spatial axes of a channels-last tensor `(batch, *spatial, channels)`."""
    return tuple(range(1, len(x.shape) - 1))


def as_float32(y_true, y_pred):
    """`y_true` and `y_pred` cast to float32 (losses compute in float32 under mixed precision)."""
    return ops.cast(y_true, "float32"), ops.cast(y_pred, "float32")


def soft_dice(y_true, y_pred, axis: Sequence[int], smooth: float):
    """Soft Dice `(2 * sum(t * p) + smooth) / (sum(t) + sum(p) + smooth)`, summed over `axis`."""
    intersection = ops.sum(y_true * y_pred, axis=axis)
    total = ops.sum(y_true, axis=axis) + ops.sum(y_pred, axis=axis)
    return (2.0 * intersection + smooth) / (total + smooth)


@keras.saving.register_keras_serializable(package="unet3d")
def dice_coefficient(y_true, y_pred, smooth: float = 1.0):
    """Soft Dice over the whole batch, all channels pooled (the port's `dice_coefficient`). Scalar."""
    y_true, y_pred = as_float32(y_true, y_pred)
    return soft_dice(ops.reshape(y_true, (-1,)), ops.reshape(y_pred, (-1,)), axis=0, smooth=smooth)


@keras.saving.register_keras_serializable(package="unet3d")
def dice_coefficient_loss(y_true, y_pred):
    """Negative `dice_coefficient` (the port's loss for `unet_model_3d`). Scalar in [-1, 0)."""
    return -dice_coefficient(y_true, y_pred)


@keras.saving.register_keras_serializable(package="unet3d")
def weighted_dice_coefficient(y_true, y_pred, axis: Sequence[int] | None = None, smooth: float = 1e-5):
    """Soft Dice per sample and channel over `axis` (default: the spatial axes), averaged. Scalar.

    The port's `weighted_dice_coefficient`, for channels-last tensors: each label channel counts
    the same whatever its size, hence "weighted".
    """
    y_true, y_pred = as_float32(y_true, y_pred)
    axis = spatial_axes(y_pred) if axis is None else tuple(axis)
    return ops.mean(soft_dice(y_true, y_pred, axis=axis, smooth=smooth))


@keras.saving.register_keras_serializable(package="unet3d")
def weighted_dice_coefficient_loss(y_true, y_pred):
    """Negative `weighted_dice_coefficient` (the port's default loss for `isensee2017_model`)."""
    return -weighted_dice_coefficient(y_true, y_pred)


def label_wise_dice_coefficient(y_true, y_pred, label_index: int):
    """`dice_coefficient` of channel `label_index` alone. Scalar."""
    return dice_coefficient(y_true[..., label_index], y_pred[..., label_index])


def get_label_dice_coefficient_function(label_index: int) -> Callable:
    """A metric function `label_<index>_dice_coef(y_true, y_pred)`, as the port returned.

    For models saved to files, prefer `LabelDiceCoefficient(label_index)`, which is serialisable.
    """

    def label_dice_coefficient(y_true, y_pred):
        return label_wise_dice_coefficient(y_true, y_pred, label_index)

    label_dice_coefficient.__name__ = f"label_{label_index}_dice_coef"
    return label_dice_coefficient


# Short names the port also exported.
dice_coef = dice_coefficient
dice_coef_loss = dice_coefficient_loss


@keras.saving.register_keras_serializable(package="unet3d")
class LabelDiceCoefficient(keras.metrics.MeanMetricWrapper):
    """Epoch mean of `label_wise_dice_coefficient` for one channel, named `label_<index>_dice_coef`."""

    def __init__(self, label_index: int, name: str | None = None, dtype=None):
        super().__init__(
            label_wise_dice_coefficient,
            name=name or f"label_{label_index}_dice_coef",
            dtype=dtype,
            label_index=label_index,
        )
        self.label_index = label_index

    def get_config(self) -> dict:
        return {"label_index": self.label_index, "name": self.name, "dtype": self.dtype}


@keras.saving.register_keras_serializable(package="unet3d")
class RegionDice(keras.metrics.Metric):
    """Hard Dice of one channel, accumulated over all batches since the last reset.

    Target and prediction are thresholded (`y_true >= 0.5`, `p >= threshold`, where `p` is
    `sigmoid(y_pred)` when `from_logits`), then `2 * |T & P| / (|T| + |P|)` is computed over every
    voxel seen in the epoch; it is 1 when both are empty. `sample_weight`, if given, weighs each
    sample's voxels.

    Args:
        channel: index of the channel on the last axis.
        threshold: probability at or above which a voxel is predicted inside the region.
        from_logits: whether `y_pred` holds logits rather than probabilities.
        name: metric name, e.g. `"dice_wt"`; default `"dice_<channel>"`.
    """

    def __init__(
        self,
        channel: int,
        threshold: float = 0.5,
        from_logits: bool = False,
        name: str | None = None,
        dtype=None,
    ):
        super().__init__(name=name or f"dice_{channel}", dtype=dtype)
        self.channel = channel
        self.threshold = threshold
        self.from_logits = from_logits
        self.intersection = self.add_variable(shape=(), initializer="zeros", name="intersection")
        self.true_sum = self.add_variable(shape=(), initializer="zeros", name="true_sum")
        self.pred_sum = self.add_variable(shape=(), initializer="zeros", name="pred_sum")

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true, y_pred = as_float32(y_true[..., self.channel], y_pred[..., self.channel])
        if self.from_logits:
            y_pred = ops.sigmoid(y_pred)
        truth = ops.cast(y_true >= 0.5, "float32")
        prediction = ops.cast(y_pred >= self.threshold, "float32")
        weight = 1.0
        if sample_weight is not None:
            weight = ops.reshape(ops.cast(sample_weight, "float32"), (-1,) + (1,) * (len(truth.shape) - 1))
        self.intersection.assign_add(ops.sum(weight * truth * prediction))
        self.true_sum.assign_add(ops.sum(weight * truth))
        self.pred_sum.assign_add(ops.sum(weight * prediction))

    def result(self):
        total = self.true_sum + self.pred_sum
        return ops.where(total > 0, ops.divide_no_nan(2.0 * self.intersection, total), 1.0)

    def get_config(self) -> dict:
        return {
            "channel": self.channel,
            "threshold": self.threshold,
            "from_logits": self.from_logits,
            "name": self.name,
            "dtype": self.dtype,
        }


def region_dice_metrics(regions: Sequence[str] = REGION_NAMES, threshold: float = 0.5,
                        from_logits: bool = False) -> list[RegionDice]:
    """`dice_<region>` for each region channel, in order: `dice_wt`, `dice_tc`, `dice_et` by
    default (a convention's `region_names` for others, e.g. adding `dice_rc`)."""
    return [
        RegionDice(channel, threshold=threshold, from_logits=from_logits, name=f"dice_{region}")
        for channel, region in enumerate(regions)
    ]
