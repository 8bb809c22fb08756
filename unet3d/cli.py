"""Command-line plumbing of the entry scripts: flags generated from the settings dataclasses, and
the exit statuses.

Every field of a settings dataclass (`TrainConfig`, `PredictConfig`, `DemoConfig`) is a flag of
the same name (`define_flags`). The field's type gives the syntax (sizes as `128,128,128`, `none`
for None, a name among the field's choices), its metadata the help text, and the default shown is
the value of the recipe the command line chose (`--preset`), so `--helpshort` prints what a run
would use. `config_from_flags` puts the flags that were given over the recipe's values. Nothing is
typed twice: a default lives in its dataclass only (`unet3d.config`).

`run(main)` runs a script like `absl.app.run`, with the project's exit statuses: 0 all good, 1 some
case failed or a file could not be written (`OutputError`: a full disk, a quota), 2 bad usage (a
bad flag value or argument included); `--help` exits 0.

`run` hides TensorFlow's own C++ information and warnings (start-up, CUDA and per-epoch dataset
messages; `unet3d.logs.hide_native_log`) unless `--tensorflow_log` is given.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import types
import typing
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from absl import app, flags

from unet3d.config import CONVENTION_ALIASES, TrainConfig, preset
from unet3d.conventions import CONVENTIONS
from unet3d.errors import InputError, OutputError
from unet3d.logs import hide_native_log, setup_logging

FLAGS = flags.FLAGS
flags.DEFINE_boolean("tensorflow_log", False, "Show TensorFlow's own information and warning "
                     "lines (start-up, CPU features, no CUDA driver, dataset messages), hidden "
                     "by default; its errors always show.")
#: absl's help flags (given as --name or -name); absl ends them with exit status 1.
HELP_FLAGS = ("help", "?", "helpshort", "helpfull", "helpxml")
#: What each training recipe is, for the --preset help.
PRESET_HELP = {"paper": "Isensee 2017 with nnU-Net's region training",
               "paper2017": "Isensee 2017 as published (softmax, multiclass Dice, L2, "
                            "pre-activation blocks, whole-volume mirrored prediction)",
               "legacy": "the Keras-2 port's config", "unet": "the port's plain 3D U-Net"}


# --------------------------------------------------------------------------------------------
# Values <-> command-line text.


def _options(hint) -> tuple[list, bool]:
    """(the types a field's annotation allows besides None, whether None is allowed)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        return [a for a in args if a is not type(None)], type(None) in args
    return [hint], False


def format_value(value: Any) -> str:
    """The command-line text of a setting: sizes as `128,128,128`, None as `none`."""
    if value is None:
        return "none"
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value))
    return str(value).lower() if isinstance(value, bool) else str(value)


def _parse_tuple(text: str, hint) -> tuple:
    item, *rest = typing.get_args(hint)
    length = None if rest == [Ellipsis] else 1 + len(rest)
    if length is None and not text.strip():
        return ()
    values = tuple(item(part.strip()) for part in text.split(","))
    if length is not None and len(values) != length:
        raise ValueError(f"expected {length} comma-separated values, got {len(values)}")
    return values


def parse_value(text: str, hint, metadata: dict) -> Any:
    """A setting of type `hint` from its command-line text (`metadata`: the field's choices and
    aliases). Raises `ValueError` with what is expected."""
    options, optional = _options(hint)
    if optional and text.strip().lower() == "none":
        return None
    aliases = metadata.get("aliases") or {}
    if text in aliases:
        value = aliases[text]
        return value if isinstance(value, str) else tuple(value)
    for option in options:
        try:
            value = (_parse_tuple(text, option) if typing.get_origin(option) is tuple
                     else option(text))
        except ValueError as error:
            if len(options) == 1:
                raise ValueError(f"{text!r}: {error}") from None
            continue
        choices = metadata.get("choices")
        if choices and value not in choices:
            raise ValueError(f"{text!r}: choose one of {', '.join(choices)}")
        return value
    raise ValueError(f"{text!r} is not a valid value")


