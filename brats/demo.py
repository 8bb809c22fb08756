"""The whole pipeline on built-in synthetic data, with no download: one command.

    python brats/demo.py                       # about 8 minutes on 2 CPU cores
    python brats/demo.py --n_cases 40 --shape 240,240,155 --patch_shape 128,128,128 \
        --n_base_filters 16 --n_epochs 300 --steps_per_epoch 100      # the paper's size (GPU)

Writes synthetic BraTS cases, preprocesses them (N4), builds the data store, trains the Isensee
network with the paper recipe at a small size, predicts the held-out cases on their original grid,
scores them (Dice, HD95, sensitivity, specificity) and prints a WT/TC/ET table. Everything goes to
--work_dir (see unet3d/demo.py for the layout; plots in <work_dir>/evaluation/), the log to
<work_dir>/demo.log. Rerunning the same command resumes where it stopped.
"""

import dataclasses
import sys
from pathlib import Path

from absl import app, flags

from unet3d.demo import DemoConfig, run_demo
from unet3d.errors import InputError
from unet3d.logs import setup_logging
from unet3d.synthetic import parse_shape

DEFAULTS = DemoConfig()
FLAGS = flags.FLAGS
flags.DEFINE_string("work_dir", DEFAULTS.work_dir, "Folder for every file the demo writes.")
flags.DEFINE_integer("n_cases", DEFAULTS.n_cases, "Synthetic cases in all.")
flags.DEFINE_integer("n_test", DEFAULTS.n_test, "Cases held out for prediction and scoring.")
flags.DEFINE_string("shape", ",".join(map(str, DEFAULTS.shape)), "Case grid X,Y,Z (BraTS: "
                    "240,240,155).")
flags.DEFINE_string("patch_shape", ",".join(map(str, DEFAULTS.patch_shape)), "Training patch "
                    "and prediction window, sizes divisible by 16.")
flags.DEFINE_integer("batch_size", DEFAULTS.batch_size, "Patches per batch.")
flags.DEFINE_integer("steps_per_epoch", DEFAULTS.steps_per_epoch, "Batches per epoch.")
flags.DEFINE_integer("n_epochs", DEFAULTS.n_epochs, "Epochs.")
flags.DEFINE_float("initial_learning_rate", DEFAULTS.initial_learning_rate, "Adam's first "
                   "learning rate (x 0.985 per epoch).")
flags.DEFINE_integer("n_base_filters", DEFAULTS.n_base_filters, "Filters of the first level "
                     "(the paper: 16).")
flags.DEFINE_integer("workers", DEFAULTS.workers, "Batch-making processes.")
flags.DEFINE_enum("precision", DEFAULTS.precision, ["auto", "float32", "mixed_float16",
                                                    "mixed_bfloat16"], "Training precision.")
flags.DEFINE_integer("seed", DEFAULTS.seed, "Seed of the data, the split and training.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logger = setup_logging(Path(FLAGS.work_dir) / "demo.log")
    try:
        config = DemoConfig(**{field.name: getattr(FLAGS, field.name)
                               for field in dataclasses.fields(DemoConfig)
                               if field.name not in ("shape", "patch_shape")},
                            shape=parse_shape(FLAGS.shape),
                            patch_shape=parse_shape(FLAGS.patch_shape))
        run_demo(config)
    except InputError as error:
        logger.error(f"error: {error}")
        return 2
    return 0


if __name__ == "__main__":
    app.run(lambda argv: sys.exit(main(argv)))
