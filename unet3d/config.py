"""Settings as dataclasses: the one source of every default of training and prediction.

- `TrainConfig`: one training run. Its defaults are the paper recipe (Isensee et al. 2017 with
  nnU-Net's region training); `PRESETS` holds what the other recipes change (`preset(name)`).
- `PredictConfig`: how `brats/predict.py` predicts (windows, test-time augmentation, labels);
  what the model *is* (its inputs, patch, targets, preprocessing) comes from its model card
  (`unet3d.model.card`), not from here.
- The vocabularies of the settings (`LOSSES`, `SCHEDULES`, `TTA_MODES`, ...).

Each field carries its help text (`field.metadata["help"]`); the entry scripts generate one flag
per field from it (`unet3d.cli`), so a default is written once, here. Library functions that take
the same setting as a keyword (e.g. `RandomPatchDataset(patch_shape=...)`) default to these values.
This module imports nothing heavy, so any module may read its defaults.
"""

from __future__ import annotations

import dataclasses
import numbers
import re
from typing import Any, Sequence

from unet3d.conventions import ALIASES, CONVENTIONS
from unet3d.errors import InputError

MODELS = ("isensee2017", "unet3d")
#: Network outputs: the convention's nested regions (sigmoids), one sigmoid per label value (the
#: port), or a softmax over background and each label value (the paper 2017), `unet3d.labels`.
TARGETS = ("regions", "labels", "classes")
LOSSES = ("bce_dice", "dice", "weighted_dice", "dice_coefficient")
SCHEDULES = ("exponential", "step", "plateau", "poly", "constant")
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker")
WEIGHTINGS = ("gaussian", "constant")
TTA_MODES = ("none", "mirror", "permute")
#: The random-patch augmentations (`unet3d.augment.AUGMENTATIONS`).
AUGMENTATIONS = ("nnunet", "paper2017")
#: Where the network runs at prediction, and in which precision (`unet3d.runtimes`).
RUNTIMES = ("keras", "onnxruntime", "openvino")
INFERENCE_PRECISIONS = ("float32", "bfloat16", "auto")
#: What brats/export.py writes (`unet3d.export`).
EXPORT_FORMATS = ("savedmodel", "onnx")
VALIDATIONS = ("cases", "patches")
#: What `--convention` (and the `--labels` of unet3d 0.2) accept besides a convention's name.
CONVENTION_ALIASES = {**ALIASES, "1,2,4": "brats2020", "1,2,3": "brats2023-gli"}


def option(default: Any, help: str, choices: Sequence[str] | None = None,
           none: str | None = None, aliases: dict[str, Any] | None = None,
           resumable: bool = False, flag_aliases: Sequence[str] = (),
           interval: str | None = None):
    """A dataclass field with its command-line description.

    Args:
        default: the default value.
        help: what the setting does (the flag's help text, without the default).
        choices: the values allowed, for settings that are names.
        none: what None means, for settings that may be None (shown as the default).
        aliases: names a user may give instead of a value (e.g. "brats2023" for
            "brats2023-gli").
        resumable: (training) the setting may change when a run resumes: it says how or where
            the run goes, not what it trains.
        flag_aliases: other flag names of the setting (the names of older versions).
        interval: the numbers allowed (each one, for a tuple), in interval notation: "[1, inf)",
            "(0, 1]" (`check_intervals`).
    """
    metadata = {"help": help, "choices": tuple(choices) if choices else None, "none": none,
                "aliases": aliases, "resumable": resumable, "flag_aliases": tuple(flag_aliases),
                "interval": interval}
    return dataclasses.field(default=default, metadata=metadata)


def _inside(value: float, interval: str) -> bool:
    low_bracket, low, high, high_bracket = re.fullmatch(
        r"([\[(])\s*([^,]+),\s*([^\])]+?)\s*([\])])", interval).groups()
    low, high = float(low), float(high)
    return ((value >= low if low_bracket == "[" else value > low)
            and (value <= high if high_bracket == "]" else value < high))


def check_intervals(config: Any) -> None:
    """InputError naming the flag and its interval for a number of a settings dataclass outside
    the interval its field allows (`option(interval=...)`); None stays allowed where the field
    has a meaning for it."""
    for item in dataclasses.fields(config):
        interval, value = item.metadata.get("interval"), getattr(config, item.name)
        if interval is None or value is None:
            continue
        values = value if isinstance(value, tuple) else (value,)
        if any(isinstance(n, bool) or not isinstance(n, numbers.Real)
               or not _inside(float(n), interval) for n in values):
            shown = ",".join(map(str, values))
            raise InputError(f"--{item.name} {shown}: must be in {interval}")


