"""Train the plain 3D U-Net (the legacy port's brats/train.py configuration).

    python brats/train.py --data_file brats_data.h5 --preprocessed_dir data/preprocessed

Defaults: the store resampled to 144^3, a grid of 64^3 patches, batch 6, Adam 1e-5 with the
plateau schedule, Dice loss over the raw labels. Rerunning the same command resumes.
"""

from absl import flags

from unet3d import cli
from unet3d.cli import define_training_flags, run, train_main

define_training_flags(("unet",))
flags.adopt_module_key_flags(cli)  # --helpshort lists them

if __name__ == "__main__":
    run(train_main)