class _Parser(flags.ArgumentParser):
    def __init__(self, hint, metadata: dict):
        self.hint, self.metadata = hint, metadata

    def parse(self, argument):
        return parse_value(argument, self.hint, self.metadata) if isinstance(argument, str) \
            else argument

    def flag_type(self) -> str:
        return "setting"


class _Serializer(flags.ArgumentSerializer):
    def serialize(self, value) -> str:
        return format_value(value)


# --------------------------------------------------------------------------------------------
# Flags <-> settings dataclasses.


def help_text(field: dataclasses.Field, default: Any) -> str:
    """A field's flag help: its choices, its help, what none means, and a None default (absl
    shows the other defaults itself)."""
    metadata = field.metadata
    text = metadata["help"]
    if metadata.get("choices"):
        text = f"<{'|'.join(metadata['choices'])}>: {text}"
    if metadata.get("none"):
        text += f" 'none': {metadata['none']}."
    if default is None:
        text += " (default: 'none')"
    return text


def define_flags(config_class: type, defaults, flag_values: flags.FlagValues = FLAGS,
                 only: Sequence[str] | None = None) -> None:
    """Define one flag per field of the dataclass `config_class` (or of the fields named in
    `only`) in `flag_values`, showing the values of `defaults` (an instance) as the defaults."""
    hints = typing.get_type_hints(config_class)
    unknown = set(only or ()) - set(hints)
    if unknown:
        raise ValueError(f"{config_class.__name__} has no field {', '.join(sorted(unknown))}")
    for field in dataclasses.fields(config_class):
        if only is not None and field.name not in only:
            continue
        default = getattr(defaults, field.name)
        if hints[field.name] in (bool, Optional[bool]):  # None: --name and --noname not given
            flags.DEFINE_boolean(field.name, default, help_text(field, default),
                                 flag_values=flag_values)
        else:
            flags.DEFINE(_Parser(hints[field.name], field.metadata), field.name, default,
                         help_text(field, default), flag_values=flag_values,
                         serializer=_Serializer())
        for alias in field.metadata.get("flag_aliases") or ():
            flags.DEFINE_alias(alias, field.name, flag_values=flag_values)


def define_convention_flag(help: str, default: str | None = None,
                           aliases: Sequence[str] = ()) -> None:
    """Define `--convention` (a name of `unet3d.conventions.CONVENTIONS` or an alias, e.g.
    brats2023 or 1,2,4) with `help`, and the older flag names `aliases` for it."""
    metadata = {"choices": tuple(CONVENTIONS), "aliases": CONVENTION_ALIASES}
    text = f"<{'|'.join(CONVENTIONS)}>: {help}" + ("" if default else " (default: 'none')")
    flags.DEFINE(_Parser(Optional[str], metadata), "convention", default, text,
                 serializer=_Serializer())
    for alias in aliases:
        flags.DEFINE_alias(alias, "convention")


def config_from_flags(config_class: type, base, flag_values: flags.FlagValues = FLAGS):
    """`base` (an instance of `config_class`) with the values of the flags of `flag_values` that
    were given on the command line."""
    given = {field.name: flag_values[field.name].value
             for field in dataclasses.fields(config_class) if flag_values[field.name].present}
    return dataclasses.replace(base, **given)


def argv_value(name: str, argv: Sequence[str]) -> str | None:
    """The value of `--name` on a command line (`--name value` or `--name=value`), before absl
    parses it."""
    for index, argument in enumerate(argv):
        if argument in (f"--{name}", f"-{name}") and index + 1 < len(argv):
            return argv[index + 1]
        if argument.startswith((f"--{name}=", f"-{name}=")):
            return argument.split("=", 1)[1]
    return None


# --------------------------------------------------------------------------------------------
# Running a script.


