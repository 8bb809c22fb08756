"""Keras 3 models for BraTS segmentation, channels-last: the Isensee 2017 3D U-Net, the legacy
port's 3D U-Net, a classic 2D U-Net; `save_model` / `load_old_model` for model files and
`read_card` for the model card each file carries.

`isensee2017_model`, `unet_model_3d` and `unet_model_2d` return compiled models, like the legacy
port's builders; the `build_*` functions return the same networks uncompiled.
"""

from unet3d.model.blocks import SpatialSizeCheck, model_divisors
from unet3d.model.isensee2017 import (
    build_isensee2017,
    deep_supervision_targets,
    isensee2017_model,
)
from unet3d.model.card import ModelCard, read_card
from unet3d.model.saving import load_old_model, save_model
from unet3d.model.unet import build_unet_2d, build_unet_3d, unet_model_2d, unet_model_3d

__all__ = [
    "ModelCard",
    "SpatialSizeCheck",
    "build_isensee2017",
    "build_unet_2d",
    "build_unet_3d",
    "deep_supervision_targets",
    "isensee2017_model",
    "load_old_model",
    "model_divisors",
    "read_card",
    "save_model",
    "unet_model_2d",
    "unet_model_3d",
]
