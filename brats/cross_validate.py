"""Out-of-fold evaluation of a cross-validation: the honest score of a recipe on a training set.

    python brats/train_isensee2017.py --data_file data/brats_data.h5 --n_folds 5 --fold all
    python brats/cross_validate.py --run_dir runs/paper

Predicts every fold's validation cases with that fold's best model (`<run_dir>/fold_<k>/
model.keras`, which did not train on them), on each case's native grid and as brats/predict.py
predicts with the model card, scores them as brats/evaluate.py does (the scoring edition of the
model's convention), and writes to `<run_dir>/cross_validation/` (or --output_dir): fold_<k>/ (the
fold's predictions, truths and scores), scores.csv (every case, with its fold), folds.csv (the
mean of each score per fold and over all cases) and summary.csv (statistics over all cases), logs
to cross_validate.log there, and ends with a table of the mean Dice per fold. Rerunning keeps
the folds already evaluated with the same models. Exit status 2 for bad arguments or input (a
fold without its model), 1 when a file could not be written.
"""

from pathlib import Path

from absl import flags

from unet3d import cli
from unet3d.logs import setup_logging

FLAGS = flags.FLAGS
flags.DEFINE_string("run_dir", None, "(required) The cross-validation's folder: folds.json and "
                    "fold_<k>/ (the --run_dir the folds were trained with).")
flags.DEFINE_string("output_dir", None, "Where to write the evaluation (default: "
                    "<run_dir>/cross_validation).")
flags.DEFINE_string("data_file", None, "The data store (default: the one folds.json names).")
flags.mark_flags_as_required(["run_dir"])


def main(argv) -> int:
    del argv
    from unet3d.cross_validation import (CROSS_VALIDATION_DIR, cross_validate,
                                         format_cross_validation)

    output_dir = Path(FLAGS.output_dir or Path(FLAGS.run_dir) / CROSS_VALIDATION_DIR)
    logger = setup_logging(output_dir / "cross_validate.log")

    def evaluate() -> int:
        result = cross_validate(FLAGS.run_dir, output_dir, FLAGS.data_file)
        logger.info(format_cross_validation(result))
        return 0
    return cli.report_errors(evaluate, logger)


if __name__ == "__main__":
    cli.run(main)
