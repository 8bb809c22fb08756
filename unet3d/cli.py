"""Command-line plumbing shared by the training scripts: absl flags -> `TrainConfig`."""

from __future__ import annotations

from pathlib import Path

from absl import flags

from unet3d.errors import InputError
from unet3d.logs import setup_logging
from unet3d.recipes import LOSSES, TrainConfig, preset, train
from unet3d.training import SCHEDULES, is_chief

FLAGS = flags.FLAGS


def define_training_flags(presets: tuple[str, ...]) -> None:
    """Flags of brats/train_isensee2017.py and brats/train.py; unset ones take the preset's value."""
    flags.DEFINE_enum("preset", presets[0], presets,
                      "Recipe (paper: Isensee 2017 with nnU-Net's region training; legacy: the "
                      "Keras-2 port's config; unet: the port's plain 3D U-Net).")
    flags.DEFINE_string("data_file", None, "HDF5 data store (built from --preprocessed_dir if "
                        "missing). Default brats_data.h5.")
    flags.DEFINE_string("preprocessed_dir", None, "Folder written by brats/preprocess.py, used "
                        "to build --data_file when it does not exist.")
    flags.DEFINE_string("model_file", None, "Best model (.keras); the run's checkpoints go to "
                        "<model_file>.run/. Rerunning the same command resumes.")
    flags.DEFINE_string("training_log", None, "CSV log, one row per epoch (training.log).")
    flags.DEFINE_string("training_keys_file", None, "The saved split: training case indices "
                        "(training_ids.pkl), written on the first run and reused after.")
    flags.DEFINE_string("validation_keys_file", None, "The saved split: validation case indices "
                        "(validation_ids.pkl).")
    flags.DEFINE_float("data_split", None, "Fraction of the cases used for training when the "
                       "split is drawn (0.8; 1.0: no validation).")
    flags.DEFINE_integer("n_epochs", None, "Epochs of the run (paper 300, legacy 500).")
    flags.DEFINE_integer("steps_per_epoch", None, "Batches per epoch (paper 100; legacy: one "
                         "pass over the training patches).")
    flags.DEFINE_integer("batch_size", None, "Global batch, split over the replicas (paper 2).")
    flags.DEFINE_integer("validation_batch_size", None, "Global validation batch.")
    flags.DEFINE_list("patch_shape", None, "Training patch, e.g. 64,64,64 (paper 128,128,128); "
                      "'none' for whole images.")
    flags.DEFINE_list("image_shape", None, "Build --data_file resampled to this shape (legacy "
                      "128,128,128; 'none': brain-cropped at native resolution, the paper).")
    flags.DEFINE_float("initial_learning_rate", None, "Adam learning rate (paper 5e-4).")
    flags.DEFINE_enum("lr_schedule", None, list(SCHEDULES), "Learning-rate schedule (paper "
                      "exponential: lr * 0.985**epoch; legacy plateau).")
    flags.DEFINE_enum("precision", "auto", ["auto", "float32", "mixed_float16", "mixed_bfloat16"],
                      "auto: mixed_float16 on GPUs, mixed_bfloat16 on CPUs with bf16 units.")
    flags.DEFINE_enum("strategy", "auto", ["auto", "one_device", "mirrored", "multi_worker"],
                      "auto: multi_worker with TF_CONFIG, mirrored with several GPUs.")
    flags.DEFINE_integer("cpu_replicas", 1, "Without GPUs: split the CPU into this many logical "
                         "devices, one replica each (to test or measure distribution).")
    flags.DEFINE_integer("workers", None, "Processes making batches (0: in the training process).")
    flags.DEFINE_integer("seed", None, "Seed of the split, patches and augmentation.")
    flags.DEFINE_integer("n_base_filters", None, "Filters of the first level (16; plain U-Net 32).")
    flags.DEFINE_enum("loss", None, list(LOSSES), "Loss (paper: bce_dice over WT/TC/ET; legacy: "
                      "weighted_dice over the raw labels; dice: multiclass soft Dice; "
                      "dice_coefficient: the port's plain U-Net loss).")


def _shape(values: list[str] | None, flag: str):
    if values is None:
        return None
    if [v.lower() for v in values] == ["none"]:
        return "none"
    try:
        shape = tuple(int(v) for v in values)
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise InputError(f"--{flag} {','.join(values)}: expected three sizes such as 64,64,64")
    return shape


def config_from_flags() -> TrainConfig:
    """`TrainConfig` of `--preset` with every flag that was set applied."""
    overrides = {name: getattr(FLAGS, name) for name in (
        "data_file", "preprocessed_dir", "model_file", "training_log", "training_keys_file",
        "validation_keys_file", "data_split", "n_epochs",
        "steps_per_epoch", "batch_size", "validation_batch_size", "initial_learning_rate",
        "lr_schedule", "workers", "seed", "n_base_filters", "loss")}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    patch = _shape(FLAGS.patch_shape, "patch_shape")
    if patch == "none":
        overrides.update(patch_shape=None, random_patches=False)
    elif patch is not None:
        overrides["patch_shape"] = patch
    image = _shape(FLAGS.image_shape, "image_shape")
    if image is not None:
        overrides["image_shape"] = None if image == "none" else image
    overrides.update(precision=FLAGS.precision, strategy=FLAGS.strategy,
                     cpu_replicas=FLAGS.cpu_replicas)
    return preset(FLAGS.preset, **overrides)


def train_main(argv) -> int:
    """Body of the training scripts: exit 0 when done, 1 if stopped by a NaN loss, 2 on bad
    input (a message, no traceback). Logs to <model_file>.log besides the console."""
    del argv
    logger = setup_logging()
    try:
        config = config_from_flags()
        if is_chief():
            logger = setup_logging(Path(config.model_file).with_suffix(".log"))
        result = train(config)
    except InputError as error:
        logger.error(f"error: {error}")
        return 2
    if result.stopped_by_nan:
        return 1
    logger.info(f"{result.epochs_done} epochs done; best model: {config.model_file}; log: "
                f"{config.training_log}")
    return 0
