"""Train the Isensee et al. 2017 3D U-Net on a BraTS data store.

    python brats/train_isensee2017.py --data_file brats_data.h5 --preprocessed_dir data/preprocessed

Defaults are the paper recipe: random 128^3 patches (a third centred on tumour), batch 2,
100 batches per epoch, 300 epochs, Adam 5e-4 x 0.985^epoch, WT/TC/ET targets with BCE + Dice, the
full augmentation. `--preset paper2017` is the paper as published (softmax over the labels with
the multiclass Dice, pre-activation context modules, L2 1e-5, whole-volume prediction with
mirroring; docs/recipes.md lists every recipe's choices). `--preset legacy` reproduces the Keras-2 port's configuration (whole 128^3
resampled images, permutations, plateau schedule, weighted Dice over the raw labels).
Rerunning the same command resumes from the last completed epoch. Exit status 2 on bad input, 1
when a file of the run could not be written (a full disk) or training stopped on a NaN.
"""

from absl import flags

from unet3d import cli
from unet3d.cli import define_training_flags, run, train_main

define_training_flags(("paper", "paper2017", "legacy"))
flags.adopt_module_key_flags(cli)  # --helpshort lists them

if __name__ == "__main__":
    run(train_main)
