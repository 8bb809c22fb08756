"""Score predicted segmentations against the BraTS truths as the challenge scores them.

    python brats/evaluate.py --prediction_dir predictions
        --truth_dir data/MICCAI_BraTS2020_TrainingData --output_dir evaluation
        [--convention brats2024-gli] [--scoring panoptica] [--skip_missing]
        [--training_log training.log] [--nooverlays]

Predictions are label maps <prediction_dir>/<case>.nii.gz on the native grid of their case (as
brats/predict.py writes them); truths are found in any BraTS layout (<case>/<case>_seg.nii.gz,
<case>-seg.nii.gz, preprocessed <case>/truth.nii.gz, or <case>_seg.nii.gz side by side). Scores
the regions of the truths' convention (whole tumour, tumour core and enhancing tumour; from 2024
also the resection cavity and others, see unet3d/conventions.py) in the scoring edition of the
convention or --scoring (unet3d/scoring.py, docs/evaluation.md): whole-image Dice, HD95,
sensitivity and specificity always, lesion-wise Dice, HD95, NSD and lesion counts in the
brats2023, brats2024 and panoptica editions. A truth without a prediction is scored Dice 0 and
HD95 the penalty, as the official evaluators do (--skip_missing leaves it out). Writes scores.csv
(whole image, per case), lesion_scores.csv (per case and region), summary.csv (mean, sample std
(n-1), median, quartiles), boxplot.png, lesion_boxplot.png, loss_graph.png (with --training_log)
and overlays/<case>.png to --output_dir, logs to <output_dir>/evaluate.log, one progress line
per case, and ends with a table of the mean Dice and HD95 per region. Exit status 2 for bad
arguments or input, 1 when a report could not be written (a full disk).
"""

from pathlib import Path

from absl import flags

from unet3d import cli

from unet3d.errors import InputError, OutputError
from unet3d.evaluation import evaluate_folder, format_summary
from unet3d.logs import setup_logging
from unet3d.scoring import EDITIONS

FLAGS = flags.FLAGS
flags.DEFINE_string("prediction_dir", None, "(required) Folder of predicted label maps "
                    "<case>.nii.gz, on the native grid of each case (as brats/predict.py writes "
                    "them).")
flags.DEFINE_string("truth_dir", None, "(required) Folder of the truths: BraTS case folders "
                    "(<case>/<case>_seg.nii.gz or <case>-seg.nii.gz), preprocessed "
                    "<case>/truth.nii.gz, or <case>_seg.nii.gz files.")
flags.DEFINE_string("output_dir", None, "(required) Where to write scores.csv, summary.csv, "
                    "boxplot.png, overlays/ and evaluate.log (created if needed).")
cli.define_convention_flag("The truths' BraTS release or task: its label values and scored "
                           "regions (docs/real_brats_data.md; --labels of older versions still "
                           "works). 'none': the one brats/preprocess.py recorded in --truth_dir, "
                           "else detected from the file names and labels.", aliases=("labels",))
flags.DEFINE_enum("scoring", None, list(EDITIONS), "How to score (docs/evaluation.md): "
                  + "; ".join(f"{name}: {edition.description}" for name, edition in
                              EDITIONS.items())
                  + ". Default: the edition of the truths' convention (docs/real_brats_data.md).")
flags.DEFINE_boolean("skip_missing", False, "Leave out the truths without a prediction (listed in "
                     "a warning) instead of scoring them Dice 0 and HD95 the penalty, as the "
                     "official evaluators do.")
flags.DEFINE_string("training_log", None, "Also plot loss and val_loss of this CSV training log "
                    "(training.log) into loss_graph.png.")
flags.DEFINE_boolean("overlays", True, "Draw overlays/<case>.png: a FLAIR slice with truth and "
                     "prediction contours (--nooverlays to skip).")
flags.mark_flags_as_required(["prediction_dir", "truth_dir", "output_dir"])


def main(argv):
    del argv
    output_dir = Path(FLAGS.output_dir)
    logger = setup_logging(output_dir / "evaluate.log")
    try:
        evaluation = evaluate_folder(FLAGS.prediction_dir, FLAGS.truth_dir, output_dir,
                                     convention=FLAGS.convention, scoring=FLAGS.scoring,
                                     skip_missing=FLAGS.skip_missing,
                                     training_log=FLAGS.training_log, overlays=FLAGS.overlays)
    except InputError as error:
        logger.error(f"error: {error}")
        return 2
    except OutputError as error:  # a file could not be written: not bad usage
        logger.error(f"error: {error}")
        return 1
    logger.info(format_summary(evaluation))
    logger.info(f"scores, summary and plots written to {output_dir}")
    return 0


if __name__ == "__main__":
    cli.run(main)
