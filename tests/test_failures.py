"""Nothing lost, nothing silently wrong: full disks (a file-size limit in a child process makes
writes fail as a full disk does), truncated inputs, a case folder holding another case's file,
an interrupted --overwrite, a flipped byte in a store, a store locked by a writer."""

import json
import re
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from helpers import REPO, run_script
from unet3d.brats import find_cases
from unet3d.data import DataStore
from unet3d.errors import InputError
from unet3d.io import check_complete, read_nifti, write_nifti
from unet3d.preprocessing import (SETTINGS_FILE, PreprocessConfig, preprocess_brats,
                                  read_settings)

QUIET = {"progress": lambda line: None}


def published(folder):
    """The names in `folder`, hidden temporaries included."""
    return sorted(path.name for path in folder.iterdir()) if folder.exists() else []


# --------------------------------------------------------------------------- full disk

@pytest.mark.slow
def test_a_full_disk_fails_every_case_publishes_nothing_and_the_rerun_redoes_them(
        synthetic_brats, tmp_path):
    out = tmp_path / "pre"
    args = (f"--brats_dir={synthetic_brats}", f"--out_dir={out}", "--bias_correction=")
    full = run_script("preprocess.py", *args, file_size_limit=20_000)
    assert full.returncode == 1, full.stderr[-2000:]
    assert "could not be written" in full.stderr or "written incompletely" in full.stderr
    assert "Traceback" not in full.stderr
    # No case folder, no temporary left: only the settings record and the log.
    assert published(out) == ["preprocess.json", "preprocess.log"]
    again = run_script("preprocess.py", *args)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stderr.count(": done in ") == 4
    for case in find_cases(synthetic_brats):
        for name in ("t1", "t1ce", "flair", "t2", "truth"):
            check_complete(out / case.name / f"{name}.nii.gz")


WRITERS = textwrap.dedent("""
    import json, resource, signal, sys
    import numpy as np
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (30_000, 30_000))
    from pathlib import Path
    from unet3d.errors import OutputError
    from unet3d.io import Geometry, write_nifti
    from unet3d.evaluation import write_scores
    from unet3d.model import isensee2017_model, save_model
    from unet3d.model_space import CaseInfo
    from unet3d.store_writer import StoreWriter
    out = Path(sys.argv[1])
    rng = np.random.default_rng(0)
    grid = Geometry((64, 64, 48), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    image = rng.random((64, 64, 48, 4)).astype(np.float32)
    info = CaseInfo("case", (64, 64, 48), (0, 0, 0), (64, 64, 48), grid, False)

    def nifti():
        write_nifti(image[..., 0], grid, out / "image.nii.gz")

    def store():
        with StoreWriter(out / "data.h5", 4, (64, 64, 48), dtype=np.float32) as writer:
            writer.append(image, np.zeros((64, 64, 48), np.uint8), info)
            writer.commit(["case"])

    def model():
        save_model(isensee2017_model((32, 32, 32, 4), n_base_filters=4, n_labels=3),
                   out / "model.keras")

    def csv():
        write_scores([{"case": str(i), "wt_dice": float(i) / 3} for i in range(3000)],
                     out / "scores.csv")

    errors = {}
    for write in (nifti, store, model, csv):
        try:
            write()
            errors[write.__name__] = None
        except OutputError as error:
            errors[write.__name__] = str(error)
    print(json.dumps(errors))
""")


