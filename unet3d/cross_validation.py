"""Out-of-fold evaluation of a cross-validation (`unet3d.folds`): the honest score of a recipe.

`cross_validate(run_dir)` predicts each fold's validation cases with that fold's best model (the
one that did not train on them; checked against the model's own saved split), on each case's
native grid and as brats/predict.py predicts with the model card, scores them with this
project's evaluation (a fold whose run recorded training on one of its cases is refused; folds
trained with different settings are warned about), and writes into `<run_dir>/cross_validation/`:

- `fold_<k>/`: the fold's predictions, truths, `scores.csv`, `summary.csv`, `boxplot.png`
  (`unet3d.validation.write_validation`; a fold already evaluated with the same model is kept);
- `scores.csv`: one row per case of every fold, with its fold;
- `folds.csv`: the mean of every score per fold, and over all cases (`all`);
- `summary.csv`: the statistics over all cases (mean, std, median, quartiles), the number a
  user compares recipes by.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path
from typing import Callable

import numpy as np

from unet3d.atomic import atomic_write, remove_stale_temporaries
from unet3d.config import PredictConfig
from unet3d.data import DataStore
from unet3d.errors import InputError
from unet3d.evaluation import STATISTICS, summarize, write_scores, write_summary
from unet3d.folds import FOLDS_FILE, fold_dir, read_folds
from unet3d.logs import get_logger
from unet3d.model import load_old_model
from unet3d.prediction import complete_config
from unet3d.runs import RUN_FILES
from unet3d.training import checkpoint_dir
from unet3d.validation import validated, write_validation

#: The folder of the out-of-fold evaluation in the cross-validation's run folder.
CROSS_VALIDATION_DIR = "cross_validation"


@dataclasses.dataclass
class CrossValidation:
    """What `cross_validate` scored: `rows`, one per case ({"fold", "case", scores...});
    `folds`, one per fold and one for all cases ({"fold", "cases", mean of each score})."""

    rows: list[dict]
    folds: list[dict]
    out_dir: Path


def _fold_means(fold: str, rows: list[dict]) -> dict:
    columns = [key for key in rows[0] if key not in ("fold", "case")]
    return {"fold": fold, "cases": len(rows),
            **{c: float(np.nanmean([float(row[c]) for row in rows])) for c in columns}}


def trained_cases(model_file: Path) -> set[str]:
    """The subject ids a run's model trained on, as its run recorded them (its checkpoint's
    state: `settings.split.training`); `InputError` when the run recorded none."""
    state = checkpoint_dir(model_file) / "state.json"
    try:
        return set(json.loads(state.read_text())["settings"]["split"]["training"])
    except (OSError, ValueError, KeyError, TypeError):
        raise InputError(f"{state}: the run of {model_file} recorded no training cases, so "
                         "its fold cannot be checked; train the fold with this version "
                         "(rerunning its command resumes it)") from None


def _mixed_recipes(models: list) -> list[str]:
    """The training settings (other than the fold's own files and fold) that differ between
    the folds' models."""
    own = {"run_dir", "fold", "model_file", "training_log", "training_keys_file",
           "validation_keys_file", "overwrite", "split"}
    settings = [card.training.settings if card.training else {} for _, _, card, _, _ in models]
    names = sorted({name for s in settings for name in s} - own)
    return [name for name in names if len({json.dumps(s.get(name)) for s in settings}) > 1]


def cross_validate(run_dir: str | Path, out_dir: str | Path | None = None,
                   data_file: str | Path | None = None,
                   progress: Callable[[str], None] | None = None) -> CrossValidation:
    """Evaluate the cross-validation in `run_dir` out of fold (see the module); `out_dir`
    defaults to `<run_dir>/cross_validation`, `data_file` to the store the folds were drawn from.
    Every fold needs its model; a model whose saved training split holds a case of its own fold
    is refused (it is not that fold's)."""
    run_dir = Path(run_dir)
    out_dir = Path(out_dir) if out_dir else run_dir / CROSS_VALIDATION_DIR
    progress = progress or get_logger().info
    folds = read_folds(run_dir / FOLDS_FILE)
    data_file = Path(data_file or folds["data_file"])
    if not data_file.is_file():
        raise InputError(f"data file {data_file} not found: give the store the folds of "
                         f"{run_dir / FOLDS_FILE} were drawn from with --data_file")
    store = DataStore(data_file)
    try:
        index = {name: i for i, name in enumerate(store.subject_ids)}
        missing = [case for fold in folds["folds"] for case in fold if case not in index]
        if missing:
            raise InputError(f"{store.path} does not hold the cases {missing[:3]} of "
                             f"{run_dir / FOLDS_FILE}: give the store the folds were drawn from")
        models = []
        for k, fold in enumerate(folds["folds"]):  # every fold checked before any prediction
            cases = [index[case] for case in fold]
            model_file = fold_dir(run_dir, k) / RUN_FILES["model_file"]
            if not model_file.is_file():
                raise InputError(f"fold {k} has no model ({model_file}): train it with --fold "
                                 f"{k} (the command of the other folds) before the evaluation")
            trained = trained_cases(model_file)
            if trained & set(fold):
                raise InputError(f"{model_file} trained on cases of fold {k} "
                                 f"({', '.join(sorted(trained & set(fold))[:3])}): the run is "
                                 "not that fold's (its score would be biased)")
            model = load_old_model(model_file, compile=False)
            card, config = complete_config(model_file, model, PredictConfig())
            models.append((model_file, model, card, config, cases))
        mixed = _mixed_recipes(models)
        if mixed:
            get_logger().warning("the folds were trained with different settings (%s): their "
                                 "scores are not one recipe's", ", ".join(mixed))
        rows = []
        for k, (model_file, model, card, config, cases) in enumerate(models):
            folder = out_dir / f"fold_{k}"
            stat = model_file.stat()  # a retrained fold is evaluated again
            about = {"model_file": str(model_file), "fold": k,
                     "model_modified_ns": stat.st_mtime_ns, "model_bytes": stat.st_size,
                     "cases": [store.subject_ids[case] for case in cases]}
            remove_stale_temporaries(folder)
            progress(f"fold {k}: {len(cases)} cases with {model_file}")
            if validated(folder) != about:
                write_validation(model, store, cases, config, card.target, card.convention,
                                 folder, about=about)
            with open(folder / "scores.csv", newline="") as stream:
                rows += [{"fold": k, **row} for row in csv.DictReader(stream)]
    finally:
        store.close()
    per_fold = [_fold_means(str(k), [row for row in rows if row["fold"] == k])
                for k in range(folds["n_folds"])]
    per_fold.append(_fold_means("all", rows))
    write_scores([{"case": row["case"], "fold": row["fold"],
                   **{c: v for c, v in row.items() if c not in ("case", "fold")}}
                  for row in rows], out_dir / "scores.csv")
    with atomic_write(out_dir / "folds.csv", ".csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(per_fold[0]))
        writer.writeheader()
        writer.writerows(per_fold)
    scores = [{"case": row["case"], **{c: float(v) for c, v in row.items()
                                       if c not in ("fold", "case")}} for row in rows]
    write_summary(summarize(scores), out_dir / "summary.csv")
    return CrossValidation(rows, per_fold, out_dir)


def format_cross_validation(result: CrossValidation) -> str:
    """A text table of the mean Dice of each region per fold and over all cases."""
    regions = [c[:-len("_dice")] for c in result.folds[0] if c.endswith("_dice")
               and "_lesion_" not in c]
    lines = [f"{'fold':<6}{'cases':>6}" + "".join(f"{r.upper() + ' Dice':>10}" for r in regions)]
    for row in result.folds:
        lines.append(f"{row['fold']:<6}{row['cases']:>6}"
                     + "".join(f"{row[f'{r}_dice']:>10.3f}" for r in regions))
    return "\n".join(lines) + f"\n({', '.join(STATISTICS)} over all cases: " \
        f"{result.out_dir / 'summary.csv'})"
