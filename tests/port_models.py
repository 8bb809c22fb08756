"""The legacy port's networks rebuilt with the Keras 2 API (tf-keras), to write the HDF5 files the
port wrote and to compute reference outputs.

`port_isensee2017` and `port_unet_3d` follow the port's builders layer by layer (creation order,
names, defaults: leaky ReLU 0.3, epsilon 1e-3, concatenation orders). With
`data_format="channels_first"` they are the port's graph (to save, not to run: TensorFlow's CPU
kernels have no channels-first 3D convolution); with "channels_last" the same graph in the layout
a CPU runs, which takes the same weights (`reference_outputs`).
"""

from __future__ import annotations

import numpy as np
import tf_keras
from tf_keras import layers


class InstanceNormalization(layers.Layer):
    """keras_contrib's InstanceNormalization as the port used it: per sample and channel, over the
    spatial axes, `gamma` and `beta` of one value per channel of `axis`."""

    def __init__(self, axis=None, epsilon=1e-3, center=True, scale=True, **kwargs):
        super().__init__(**kwargs)
        self.axis, self.epsilon, self.center, self.scale = axis, epsilon, center, scale

    def build(self, input_shape):
        shape = (input_shape[self.axis],)
        if self.scale:
            self.gamma = self.add_weight(shape=shape, name="gamma", initializer="ones")
        if self.center:
            self.beta = self.add_weight(shape=shape, name="beta", initializer="zeros")
        super().build(input_shape)

    def call(self, inputs):
        rank = len(inputs.shape)
        axis = self.axis % rank
        reduction = [a for a in range(1, rank) if a != axis]
        mean = tf_keras.backend.mean(inputs, reduction, keepdims=True)
        std = tf_keras.backend.std(inputs, reduction, keepdims=True) + self.epsilon
        shape = [1] * rank
        shape[axis] = inputs.shape[axis]
        x = (inputs - mean) / std
        if self.scale:
            x = x * tf_keras.backend.reshape(self.gamma, shape)
        if self.center:
            x = x + tf_keras.backend.reshape(self.beta, shape)
        return x

    def get_config(self):
        return {**super().get_config(), "axis": self.axis, "epsilon": self.epsilon,
                "center": self.center, "scale": self.scale}


def _conv_block(x, filters, data_format, kernel=(3, 3, 3), strides=(1, 1, 1), norm=None,
                activation=None):
    channel_axis = 1 if data_format == "channels_first" else -1
    x = layers.Conv3D(filters, kernel, padding="same", strides=strides,
                      data_format=data_format)(x)
    if norm == "batch":
        x = layers.BatchNormalization(axis=channel_axis)(x)
    elif norm == "instance":
        x = InstanceNormalization(axis=channel_axis)(x)
    return activation()(x) if activation else layers.Activation("relu")(x)


def _shape(spatial, channels, data_format):
    return (channels, *spatial) if data_format == "channels_first" else (*spatial, channels)


def port_isensee2017(data_format, input_channels=4, spatial=(None, None, None),
                     n_base_filters=16, depth=5, dropout_rate=0.3, n_segmentation_levels=3,
                     n_labels=3, activation_name="sigmoid"):
    """The port's isensee2017_model graph (uncompiled)."""
    axis = 1 if data_format == "channels_first" else -1

    def block(x, filters, **kwargs):
        return _conv_block(x, filters, data_format, norm="instance", activation=layers.LeakyReLU,
                           **kwargs)

    inputs = layers.Input(_shape(spatial, input_channels, data_format))
    current, levels, level_filters = inputs, [], []
    for level in range(depth):
        filters = 2**level * n_base_filters
        level_filters.append(filters)
        conv = block(current, filters, strides=(1, 1, 1) if level == 0 else (2, 2, 2))
        context = block(conv, filters)
        context = layers.SpatialDropout3D(dropout_rate, data_format=data_format)(context)
        context = block(context, filters)
        current = layers.Add()([conv, context])
        levels.append(current)
    segmentations = []
    for level in range(depth - 2, -1, -1):
        up = layers.UpSampling3D((2, 2, 2), data_format=data_format)(current)
        up = block(up, level_filters[level])
        x = layers.concatenate([levels[level], up], axis=axis)
        x = block(x, level_filters[level])
        current = block(x, level_filters[level], kernel=(1, 1, 1))
        if level < n_segmentation_levels:
            segmentations.insert(0, layers.Conv3D(n_labels, (1, 1, 1),
                                                  data_format=data_format)(current))
    output = None
    for level in reversed(range(n_segmentation_levels)):
        output = segmentations[level] if output is None else layers.Add()(
            [output, segmentations[level]])
        if level > 0:
            output = layers.UpSampling3D((2, 2, 2), data_format=data_format)(output)
    return tf_keras.Model(inputs, layers.Activation(activation_name)(output))


def port_unet_3d(data_format, input_channels=4, spatial=(None, None, None), pool_size=(2, 2, 2),
                 n_labels=3, deconvolution=False, depth=4, n_base_filters=32,
                 batch_normalization=False, activation_name="sigmoid"):
    """The port's unet_model_3d graph (uncompiled)."""
    axis = 1 if data_format == "channels_first" else -1
    norm = "batch" if batch_normalization else None
    inputs = layers.Input(_shape(spatial, input_channels, data_format))
    current, levels = inputs, []
    for level in range(depth):
        first = _conv_block(current, n_base_filters * 2**level, data_format, norm=norm)
        second = _conv_block(first, n_base_filters * 2**level * 2, data_format, norm=norm)
        if level < depth - 1:
            current = layers.MaxPooling3D(pool_size, data_format=data_format)(second)
        else:
            current = second
        levels.append(second)
    for level in range(depth - 2, -1, -1):
        filters = current.shape[axis]
        if deconvolution:
            up = layers.Conv3DTranspose(filters, pool_size, strides=pool_size,
                                        data_format=data_format)(current)
        else:
            up = layers.UpSampling3D(pool_size, data_format=data_format)(current)
        x = layers.concatenate([up, levels[level]], axis=axis)
        skip_filters = levels[level].shape[axis]
        x = _conv_block(x, skip_filters, data_format, norm=norm)
        current = _conv_block(x, skip_filters, data_format, norm=norm)
    output = layers.Conv3D(n_labels, (1, 1, 1), data_format=data_format)(current)
    return tf_keras.Model(inputs, layers.Activation(activation_name)(output))


def write_port_file(path, builder, seed=0, **settings):
    """Save the port's channels-first graph of `builder(**settings)` with seeded random weights
    (normalisation scales and offsets far from 1 and 0) as Keras 2 HDF5 at `path`; returns the
    channels-last twin holding the same weights, to compute reference outputs."""
    tf_keras.utils.set_random_seed(seed)
    port = builder("channels_first", **settings)
    rng = np.random.default_rng(seed)
    weights = [w if w.ndim > 1 else rng.uniform(0.5, 1.5, w.shape).astype(np.float32)
               for w in port.get_weights()]
    port.set_weights(weights)
    port.save(path, save_format="h5")
    twin = builder("channels_last", **settings)
    twin.set_weights(weights)
    return twin


def reference_outputs(twin, batch_channels_first: np.ndarray) -> np.ndarray:
    """The port model's outputs (channels-first) for a channels-first batch, computed by its
    channels-last twin on the CPU."""
    batch = np.moveaxis(batch_channels_first, 1, -1)
    return np.moveaxis(twin.predict_on_batch(batch), -1, 1)
