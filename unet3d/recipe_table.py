"""Where each recipe's choices come from, and the table of docs/recipes.md generated from it.

`CHOICE_SOURCES` holds, for each setting on which the recipes (`unet3d.config.PRESETS`) differ,
the papers and the port's scripts behind its values; `preset_table()` writes the recipes side by
side with those sources (a test keeps docs/recipes.md equal to it).
"""

from __future__ import annotations

import dataclasses

from unet3d.cli import format_value
from unet3d.config import PRESETS, TrainConfig, preset

#: Where each choice of the recipes comes from: the settings on which they differ, with the
#: papers and the port's scripts behind each value (`preset_table`, docs/recipes.md).
#: paper2017 = Isensee et al. 2017 (LNCS 10670); nnU-Net = Isensee et al.'s BraTS 2020 entry
#: (nnU-Net's region training); port = the legacy Keras 2 scripts (brats/train_isensee2017.py,
#: brats/train.py).
CHOICE_SOURCES: dict[str, str] = {
    "data_file": "the port's store names (brats_data.h5 resampled to 128^3 or 144^3); the "
                 "papers crop each brain at native resolution",
    "model": "the paper's network; the port's plain 3D U-Net (Cicek et al. 2016) for unet",
    "legacy_model": "the port's leaky ReLU slope 0.3 and epsilon 1e-3; the paper: 0.01, 1e-5",
    "n_base_filters": "the paper: 16; the port's unet: 32",
    "image_shape": "the port resamples whole images to 128^3 (isensee) or 144^3 (unet); the "
                   "papers crop the brain",
    "patch_shape": "the paper and nnU-Net: random 128^3 patches; the port: whole 128^3 images or "
                   "64^3 grid patches",
    "random_patches": "the paper (nnU-Net: a third centred on tumour); the port: a patch grid",
    "batch_size": "the paper: 2 (nnU-Net's BraTS 2020 entry: 5, kept at 2 here); the port: 1, 6",
    "validation": "this package: whole cases scored as BraTS does; the port: val_loss on patches",
    "validation_batch_size": "the port's scripts",
    "steps_per_epoch": "the paper: 100 batches an epoch; the port: one pass over its grid",
    "n_epochs": "the paper: 300; the port: 500 with early stopping",
    "initial_learning_rate": "the paper: Adam 5e-4; the port's unet: 1e-5",
    "lr_schedule": "the paper: x 0.985 per epoch; the port: halve on a 10-epoch plateau",
    "early_stopping_patience": "the port: 50 epochs",
    "preactivation": "the paper's context modules (pre-activation residual blocks); the port "
                     "activates after each convolution (nnU-Net's recipe keeps the port's "
                     "network here)",
    "l2": "the paper: weight decay 1e-5",
    "target": "the paper: softmax over the labels; nnU-Net: sigmoid regions WT/TC/ET; the "
              "port: a sigmoid per label",
    "loss": "the paper: multiclass soft Dice; nnU-Net: BCE + soft Dice per region; the port: "
            "its weighted Dice (isensee) and Dice coefficient (unet)",
    "augment": "the paper and nnU-Net augment on the fly; the port's scripts did not",
    "augmentation": "the paper's list (rotation, scaling, elastic, gamma, mirroring); nnU-Net's "
                    "BraTS settings add brightness, noise and per-axis scaling",
    "permute": "the port's isensee config (the 48 cube permutations)",
    "training_patch_start_offset": "the port's scripts",
    "skip_blank": "the port's scripts",
    "predict_whole_volume": "the paper: one whole-volume pass; nnU-Net: sliding windows",
    "predict_tta": "the paper: mirroring; others: none unless --tta is given at prediction",
}


def preset_table() -> str:
    """A markdown table of the recipes (`PRESETS`) side by side on the settings where they
    differ, each with its source (`CHOICE_SOURCES`); docs/recipes.md holds it."""
    configs = {name: preset(name) for name in PRESETS}
    rows = [f"| setting | {' | '.join(configs)} | source |",
            f"|---|{'---|' * len(configs)}---|"]
    for field in dataclasses.fields(TrainConfig):
        values = [format_value(getattr(config, field.name)) for config in configs.values()]
        if len(set(values)) > 1 and field.name != "run_dir":  # runs/<recipe>
            rows.append(f"| `{field.name}` | {' | '.join(values)} | "
                        f"{CHOICE_SOURCES[field.name]} |")
    return "\n".join(rows) + "\n"
