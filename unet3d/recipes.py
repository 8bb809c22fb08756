"""Training recipes: the paper's and the legacy port's, as one plain configuration each.

`TrainConfig` holds every setting of a training run with the paper recipe's defaults; `PRESETS`
gives the changes of the other recipes; `train(config)` runs it end to end (store, split, data,
model, distribution, precision, resumable loop). The entry scripts only turn flags into a
`TrainConfig`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import keras

from unet3d.augment import AugmentConfig
from unet3d.brats import MODALITIES
from unet3d.data import DataStore, write_store_from_folder
from unet3d.errors import InputError
from unet3d.generator import (PatchListDataset, RandomPatchDataset, get_validation_split)
from unet3d.logs import get_logger
from unet3d.losses import BCEDiceLoss, SoftDiceLoss
from unet3d.metrics import (LabelDiceCoefficient, dice_coefficient, dice_coefficient_loss,
                            region_dice_metrics, weighted_dice_coefficient_loss)
from unet3d.model import isensee2017_model, unet_model_3d
from unet3d.prediction import save_settings
from unet3d.training import (RunResult, is_chief, make_schedule, make_strategy, run_training,
                             set_precision)

LOSSES = ("bce_dice", "dice", "weighted_dice", "dice_coefficient")


@dataclasses.dataclass
class TrainConfig:
    """One training run; defaults are the paper recipe (Isensee et al. 2017 + nnU-Net regions)."""

    data_file: str = "brats_data.h5"
    preprocessed_dir: str | None = None
    model_file: str = "isensee2017_model.keras"
    training_log: str = "training.log"
    training_keys_file: str = "training_ids.pkl"
    validation_keys_file: str = "validation_ids.pkl"
    model: str = "isensee2017"              # or "unet3d" (the plain U-Net)
    legacy_model: bool = False               # the port's slope 0.3 / epsilon 1e-3
    n_base_filters: int = 16
    deconvolution: bool = True               # plain U-Net: transposed convolutions (the port)
    image_shape: tuple[int, int, int] | None = None  # store resampled to this (legacy) or cropped
    patch_shape: tuple[int, int, int] | None = (128, 128, 128)  # None: whole images
    random_patches: bool = True              # paper: random patches; else the port's patch grid
    batch_size: int = 2                      # global batch (split over replicas)
    validation_batch_size: int | None = None
    steps_per_epoch: int | None = 100        # None: one pass over the patch list (the port)
    n_epochs: int = 300
    initial_learning_rate: float = 5e-4
    lr_schedule: str = "exponential"
    learning_rate_drop: float = 0.5
    learning_rate_epochs: int | None = None
    learning_rate_patience: int = 10
    early_stopping_patience: int | None = None
    target: str = "regions"
    labels: tuple[int, ...] | None = None    # default: the store's
    loss: str = "bce_dice"
    augment: bool = True                     # paper: full augmentation; legacy: none
    permute: bool = False
    training_patch_start_offset: tuple[int, int, int] | None = None
    skip_blank: bool = False
    data_split: float = 0.8
    precision: str = "auto"
    strategy: str = "auto"
    cpu_replicas: int = 1                    # split the CPU into logical devices (tests, bench)
    workers: int = 2
    seed: int = 0
    verbose: int | str = "auto"


PRESETS: dict[str, dict] = {
    "paper": {},
    "legacy": dict(model_file="isensee_2017_model.keras",
                   training_keys_file="isensee_training_ids.pkl",
                   validation_keys_file="isensee_validation_ids.pkl", legacy_model=True,
                   image_shape=(128, 128, 128), patch_shape=None, random_patches=False,
                   batch_size=1, validation_batch_size=2, steps_per_epoch=None, n_epochs=500,
                   lr_schedule="plateau", early_stopping_patience=50, target="labels",
                   loss="weighted_dice", augment=False, permute=True,
                   training_patch_start_offset=(16, 16, 16), skip_blank=True),
    # The port's plain 3D U-Net script (brats/train.py): 64^3 patches of the 144^3 store.
    "unet": dict(model="unet3d", model_file="tumor_segmentation_model.keras",
                 training_keys_file="training_ids.pkl", validation_keys_file="validation_ids.pkl",
                 image_shape=(144, 144, 144), patch_shape=(64, 64, 64), random_patches=False,
                 batch_size=6, validation_batch_size=12, steps_per_epoch=None, n_epochs=500,
                 initial_learning_rate=1e-5, lr_schedule="plateau", early_stopping_patience=50,
                 target="labels", loss="dice_coefficient", n_base_filters=32, augment=False, permute=False,
                 training_patch_start_offset=(16, 16, 16), skip_blank=True),
}


def preset(name: str, **overrides) -> TrainConfig:
    """The named recipe's configuration with `overrides` applied."""
    if name not in PRESETS:
        raise InputError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
    return TrainConfig(**{**PRESETS[name], **overrides})


