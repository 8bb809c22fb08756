"""Training recipes: `train(config)` runs a `TrainConfig` end to end.

The settings and the recipes' values are in `unet3d.config` (`TrainConfig`, `PRESETS`, `preset`);
`train` builds or opens the store, draws or reuses the split, makes the datasets, the model, the
distribution strategy and the precision, writes the model card (`unet3d.model.card`) into every
model it saves, and runs the resumable loop (`unet3d.training.run_training`). The entry scripts
only turn flags into a `TrainConfig` (`unet3d.cli`).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import keras

from unet3d.augment import AUGMENTATIONS
from unet3d.brats import MODALITIES
from unet3d.config import (LOSSES, MODELS, Inference, PredictConfig, TrainConfig,
                           check_choices, check_intervals)
from unet3d.plain_settings import to_plain
from unet3d.config import PRESETS, preset  # noqa: F401 - unet3d 0.1 documented them here
from unet3d.data import DataStore, write_store_from_folder
from unet3d.distribution import check_memory, has_gpu, is_chief, make_strategy, set_precision
from unet3d.errors import InputError
from unet3d.evaluation import format_summary
from unet3d.folds import fold_split, folds_file, get_folds, one_run
from unet3d.generator import PatchListDataset, RandomPatchDataset, get_validation_split
from unet3d.atomic import remove_stale_temporaries
from unet3d.conventions import as_convention, check_same_meaning
from unet3d.labels import output_names
from unet3d.logs import get_logger
from unet3d.losses import BCEDiceLoss, SoftDiceLoss
from unet3d.metrics import (LabelDiceCoefficient, dice_coefficient, dice_coefficient_loss,
                            region_dice_metrics, weighted_dice_coefficient_loss)
from unet3d.model import isensee2017_model, load_old_model, model_divisors, unet_model_3d
from unet3d.model.card import ModelCard, TrainingRecord
from unet3d.splits import save_keys
from unet3d.runs import VALIDATION_DIR, check_run_cases, claim_run, with_run_files
from unet3d.training import RunResult, make_schedule, run_training
from unet3d.validation import CaseValidation, validated, write_validation


def check_config(config: TrainConfig) -> None:
    """Stop bad settings before anything is built, with what to change. (The patch against the
    network's size divisors: `check_divisors`.)"""
    check_intervals(config)
    if config.loss not in LOSSES:
        raise InputError(f"unknown loss {config.loss!r}: choose one of {', '.join(LOSSES)}")
    if config.model not in MODELS:
        raise InputError(f"unknown model {config.model!r}: choose one of {', '.join(MODELS)}")
    shapes = {"--patch_shape": config.patch_shape, "--image_shape": config.image_shape}
    for flag, shape in shapes.items():
        if shape is not None and (len(shape) != 3 or min(shape) < 1):
            raise InputError(f"{flag} {shape}: need three positive sizes such as 128,128,128")
    if config.patch_shape is None and config.image_shape is None and config.batch_size > 1:
        raise InputError("whole native-resolution cases differ in shape: give --patch_shape or "
                         "--image_shape, or use --batch_size 1")
    if config.model_file is not None and Path(config.model_file).suffix != ".keras":
        raise InputError(f"--model_file {config.model_file}: models are saved as .keras files "
                         "(with their model card inside)")
    if config.random_patches and (config.patch_shape is None or not config.steps_per_epoch):
        raise InputError("random patches need --patch_shape and --steps_per_epoch")
    if config.convention is not None:
        as_convention(config.convention)
    check_choices(config)
    cubic = config.patch_shape is not None and len(set(config.patch_shape)) == 1
    if config.predict_tta == "permute" and (config.predict_whole_volume or not cubic):
        raise InputError("--predict_tta permute needs cubic windows: a cubic --patch_shape and "
                         "no --predict_whole_volume (or --predict_tta mirror)")
    if config.model != "isensee2017" and (config.preactivation or config.l2):
        raise InputError(f"--preactivation and --l2 are options of the isensee2017 network, not "
                         f"of {config.model}: leave them out")
    watched = (config.lr_schedule == "plateau") or bool(config.early_stopping_patience)
    if watched and config.validation_every > 1 and config.validation == "cases":
        raise InputError("the plateau schedule and early stopping watch the validation score "
                         "every epoch: use --validation_every 1 with them")
    if config.overwrite and os.environ.get("TF_CONFIG"):
        raise InputError(f"--overwrite with several workers: a worker could resume the run in "
                         f"{config.run_dir} while the chief removes it. Remove that folder (or "
                         "choose another --run_dir) before starting the workers")


def check_divisors(config: TrainConfig, sample: tuple[int, int, int] | None = None) -> None:
    """Stop when the training samples (`sample`, by default the patch or the whole images of
    `--image_shape`) are not a size the network takes: multiples of the divisors the network
    reports (`model_divisors` of a narrow copy of it: they depend on its depth and pooling
    only)."""
    sample = sample or config.patch_shape or config.image_shape
    if sample is None:
        return
    divisors = model_divisors(build_model(dataclasses.replace(config, n_base_filters=1), 1, 3))
    if any(n % d for n, d in zip(sample, divisors)):
        flag = ("--patch_shape" if config.patch_shape else
                "--image_shape" if config.image_shape else "the store's image shape")
        divisor = (str(divisors[0]) if len(set(divisors)) == 1
                   else f"{', '.join(map(str, divisors))} (per axis)")
        raise InputError(f"{flag} {','.join(map(str, sample))}: every size must be divisible by "
                         f"{divisor} for the {config.model} model (e.g. 128,128,128 or 64,64,64)")


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
                                convention=config.convention, progress=get_logger().info)
    store = DataStore(path)
    if config.image_shape is not None and store.spatial_shape != tuple(config.image_shape) \
            and not config.patch_shape:
        raise InputError(f"{path} holds cases of {store.spatial_shape}, not the {config.image_shape} "
                         "this recipe trains on whole: rebuild it or give --patch_shape")
    return store