@pytest.mark.slow
def test_every_writer_reports_a_full_disk_and_publishes_nothing(tmp_path):
    """NIfTI (ITK only complains on its console), the HDF5 store, a .keras model and a CSV."""
    run = subprocess.run([sys.executable, "-c", WRITERS, str(tmp_path)], capture_output=True,
                         text=True, timeout=300,
                         env={"PYTHONPATH": str(REPO), "PATH": "", "PYTHONDONTWRITEBYTECODE": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    errors = json.loads(run.stdout.strip().splitlines()[-1])
    for writer, name in (("nifti", "image.nii.gz"), ("store", "data.h5"),
                         ("model", "model.keras"), ("csv", "scores.csv")):
        assert errors[writer] is not None and str(tmp_path / name) in errors[writer], writer
        assert "nothing was published" in errors[writer]
    assert published(tmp_path) == []


# --------------------------------------------------------------------------- bad inputs

@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_a_truncated_nifti_is_an_error_naming_it(synthetic_brats, tmp_path, suffix):
    case = find_cases(synthetic_brats)[0]
    image, geometry = read_nifti(case.images["t1"])
    whole = tmp_path / f"whole{suffix}"
    write_nifti(image, geometry, whole)
    data = whole.read_bytes()
    for cut in (len(data) // 2, len(data) - 16):
        cut_file = tmp_path / f"cut{suffix}"
        cut_file.write_bytes(data[:cut])
        with pytest.raises(InputError, match=f"cut{suffix}: truncated or corrupt"):
            read_nifti(cut_file)
    assert np.array_equal(read_nifti(whole)[0], image)


def test_a_case_folder_holding_another_cases_file_fails_that_case(synthetic_brats, tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(synthetic_brats, raw)
    first, second = (case.name for case in find_cases(raw)[:2])
    (raw / first / f"{first}_t1.nii.gz").unlink()
    shutil.copy(raw / second / f"{second}_t1.nii.gz", raw / first)
    report = preprocess_brats(raw, tmp_path / "pre", PreprocessConfig(bias_correction=()), **QUIET)
    assert set(report.failed) == {first} and len(report.done) == 3
    assert f"{second}_t1.nii.gz" in report.failed[first]
    assert "holds files of several cases" in report.failed[first]
    assert not (tmp_path / "pre" / first).exists()


def test_an_interrupted_overwrite_goes_on_when_rerun(synthetic_brats, tmp_path):
    old, new = PreprocessConfig(bias_correction=()), PreprocessConfig(bias_correction=("t1",))
    out = tmp_path / "pre"
    preprocess_brats(synthetic_brats, out, old, **QUIET)

    def killed_after_one(line):
        if ": done in " in line:
            raise KeyboardInterrupt  # killed right after the first case was written

    with pytest.raises(KeyboardInterrupt):
        preprocess_brats(synthetic_brats, out, new, overwrite=True, progress=killed_after_one)
    record = json.loads((out / SETTINGS_FILE).read_text())
    assert len(record["overwrite_pending"]) == 3
    with pytest.raises(InputError, match="did not finish"):
        read_settings(out)  # no store or prediction from a folder of mixed settings
    with pytest.raises(InputError, match="did not finish"):
        preprocess_brats(synthetic_brats, out, old, **QUIET)  # the old settings are refused
    report = preprocess_brats(synthetic_brats, out, new, **QUIET)  # no --overwrite: goes on
    assert len(report.done) == 3 and len(report.skipped) == 1 and not report.failed
    assert read_settings(out)["bias_correction"] == ["t1"]
    assert "overwrite_pending" not in json.loads((out / SETTINGS_FILE).read_text())
    # Every case now holds the N4-corrected t1 of the new settings.
    t1 = {case.name: read_nifti(out / case.name / "t1.nii.gz")[0]
          for case in find_cases(synthetic_brats)}
    raw = {case.name: read_nifti(case.images["t1"])[0] for case in find_cases(synthetic_brats)}
    assert all(not np.array_equal(t1[name], raw[name]) for name in t1)


# --------------------------------------------------------------------------- the store

def test_a_flipped_byte_in_the_store_is_an_error(store_path, tmp_path):
    """A byte flipped in the middle of the data: reading every case meets it (without the
    checksums it was read back silently as other voxels)."""
    data = bytearray(store_path.read_bytes())
    data[int(len(data) * 0.6)] ^= 0xFF
    flipped = tmp_path / "flipped.h5"
    flipped.write_bytes(bytes(data))
    store = DataStore(flipped)
    with pytest.raises(InputError, match="flipped.h5"):
        for index in range(store.n_cases):
            store.read_image(index)


def test_a_store_another_process_writes_gets_a_message_saying_so(store_path, tmp_path):
    locked = tmp_path / "locked.h5"
    shutil.copy(store_path, locked)
    writer = subprocess.Popen(
        [sys.executable, "-c", "import sys, tables; f = tables.open_file(sys.argv[1], 'a'); "
         "print('open', flush=True); sys.stdin.read()", str(locked)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "open"
        with pytest.raises(InputError, match="another process has this store open for writing"):
            DataStore(locked)
    finally:
        writer.communicate("", timeout=60)
    DataStore(locked).close()  # free again once the writer is gone


# --------------------------------------------------------------------------- impossible numbers

@pytest.mark.parametrize("field, value, interval", [
    ("initial_learning_rate", -1e-3, "(0, inf)"), ("steps_per_epoch", 0, "[1, inf)"),
    ("patch_shape", (0, 128, 128), "[1, inf)"), ("data_split", 1.5, "(0, 1]"),
    ("learning_rate_drop", 1.0, "(0, 1)"), ("workers", -1, "[0, inf)"),
])
def test_impossible_training_numbers_are_refused(field, value, interval):
    from dataclasses import replace

    from unet3d.config import TrainConfig
    from unet3d.recipes import check_config
    with pytest.raises(InputError, match=f"--{field} .*: must be in {re.escape(interval)}"):
        check_config(replace(TrainConfig(), **{field: value}))
    # Numbers of numpy are numbers too (the Python API).
    check_config(replace(TrainConfig(), patch_shape=tuple(np.array([64, 64, 64])),
                         initial_learning_rate=np.float32(1e-3)))


@pytest.mark.slow
def test_bad_flags_exit_2(tmp_path):
    result = run_script("train_isensee2017.py", "--steps_per_epoch=0",
                        f"--data_file={tmp_path / 'none.h5'}", f"--run_dir={tmp_path / 'run'}")
    assert result.returncode == 2 and "--steps_per_epoch 0: must be in [1, inf)" in result.stderr
    result = run_script("evaluate.py", "--no_such_flag")
    assert result.returncode == 2 and "no_such_flag" in result.stderr


# --------------------------------------------------------------------------- memory

# docs/memory.md: (precision, patch edge, batch, measured GB the training step needs).
MEASURED_STEPS = [("float32", 64, 1, 0.9), ("float32", 64, 2, 1.5), ("float32", 96, 1, 2.1),
                  ("float32", 96, 2, 3.8), ("float32", 128, 1, 4.6), ("float32", 128, 2, 8.9),
                  ("mixed_bfloat16", 64, 1, 0.8), ("mixed_bfloat16", 64, 2, 1.2),
                  ("mixed_bfloat16", 96, 1, 1.9), ("mixed_bfloat16", 96, 2, 3.3),
                  ("mixed_bfloat16", 128, 1, 3.8), ("mixed_bfloat16", 128, 2, 6.9)]


def test_the_memory_estimate_follows_the_measured_table_and_refuses_what_cannot_fit():
    from unet3d.distribution import check_memory, step_memory_gb
    for precision, edge, batch, measured in MEASURED_STEPS:
        assert step_memory_gb((edge,) * 3, batch, 16, precision) == pytest.approx(
            measured, rel=0.1), (precision, edge, batch)
    check_memory((128, 128, 128), 2, 16, available_gb=10.0)  # fits: no error
    # 128^3 x 2 is 4.19 million voxels x batch: 0.4 + 2.05 x 4.19 = 9.0 GB; with 8 GB the
    # largest cubic patch that fits is 112^3 (2.81 million: 0.4 + 2.05 x 2.81 = 6.2 GB).
    with pytest.raises(InputError, match=r"needs about 9\.0 GB .* 8\.0 GB are available: "
                                         r"--patch_shape 112,112,112 fits"):
        check_memory((128, 128, 128), 2, 16, available_gb=8.0)
    check_memory((128, 128, 128), 2, 16, "mixed_bfloat16", available_gb=8.0)  # 7.2 GB fits
    with pytest.raises(InputError, match="not even the smallest patch fits"):
        check_memory((128, 128, 128), 2, 16, available_gb=0.3)


def test_complete_niftis_of_other_writers_are_accepted(synthetic_brats, tmp_path):
    """Multi-member gzip, bytes after the gzip stream and a bitpix that disagrees with the data
    type are read by ITK as complete files: so by the completeness check."""
    import gzip

    case = find_cases(synthetic_brats)[0]
    image, geometry = read_nifti(case.images["t1"])
    whole = tmp_path / "whole.nii.gz"
    write_nifti(image, geometry, whole)
    raw = gzip.decompress(whole.read_bytes())
    half = len(raw) // 2
    (tmp_path / "members.nii.gz").write_bytes(gzip.compress(raw[:half]) + gzip.compress(raw[half:]))
    (tmp_path / "trailing.nii.gz").write_bytes(whole.read_bytes() + b"not gzip")
    wrong_bitpix = bytearray(raw)
    wrong_bitpix[72:74] = np.int16(64).tobytes()  # float32 data, bitpix says 64
    (tmp_path / "bitpix.nii").write_bytes(bytes(wrong_bitpix))
    for name in ("members.nii.gz", "trailing.nii.gz", "bitpix.nii"):
        check_complete(tmp_path / name)
        assert np.array_equal(read_nifti(tmp_path / name)[0], image), name