def _divisor(config: TrainConfig) -> int:
    return 16 if config.model == "isensee2017" else 8  # 2 ** (depth - 1)


def check_config(config: TrainConfig) -> None:
    """Stop bad settings before anything is built, with what to change."""
    if config.loss not in LOSSES:
        raise InputError(f"unknown loss {config.loss!r}: choose one of {', '.join(LOSSES)}")
    shapes = {"--patch_shape": config.patch_shape, "--image_shape": config.image_shape}
    sample = config.patch_shape or config.image_shape
    for flag, shape in shapes.items():
        if shape is not None and (len(shape) != 3 or min(shape) < 1):
            raise InputError(f"{flag} {shape}: need three positive sizes such as 128,128,128")
    divisor = _divisor(config)
    if sample is not None and any(n % divisor for n in sample):
        raise InputError(f"--patch_shape {tuple(sample)}: every size must be divisible by "
                         f"{divisor} for the {config.model} model (e.g. 128,128,128 or 64,64,64)")
    if sample is None and config.batch_size > 1:
        raise InputError("whole native-resolution cases differ in shape: give --patch_shape or "
                         "--image_shape, or use --batch_size 1")
    if config.batch_size < 1 or config.n_epochs < 1:
        raise InputError("--batch_size and --n_epochs must be at least 1")
    if config.random_patches and config.patch_shape is None:
        raise InputError("random patches need --patch_shape")


def ensure_store(config: TrainConfig, chief: bool = True) -> DataStore:
    """The data store, built from `preprocessed_dir` first if it does not exist (as the port)."""
    path = Path(config.data_file)
    if not path.exists():
        if not config.preprocessed_dir:
            raise InputError(f"data file {path} does not exist and no --preprocessed_dir was "
                             "given to build it from: run brats/preprocess.py --data_file "
                             f"{path}, or pass --preprocessed_dir")
        if not chief:
            raise InputError(f"data file {path} does not exist: build it once (the chief does, "
                             "or brats/preprocess.py --data_file) before starting the workers")
        get_logger().info("building the data store %s from %s", path, config.preprocessed_dir)
        write_store_from_folder(config.preprocessed_dir, path, image_shape=config.image_shape,
                                progress=get_logger().info)
    store = DataStore(path)
    if config.image_shape is not None and store.spatial_shape != tuple(config.image_shape) \
            and not config.patch_shape:
        raise InputError(f"{path} holds cases of {store.spatial_shape}, not the {config.image_shape} "
                         "this recipe trains on whole: rebuild it or give --patch_shape")
    return store


def _loss(config: TrainConfig):
    if config.loss == "bce_dice":
        return BCEDiceLoss()
    if config.loss == "dice":
        return SoftDiceLoss()
    if config.loss == "dice_coefficient":
        return dice_coefficient_loss
    return weighted_dice_coefficient_loss


def _metrics(config: TrainConfig, n_labels: int) -> list:
    if config.target == "regions":
        return region_dice_metrics()
    return [dice_coefficient, *(LabelDiceCoefficient(i) for i in range(n_labels))]