def training_convention(config: TrainConfig, store: DataStore) -> str:
    """The name of the convention trained on: `config.convention`, else the store's (brats2020
    for the port's stores). A convention given that does not have each of the store's labels
    with the same value for the same tissue is refused (a 4 is ET in brats2020, RC in
    brats2024-gli)."""
    recorded = store.convention or as_convention(None)
    if config.convention is None:
        return recorded.name
    given = as_convention(config.convention)
    check_same_meaning(given, recorded, str(store.path))
    return given.name


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
        return region_dice_metrics(output_names(config.target, config.convention))
    if config.target == "classes":  # the Dice of each label's channel, named by its value
        names = output_names(config.target, config.convention)
        return [LabelDiceCoefficient(i, name=f"{names[i]}_dice") for i in range(1, n_labels)]
    return [dice_coefficient, *(LabelDiceCoefficient(i) for i in range(n_labels))]


def build_model(config: TrainConfig, n_channels: int, n_labels: int) -> keras.Model:
    """The compiled network of `config` for inputs of `n_channels` and `n_labels` outputs (the
    convention's regions or labels, or background and the labels under a softmax for
    `target="classes"`), fully convolutional."""
    input_shape = (None, None, None, n_channels)
    optimizer = keras.optimizers.Adam(learning_rate=config.initial_learning_rate)
    activation = "softmax" if config.target == "classes" else "sigmoid"
    if config.model == "isensee2017":
        return isensee2017_model(input_shape, n_base_filters=config.n_base_filters,
                                 n_labels=n_labels, optimizer=optimizer,
                                 initial_learning_rate=config.initial_learning_rate,
                                 loss_function=_loss(config), metrics=_metrics(config, n_labels),
                                 legacy=config.legacy_model, activation_name=activation,
                                 preactivation=config.preactivation, l2=config.l2)
    if config.model == "unet3d":
        return unet_model_3d(input_shape, n_labels=n_labels,
                             initial_learning_rate=config.initial_learning_rate,
                             deconvolution=config.deconvolution, loss_function=_loss(config),
                             n_base_filters=config.n_base_filters, activation_name=activation,
                             metrics=_metrics(config, n_labels))
    raise InputError(f"unknown model {config.model!r}: choose one of {', '.join(MODELS)}")


def make_datasets(config: TrainConfig, store: DataStore, training: list[int],
                  validation: list[int], global_batch: int, global_validation_batch: int,
                  replicas: int = 1):
    """(training, validation or None) datasets of `config` on the split (`training`,
    `validation` case indices); a validation dataset of patches with `--validation patches`.
    The port's patch grid cuts an epoch's last batch to a multiple of the `replicas`."""
    common = dict(target=config.target, labels=config.convention, seed=config.seed,
                  workers=config.workers)
    grid = dict(batch_multiple=replicas)
    if config.random_patches:
        train = RandomPatchDataset(store, training, config.patch_shape, global_batch,
                                   config.steps_per_epoch,
                                   augment=AUGMENTATIONS[config.augmentation]
                                   if config.augment else None, **common)
    else:
        train = PatchListDataset(store, training, global_batch, patch_shape=config.patch_shape,
                                 patch_start_offset=config.training_patch_start_offset,
                                 skip_blank=config.skip_blank, augment=config.augment,
                                 permute=config.permute, **grid, **common)
    valid = None
    if validation and config.validation == "patches":
        valid = PatchListDataset(store, validation, global_validation_batch,
                                 patch_shape=config.patch_shape, shuffle=False,
                                 skip_blank=config.skip_blank,
                                 padding="zero" if config.random_patches else "edge", **grid,
                                 **common)
    get_logger().info("%d training batches per epoch, %d validation batches", len(train),
                      len(valid) if valid is not None else 0)
    return train, valid