def check_choices(config: Any) -> None:
    """InputError naming the flag and its choices for a setting of a settings dataclass that is
    not one of the names its field allows (`option(choices=...)`). Fields with aliases (the
    conventions, which also take "labels-A-B-C" names and label triples) and values that are not
    names are left to their own resolvers (`unet3d.conventions.as_convention`)."""
    for item in dataclasses.fields(config):
        choices, value = item.metadata.get("choices"), getattr(config, item.name)
        if choices and isinstance(value, str) and value not in choices \
                and not item.metadata.get("aliases"):  # names with aliases: their resolver
            raise InputError(f"--{item.name} {value}: choose one of {', '.join(choices)}")


@dataclasses.dataclass
class TrainConfig:
    """One training run; the defaults are the paper recipe (`preset("paper")`)."""

    data_file: str = option("brats_data.h5", "HDF5 data store (built from --preprocessed_dir "
                            "when it does not exist).", resumable=True)
    preprocessed_dir: str | None = option(None, "Folder written by brats/preprocess.py, used to "
                                          "build --data_file when it does not exist.",
                                          none="--data_file must exist", resumable=True)
    run_dir: str = option("runs/paper", "Folder of the run: its model (with the model card), logs, "
                          "split, checkpoint and final validation. Rerunning the same command "
                          "resumes the run; other settings are refused (see --overwrite).",
                          resumable=True)
    overwrite: bool = option(False, "Start the run in --run_dir over (its model, CSV log, split, "
                             "checkpoint and validation are removed; run.log goes on) instead of "
                             "refusing settings that differ from the run's. Leave it out of the "
                             "command that resumes the run.", resumable=True)
    model_file: str | None = option(None, "The best model (.keras, carrying its model card); the "
                                    "checkpoint goes to <model_file>.run/.",
                                    none="<run_dir>/model.keras")
    training_log: str | None = option(None, "CSV log, one row per epoch.",
                                      none="<run_dir>/training.log", resumable=True)
    training_keys_file: str | None = option(None, "The saved split, training case indices: "
                                            "drawn on the first run, reused after.",
                                            none="<run_dir>/training_ids.pkl", resumable=True)
    validation_keys_file: str | None = option(None, "The saved split, validation case indices.",
                                              none="<run_dir>/validation_ids.pkl",
                                              resumable=True)
    model: str = option("isensee2017", "Network: the Isensee 2017 U-Net, or the port's plain "
                        "3D U-Net.", choices=MODELS)
    legacy_model: bool = option(False, "Isensee network with the port's leaky ReLU slope 0.3 and "
                                "normalisation epsilon 1e-3 (the paper's: 0.01, 1e-5).")
    n_base_filters: int = option(16, "Filters of the first level, doubled at each level.", interval="[1, inf)")
    deconvolution: bool = option(True, "Plain U-Net: upsample with transposed convolutions (the "
                                 "port) instead of nearest-neighbour upsampling.")
    image_shape: tuple[int, int, int] | None = option(
        None, "Build --data_file resampled to this shape, e.g. 128,128,128 (the port's store).",
        none="each brain cropped at native resolution (the paper)", interval="[1, inf)")
    patch_shape: tuple[int, int, int] | None = option(
        (128, 128, 128), "Training patch, sizes divisible by the network's divisor; it is also "
        "the prediction window.", none="whole images", interval="[1, inf)")
    random_patches: bool = option(True, "Random patches, a third centred on tumour (the paper); "
                                  "--norandom_patches: the port's patch grid.")
    batch_size: int = option(2, "Global batch, split over the replicas.", interval="[1, inf)")
    validation: str = option("cases", "Validation: cases (predict the validation cases whole with "
                             "sliding windows and score Dice per region as brats/evaluate.py "
                             "does; the best model has the best mean Dice) or patches (the loss "
                             "over a grid of patches, the port's; the best model has the lowest "
                             "val_loss).", choices=VALIDATIONS)
    validation_every: int = option(1, "Epochs between whole-case validations (the last epoch "
                                   "is always validated; patches are validated every epoch).",
                                   resumable=True, interval="[1, inf)")
    validation_cases: int = option(10, "Cases validated (--validation cases): the first ones of "
                                   "the validation split, all when it has fewer.", interval="[1, inf)")
    validation_batch_size: int | None = option(None, "Global batch of the patch validation.",
                                               none="--batch_size", interval="[1, inf)")
    steps_per_epoch: int | None = option(100, "Batches per epoch.",
                                         none="one pass over the patch grid (the port)", interval="[1, inf)")
    n_epochs: int = option(300, "Epochs of the run (raise it to extend a finished run).",
                           resumable=True, interval="[1, inf)")
    initial_learning_rate: float = option(5e-4, "Adam's learning rate at the first epoch.", interval="(0, inf)")
    lr_schedule: str = option("exponential", "Learning-rate schedule: exponential (x 0.985 per "
                              "epoch, the paper), step, plateau (the port), poly or constant.",
                              choices=SCHEDULES)
    learning_rate_drop: float = option(0.5, "Factor of each drop of the step and plateau "
                                       "schedules.", interval="(0, 1)")
    learning_rate_epochs: int | None = option(None, "Epochs between drops of the step schedule.",
                                              none="no step schedule", interval="[1, inf)")
    learning_rate_patience: int = option(10, "Epochs without a better val_loss before the "
                                         "plateau schedule drops the rate.", interval="[0, inf)")
    early_stopping_patience: int | None = option(None, "Stop after this many epochs without a "
                                                 "better val_loss.", none="never stop early", interval="[0, inf)")
    preactivation: bool = option(False, "Isensee network: context modules as pre-activation "
                                 "residual blocks (norm, leaky ReLU, conv; the paper) instead of "
                                 "the port's conv-norm-activation.")
    l2: float = option(0.0, "L2 weight decay on every convolution kernel, added to the loss (the "
                       "paper: 1e-5).", interval="[0, inf)")
    target: str = option("regions", "Network outputs: the convention's nested regions (nnU-Net; "
                         "WT/TC/ET, and RC, CC or GTV where the convention has them), one "
                         "channel per label value (the port), or classes: a softmax over "
                         "background and each label value, decoded by argmax (the paper).",
                         choices=TARGETS)
    convention: str | None = option(
        None, "The BraTS release or task of the store's truths: its labels and the regions "
        "trained on (docs/real_brats_data.md; --labels of unet3d 0.2 still works).",
        choices=tuple(CONVENTIONS), none="the store's", aliases=CONVENTION_ALIASES,
        flag_aliases=("labels",))
    loss: str = option("bce_dice", "Loss: bce_dice (BCE + soft Dice over regions), dice "
                       "(multiclass soft Dice), weighted_dice (the port's), dice_coefficient (the "
                       "port's plain U-Net).", choices=LOSSES)
    augment: bool = option(True, "Augment the training patches (the paper's spatial and "
                           "intensity augmentation; the port's scaling and flips on its grid).")
    augmentation: str = option("nnunet", "Random-patch augmentation of --augment: nnunet "
                               "(rotation, per-axis scaling, elastic, mirroring, gamma, "
                               "brightness, noise; nnU-Net's BraTS probabilities) or paper2017 "
                               "(the paper's list: rotation, scaling, elastic, gamma, "
                               "mirroring).", choices=AUGMENTATIONS)
    permute: bool = option(False, "Apply one of the 48 cube permutations to each sample (the "
                           "port; cubic samples only).")
    training_patch_start_offset: tuple[int, int, int] | None = option(
        None, "Port's patch grid: each epoch, shift the grid by a random offset of up to this "
        "many voxels per axis.", none="a fixed grid")
    skip_blank: bool = option(False, "Leave out patches without tumour (the port).")
    n_folds: int | None = option(None, "Cross-validation: cut the store's labelled cases into "
                                 "this many folds (drawn with --seed, saved in "
                                 "<run_dir>/folds.json and reused); fold k's run is in "
                                 "<run_dir>/fold_<k>/.", none="one split by --data_split",
                                 interval="[2, inf)")
    fold: str | None = option(None, "With --n_folds: the fold to train (0 .. n_folds - 1: "
                              "validated on that fold, trained on the others), or all (each in "
                              "turn).", none="no folds")
    data_split: float = option(0.8, "Fraction of the cases used for training when the split is "
                               "drawn (1.0: no validation).", interval="(0, 1]")
    predict_whole_volume: bool = option(False, "How the model predicts by default (recorded "
                                        "in its card; brats/predict.py --whole_volume or "
                                        "--patch_shape override it): one whole-volume pass "
                                        "instead of sliding windows of the patch.")
    predict_tta: str = option("none", "Test-time augmentation the model predicts with by "
                              "default (recorded in its card; brats/predict.py --tta overrides "
                              "it).", choices=TTA_MODES)
    precision: str = option("auto", "auto: mixed_float16 on GPUs, mixed_bfloat16 on CPUs with "
                            "bfloat16 units, else float32.", choices=PRECISIONS)
    strategy: str = option("auto", "auto: multi_worker when TF_CONFIG is set, mirrored with "
                           "several GPUs (or --cpu_replicas > 1), else one_device.",
                           choices=STRATEGIES, resumable=True)
    cpu_replicas: int = option(1, "Without GPUs: split the CPU into this many logical devices, "
                               "one replica each (tests, benchmarks).", resumable=True, interval="[1, inf)")
    workers: int = option(2, "Processes making batches (0: in the training process).",
                          resumable=True, interval="[0, inf)")
    seed: int = option(0, "Seed of the split, the patches, the augmentation and the initial "
                       "weights.", interval="[0, inf)")
    verbose: int | str = option("auto", "Keras progress: auto (a bar on a terminal, else none: "
                                "the run's line per epoch says it), 0 (none), 1 (a bar) or 2 "
                                "(Keras' line per epoch).", resumable=True)


