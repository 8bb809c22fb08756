"""Losses and metrics against hand-computed values and independent numpy formulas."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
import pytest
import tensorflow as tf

from unet3d import losses, metrics

RNG = np.random.default_rng(0)


def cube_labels(batch=2, size=8, channels=3):
    """Nested cubes in each channel, channels-last."""
    y = np.zeros((batch, size, size, size, channels), "float32")
    for c in range(channels):
        y[:, c : size - c, c : size - c, c : size - c, c] = 1
    return y


def random_probabilities(shape):
    return RNG.uniform(0.01, 0.99, shape).astype("float32")


def value(x):
    return keras.ops.convert_to_numpy(x)


# --- the legacy port's coefficients ---------------------------------------------------------


def test_dice_coefficient_hand_computed():
    y_true = np.array([1, 1, 0, 0], "float32").reshape(1, 4, 1)
    y_pred = np.array([1, 0.5, 0.5, 0], "float32").reshape(1, 4, 1)
    # intersection 1.5, sums 2 and 2: (2 * 1.5 + 1) / (4 + 1)
    assert value(metrics.dice_coefficient(y_true, y_pred)) == pytest.approx(0.8)
    assert value(metrics.dice_coefficient_loss(y_true, y_pred)) == pytest.approx(-0.8)
    assert metrics.dice_coef is metrics.dice_coefficient
    assert metrics.dice_coef_loss is metrics.dice_coefficient_loss


def test_weighted_dice_port_values():
    y_true = cube_labels()
    one_label_zeroed = y_true.copy()
    one_label_zeroed[..., 1] = 0
    assert value(metrics.weighted_dice_coefficient(y_true, y_true)) == pytest.approx(1.0)
    assert value(metrics.weighted_dice_coefficient(y_true, one_label_zeroed)) == pytest.approx(
        2 / 3, abs=1e-6
    )
    empty = np.zeros_like(y_true)
    assert value(metrics.weighted_dice_coefficient(empty, empty)) == pytest.approx(1.0)
    assert value(metrics.weighted_dice_coefficient(y_true, empty)) == pytest.approx(0.0, abs=1e-6)
    assert value(metrics.weighted_dice_coefficient_loss(y_true, one_label_zeroed)) == pytest.approx(
        -2 / 3, abs=1e-6
    )


def test_weighted_dice_is_per_sample_and_channel():
    y_true, y_pred = cube_labels(), random_probabilities((2, 8, 8, 8, 3))
    intersection = (y_true * y_pred).sum(axis=(1, 2, 3))
    total = y_true.sum(axis=(1, 2, 3)) + y_pred.sum(axis=(1, 2, 3))
    expected = np.mean((2 * intersection + 1e-5) / (total + 1e-5))
    assert value(metrics.weighted_dice_coefficient(y_true, y_pred)) == pytest.approx(expected, rel=1e-5)


def test_label_wise_dice_functions():
    y_true, y_pred = cube_labels(), random_probabilities((2, 8, 8, 8, 3))
    function = metrics.get_label_dice_coefficient_function(2)
    assert function.__name__ == "label_2_dice_coef"
    t, p = y_true[..., 2], y_pred[..., 2]
    expected = (2 * (t * p).sum() + 1) / (t.sum() + p.sum() + 1)
    assert value(function(y_true, y_pred)) == pytest.approx(expected, rel=1e-5)
    assert value(metrics.label_wise_dice_coefficient(y_true, y_pred, 2)) == pytest.approx(expected, rel=1e-5)
    metric = metrics.LabelDiceCoefficient(2)
    metric.update_state(y_true, y_pred)
    assert metric.name == "label_2_dice_coef"
    assert value(metric.result()) == pytest.approx(expected, rel=1e-5)


# --- losses ----------------------------------------------------------------------------------


def numpy_bce(t, p):
    return -(t * np.log(p) + (1 - t) * np.log(1 - p))


def numpy_focal(t, p, alpha, gamma):
    positive = -alpha * (1 - p) ** gamma * np.log(p)
    negative = -(1 - alpha) * p**gamma * np.log(1 - p)
    return np.where(t == 1, positive, negative)


def test_soft_dice_loss_hand_computed():
    y_true = np.zeros((2, 4, 2), "float32")
    y_true[0, :2, 0] = 1  # sample 0: channel 0 has two voxels, channel 1 empty
    y_pred = np.zeros((2, 4, 2), "float32")
    y_pred[0, :, 0] = 0.5  # intersection 1, sums 2 + 2 -> Dice ~0.5; empty channel predicted empty -> 1
    expected_sample_0 = 1 - ((2 * 1 + 1e-5) / (4 + 1e-5) + 1) / 2
    result = value(losses.soft_dice_loss(y_true, y_pred))
    assert result.shape == (2,)
    assert result == pytest.approx([expected_sample_0, 0.0], abs=1e-6)
    # Batch Dice pools the samples: channel 0 as above, channel 1 empty in both.
    assert value(losses.soft_dice_loss(y_true, y_pred, batch_dice=True)) == pytest.approx(
        expected_sample_0, abs=1e-6
    )


def test_soft_dice_loss_matches_weighted_dice():
    y_true, y_pred = cube_labels(), random_probabilities((2, 8, 8, 8, 3))
    assert np.mean(value(losses.soft_dice_loss(y_true, y_pred))) == pytest.approx(
        1 + value(metrics.weighted_dice_coefficient_loss(y_true, y_pred)), rel=1e-5
    )


def test_bce_focal_and_weighted_against_numpy():
    y_true, y_pred = cube_labels(), random_probabilities((2, 8, 8, 8, 3))
    bce = numpy_bce(y_true, y_pred).mean(axis=(1, 2, 3, 4))
    assert value(losses.binary_crossentropy(y_true, y_pred)) == pytest.approx(bce, rel=1e-5)
    dice = value(losses.soft_dice_loss(y_true, y_pred))
    assert value(losses.bce_dice_loss(y_true, y_pred)) == pytest.approx(bce + dice, rel=1e-5)
    focal = numpy_focal(y_true, y_pred, alpha=0.25, gamma=2.0).mean(axis=(1, 2, 3, 4))
    assert value(losses.focal_loss(y_true, y_pred)) == pytest.approx(focal, rel=1e-5)
    # gamma 0 and alpha 0.5: half the cross-entropy.
    assert value(losses.focal_loss(y_true, y_pred, alpha=0.5, gamma=0.0)) == pytest.approx(bce / 2, rel=1e-5)
    weights = [1.0, 5.0, 20.0]
    per_voxel = -(np.array(weights) * y_true * np.log(y_pred) + (1 - y_true) * np.log(1 - y_pred))
    assert value(losses.class_weighted_crossentropy(y_true, y_pred, weights)) == pytest.approx(
        per_voxel.mean(axis=(1, 2, 3, 4)), rel=1e-5
    )
    assert value(losses.class_weighted_crossentropy(y_true, y_pred, [1, 1, 1])) == pytest.approx(
        bce, rel=1e-5
    )


@pytest.mark.parametrize(
    "loss",
    [
        losses.soft_dice_loss,
        losses.binary_crossentropy,
        losses.bce_dice_loss,
        losses.focal_loss,
        lambda t, p, from_logits: losses.class_weighted_crossentropy(t, p, [1.0, 3.0, 9.0], from_logits),
    ],
)
def test_from_logits_equals_from_probabilities(loss):
    y_true = cube_labels()
    logits = RNG.uniform(-6, 6, y_true.shape).astype("float32")
    probabilities = value(keras.ops.sigmoid(logits))
    assert value(loss(y_true, logits, from_logits=True)) == pytest.approx(
        value(loss(y_true, probabilities, from_logits=False)), rel=1e-4
    )


LOSSES = [
    losses.soft_dice_loss,
    losses.bce_dice_loss,
    losses.focal_loss,
    lambda t, p, from_logits: losses.class_weighted_crossentropy(t, p, [1.0, 3.0, 9.0], from_logits),
    lambda t, p, from_logits: metrics.weighted_dice_coefficient_loss(t, p),
    lambda t, p, from_logits: metrics.dice_coefficient_loss(t, p),
]


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("from_logits", [False, True])
@pytest.mark.parametrize("case", ["empty labels", "saturated", "saturated wrong"])
def test_losses_and_gradients_finite(loss, from_logits, case):
    y_true = cube_labels() if case != "empty labels" else np.zeros((2, 8, 8, 8, 3), "float32")
    if case == "empty labels":
        y_pred = np.zeros_like(y_true)
    else:
        y_pred = y_true if case == "saturated" else 1 - y_true
    if from_logits:
        y_pred = (2 * y_pred - 1) * 1e4  # saturated logits: +-1e4
    y_pred = tf.Variable(y_pred)
    with tf.GradientTape() as tape:
        result = tf.reduce_mean(loss(y_true, y_pred, from_logits=from_logits))
    gradient = tape.gradient(result, y_pred)
    assert np.isfinite(result.numpy())
    assert np.all(np.isfinite(gradient.numpy()))
    if case == "saturated wrong" and loss is not LOSSES[4] and loss is not LOSSES[5]:
        assert result.numpy() > 0.1  # clipping must not hide a completely wrong prediction


@pytest.mark.parametrize("loss", LOSSES[:4])
def test_losses_compute_in_float32(loss):
    y_true, y_pred = cube_labels(), random_probabilities((2, 8, 8, 8, 3))
    low = loss(keras.ops.cast(y_true, "bfloat16"), keras.ops.cast(y_pred, "bfloat16"), from_logits=False)
    assert low.dtype == tf.float32
    reference = value(
        loss(y_true, value(keras.ops.cast(keras.ops.cast(y_pred, "bfloat16"), "float32")), from_logits=False)
    )
    assert value(low) == pytest.approx(reference, rel=1e-6)


@pytest.mark.parametrize(
    "loss_object, function",
    [
        (losses.SoftDiceLoss(batch_dice=True), lambda t, p: losses.soft_dice_loss(t, p, batch_dice=True)),
        (losses.BCEDiceLoss(from_logits=True), lambda t, p: losses.bce_dice_loss(t, p, from_logits=True)),
        (losses.FocalLoss(alpha=0.4, gamma=1.5), lambda t, p: losses.focal_loss(t, p, 0.4, 1.5)),
        (
            losses.ClassWeightedCrossentropy([2.0, 1.0, 4.0]),
            lambda t, p: losses.class_weighted_crossentropy(t, p, [2.0, 1.0, 4.0]),
        ),
    ],
)
def test_loss_classes_match_functions_and_serialise(loss_object, function):
    y_true, y_pred = cube_labels(), random_probabilities((2, 8, 8, 8, 3))
    expected = np.mean(value(function(y_true, y_pred)))
    assert value(loss_object(y_true, y_pred)) == pytest.approx(expected, rel=1e-5)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss_object))
    assert type(restored) is type(loss_object)
    assert restored.get_config() == loss_object.get_config()
    assert value(restored(y_true, y_pred)) == pytest.approx(expected, rel=1e-5)


# --- Dice per region ---------------------------------------------------------------------------


def numpy_hard_dice(t, p):
    t, p = t >= 0.5, p >= 0.5
    total = t.sum() + p.sum()
    return 1.0 if total == 0 else 2 * (t & p).sum() / total


def test_region_dice_accumulates_over_batches_like_numpy():
    names = [metric.name for metric in metrics.region_dice_metrics()]
    assert names == ["dice_wt", "dice_tc", "dice_et"]
    batches = [(cube_labels(), random_probabilities((2, 8, 8, 8, 3))) for _ in range(3)]
    all_true = np.concatenate([t for t, _ in batches])
    all_pred = np.concatenate([p for _, p in batches])
    for channel, metric in enumerate(metrics.region_dice_metrics()):
        for y_true, y_pred in batches:
            metric.update_state(y_true, y_pred)
        expected = numpy_hard_dice(all_true[..., channel], all_pred[..., channel])
        assert value(metric.result()) == pytest.approx(expected, rel=1e-6)
        # Not the mean of per-batch Dice values.
        metric.reset_state()
        metric.update_state(*batches[0])
        assert value(metric.result()) == pytest.approx(
            numpy_hard_dice(batches[0][0][..., channel], batches[0][1][..., channel]), rel=1e-6
        )


def test_region_dice_empty_threshold_and_logits():
    metric = metrics.RegionDice(0, name="dice_wt")
    empty = np.zeros((1, 4, 4, 4, 3), "float32")
    metric.update_state(empty, empty + 0.49)
    assert value(metric.result()) == pytest.approx(1.0)
    metric.update_state(empty, empty + 0.5)  # 64 false-positive voxels at exactly 0.5
    assert value(metric.result()) == pytest.approx(0.0)
    y_true, logits = cube_labels(), RNG.normal(size=(2, 8, 8, 8, 3)).astype("float32")
    from_logits = metrics.RegionDice(1, from_logits=True)
    from_logits.update_state(y_true, logits)
    probabilities = 1 / (1 + np.exp(-logits))
    assert value(from_logits.result()) == pytest.approx(
        numpy_hard_dice(y_true[..., 1], probabilities[..., 1]), rel=1e-6
    )


def test_region_dice_sample_weights_drop_samples():
    y_true, y_pred = cube_labels(), random_probabilities((2, 8, 8, 8, 3))
    metric = metrics.RegionDice(2)
    metric.update_state(y_true, y_pred, sample_weight=np.array([0.0, 1.0], "float32"))
    assert value(metric.result()) == pytest.approx(
        numpy_hard_dice(y_true[1, ..., 2], y_pred[1, ..., 2]), rel=1e-6
    )


def test_region_dice_serialises():
    metric = metrics.RegionDice(2, threshold=0.3, from_logits=True, name="dice_et")
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(metric))
    assert isinstance(restored, metrics.RegionDice)
    assert restored.get_config() == metric.get_config()