def make_card(config: TrainConfig, store: DataStore) -> ModelCard:
    """The model card of a model trained by `config` on `store` (convention already
    resolved)."""
    modalities = tuple(store.modalities)
    if not modalities:
        modalities = MODALITIES
        get_logger().warning("%s does not name its channels: the model card records %s (the "
                             "port's order)", store.path, ", ".join(modalities))
    if store.legacy_layout:
        get_logger().warning(
            "%s is in the legacy port's layout, which does not record how its cases were "
            "normalised and resampled: the model card records this package's way (%s), which "
            "prediction of raw cases will use; its own store's cases (--validation) are as "
            "trained", store.path, store.space)
    convention = as_convention(config.convention)
    return ModelCard(model=config.model, modalities=modalities, target=config.target,
                     convention=convention.name, labels=convention.values,
                     outputs=output_names(config.target, convention),
                     patch_shape=config.patch_shape or store.space.image_shape,
                     space=store.space, preprocessing=store.preprocessing, spacing=store.spacing,
                     inference=Inference(config.predict_whole_volume, config.predict_tta),
                     training=TrainingRecord(config.data_file, config.training_keys_file,
                                             config.validation_keys_file, to_plain(config)))


def validation_window(config: TrainConfig, store: DataStore) -> PredictConfig:
    """How each epoch's validation predicts whole cases: sliding windows of the training patch
    (whole images of the store when it trains on them), without TTA, whatever the recipe's
    prediction settings (fast; `final_window` predicts as the model card says)."""
    window = config.patch_shape or store.space.image_shape
    return PredictConfig(patch_shape=window, whole_volume=window is None, tta="none")


def final_window(config: TrainConfig, store: DataStore) -> PredictConfig:
    """How the final validation predicts the validation cases with the best model: as
    brats/predict.py predicts with its model card (the recipe's `predict_whole_volume` and
    `predict_tta`)."""
    window = validation_window(config, store)
    whole = config.predict_whole_volume or window.whole_volume
    return dataclasses.replace(window, whole_volume=whole, tta=config.predict_tta,
                               patch_shape=None if whole else window.patch_shape)


def monitor_of(config: TrainConfig, validation: list[int]) -> tuple[str, str]:
    """(the log that chooses the best model, "min" or "max")."""
    if not validation:
        return "loss", "min"
    return ("val_dice_mean", "max") if config.validation == "cases" else ("val_loss", "min")


def _callbacks(config: TrainConfig, monitor: tuple[str, str]) -> list[keras.callbacks.Callback]:
    name, mode = monitor
    callbacks = []
    if config.lr_schedule == "plateau":
        callbacks.append(keras.callbacks.ReduceLROnPlateau(
            monitor=name, mode=mode, factor=config.learning_rate_drop,
            patience=config.learning_rate_patience, verbose=1))
    if config.early_stopping_patience:
        callbacks.append(keras.callbacks.EarlyStopping(
            monitor=name, mode=mode, patience=config.early_stopping_patience, verbose=1))
    return callbacks


def _check_replicas(config: TrainConfig, replicas: int) -> None:
    validation_batch = config.validation_batch_size or config.batch_size
    for flag, batch in (("--batch_size", config.batch_size),
                        ("--validation_batch_size", validation_batch)):
        if batch % replicas:
            raise InputError(f"{flag} {batch} is the global batch and must be a multiple of the "
                             f"{replicas} replicas (devices): use a multiple of {replicas}")


def run_split(config: TrainConfig, store: DataStore, folds: list[list[int]] | None = None,
              chief: bool = True) -> tuple[list[int], list[int]]:
    """(training, validation) case indices of the run: its fold's of `folds` (`get_folds`;
    the keys files record them too, in the store's indices), or the saved split drawn with
    `data_split`."""
    if folds is None:
        return get_validation_split(store, config.training_keys_file,
                                    config.validation_keys_file, config.data_split,
                                    seed=config.seed, save=chief)
    training, validation = fold_split(folds, int(config.fold))
    if chief:
        save_keys(training, Path(config.training_keys_file))
        save_keys(validation, Path(config.validation_keys_file))
    get_logger().info("fold %s of %d: %d training cases, %d validation cases", config.fold,
                      config.n_folds, len(training), len(validation))
    return training, validation