#: What each recipe changes in `TrainConfig`'s defaults (the paper recipe).
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    # Isensee et al. 2017 as published: pre-activation context modules, L2 1e-5, softmax over
    # the labels with the multiclass soft Dice, the paper's augmentation, whole-volume
    # prediction with mirroring; its other choices are the paper recipe's defaults.
    "paper2017": dict(run_dir="runs/paper2017", preactivation=True, l2=1e-5, target="classes",
                      loss="dice", augmentation="paper2017", predict_whole_volume=True,
                      predict_tta="mirror"),
    # The legacy port's brats/train_isensee2017.py config: whole 128^3 resampled images.
    "legacy": dict(run_dir="runs/legacy", data_file="brats_data_128.h5", validation="patches",
                   legacy_model=True,
                   image_shape=(128, 128, 128), patch_shape=None, random_patches=False,
                   batch_size=1, validation_batch_size=2, steps_per_epoch=None, n_epochs=500,
                   lr_schedule="plateau", early_stopping_patience=50, target="labels",
                   loss="weighted_dice", augment=False, permute=True,
                   training_patch_start_offset=(16, 16, 16), skip_blank=True),
    # The port's plain 3D U-Net script (brats/train.py): 64^3 patches of the 144^3 store.
    "unet": dict(model="unet3d", run_dir="runs/unet", data_file="brats_data_144.h5",
                 validation="patches", image_shape=(144, 144, 144), patch_shape=(64, 64, 64), random_patches=False,
                 batch_size=6, validation_batch_size=12, steps_per_epoch=None, n_epochs=500,
                 initial_learning_rate=1e-5, lr_schedule="plateau", early_stopping_patience=50,
                 target="labels", loss="dice_coefficient", n_base_filters=32, augment=False,
                 training_patch_start_offset=(16, 16, 16), skip_blank=True),
}


