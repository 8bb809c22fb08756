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

from pathlib import Path

from absl import flags

from unet3d import cli
from unet3d.config import DemoConfig
from unet3d.errors import InputError, OutputError
from unet3d.logs import setup_logging

FLAGS = flags.FLAGS
cli.define_flags(DemoConfig, DemoConfig())
flags.adopt_module_key_flags(cli)  # --helpshort lists them


def main(argv) -> int:
    del argv
    from unet3d.demo import run_demo  # imports TensorFlow: after cli.run hid its log

    logger = setup_logging(Path(FLAGS.work_dir) / "demo.log")
    try:
        run_demo(cli.config_from_flags(DemoConfig, DemoConfig()))
    except InputError as error:
        logger.error(f"error: {error}")
        return 2
    except OutputError as error:  # a file could not be written: not bad usage
        logger.error(f"error: {error}")
        return 1
    return 0


if __name__ == "__main__":
    cli.run(main)
