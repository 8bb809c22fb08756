"""Ensembles (unet3d.ensemble): several models predicting as one, and exported as one."""

import json

import keras
import numpy as np
import pytest

from helpers import write_model
from unet3d.config import Inference, PredictConfig
from unet3d.ensemble import model_files
from unet3d.errors import InputError
from unet3d.io import read_nifti
from unet3d.model import build_isensee2017, load_old_model, read_card
from unet3d.prediction import predict_cases

CONFIG = PredictConfig(bias_correction=False, probabilities=True, tta="mirror")


def tiny(seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return build_isensee2017((None, None, None, 4), n_base_filters=4, depth=3,
                             n_segmentation_levels=2)


@pytest.fixture(scope="module")
def members(tmp_path_factory):
    """Two different tiny Isensee models of the same card, as fold runs of one folder."""
    folder = tmp_path_factory.mktemp("ensemble")
    return folder, [write_model(folder / f"fold_{k}", tiny(k), patch_shape=(32, 32, 32))
                    for k in (0, 1)]


@pytest.fixture(scope="module")
def one_case(synthetic_brats, tmp_path_factory):
    """A folder of one of the synthetic cases."""
    import shutil

    folder = tmp_path_factory.mktemp("one_case")
    case = sorted(p for p in synthetic_brats.iterdir() if p.is_dir())[0]
    shutil.copytree(case, folder / case.name)
    return folder


def probability_maps(folder, case: str) -> np.ndarray:
    return np.stack([read_nifti(folder / f"{case}_{region}.nii.gz")[0]
                     for region in ("wt", "tc", "et")], axis=-1)


@pytest.mark.slow
def test_an_ensemble_averages_its_models_probability_maps(members, one_case, tmp_path):
    folder, files = members
    assert model_files(folder) == files  # a folder of fold runs, by fold
    alone = [predict_cases(file, one_case, tmp_path / f"alone_{k}", CONFIG)
             for k, file in enumerate(files)]
    lines = []
    both = predict_cases(folder, one_case, tmp_path / "both", CONFIG,
                         progress=lines.append)
    assert both.done == alone[0].done and not both.failed and len(both.done) == 1
    assert any("an ensemble of 2 models" in line for line in lines)
    for case in both.done:
        maps = [probability_maps(tmp_path / f"alone_{k}", case) for k in (0, 1)]
        assert np.abs(maps[0] - maps[1]).max() > 0.05  # two different models
        np.testing.assert_allclose(probability_maps(tmp_path / "both", case),
                                   (maps[0] + maps[1]) / 2, atol=1e-5, rtol=0)
    # an ensemble of one model is that model
    one = predict_cases([files[0]], one_case, tmp_path / "one", CONFIG)
    for case in one.done:
        np.testing.assert_array_equal(probability_maps(tmp_path / "one", case),
                                      probability_maps(tmp_path / "alone_0", case))


@pytest.mark.parametrize("change, setting", [
    (dict(patch_shape=(16, 16, 16)), "patch_shape"),
    (dict(modalities=("t1ce", "t1", "flair", "t2")), "modalities"),
    (dict(inference=Inference(whole_volume=True)), "inference")])
def test_models_of_other_settings_are_refused_naming_them(members, one_case, tmp_path, change,
                                                          setting):
    _, files = members
    other = write_model(tmp_path / "other", tiny(2), **{"patch_shape": (32, 32, 32), **change})
    with pytest.raises(InputError, match=rf"{files[0]} and {other} differ in {setting}"):
        predict_cases([files[0], other], one_case, tmp_path / "out", CONFIG)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_missing_models_are_refused(members, tmp_path):
    with pytest.raises(InputError, match="not found"):
        model_files([tmp_path / "nothing.keras"])
    with pytest.raises(InputError, match="holds no model"):
        model_files(tmp_path)
    folder, _ = members
    (tmp_path / "fold_0").symlink_to(folder / "fold_0")
    (tmp_path / "fold_1").mkdir()  # not trained yet: not a smaller ensemble
    with pytest.raises(InputError, match="fold_1: no model.keras"):
        model_files(tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("format", ["onnx", "savedmodel"])
def test_an_ensemble_exports_as_one_model_averaging_inside(members, tmp_path, format):
    pytest.importorskip("onnx")
    from unet3d.export import export_model, write_ensemble

    _, files = members
    ensemble = write_ensemble(files, tmp_path / "ensemble.keras")
    assert read_card(ensemble) == read_card(files[0])
    batch = np.random.default_rng(0).normal(size=(1, 16, 16, 16, 4)).astype(np.float32)
    expected = np.mean([load_old_model(f, compile=False).predict_on_batch(batch)
                        for f in files], axis=0)
    np.testing.assert_allclose(load_old_model(ensemble, compile=False).predict_on_batch(batch),
                               expected, atol=1e-6, rtol=0)
    out = export_model(ensemble, tmp_path / "exported", format=format)
    signature = json.loads((out / "signature.json").read_text())
    assert signature["outputs"]["segmentation"]["activation"] == "sigmoid"  # the members
    if format == "onnx":  # checked against Keras before it was published; run it here too
        import onnxruntime
        session = onnxruntime.InferenceSession(str(out / "model.onnx"))
        result = session.run(None, {session.get_inputs()[0].name: batch})[0]
    else:
        import tensorflow as tf
        served = tf.saved_model.load(str(out / "saved_model")).signatures["serving_default"]
        result = served(image=tf.constant(batch))["segmentation"].numpy()
    np.testing.assert_allclose(result, expected, atol=1e-4, rtol=0)