def preset(name: str, **overrides) -> TrainConfig:
    """The named recipe's configuration with `overrides` applied."""
    if name not in PRESETS:
        raise InputError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
    return TrainConfig(**{**PRESETS[name], **overrides})


#: The paper recipe: the defaults of the library functions that take its settings.
PAPER = TrainConfig()


@dataclasses.dataclass
class PredictConfig:
    """How to predict. What the model is (inputs, patch, targets, preprocessing) comes from its
    model card; the last three fields stand in for a card, for models that have none."""

    patch_shape: tuple[int, int, int] | None = option(
        None, "Sliding window, e.g. 128,128,128.", none="the training patch (model card)", interval="[1, inf)")
    whole_volume: bool | None = option(None, "One pass over the whole brain box instead of "
                                       "sliding windows (the most memory); --nowhole_volume: "
                                       "sliding windows.", none="the model card's (sliding "
                                       "windows unless its recipe predicts whole volumes, as "
                                       "paper2017 does; windows when --patch_shape is given)")
    step: float = option(0.5, "Window step, a fraction of the window in (0, 1].", interval="(0, 1]")
    weighting: str = option("gaussian", "Weights of each window's prediction: gaussian "
                            "(nnU-Net's, sigma = window / 8) or constant.", choices=WEIGHTINGS)
    tta: str = option("auto", "Test-time augmentation: mirror (the 8 flips, 8x the time), "
                      "permute (the port's 48 permutations, cubic windows), none, or auto: the "
                      "model card's (mirror for the paper2017 recipe, else none).",
                      choices=("auto", *TTA_MODES))
    batch_size: int = option(1, "Windows per model call.", interval="[1, inf)")
    runtime: str = option("keras", "What runs the network: Keras, or its ONNX graph in "
                          "onnxruntime or openvino (pip install -e .[onnx] or .[openvino]); "
                          "the same windows and outputs, another speed.", choices=RUNTIMES)
    precision: str = option("float32", "Inference precision: float32, bfloat16 (keras: "
                            "mixed_bfloat16; openvino: bf16) or auto (bfloat16 where the CPU "
                            "has AMX or AVX-512 BF16, or keras has a GPU).",
                            choices=INFERENCE_PRECISIONS)
    threshold: float = option(0.5, "Probability from which a voxel is inside a region (the "
                              "port's label rule: below which it is background).", interval="(0, 1)")
    convention: str | None = option(
        None, "Write the labels of this convention (each tissue of the model's labels as this "
        "convention numbers it, e.g. brats2023-gli for a brats2020 model).",
        choices=tuple(CONVENTIONS), none="the model's (its card)", aliases=CONVENTION_ALIASES,
        flag_aliases=("labels",))
    min_et_voxels: int = option(0, "BraTS post-processing: a predicted enhancing tumour smaller "
                                "than this becomes necrosis, for the conventions with that rule "
                                "(e.g. 200; 0: off).", interval="[0, inf)")
    bias_correction: bool = option(True, "N4 bias correction of raw inputs, as the model card "
                                   "records for the training data (folders written by "
                                   "brats/preprocess.py are not corrected twice).")
    probabilities: bool = option(False, "Also write one probability map per output, "
                                 "<case>_<output>.nii.gz.")
    modalities: tuple[str, ...] | None = option(
        None, "Input channels in order, e.g. t1,t1ce,flair,t2. Only for a model without a card.",
        none="the model card's")
    target: str | None = option(None, "Output encoding (regions: the convention's, e.g. WT/TC/ET; "
                                "labels: one channel per label; classes: a softmax over "
                                "background and the labels). Only for a model without a "
                                "card.", choices=TARGETS,
                                none="the model card's")
    image_shape: tuple[int, int, int] | None = option(
        None, "The resampled shape of the port's store the model was trained on. Only for a "
        "model without a card.", none="the model card's (without a card: the brain crop)", interval="[1, inf)")


    def resolved(self, inference: "Inference | None" = None) -> "PredictConfig":
        """This config with what it leaves to the model (`whole_volume` None, `tta` "auto")
        taken from `inference` (the model card's; default: sliding windows, no TTA). A window
        given (`patch_shape`) means sliding windows."""
        inference = inference or Inference()
        whole = self.whole_volume
        if whole is None:
            whole = inference.whole_volume and self.patch_shape is None
        return dataclasses.replace(self, whole_volume=whole,
                                   tta=inference.tta if self.tta == "auto" else self.tta)