def train(config: TrainConfig) -> RunResult:
    """Run (or resume) the training `config` describes in its run folder (`unet3d.runs`; a
    fold's run in `<run_dir>/fold_<k>/` with `n_folds`); returns the run's per-epoch logs. At
    the end, the validation cases are predicted with the best model and scored into
    `<run_dir>/validation/`."""
    config = with_run_files(one_run(config))
    settings = to_plain(config)  # as given: what a rerun must repeat to resume
    check_config(config)
    strategy = make_strategy(config.strategy, config.cpu_replicas)
    precision = set_precision(config.precision)
    replicas = strategy.num_replicas_in_sync if strategy is not None else 1
    _check_replicas(config, replicas)
    check_divisors(config)  # before the store is built: nothing is written for a bad patch
    if not has_gpu():  # GPU memory is not estimated yet (docs/memory.md)
        local_batch = max(1, config.batch_size * config.cpu_replicas // replicas)  # this host's
        check_memory(config.patch_shape, local_batch, config.n_base_filters, precision)
    chief = is_chief()
    keras.utils.set_random_seed(config.seed)  # initial weights and dropout follow --seed
    store = ensure_store(config, chief)
    try:
        if config.patch_shape is None:  # whole images of the store
            check_divisors(config, store.space.image_shape)
        folds = (None if config.n_folds is None else  # checked before --overwrite removes
                 get_folds(store, folds_file(config), config.n_folds, config.seed, save=chief))
        state = claim_run(config, chief)  # after the checks: --overwrite removes the old run
        config = dataclasses.replace(config, convention=training_convention(config, store))
        training, validation = run_split(config, store, folds, chief)
        settings["split"] = {name: [store.subject_ids[i] for i in cases]
                             for name, cases in (("training", training),
                                                 ("validation", validation))}
        check_run_cases(state, settings["split"]["training"], settings["split"]["validation"],
                        config)
        card, monitor = make_card(config, store), monitor_of(config, validation)
        validator = None
        if validation and config.validation == "cases":
            validator = CaseValidation(store, validation[:config.validation_cases],
                                       validation_window(config, store), config.target,
                                       config.convention, config.validation_every,
                                       config.n_epochs)
        get_logger().info("training %s: %d replicas, global batch %d, precision %s, %d epochs",
                          config.model_file, replicas, config.batch_size, precision,
                          config.n_epochs)
        schedule = make_schedule(config.lr_schedule, config.initial_learning_rate,
                                 config.n_epochs, config.learning_rate_drop,
                                 config.learning_rate_epochs)
        result = run_training(
            lambda: build_model(config, store.n_channels,
                                len(output_names(config.target, config.convention))),
            lambda: make_datasets(config, store, training, validation, config.batch_size,
                                  config.validation_batch_size or config.batch_size, replicas),
            config.model_file, config.training_log, config.n_epochs, schedule,
            [validator] * (validator is not None) + _callbacks(config, monitor), strategy,
            config.verbose, card=card, monitor=monitor, settings=settings, seed=config.seed)
        if chief and validation and not result.stopped_by_nan:
            finish_run(config, store, validation, validator, result)
        return result
    finally:
        store.close()


def finish_run(config: TrainConfig, store: DataStore, validation: list[int],
               validator: CaseValidation | None, result: RunResult) -> None:
    """Predict the validation cases with the best model and score them into
    `<run_dir>/validation/` (skipped when it already holds those of this model)."""
    out_dir = Path(config.run_dir) / VALIDATION_DIR
    if validator is not None and validator.seconds:
        get_logger().info("whole-case validation: %.1f s per case (%d cases)",
                          sum(validator.seconds) / len(validator.seconds),
                          len(validator.cases))
    cases = validation[:config.validation_cases]
    about = {"model_file": str(config.model_file), "epochs_done": result.epochs_done,
             "cases": [store.subject_ids[case] for case in cases]}
    remove_stale_temporaries(out_dir)
    if validated(out_dir) == about or not Path(config.model_file).exists():
        return
    get_logger().info("predicting the validation cases with the best model into %s", out_dir)
    evaluation = write_validation(load_old_model(config.model_file, compile=False), store, cases,
                                  final_window(config, store), config.target, config.convention,
                                  out_dir, config.training_log, about)
    get_logger().info(format_summary(evaluation))
