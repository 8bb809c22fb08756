"""Devices, precision, and the guarded keras#20585 workaround (unet3d.distribution); training
across replicas and workers is tested end to end in test_training.py."""

import json
from pathlib import Path

import keras
import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from helpers import install_requires
from unet3d.distribution import (PATCHED_FUNCTIONS, TESTED_KERAS, check_keras_workaround,
                                 is_chief, make_strategy, private_signature, set_precision)
from unet3d.errors import InputError


@pytest.fixture
def float32_policy():
    """Put Keras' global dtype policy back to float32 after the test."""
    yield
    keras.mixed_precision.set_global_policy("float32")


def test_set_precision(float32_policy):
    assert set_precision("float32") == "float32"
    assert keras.mixed_precision.global_policy().name == "float32"
    assert set_precision("mixed_bfloat16") == "mixed_bfloat16"
    assert keras.mixed_precision.global_policy().compute_dtype == "bfloat16"
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    bf16 = "amx_bf16" in flags or "avx512_bf16" in flags
    assert set_precision("auto") == ("mixed_bfloat16" if bf16 else "float32")  # no GPU here
    with pytest.raises(InputError, match="float16"):
        set_precision("float16")


@pytest.mark.parametrize("tf_config, chief", [
    (None, True),
    ({"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 0}}, True),
    ({"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}}, False),
    ({"cluster": {"chief": ["c:0"], "worker": ["a:1"]}, "task": {"type": "worker", "index": 0}},
     False),
    ({"cluster": {"chief": ["c:0"], "worker": ["a:1"]}, "task": {"type": "chief", "index": 0}},
     True),
])
def test_only_the_chief_writes(tf_config, chief, monkeypatch):
    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", json.dumps(tf_config))
    assert is_chief() is chief


# --------------------------------------------------------------------------- keras#20585

def test_the_installed_keras_is_the_one_the_workaround_was_written_for():
    """Fails when Keras changes a private function the workaround patches (or calls): read the
    new code, re-test multi-worker training, then update PATCHED_FUNCTIONS and TESTED_KERAS."""
    found = {key: private_signature(*key) for key in PATCHED_FUNCTIONS}
    assert found == PATCHED_FUNCTIONS
    first, stop = (Version(v) for v in TESTED_KERAS)
    assert first <= Version(keras.__version__) < stop
    check_keras_workaround()


def test_setup_py_bounds_keras_to_the_tested_versions():
    first, stop = TESTED_KERAS
    assert install_requires()["keras"].specifier == Requirement(
        f"keras>={first},<{stop}").specifier


def test_an_untested_keras_is_refused_naming_the_upstream_issue(monkeypatch):
    monkeypatch.setattr(keras, "__version__", "3.99.0")
    with pytest.raises(InputError) as error:
        check_keras_workaround()
    message = str(error.value)
    assert "keras-team/keras/issues/20585" in message and "Keras 3.99.0" in message
    assert f"pip install 'keras>={TESTED_KERAS[0]},<{TESTED_KERAS[1]}'" in message


def test_a_changed_private_function_is_refused(monkeypatch):
    from keras.src.backend.tensorflow import trainer

    monkeypatch.setattr(trainer, "reduce_per_replica", lambda values, strategy: values)
    with pytest.raises(InputError, match=r"reduce_per_replica\(values, strategy\)"):
        check_keras_workaround()


def test_multi_worker_strategy_stops_before_starting_on_an_untested_keras(monkeypatch):
    monkeypatch.setattr(keras, "__version__", "3.99.0")
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["localhost:1"]},
                                                "task": {"type": "worker", "index": 0}}))
    with pytest.raises(InputError, match="20585"):
        make_strategy("multi_worker")
