"""Score predicted segmentations against the BraTS truths: Dice, HD95, sensitivity, specificity.

    python brats/evaluate.py --prediction_dir predictions
        --truth_dir data/MICCAI_BraTS2020_TrainingData --output_dir evaluation
        [--convention brats2024-gli] [--training_log training.log] [--nooverlays]

Predictions are label maps <prediction_dir>/<case>.nii.gz on the native grid of their case (as
brats/predict.py writes them); truths are found in any BraTS layout (<case>/<case>_seg.nii.gz,
<case>-seg.nii.gz, preprocessed <case>/truth.nii.gz, or <case>_seg.nii.gz side by side). Scores
the regions of the truths' convention (whole tumour, tumour core and enhancing tumour; from 2024
also the resection cavity and others, see unet3d/conventions.py); writes scores.csv (per case), summary.csv (mean,
std, median, quartiles), boxplot.png, loss_graph.png (with --training_log) and overlays/<case>.png
to --output_dir, logs to <output_dir>/evaluate.log, one progress line per case, and ends with a
table of the mean Dice and HD95 per region. Exit status 2 for bad arguments or input.
"""

from pathlib import Path

from absl import flags

from unet3d import cli

from unet3d.errors import InputError
from unet3d.evaluation import evaluate_folder, format_summary
from unet3d.logs import setup_logging

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
        rows = evaluate_folder(FLAGS.prediction_dir, FLAGS.truth_dir, output_dir,
                               convention=FLAGS.convention, training_log=FLAGS.training_log,
                               overlays=FLAGS.overlays)
    except InputError as error:
        logger.error(f"error: {error}")
        return 2
    logger.info(format_summary(rows))
    logger.info(f"scores, summary and plots written to {output_dir}")
    return 0


if __name__ == "__main__":
    cli.run(main)