def build_model(config: TrainConfig, n_channels: int, n_labels: int) -> keras.Model:
    """The compiled network of `config` for inputs of `n_channels`, fully convolutional."""
    input_shape = (None, None, None, n_channels)
    optimizer = keras.optimizers.Adam(learning_rate=config.initial_learning_rate)
    if config.model == "isensee2017":
        return isensee2017_model(input_shape, n_base_filters=config.n_base_filters,
                                 n_labels=n_labels, optimizer=optimizer,
                                 initial_learning_rate=config.initial_learning_rate,
                                 loss_function=_loss(config), metrics=_metrics(config, n_labels),
                                 legacy=config.legacy_model)
    if config.model == "unet3d":
        return unet_model_3d(input_shape, n_labels=n_labels,
                             initial_learning_rate=config.initial_learning_rate,
                             deconvolution=config.deconvolution, loss_function=_loss(config),
                             n_base_filters=config.n_base_filters,
                             metrics=_metrics(config, n_labels))
    raise InputError(f"unknown model {config.model!r}: isensee2017 or unet3d")


def make_datasets(config: TrainConfig, store: DataStore, global_batch: int,
                  global_validation_batch: int, chief: bool = True):
    """(training, validation or None) datasets of `config`, with the saved split (saved by the
    chief only)."""
    training, validation = get_validation_split(store, config.training_keys_file,
                                                config.validation_keys_file, config.data_split,
                                                seed=config.seed, save=chief)
    common = dict(target=config.target, labels=config.labels, seed=config.seed,
                  workers=config.workers)
    if config.random_patches:
        train = RandomPatchDataset(store, training, config.patch_shape, global_batch,
                                   config.steps_per_epoch or 100,
                                   augment=AugmentConfig() if config.augment else None, **common)
    else:
        train = PatchListDataset(store, training, global_batch, patch_shape=config.patch_shape,
                                 patch_start_offset=config.training_patch_start_offset,
                                 skip_blank=config.skip_blank, augment=config.augment,
                                 permute=config.permute, **common)
    valid = None
    if validation:
        valid = PatchListDataset(store, validation, global_validation_batch,
                                 patch_shape=config.patch_shape, shuffle=False,
                                 skip_blank=config.skip_blank,
                                 padding="zero" if config.random_patches else "edge", **common)
    return train, valid


def train(config: TrainConfig) -> RunResult:
    """Run (or resume) the training `config` describes; returns the run's per-epoch logs."""
    check_config(config)
    log = get_logger()
    strategy = make_strategy(config.strategy, config.cpu_replicas)
    precision = set_precision(config.precision)
    replicas = strategy.num_replicas_in_sync if strategy is not None else 1
    validation_batch = config.validation_batch_size or config.batch_size
    for flag, batch in (("--batch_size", config.batch_size),
                        ("--validation_batch_size", validation_batch)):
        if batch % replicas:
            raise InputError(f"{flag} {batch} is the global batch and must be a multiple of the "
                             f"{replicas} replicas (devices): use a multiple of {replicas}")
    chief = is_chief()
    keras.utils.set_random_seed(config.seed)  # initial weights and dropout follow --seed
    store = ensure_store(config, chief)
    labels = tuple(config.labels or store.labels or (1, 2, 4))
    config = dataclasses.replace(config, labels=labels)
    if chief:  # how the model was trained, for brats/predict.py
        save_settings(config.model_file, {**dataclasses.asdict(config),
                                          "modalities": list(store.modalities or MODALITIES)})
    train_data, valid_data = make_datasets(config, store, config.batch_size, validation_batch,
                                           chief)
    log.info("training %s: %d replicas, global batch %d, precision %s, %d batches per epoch, "
             "%d epochs", config.model_file, replicas, config.batch_size, precision,
             len(train_data), config.n_epochs)
    callbacks = []
    if config.lr_schedule == "plateau":
        callbacks.append(keras.callbacks.ReduceLROnPlateau(
            factor=config.learning_rate_drop, patience=config.learning_rate_patience, verbose=1))
    if config.early_stopping_patience:
        callbacks.append(keras.callbacks.EarlyStopping(patience=config.early_stopping_patience,
                                                       verbose=1))
    schedule = make_schedule(config.lr_schedule, config.initial_learning_rate, config.n_epochs,
                             config.learning_rate_drop, config.learning_rate_epochs)
    n_labels = len(labels)
    try:
        return run_training(lambda: build_model(config, store.n_channels, n_labels), train_data,
                            valid_data, config.model_file, config.training_log, config.n_epochs,
                            schedule, callbacks, strategy, config.verbose)
    finally:
        store.close()
