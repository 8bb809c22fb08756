"""Out-of-fold evaluation of a cross-validation (`unet3d.folds`): the honest score of a recipe.

`cross_validate(run_dir)` predicts each fold's validation cases with that fold's best model (the
one that did not train on them; checked against the model's own saved split), on each case's
native grid and as brats/predict.py predicts with the model card, scores them with this
project's evaluation, and writes into `<run_dir>/cross_validation/`:

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
from unet3d.splits import load_keys
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
    store = DataStore(data_file or folds["data_file"])
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
            keys_file = fold_dir(run_dir, k) / RUN_FILES["training_keys_file"]
            if set(load_keys(keys_file, store)) & set(cases):
                raise InputError(f"{keys_file}: fold {k}'s model trained on cases of fold {k}: "
                                 "the run is not that fold's (its score would be biased)")
            model = load_old_model(model_file, compile=False)
            card, config = complete_config(model_file, model, PredictConfig())
            models.append((model_file, model, card, config, cases))
        rows = []
        for k, (model_file, model, card, config, cases) in enumerate(models):
            folder = out_dir / f"fold_{k}"
            about = {"model_file": str(model_file), "fold": k,
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