@dataclasses.dataclass(frozen=True)
class Inference:
    """How a model predicts unless told otherwise, recorded in its card (`ModelCard.inference`)
    from its recipe's `predict_whole_volume` and `predict_tta`."""

    whole_volume: bool = TrainConfig.predict_whole_volume
    tta: str = TrainConfig.predict_tta


@dataclasses.dataclass
class DemoConfig:
    """The demo's size; the defaults take about 8 minutes on 2 CPU cores (bfloat16 units).

    Training is the paper recipe (random patches with a third on tumour, full augmentation,
    WT/TC/ET targets, BCE + Dice, Adam with exponential decay) at a smaller size.
    """

    work_dir: str = option("demo", "Folder for every file the demo writes.")
    n_cases: int = option(16, "Synthetic cases in all.")
    n_test: int = option(4, "Cases held out for prediction and scoring.")
    shape: tuple[int, int, int] = option((96, 96, 64), "Case grid X,Y,Z, each at least 32 (BraTS: "
                                         "240,240,155).")
    patch_shape: tuple[int, int, int] = option((48, 48, 48), "Training patch and prediction "
                                               "window, sizes divisible by 16.")
    batch_size: int = option(2, "Patches per batch.")
    steps_per_epoch: int = option(25, "Batches per epoch.")
    n_epochs: int = option(50, "Epochs.")
    initial_learning_rate: float = option(1e-3, "Adam's first learning rate (x 0.985 per "
                                          "epoch).")
    n_base_filters: int = option(8, "Filters of the first level (the paper: 16).")
    workers: int = option(1, "Batch-making processes.")
    precision: str = option("auto", "Training precision.", choices=PRECISIONS)
    seed: int = option(0, "Seed of the data, the split and training.")
