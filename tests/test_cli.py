"""Flags generated from the settings dataclasses, the presets they show, the exit statuses."""

import dataclasses
import re
import typing

import pytest
from absl import flags

from helpers import run_script
from unet3d import cli
from unet3d.config import PRESETS, DemoConfig, PredictConfig, TrainConfig, preset


def flag_help(script: str, *args: str) -> dict[str, str]:
    """{flag: its help block} of a script's --helpshort (exit status 0)."""
    result = run_script(script, *args, "--helpshort")
    assert result.returncode == 0, result.stderr[-2000:]
    blocks = re.split(r"\n  --(?:\[no\])?", result.stdout)
    return {block.split(":")[0]: block for block in blocks[1:]}


def shown_default(block: str) -> str:
    return re.search(r"\(default: '([^']*)'\)", " ".join(block.split())).group(1)


@pytest.mark.parametrize("script, config_class, preset_name", [
    ("train_isensee2017.py", TrainConfig, "paper"),
    ("train.py", TrainConfig, "unet"),
    ("predict.py", PredictConfig, None),
])
def test_every_setting_has_a_flag_showing_its_default(script, config_class, preset_name):
    shown = flag_help(script)
    defaults = preset(preset_name) if preset_name else config_class()
    for field in dataclasses.fields(config_class):
        assert field.name in shown, f"{script}: no flag --{field.name}"
        assert shown_default(shown[field.name]) == cli.format_value(
            getattr(defaults, field.name)), field.name
        assert field.metadata["help"].split()[0] in shown[field.name]


def test_helpshort_shows_the_chosen_presets_values():
    """The legacy preset's values, as listed in docs/migrating_from_legacy.md, not the paper's."""
    legacy = flag_help("train_isensee2017.py", "--preset", "legacy")
    expected = {"patch_shape": "none", "image_shape": "128,128,128", "n_epochs": "500",
                "batch_size": "1", "lr_schedule": "plateau", "loss": "weighted_dice",
                "target": "labels", "run_dir": "runs/legacy", "data_file": "brats_data_128.h5",
                "validation": "patches", "steps_per_epoch": "none", "permute": "true",
                "augment": "false"}
    assert {name: shown_default(legacy[name]) for name in expected} == expected
    paper = flag_help("train_isensee2017.py", "--preset=paper")
    assert shown_default(paper["patch_shape"]) == "128,128,128"
    assert shown_default(paper["n_epochs"]) == "300"
    paper2017 = flag_help("train_isensee2017.py", "--preset", "paper2017")
    expected = {"target": "classes", "loss": "dice", "l2": "1e-05", "preactivation": "true",
                "predict_whole_volume": "true", "predict_tta": "mirror",
                "augmentation": "paper2017", "run_dir": "runs/paper2017"}
    assert {name: shown_default(paper2017[name]) for name in expected} == expected


@pytest.mark.parametrize("config", [preset(name) for name in PRESETS] + [PredictConfig(),
                                                                          DemoConfig()],
                         ids=[*PRESETS, "predict", "demo"])
def test_every_default_reads_back_from_its_text(config):
    """What --helpshort prints is what a user can type: parse(format(value)) == value."""
    hints = typing.get_type_hints(type(config))
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if hints[field.name] is bool:
            continue
        assert cli.parse_value(cli.format_value(value), hints[field.name],
                               field.metadata) == value, field.name


def parsed(*args: str, base=None) -> TrainConfig:
    values = flags.FlagValues()
    base = base or preset("paper")
    cli.define_flags(TrainConfig, base, values)
    values(["train", *args])
    return cli.config_from_flags(TrainConfig, base, values)


def test_given_flags_replace_the_presets_values_and_only_those():
    legacy = preset("legacy")
    config = parsed("--patch_shape", "64,64,64", "--labels", "brats2023", "--noaugment",
                    "--verbose", "2", "--early_stopping_patience", "none", "--n_epochs=7",
                    base=legacy)
    assert config == dataclasses.replace(legacy, patch_shape=(64, 64, 64),
                                         convention="brats2023-gli",
                                         augment=False, verbose=2, early_stopping_patience=None,
                                         n_epochs=7)
    assert parsed() == preset("paper")
    assert parsed("--labels", "1,2,4", "--verbose", "auto").convention == "brats2020"
    assert parsed("--convention", "brats2024-gli").convention == "brats2024-gli"


@pytest.mark.parametrize("args, message", [
    (["--patch_shape", "64,64"], "expected 3 comma-separated values"),
    (["--patch_shape", "64,x,64"], "invalid literal"),
    (["--loss", "focal"], "choose one of bce_dice"),
    (["--n_epochs", "many"], "invalid literal"),
    (["--n_epochs", "none"], "invalid literal"),  # not optional
])
def test_bad_values_are_flag_errors(args, message):
    with pytest.raises(flags.IllegalFlagValueError, match=message):
        parsed(*args)


def test_exit_statuses_of_bad_usage_and_help():
    bad_value = run_script("train_isensee2017.py", "--patch_shape", "64,64")
    assert bad_value.returncode == 2 and "--patch_shape" in bad_value.stderr
    assert "Traceback" not in bad_value.stderr
    stray = run_script("evaluate.py", "--prediction_dir", "p", "--truth_dir", "t",
                       "--output_dir", "o", "extra")
    assert stray.returncode == 2 and "unexpected arguments: extra" in stray.stderr
    assert run_script("make_synthetic_data.py", "--help").returncode == 0


def test_the_preprocessing_flags_are_its_settings():
    shown = flag_help("preprocess.py")
    from unet3d.preprocessing import PreprocessConfig

    for field in dataclasses.fields(PreprocessConfig):
        assert shown_default(shown[field.name]) == cli.format_value(
            getattr(PreprocessConfig(), field.name))
    assert shown_default(shown["image_shape"]) == "none"
    values = flags.FlagValues()
    cli.define_flags(PreprocessConfig, PreprocessConfig(), values)
    values(["preprocess", "--bias_correction", "", "--n4_iterations", "5,5"])
    config = cli.config_from_flags(PreprocessConfig, PreprocessConfig(), values)
    assert config == PreprocessConfig(bias_correction=(), n4_iterations=(5, 5))
