"""Model builders: parameter counts, shapes, size checks, the legacy switch, deep supervision,
saving and loading."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
import pytest

from unet3d.errors import InputError
from unet3d.losses import BCEDiceLoss
from unet3d.metrics import region_dice_metrics, weighted_dice_coefficient_loss
from unet3d.model import (
    build_isensee2017,
    build_unet_2d,
    build_unet_3d,
    deep_supervision_targets,
    isensee2017_model,
    load_old_model,
    unet_model_2d,
    unet_model_3d,
)

TINY = {"n_base_filters": 4, "depth": 3, "n_segmentation_levels": 2}
RNG = np.random.default_rng(0)


def random_batch(shape, n_labels=3):
    x = RNG.normal(size=shape).astype("float32")
    y = (RNG.uniform(size=shape[:-1] + (n_labels,)) > 0.7).astype("float32")
    return x, y


def layers_of(model, cls):
    return [layer for layer in model.layers if type(layer) is cls]


# --- parameter counts of the legacy port -------------------------------------------------------


@pytest.mark.parametrize("input_shape", [(128, 128, 128, 4), (None, None, None, 4)])
@pytest.mark.parametrize("legacy", [False, True])
def test_isensee2017_parameter_count(input_shape, legacy):
    assert build_isensee2017(input_shape, n_labels=3, legacy=legacy).count_params() == 8_269_561


@pytest.mark.parametrize("deconvolution, expected", [(True, 19_071_715), (False, 16_318_307)])
def test_unet_3d_parameter_count(deconvolution, expected):
    model = build_unet_3d((None, None, None, 4), n_labels=3, deconvolution=deconvolution)
    assert model.count_params() == expected


def test_instance_normalisation_has_a_scale_and_offset_per_channel():
    model = build_isensee2017((None, None, None, 4), n_labels=3)
    norms = layers_of(model, keras.layers.GroupNormalization)
    assert len(norms) == 3 * 5 + 3 * 4  # 3 conv blocks per encoder level and per decoder level
    for layer in norms:
        channels = layer.input.shape[-1]
        assert layer.groups == channels
        assert [tuple(w.shape) for w in layer.weights] == [(channels,), (channels,)]


def test_unet_2d_is_the_classic_architecture():
    model = build_unet_2d((None, None, 1), n_labels=2, batch_normalization=False)
    convs = layers_of(model, keras.layers.Conv2D)
    assert [c.filters for c in convs] == [64, 64, 128, 128, 256, 256, 512, 512, 1024, 1024] + [
        512,
        512,
        256,
        256,
        128,
        128,
        64,
        64,
        2,
    ]
    assert [c.filters for c in layers_of(model, keras.layers.Conv2DTranspose)] == [512, 256, 128, 64]
    filters = [64, 128, 256, 512, 1024]
    encoder = sum((9 * c_in + 1) * c for c_in, c in zip([1] + filters[:-1], filters, strict=True)) + sum(
        (9 * c + 1) * c for c in filters
    )
    decoder = sum((4 * 2 * c + 1) * c + (9 * 2 * c + 1) * c + (9 * c + 1) * c for c in filters[:-1])
    assert model.count_params() == encoder + decoder + (64 + 1) * 2 == 31_030_658


# --- shapes and size checks ---------------------------------------------------------------------


@pytest.mark.parametrize("size", [(16, 16, 16), (32, 16, 8), (8, 24, 16)])
def test_isensee2017_any_valid_size(size):
    model = build_isensee2017((None, None, None, 2), n_labels=3, **TINY)
    output = model(np.zeros((2, *size, 2), "float32"))
    assert output.shape == (2, *size, 3)


@pytest.mark.parametrize("size", [(16, 16, 16), (32, 8, 24)])
def test_plain_unets_any_valid_size(size):
    unet_3d = build_unet_3d((None, None, None, 2), n_labels=3, depth=3, n_base_filters=4, deconvolution=True)
    assert unet_3d(np.zeros((1, *size, 2), "float32")).shape == (1, *size, 3)
    unet_2d = build_unet_2d((None, None, 2), n_labels=3, depth=3, n_base_filters=4)
    assert unet_2d(np.zeros((3, *size[:2], 2), "float32")).shape == (3, *size[:2], 3)


def test_wrong_input_shape_raises_clear_error():
    with pytest.raises(
        InputError, match=r"input_shape: spatial size \(100, 128, 128\) must be .*multiple of \(16, 16, 16\)"
    ):
        build_isensee2017((100, 128, 128, 4))
    with pytest.raises(InputError, match="channels-last"):
        build_isensee2017((4, 128, 128, 128))  # the port's channels-first shape
    with pytest.raises(InputError, match="channels-last"):
        build_unet_3d((64, 64, 4))
    with pytest.raises(InputError, match=r"multiple of \(8, 8\)"):
        build_unet_2d((60, 64, 1), depth=4)
    with pytest.raises(InputError, match="n_segmentation_levels"):
        build_isensee2017((None, None, None, 4), depth=3, n_segmentation_levels=3)


def test_wrong_size_at_call_raises_clear_error():
    model = isensee2017_model((None, None, None, 2), n_labels=3, **TINY)
    with pytest.raises(InputError, match=r"spatial size \(18, 16, 16\) must be .*multiple of \(4, 4, 4\)"):
        model(np.zeros((1, 18, 16, 16, 2), "float32"))
    with pytest.raises(InputError, match="e.g. to \\(20, 16, 16\\)"):
        model.predict(np.zeros((1, 18, 16, 16, 2), "float32"), verbose=0)


# --- the legacy switch ----------------------------------------------------------------------------


def hyper_parameters(model):
    slopes = {layer.negative_slope for layer in layers_of(model, keras.layers.LeakyReLU)}
    epsilons = {layer.epsilon for layer in layers_of(model, keras.layers.GroupNormalization)}
    return slopes, epsilons


def configs_without(model, keys):
    configs = []
    for layer in model.layers:
        config = {k: v for k, v in layer.get_config().items() if k not in keys and k != "name"}
        configs.append((type(layer).__name__, config))
    return configs


def test_legacy_switch_changes_only_slope_and_epsilon():
    paper = build_isensee2017((None, None, None, 4), n_labels=3, **TINY)
    legacy = build_isensee2017((None, None, None, 4), n_labels=3, legacy=True, **TINY)
    assert hyper_parameters(paper) == ({0.01}, {1e-5})
    assert hyper_parameters(legacy) == ({0.3}, {1e-3})
    assert len(layers_of(paper, keras.layers.ReLU)) == 0
    assert configs_without(paper, {"negative_slope", "epsilon"}) == configs_without(
        legacy, {"negative_slope", "epsilon"}
    )
    assert configs_without(paper, set()) != configs_without(legacy, set())


def test_explicit_slope_and_epsilon_override_the_switch():
    model = build_isensee2017((None, None, None, 4), legacy=True, negative_slope=0.1, **TINY)
    assert hyper_parameters(model) == ({0.1}, {1e-3})
    model = build_isensee2017((None, None, None, 4), norm_epsilon=1e-4, **TINY)
    assert hyper_parameters(model) == ({0.01}, {1e-4})


# --- compiled models ------------------------------------------------------------------------------


def test_isensee2017_model_is_compiled_like_the_port():
    model = isensee2017_model((None, None, None, 4), **TINY)
    assert model.loss is weighted_dice_coefficient_loss
    assert isinstance(model.optimizer, keras.optimizers.Adam)
    assert float(model.optimizer.learning_rate) == pytest.approx(5e-4)
    model = isensee2017_model(
        (None, None, None, 4), optimizer=keras.optimizers.SGD, initial_learning_rate=0.1, **TINY
    )
    assert isinstance(model.optimizer, keras.optimizers.SGD)
    assert float(model.optimizer.learning_rate) == pytest.approx(0.1)


def test_unet_model_3d_label_wise_metrics_train():
    model = unet_model_3d(
        (16, 16, 16, 2), n_labels=3, depth=3, n_base_filters=4, include_label_wise_dice_coefficients=True
    )
    x, y = random_batch((2, 16, 16, 16, 2))
    history = model.fit(x, y, epochs=1, verbose=0).history
    for name in ["loss", "dice_coefficient", "label_0_dice_coef", "label_1_dice_coef", "label_2_dice_coef"]:
        assert np.isfinite(history[name][0]), name


def test_region_metrics_reported_by_name_during_training():
    model = isensee2017_model(
        (16, 16, 16, 2), loss_function=BCEDiceLoss(), metrics=region_dice_metrics(), **TINY
    )
    x, y = random_batch((2, 16, 16, 16, 2))
    history = model.fit(x, y, epochs=2, verbose=0).history
    assert {"dice_wt", "dice_tc", "dice_et"} <= set(history)
    assert all(0 <= v <= 1 for v in history["dice_wt"])
    assert history["loss"][0] > 0


# --- deep supervision ------------------------------------------------------------------------------


@pytest.mark.slow
def test_deep_supervision_outputs_and_targets():
    model = isensee2017_model((None, None, None, 2), deep_supervision=True, n_base_filters=4, depth=4)
    outputs = model(np.zeros((1, 16, 16, 8, 2), "float32"))
    assert {name: tuple(o.shape) for name, o in outputs.items()} == {
        "segmentation": (1, 16, 16, 8, 3),
        "segmentation_level_1": (1, 8, 8, 4, 3),
        "segmentation_level_2": (1, 4, 4, 2, 3),
    }
    x, y = random_batch((2, 16, 16, 8, 2))
    targets = deep_supervision_targets(y, 3)
    expected = y.reshape(2, 4, 4, 4, 4, 2, 4, 3).mean(axis=(2, 4, 6))
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(targets["segmentation_level_2"]), expected, rtol=1e-6
    )
    history = model.fit(x, targets, epochs=1, verbose=0).history
    losses = [
        history[f"{name}_loss"][0]
        for name in ("segmentation", "segmentation_level_1", "segmentation_level_2")
    ]
    # Default weights 1/2**level, normalised: 4/7, 2/7, 1/7.
    assert history["loss"][0] == pytest.approx(np.dot([4 / 7, 2 / 7, 1 / 7], losses), rel=1e-4)


def test_deep_supervision_weights_must_match_levels():
    with pytest.raises(InputError, match="deep_supervision_weights"):
        isensee2017_model(
            (None, None, None, 2),
            deep_supervision=True,
            deep_supervision_weights=[1, 1],
            **{**TINY, "n_segmentation_levels": 1},
        )


# --- saving and loading -----------------------------------------------------------------------------


@pytest.mark.parametrize("builder", [pytest.param("isensee2017", marks=pytest.mark.slow),
                                     "unet_2d"])
def test_save_load_round_trip_identical_predictions(tmp_path, builder):
    if builder == "isensee2017":
        model = isensee2017_model(
            (None, None, None, 2),
            loss_function=BCEDiceLoss(from_logits=False),
            metrics=region_dice_metrics(),
            **TINY,
        )
        x, y = random_batch((2, 16, 16, 16, 2))
    else:
        model = unet_model_2d(
            (None, None, 2), n_labels=3, depth=3, n_base_filters=4, include_label_wise_dice_coefficients=True
        )
        x, y = random_batch((2, 16, 16, 2))
    model.fit(x, y, epochs=1, verbose=0)  # builds the optimizer state, moves batch-norm statistics
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = load_old_model(path)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    assert type(loaded.loss) is type(model.loss)
    for original, restored in zip(model.optimizer.variables, loaded.optimizer.variables, strict=True):
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(original), keras.ops.convert_to_numpy(restored)
        )
    assert loaded.evaluate(x, y, verbose=0, return_dict=True) == pytest.approx(
        model.evaluate(x, y, verbose=0, return_dict=True), rel=1e-6
    )


def test_hdf5_model_written_by_keras_3_loads(tmp_path):
    model = unet_model_3d((None, None, None, 1), depth=2, n_base_filters=2)
    path = tmp_path / "model.h5"
    model.save(path)  # Keras 3 still writes (legacy) HDF5
    x = RNG.normal(size=(1, 8, 8, 8, 1)).astype("float32")
    np.testing.assert_array_equal(load_old_model(path).predict(x, verbose=0), model.predict(x, verbose=0))


def test_load_old_model_errors_name_the_file(tmp_path):
    missing = tmp_path / "missing.keras"
    with pytest.raises(InputError, match=f"{missing}.*does not exist"):
        load_old_model(missing)
    corrupt = tmp_path / "corrupt.keras"
    corrupt.write_bytes(b"not a zip archive")
    with pytest.raises(InputError, match=f"cannot load model file {corrupt}.*corrupt"):
        load_old_model(corrupt)
    old = tmp_path / "isensee_2017_model.h5"
    old.write_bytes(b"\x89HDF\r\n\x1a\n truncated")
    with pytest.raises(InputError, match=f"cannot load model file {old}.*neither a Keras 3 HDF5 model nor"):
        load_old_model(old)
    other = tmp_path / "model.pt"
    other.write_bytes(b"")
    with pytest.raises(InputError, match=f"{other}: unknown format"):
        load_old_model(other)


# --- the paper's pre-activation encoder and L2 ---------------------------------------------------


def inbound_layers(model) -> dict[str, list[str]]:
    """{layer name: names of the layers feeding it}, from the functional config."""
    def names(value):
        if isinstance(value, dict) and value.get("class_name") == "__keras_tensor__":
            return [value["config"]["keras_history"][0]]
        if isinstance(value, (list, tuple)):
            return [n for item in value for n in names(item)]
        return []
    return {layer["name"]: names([node["args"] for node in layer["inbound_nodes"]])
            for layer in model.get_config()["layers"]}


@pytest.mark.parametrize("n_labels, activation, expected", [
    (3, "sigmoid", 8_269_561),
    # one more output: one more kernel column per head input channel (16 + 32 + 64) and bias
    (4, "softmax", 8_269_561 + (16 + 32 + 64) + 3)])
def test_preactivation_keeps_the_parameter_count(n_labels, activation, expected):
    model = build_isensee2017((None, None, None, 4), n_labels=n_labels,
                              activation_name=activation, preactivation=True)
    assert model.count_params() == expected


def test_preactivation_encoder_normalises_and_activates_before_each_context_convolution():
    model = build_isensee2017((None, None, None, 4), preactivation=True, **TINY)
    feeds, kind = inbound_layers(model), {l.name: type(l).__name__ for l in model.layers}

    def chain(name, length):
        """The names of `length` layers up the first inputs from `name` (itself first)."""
        names = []
        for _ in range(length):
            names.append(name)
            name = feeds[name][0] if feeds[name] else None
        return names

    level_convs = [l.name for l in model.layers if isinstance(l, keras.layers.Conv3D)
                   and l.strides == (2, 2, 2)]
    assert len(level_convs) == TINY["depth"] - 1
    sums = [name for name, t in kind.items() if t == "Add" and
            any(kind[f] == "Conv3D" for f in feeds[name])][:TINY["depth"]]
    assert len(sums) == TINY["depth"]
    for name in sums:
        level_conv, context_conv = feeds[name]
        # context: norm, leaky ReLU, conv, dropout, norm, leaky ReLU, conv, from the level conv
        path = chain(context_conv, 8)
        assert [kind[n] for n in path] == [
            "Conv3D", "LeakyReLU", "GroupNormalization", "SpatialDropout3D", "Conv3D",
            "LeakyReLU", "GroupNormalization", "Conv3D"]
        assert path[-1] == level_conv
        # the sum is normalised and activated before it leaves the level
        consumers = [n for n, f in feeds.items() if name in f]
        assert [kind[n] for n in consumers] == ["GroupNormalization"]
    # the legacy encoder activates after each convolution instead
    legacy = build_isensee2017((None, None, None, 4), **TINY)
    legacy_kind = {l.name: type(l).__name__ for l in legacy.layers}
    first_conv = next(l.name for l in legacy.layers if isinstance(l, keras.layers.Conv3D))
    assert [legacy_kind[n] for n, f in inbound_layers(legacy).items() if first_conv in f] == [
        "GroupNormalization"]


def test_l2_penalty_of_every_kernel_is_in_the_loss():
    keras.utils.set_random_seed(0)
    model = build_isensee2017((None, None, None, 4), preactivation=True, l2=1e-5, **TINY)
    kernels = [l.kernel for l in model.layers if isinstance(l, keras.layers.Conv3D)]
    expected = 1e-5 * sum(float(np.sum(np.square(k.numpy()))) for k in kernels)
    model.compile(optimizer="adam", loss=lambda y_true, y_pred: 0.0 * keras.ops.mean(y_pred))
    x, y = random_batch((1, 16, 16, 16, 4))
    assert model.evaluate(x, y, verbose=0) == pytest.approx(expected, rel=1e-5)
    assert not build_isensee2017((None, None, None, 4), **TINY).losses


@pytest.mark.slow
def test_preactivation_network_learns():
    keras.utils.set_random_seed(1)
    model = isensee2017_model((16, 16, 16, 4), preactivation=True, l2=1e-5,
                              initial_learning_rate=5e-3, **TINY)
    x, y = random_batch((2, 16, 16, 16, 4))
    first = model.train_on_batch(x, y)
    for _ in range(30):
        last = model.train_on_batch(x, y)
    assert last < first - 0.05  # the weighted Dice loss: -0.35 -> -0.46 here
