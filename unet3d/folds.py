"""Cross-validation folds: a seeded, saved split of a store's labelled cases into k folds.

`--n_folds K --fold k` trains fold k: its validation cases are fold k, its training cases the
other folds. The folds are drawn once (the cases shuffled with the run's seed, then cut into k
parts whose sizes differ by at most one) and saved as `<run_dir>/folds.json`, readable by a person
(the subject ids of each fold), which every later run of any fold reuses. Each fold is a run of
its own in `<run_dir>/fold_<k>/` (model, logs, split files, checkpoint, validation), resumed by
rerunning its command as any run (`unet3d.runs`). `--fold all` trains the folds one after another.

Out-of-fold evaluation (`unet3d.cross_validation`) predicts each fold's validation cases with that
fold's model.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from unet3d.atomic import atomic_write
from unet3d.config import TrainConfig
from unet3d.data import DataStore
from unet3d.errors import InputError
from unet3d.logs import get_logger

#: The folds file in the cross-validation's run folder.
FOLDS_FILE = "folds.json"
FOLDS_VERSION = 1


def fold_dir(run_dir: str | Path, fold: int) -> Path:
    """The run folder of fold `fold` of the cross-validation in `run_dir`."""
    return Path(run_dir) / f"fold_{fold}"


def draw_folds(subject_ids: list[str], n_folds: int, seed: int) -> list[list[str]]:
    """`subject_ids` shuffled with `seed` and cut into `n_folds` disjoint folds whose sizes differ
    by at most one (the first ones are the larger); each fold keeps the shuffled order."""
    if n_folds < 2:
        raise InputError(f"--n_folds {n_folds}: cross-validation needs at least 2 folds")
    if len(subject_ids) < n_folds:
        raise InputError(f"{len(subject_ids)} labelled case(s) cannot make {n_folds} folds: "
                         f"use --n_folds {max(2, len(subject_ids))} or fewer, or add cases")
    order = np.random.default_rng(seed).permutation(len(subject_ids))
    return [[subject_ids[i] for i in part] for part in np.array_split(order, n_folds)]


def read_folds(path: str | Path) -> dict:
    """The folds file `path` as {"n_folds", "seed", "data_file", "folds": [[subject ids]]},
    checked (folds disjoint, as many as said); `InputError` naming the file otherwise."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        folds = [[str(case) for case in fold] for fold in data["folds"]]
        n_folds, seed = int(data["n_folds"]), int(data["seed"])
    except FileNotFoundError:
        raise InputError(f"{path}: no folds file (training with --n_folds draws it)") from None
    except (ValueError, KeyError, TypeError) as error:
        raise InputError(f"{path}: not a folds file ({error}); restore it from a copy, or "
                         "delete it with the fold runs to draw new folds") from None
    cases = [case for fold in folds for case in fold]
    if len(folds) != n_folds or len(set(cases)) != len(cases):
        raise InputError(f"{path}: its folds are not {n_folds} disjoint sets of cases: the file "
                         "was edited; restore it from a copy")
    return {**data, "folds": folds, "n_folds": n_folds, "seed": seed}


def get_folds(store: DataStore, path: str | Path, n_folds: int, seed: int, save: bool = True
              ) -> list[list[int]]:
    """The folds of `store`'s cases as case indices: those of the folds file `path` when it
    exists (checked to be `n_folds` folds drawn with `seed`, of this store's cases), else drawn
    (`draw_folds`) and saved there (unless not `save`: the non-chief workers)."""
    path = Path(path)
    if not store.has_truth:
        raise InputError(f"{store.path} holds no truths: cross-validation needs labelled cases")
    index = {name: i for i, name in enumerate(store.subject_ids)}
    if path.exists():
        data = read_folds(path)
        if (data["n_folds"], data["seed"]) != (n_folds, seed):
            raise InputError(f"{path} holds {data['n_folds']} folds drawn with seed "
                             f"{data['seed']}, not --n_folds {n_folds} --seed {seed}: give "
                             "those, or another --run_dir for other folds (or delete it with "
                             "the fold runs to start the cross-validation over)")
        unknown = [case for fold in data["folds"] for case in fold if case not in index]
        if unknown or sum(map(len, data["folds"])) != len(index):
            raise InputError(f"{path}: its folds do not hold exactly the cases of {store.path} "
                             f"(unknown: {unknown[:3]}): they belong to another store; give "
                             f"that store, or another --run_dir for this one")
        return [[index[case] for case in fold] for fold in data["folds"]]
    folds = draw_folds(list(store.subject_ids), n_folds, seed)
    if save:
        record = {"version": FOLDS_VERSION, "n_folds": n_folds, "seed": seed,
                  "data_file": str(Path(store.path).resolve()), "folds": folds}
        with atomic_write(path, ".json") as tmp:
            Path(tmp).write_text(json.dumps(record, indent=1) + "\n")
        get_logger().info("new folds (seed %d): %s -> %s", seed,
                          ", ".join(str(len(fold)) for fold in folds), path)
    return [[index[case] for case in fold] for fold in folds]


def fold_split(folds: list[list[int]], fold: int) -> tuple[list[int], list[int]]:
    """(training, validation) case indices of fold `fold`: the other folds, and that fold."""
    return [case for k, part in enumerate(folds) if k != fold for case in part], folds[fold]


def fold_configs(config: TrainConfig) -> list[TrainConfig]:
    """The runs `config` asks for: itself without folds; with `n_folds`, one config per fold of
    `fold` (a number, or "all"), each in its own `fold_dir`."""
    if config.n_folds is None:
        if config.fold is not None:
            raise InputError("--fold needs --n_folds (how many folds the cases are cut into)")
        return [config]
    if config.fold is None:
        raise InputError(f"--n_folds {config.n_folds}: give --fold 0..{config.n_folds - 1} "
                         "(the fold to train) or --fold all")
    if config.fold == "all":
        folds = list(range(config.n_folds))
    elif config.fold.isdigit() and int(config.fold) < config.n_folds:
        folds = [int(config.fold)]
    else:
        raise InputError(f"--fold {config.fold}: give a fold 0..{config.n_folds - 1} or all")
    placed = [name for name in ("model_file", "training_log", "training_keys_file",
                                "validation_keys_file") if getattr(config, name) is not None]
    if placed:
        raise InputError(f"--{', --'.join(placed)} with --n_folds: each fold's files are in "
                         f"its own folder <run_dir>/fold_<k>/; leave them out")
    return [dataclasses.replace(config, run_dir=str(fold_dir(config.run_dir, k)), fold=str(k))
            for k in folds]


def one_run(config: TrainConfig) -> TrainConfig:
    """`config` as the one run it describes: itself without folds or when it is already a fold's
    run (`fold_configs`), else its one fold's run; `--fold all` is refused here (the training
    script trains the folds one after another)."""
    if config.n_folds is None or Path(config.run_dir).name == f"fold_{config.fold}":
        return config
    runs = fold_configs(config)
    if len(runs) != 1:
        raise InputError("--fold all is several runs: train each config of "
                         "unet3d.folds.fold_configs(config) in turn")
    return runs[0]


def folds_file(config: TrainConfig) -> Path:
    """The folds file of a fold's run (`fold_configs`): in the cross-validation's folder."""
    return Path(config.run_dir).parent / FOLDS_FILE