def _parse_flags(argv: list[str]) -> list[str]:
    try:
        remaining = FLAGS(argv)
    except flags.Error as error:
        sys.stderr.write(f"error: {error}\nPass --helpshort to see the flags.\n")
        sys.exit(2)
    except SystemExit as stop:  # absl's --help ends with status 1
        asked = any(a.lstrip("-").split("=")[0] in HELP_FLAGS for a in argv[1:]
                    if a.startswith("-"))
        sys.exit(0 if stop.code == 1 and asked else stop.code)
    if len(remaining) > 1:
        sys.stderr.write(f"error: unexpected arguments: {' '.join(remaining[1:])} (the "
                         "scripts take flags only; --helpshort lists them)\n")
        sys.exit(2)
    if not FLAGS.tensorflow_log:
        hide_native_log()
        logging.getLogger("numexpr").setLevel(logging.WARNING)
    return remaining


def report_errors(step: Callable[[], int], logger) -> int:
    """`step()`'s exit status; after logging its error instead: 2 for an `InputError` (bad usage
    or input), 1 for an `OutputError` (a file could not be written)."""
    try:
        return step()
    except InputError as error:
        logger.error(f"error: {error}")
        return 2
    except OutputError as error:
        logger.error(f"error: {error}")
        return 1


def run(main: Callable[[list[str]], int]) -> None:
    """Run a script's `main(argv) -> exit status` with absl, exiting 2 on a bad flag. Unless
    `--tensorflow_log` is given, TensorFlow's C++ log is hidden once the flags are read (the
    scripts import TensorFlow inside `main`, so its start-up messages are hidden too)."""
    app.run(main, flags_parser=_parse_flags)


# --------------------------------------------------------------------------------------------
# The training scripts.


def define_training_flags(presets: Sequence[str]) -> None:
    """The flags of brats/train_isensee2017.py and brats/train.py: `--preset` (one of `presets`)
    and one per `TrainConfig` field, showing the chosen preset's values."""
    chosen = argv_value("preset", sys.argv)
    chosen = chosen if chosen in presets else presets[0]
    described = "; ".join(f"{name}: {PRESET_HELP[name]}" for name in presets)
    flags.DEFINE_enum("preset", chosen, list(presets), f"Recipe, whose values are the defaults "
                      f"of the other flags ({described}).")
    define_flags(TrainConfig, preset(chosen))


def training_config_from_flags() -> TrainConfig:
    """The `TrainConfig` of `--preset` with every flag that was given applied. `--patch_shape
    none` alone also turns random patches off (whole images go through the port's grid)."""
    config = config_from_flags(TrainConfig, preset(FLAGS.preset))
    if FLAGS["patch_shape"].present and config.patch_shape is None \
            and not FLAGS["random_patches"].present:
        config = dataclasses.replace(config, random_patches=False)
    return config


def train_main(argv) -> int:
    """Body of the training scripts: exit 0 when done, 1 if stopped by a NaN loss, 2 on bad
    input (a message, no traceback). Logs to <run_dir>/run.log besides the console."""
    del argv
    from unet3d.distribution import is_chief
    from unet3d.folds import fold_configs
    from unet3d.recipes import train
    from unet3d.runs import RUN_LOG, with_run_files

    logger = setup_logging()
    try:
        runs = fold_configs(training_config_from_flags())  # one, or one per fold
        for config in map(with_run_files, runs):
            if is_chief():
                logger = setup_logging(Path(config.run_dir) / RUN_LOG)
            if config.n_folds is not None:
                logger.info(f"fold {config.fold} of {config.n_folds}: {config.run_dir}")
            result = train(config)
            if result.stopped_by_nan:
                return 1
            logger.info(f"{result.epochs_done} epochs done; best model: {config.model_file} "
                        f"(its model card inside); run folder: {config.run_dir}")
    except InputError as error:
        logger.error(f"error: {error}")
        return 2
    except OutputError as error:  # a file could not be written: not bad usage
        logger.error(f"error: {error}")
        return 1
    return 0

