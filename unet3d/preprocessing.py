"""BraTS preprocessing: N4 bias-field correction, written case by case in the legacy layout.

`preprocess_brats(brats_dir, out_dir)` finds the cases of any BraTS release or task under
`brats_dir` (`unet3d.brats.find_cases`; the convention is detected, `unet3d.conventions`),
corrects the bias field of t1, t1ce and t2 (not flair, as the legacy port did) with SimpleITK's
N4 inside the brain mask, and writes

    <out_dir>/<case>/{t1,t1ce,flair,t2}.nii.gz   float32, the original grid and geometry (the
                                                  convention's modalities, or --modalities)
    <out_dir>/<case>/truth.nii.gz                 uint8, the original label values (if labelled)
    <out_dir>/preprocess.json                     the settings and the convention (and,
                                                  while an --overwrite is unfinished, the cases
                                                  it still has to redo)
    <out_dir>/preprocess.log                      the log (written by the script)

Each case folder appears at once (written to a temporary folder, then renamed), so a case folder
that exists is complete: a rerun skips it unless `overwrite`. An overwrite records the cases it
redoes before it starts and crosses each off when it is written, so an interrupted overwrite
goes on where it stopped when rerun (with or without `overwrite`), and the folder is not used
(for a store, for prediction) before it finished. Cases run in a process pool; a case that fails
is reported and the others go on; temporary folders that a killed run left are removed.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import SimpleITK as sitk

from unet3d.brats import MODALITIES, Case, detect_convention, find_cases, read_case
from unet3d.config import option
from unet3d.plain_settings import from_plain, to_plain
from unet3d.conventions import Convention, check_label_values, recorded
from unet3d.atomic import atomic_folder, atomic_write, remove_stale_temporaries
from unet3d.errors import InputError, OutputError
from unet3d.io import Geometry, to_sitk, write_nifti
from unet3d.logs import get_logger
from unet3d.model_space import brain_mask

SETTINGS_FILE = "preprocess.json"
# The key of preprocess.json listing the cases an unfinished overwrite has still to redo.
PENDING = "overwrite_pending"
TRUTH_NAME = "truth"


@dataclass(frozen=True)
class PreprocessConfig:
    """Preprocessing settings; the defaults are the fast run (`FULL_QUALITY_N4`: the fine one)."""

    modalities: tuple[str, ...] | None = option(
        None, "The modalities of each case, in the order of the store's channels (a subset "
        "of the convention's, e.g. t1ce alone).", none="the convention's (t1,t1ce,flair,t2 for "
        "the glioma releases; t1ce for MEN-RT)")
    bias_correction: tuple[str, ...] = option(
        ("t1", "t1ce", "t2"), "Modalities N4 bias-corrected (the port left FLAIR as it is), "
        "those of --modalities; an empty value ('') turns N4 off.")
    n4_shrink_factor: int = option(4, "N4 fits the bias field on the image shrunk by this factor "
                                   "per axis and applies it at full resolution (4: a few seconds "
                                   "per BraTS volume).")
    n4_iterations: tuple[int, ...] = option((20, 20, 20), "N4 iterations per fitting level (as "
                                            "many levels as values).")


def check_preprocess_config(config: PreprocessConfig) -> None:
    """Stop impossible settings before any case is read, naming the flag."""
    modalities = config.modalities or ()
    unknown = sorted(set(modalities + config.bias_correction) - set(MODALITIES))
    if unknown:
        raise InputError(f"--modalities / --bias_correction: unknown {', '.join(unknown)}; the "
                         f"modalities are {', '.join(MODALITIES)}")
    if config.modalities is not None and (
            not modalities or len(set(modalities)) != len(modalities)):
        raise InputError(f"--modalities {','.join(modalities)}: one or more, each once")
    outside = [m for m in config.bias_correction if m not in modalities]
    if config.modalities is not None and outside:
        raise InputError(f"--bias_correction {','.join(outside)}: not among --modalities "
                         f"{','.join(config.modalities)}")
    if config.n4_shrink_factor < 1 or not config.n4_iterations or min(config.n4_iterations) < 1:
        raise InputError(f"--n4_shrink_factor {config.n4_shrink_factor}, --n4_iterations "
                         f"{','.join(map(str, config.n4_iterations))}: positive numbers, one or "
                         "more levels")


#: The full-quality N4 run (slower): finer grid, four levels of 50 iterations.
FULL_QUALITY_N4 = {"n4_shrink_factor": 2, "n4_iterations": (50, 50, 50, 50)}


@dataclass
class PreprocessReport:
    """What `preprocess_brats` did: case names done, skipped (already there) and failed."""

    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    convention: str = ""


def for_convention(config: PreprocessConfig, convention: Convention) -> PreprocessConfig:
    """`config` with its modalities resolved: the convention's when `config.modalities` is None,
    N4 then on those of `config.bias_correction` that the convention has."""
    if config.modalities is not None:
        return config
    modalities = convention.modalities
    return dataclasses.replace(config, modalities=modalities, bias_correction=tuple(
        m for m in config.bias_correction if m in modalities))


def n4_bias_correction(image: np.ndarray, geometry: Geometry, mask: np.ndarray,
                       shrink_factor: int = 4, iterations: tuple[int, ...] = (20, 20, 20)
                       ) -> np.ndarray:
    """N4 bias-field correction of an (x, y, z) image inside `mask`. Returns float32 (x, y, z).

    The field is fitted on the image shrunk by `shrink_factor` over the voxels of `mask` with a
    positive intensity, then evaluated at full resolution; the image is divided by it. Voxels
    outside `mask` are 0 in the result.
    """
    fit_mask = mask & (image > 0)
    if not fit_mask.any():
        raise InputError("N4 bias correction: the image has no positive voxel inside the brain")
    full = to_sitk(image.astype(np.float32, copy=False), geometry)
    sitk_mask = to_sitk(fit_mask.astype(np.uint8), geometry)
    factors = [int(shrink_factor)] * 3
    corrector = sitk.N4BiasFieldCorrectionImageFilter()
    corrector.SetMaximumNumberOfIterations([int(n) for n in iterations])
    corrector.Execute(sitk.Shrink(full, factors), sitk.Shrink(sitk_mask, factors))
    log_field = sitk.GetArrayFromImage(corrector.GetLogBiasFieldAsImage(full)).transpose(2, 1, 0)
    corrected = image / np.exp(log_field)
    corrected[~mask] = 0
    return corrected.astype(np.float32)


def correct_case(case: Case, config: PreprocessConfig
                 ) -> tuple[dict[str, np.ndarray], np.ndarray | None, Geometry]:
    """Read one case and N4-correct the modalities of `config.bias_correction` in memory.

    Returns ({modality: float32 (x, y, z)} in `config.modalities` order, the label map or None,
    the case's geometry). Raises `InputError` naming the case for a missing modality, files on
    different grids, NaN/inf voxels, unreadable files, all-zero images or label values outside the
    case's convention (`Case.entry`).
    """
    modalities = config.modalities or case.entry.modalities
    arrays, label, geometry = read_case(case, modalities)
    images = dict(zip(modalities, arrays))
    if label is not None:
        check_label_values(label, case.entry, f"case {case.name}: {case.label.name}")
    mask = brain_mask(list(images.values()))
    if not mask.any():
        raise InputError(f"case {case.name}: every modality is all zero; check the files in "
                         f"{case.directory}")
    for modality in config.bias_correction:
        if modality in images:
            try:
                images[modality] = n4_bias_correction(images[modality], geometry, mask,
                                                      config.n4_shrink_factor, config.n4_iterations)
            except InputError as error:
                raise InputError(f"case {case.name}: {case.images[modality].name}: {error}") from None
    return images, label, geometry


def preprocess_case(case: Case, out_dir: str | os.PathLike, config: PreprocessConfig) -> str:
    """Preprocess one case into `<out_dir>/<case.name>/`. Returns a short description.

    Raises `InputError` as `correct_case` does.
    """
    images, label, geometry = correct_case(case, config)
    with atomic_folder(Path(out_dir) / case.name) as tmp:
        for modality, image in images.items():
            write_nifti(image, geometry, tmp / f"{modality}.nii.gz", dtype=np.float32)
        if label is not None:
            write_nifti(label, geometry, tmp / f"{TRUTH_NAME}.nii.gz", dtype=np.uint8)
    corrected = [m for m in images if m in config.bias_correction]
    return (f"N4 on {', '.join(corrected) or 'none'}; "
            + ("labelled" if label is not None else "no label file (prediction only)"))


def is_preprocessed(case: Case, out_dir: Path, modalities: tuple[str, ...]) -> bool:
    """True if `<out_dir>/<case>/` holds every output this case produces."""
    folder = out_dir / case.name
    names = [f"{m}.nii.gz" for m in modalities] + ([f"{TRUTH_NAME}.nii.gz"] if case.label else [])
    return all((folder / name).is_file() for name in names)


def _settings(config: PreprocessConfig, convention: Convention) -> dict:
    return {**to_plain(config), "labels": list(convention.values),
            "convention": convention.name}


def _read_record(preprocessed_dir: str | os.PathLike) -> dict | None:
    path = Path(preprocessed_dir) / SETTINGS_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise InputError(f"{path}: unreadable ({error}); delete it and rerun with --overwrite") from None


def _write_record(out_dir: Path, settings: dict, pending: Sequence[str]) -> None:
    record = {**settings, PENDING: sorted(pending)} if pending else settings
    with atomic_write(out_dir / SETTINGS_FILE, ".json") as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n")


def read_settings(preprocessed_dir: str | os.PathLike) -> dict | None:
    """The settings a preprocessed folder was written with, or None if it has none.

    Raises `InputError` when an overwrite of the folder did not finish: its cases mix two
    settings until brats/preprocess.py is rerun."""
    record = _read_record(preprocessed_dir)
    if record is not None and record.get(PENDING):
        raise InputError(f"{preprocessed_dir}: an --overwrite with new settings did not finish "
                         f"({len(record[PENDING])} case(s) still hold the old ones, e.g. "
                         f"{record[PENDING][0]}); rerun brats/preprocess.py on it to finish")
    return record


def read_preprocess_config(preprocessed_dir: str | os.PathLike
                           ) -> tuple[PreprocessConfig | None, Convention | None]:
    """(the N4 settings, the convention) a folder was written with by `preprocess_brats`;
    (None, None) for a folder it did not write. Folders of unet3d 0.2 recorded the label values
    only: their convention follows from them (1, 2, 4: brats2020; 1, 2, 3: brats2023-gli)."""
    settings = read_settings(preprocessed_dir)
    if settings is None:
        return None, None
    path = Path(preprocessed_dir) / SETTINGS_FILE
    labels = settings.pop("labels", None)
    name = settings.pop("convention", None)
    if labels is None:
        raise InputError(f"{path}: no labels recorded; rerun brats/preprocess.py with --overwrite")
    convention = recorded(name, labels)
    return from_plain(PreprocessConfig, settings, str(path)), convention


def recorded_convention(preprocessed_dir: str | os.PathLike) -> Convention | None:
    """The convention `preprocess_brats` recorded in a folder, or None for other folders."""
    return read_preprocess_config(preprocessed_dir)[1]


def _run_case(case: Case, out_dir: Path, config: PreprocessConfig) -> tuple[str, str, float]:
    """Worker entry: never raises, returns ("ok" | "error", message, seconds)."""
    start = time.monotonic()
    try:
        status, message = "ok", preprocess_case(case, out_dir, config)
    except (InputError, OutputError) as error:
        status, message = "error", str(error)
    except Exception as error:  # noqa: BLE001 - reported per case, the other cases go on
        status, message = "error", (f"case {case.name}: unexpected {type(error).__name__}: "
                                    f"{error}\n{traceback.format_exc()}")
    return status, message, time.monotonic() - start


def _init_worker(threads: int) -> None:
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)


def _claim_folder(out_dir: Path, config: PreprocessConfig, convention: Convention,
                  overwrite: bool, cases: Sequence[str]) -> list[str]:
    """Record the settings in `out_dir`, refusing a folder written with others (unless
    `overwrite`): a folder never mixes settings. Returns the case folders an overwrite (this
    one, or an earlier one that did not finish with the same settings) has still to redo, the
    ones of other runs' `cases` included; they are recorded before any is redone."""
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = _settings(config, convention)
    previous = _read_record(out_dir)
    pending = previous.pop(PENDING, []) if previous is not None else []
    if previous is not None and "convention" not in previous:  # unet3d 0.2: labels only
        previous["convention"] = recorded(None, previous.get("labels")).name
    if previous is not None and previous != settings and not overwrite:
        unfinished = (f"; an --overwrite with those settings did not finish ({len(pending)} "
                      "case(s) still hold older ones)") if pending else ""
        raise InputError(f"{out_dir} was preprocessed with other settings ({previous}){unfinished}; "
                         "pass --overwrite to redo every case with the new ones, or use another "
                         "folder")
    folders = {path.name for path in out_dir.iterdir()
               if path.is_dir() and not path.name.startswith(".")}
    pending = set(pending) & folders
    if overwrite:  # new settings: every case folder holds old ones; same: this run's are redone
        pending |= folders if previous != settings else folders & set(cases)
    pending = sorted(pending)
    for name in cases:
        remove_stale_temporaries(out_dir / name)
    _write_record(out_dir, settings, pending)
    return pending


def _run_cases(todo: list[Case], out_dir: Path, config: PreprocessConfig, workers: int,
               record: Callable[[Case, str, str, float], None]) -> None:
    """Preprocess `todo` in `workers` processes, calling `record` with each case's outcome."""
    workers = max(1, min(int(workers), len(todo) or 1))
    threads = max(1, (os.cpu_count() or 1) // workers)
    if workers == 1:
        _init_worker(threads)
        for case in todo:
            record(case, *_run_case(case, out_dir, config))
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                             initargs=(threads,)) as pool:
        futures = {pool.submit(_run_case, case, out_dir, config): case for case in todo}
        for future in as_completed(futures):
            case = futures[future]
            try:
                record(case, *future.result())
            except Exception as error:  # noqa: BLE001 - a worker died (killed, out of memory)
                record(case, "error", f"case {case.name}: the worker process died "
                       f"({type(error).__name__}: {error})", 0.0)


def preprocess_brats(brats_dir: str | os.PathLike, out_dir: str | os.PathLike,
                     config: PreprocessConfig = PreprocessConfig(), workers: int = 1,
                     overwrite: bool = False,
                     progress: Callable[[str], None] | None = None,
                     convention: str | Convention | None = None) -> PreprocessReport:
    """Preprocess every case under `brats_dir` into `out_dir` (see the module docstring).

    convention: the cases' convention (`unet3d.conventions`); None: detected from the file names
        and, where names are shared by two releases, the label values.
    workers: processes working on cases at once (each uses cores / workers threads).
    overwrite: redo cases already in `out_dir` (otherwise they are skipped, so a rerun resumes).
    progress: called with one line per case; defaults to the package logger.

    Returns a `PreprocessReport`. Raises `InputError` when `brats_dir` holds no case, mixes
    conventions or fits none, or `out_dir` was written with other settings and `overwrite` is
    not set.
    """
    check_preprocess_config(config)
    progress = progress or get_logger().info
    cases = find_cases(brats_dir)
    found = detect_convention(cases, brats_dir, convention, scan_labels=True)
    config = for_convention(config, found)
    absent = [m for m in config.modalities if m not in found.modalities]
    if absent:
        raise InputError(f"--modalities {','.join(config.modalities)}: {found.name} cases have no "
                         f"{', '.join(absent)} (they have {', '.join(found.modalities)})")
    progress(f"{len(cases)} case(s) of {found.name} ({found.description}) in {brats_dir}"
             + ("" if convention else " (detected; --convention overrides it)"))
    out_dir = Path(out_dir)
    pending = set(_claim_folder(out_dir, config, found, overwrite, [c.name for c in cases]))
    here = pending & {case.name for case in cases}
    if here and not overwrite:
        progress(f"an earlier --overwrite of {out_dir} did not finish: redoing its "
                 f"{len(here)} remaining case(s) here")
    if pending - here:
        progress(f"warning: {len(pending - here)} case folder(s) of {out_dir} hold older "
                 f"settings and are not among these cases (e.g. {sorted(pending - here)[0]}): "
                 "the folder is not usable until they are redone or removed")
    settings = _settings(config, found)
    report = PreprocessReport(convention=found.name)
    todo = []
    for case in cases:
        if case.name not in pending and is_preprocessed(case, out_dir, config.modalities):
            report.skipped.append(case.name)
        else:
            todo.append(case)
    if report.skipped:
        progress(f"{len(report.skipped)} of {len(cases)} cases already preprocessed in "
                 f"{out_dir}: skipped (pass --overwrite to redo them)")

    def record(case: Case, status: str, message: str, seconds: float) -> None:
        count = f"[{len(report.done) + len(report.failed) + len(report.skipped) + 1}/{len(cases)}]"
        if status == "ok":
            report.done.append(case.name)
            if case.name in pending:
                pending.discard(case.name)
                _write_record(out_dir, settings, pending)
            progress(f"{count} {case.name}: done in {seconds:.1f} s ({message})")
        else:
            report.failed[case.name] = message
            progress(f"{count} {case.name}: FAILED: {message}")

    _run_cases(todo, out_dir, config, workers, record)
    return report
