"""The settings and their one source: the recipes' values against the references, the library
defaults read from the recipe, settings <-> JSON."""

import dataclasses
import inspect

import pytest

from unet3d.config import PAPER, PredictConfig, TrainConfig, preset
from unet3d.plain_settings import from_plain, to_plain
from unet3d.errors import InputError
from unet3d.generator import RandomPatchDataset, get_training_and_validation_datasets
from unet3d.model import build_isensee2017
from unet3d.model_space import ModelSpace
from unet3d.model.card import ModelCard
from unet3d.preprocessing import PreprocessConfig


def test_the_paper_preset_is_isensee_2017():
    """Isensee et al. 2017 (../shared/reference/isensee2017-and-peers.md): random 128^3
    patches, batch 2, 100 batches an epoch, 300 epochs, Adam 5e-4 x 0.985^epoch."""
    paper = preset("paper")
    assert (paper.patch_shape, paper.batch_size, paper.steps_per_epoch, paper.n_epochs) == \
        ((128, 128, 128), 2, 100, 300)
    assert (paper.initial_learning_rate, paper.lr_schedule, paper.random_patches) == \
        (5e-4, "exponential", True)
    assert paper == PAPER == TrainConfig()


def test_the_legacy_preset_is_the_ports_brats_script():
    """The port's brats/train_isensee2017.py config (../shared/reference/legacy-port.md)."""
    legacy = preset("legacy")
    expected = dict(image_shape=(128, 128, 128), patch_shape=None, batch_size=1,
                    validation_batch_size=2, initial_learning_rate=5e-4, data_split=0.8,
                    permute=True, training_patch_start_offset=(16, 16, 16), skip_blank=True,
                    n_epochs=500, lr_schedule="plateau", learning_rate_drop=0.5,
                    learning_rate_patience=10, early_stopping_patience=50, legacy_model=True,
                    validation="patches")
    assert {name: getattr(legacy, name) for name in expected} == expected


def test_library_defaults_are_the_recipes():
    """Functions taking a recipe's setting as a keyword default to the recipe's value."""
    for function in (RandomPatchDataset, get_training_and_validation_datasets):
        parameters = inspect.signature(function).parameters
        for name in ("patch_shape", "batch_size", "steps_per_epoch"):
            assert parameters[name].default == getattr(PAPER, name), (function, name)
    model = build_isensee2017()
    assert model.input_shape == (None, *PAPER.patch_shape, 4)


@pytest.mark.parametrize("settings", [preset("legacy"), PredictConfig(tta="mirror"),
                                      PreprocessConfig(bias_correction=("t1",))])
def test_settings_round_trip_through_json(settings):
    assert from_plain(type(settings), to_plain(settings), "x.json") == settings


def test_nested_settings_round_trip():
    card = ModelCard(model="unet3d", modalities=("t1",), target="labels",
                     convention="labels-1-2", labels=(1, 2),
                     patch_shape=None, space=ModelSpace(image_shape=(8, 8, 8)),
                     preprocessing=PreprocessConfig(), spacing=(1.0, 2.0, 3.0), training=None)
    assert from_plain(ModelCard, to_plain(card), "card.json") == card


def test_a_renamed_setting_is_an_error_not_a_default():
    plain = to_plain(PredictConfig())
    plain["window"] = plain.pop("patch_shape")
    with pytest.raises(InputError, match=r"m.json: PredictConfig misses patch_shape; has unknown "
                                         "window"):
        from_plain(PredictConfig, plain, "m.json")
    with pytest.raises(InputError, match="expected a JSON object"):
        from_plain(PredictConfig, [1, 2], "m.json")


def test_values_of_the_wrong_type_are_errors():
    """JSON written by hand or by another program: a string where sizes belong, a boolean where
    a number belongs (Python counts True as 1)."""
    for name, value in (("patch_shape", "32"), ("n_epochs", True), ("convention", ["brats2020"]),
                        ("initial_learning_rate", "5e-4")):
        plain = {**to_plain(TrainConfig()), name: value}
        with pytest.raises(InputError, match=f"wrong type: {name} = "):
            from_plain(TrainConfig, plain, "settings.json")
    plain = {**to_plain(PredictConfig()), "step": 1, "threshold": 0.4}
    assert from_plain(PredictConfig, plain, "settings.json").step == 1  # an int is a float


def test_every_setting_has_help_for_its_flag():
    for config_class in (TrainConfig, PredictConfig):
        assert all(field.metadata["help"] for field in dataclasses.fields(config_class))


def test_the_recipe_table_in_the_docs_is_generated_from_the_presets():
    from helpers import REPO
    from unet3d.recipe_table import CHOICE_SOURCES, preset_table

    table = preset_table()
    assert table in (REPO / "docs" / "recipes.md").read_text()
    # every setting on which two recipes differ is a row (and has its source)
    for name in ("preactivation", "l2", "target", "loss", "predict_tta", "lr_schedule"):
        assert f"| `{name}` |" in table
    assert "| `seed` |" not in table and "| `run_dir` |" not in table
    # and no source is left for a setting the recipes no longer differ on
    assert set(CHOICE_SOURCES) == {line.split("`")[1] for line in table.splitlines()[2:]}
