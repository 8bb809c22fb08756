"""Predict BraTS cases with a trained model, on each case's original grid.

    python brats/predict.py --model_file isensee2017_model.keras --input_dir data/new_cases \
        --output_dir predictions
    python brats/predict.py --model_file isensee2017_model.keras --validation \
        --data_file data/brats_data.h5 --output_dir prediction     # the port's validation run

Input cases are raw BraTS folders of any release (label files optional) or a folder written by
brats/preprocess.py; they get the training preprocessing (N4, brain crop, normalisation).
Writes <output_dir>/<case>.nii.gz (BraTS submission naming, the input's grid and affine, labels
1/2/4, or 1/2/3 for BraTS 2023 naming), with --probabilities also <case>_{wt,tc,et}.nii.gz, one
progress line per case, and the log to <output_dir>/predict.log. Windows, targets and the legacy
resampling follow the model's training settings (<model_file>.json) unless flags say otherwise.
Rerunning skips finished cases (--overwrite redoes them). Exit status 1 if a case failed (the
others are written), 2 for bad arguments or input.
"""

import sys
from pathlib import Path

from absl import app, flags

from unet3d.brats import LABELS
from unet3d.errors import InputError
from unet3d.logs import setup_logging
from unet3d.prediction import (TTA_MODES, WEIGHTINGS, load_settings, predict_cases,
                               predict_config, run_validation_cases, settings_path)

FLAGS = flags.FLAGS
flags.DEFINE_string("model_file", None, "The trained model (.keras, or a legacy .h5).")
flags.DEFINE_string("input_dir", None, "Folder of cases to predict (any BraTS naming).")
flags.DEFINE_string("output_dir", None, "Where to write <case>.nii.gz.")
flags.DEFINE_boolean("validation", False, "Instead of --input_dir, predict the store's validation "
                     "split (--data_file, --validation_keys_file) into <output_dir>/<case>/ with "
                     "the normalised inputs and the truth, as the port's run_validation_cases.")
flags.DEFINE_string("data_file", None, "--validation: the data store (default: the model's).")
flags.DEFINE_string("validation_keys_file", None, "--validation: the saved split (default: the "
                    "model's).")
flags.DEFINE_list("patch_shape", None, "Sliding window (default: the training patch), e.g. "
                  "128,128,128.")
flags.DEFINE_boolean("whole_volume", False, "One pass over the whole volume instead of windows.")
flags.DEFINE_float("step", 0.5, "Window step as a fraction of the window.")
flags.DEFINE_enum("weighting", "gaussian", WEIGHTINGS, "Weights of each window's prediction.")
flags.DEFINE_enum("tta", "none", TTA_MODES, "Test-time augmentation: mirror (8 flips, 8x the "
                  "time) or the legacy 48 permutations.")
flags.DEFINE_integer("batch_size", 1, "Windows per model call.")
flags.DEFINE_float("threshold", 0.5, "Probability above which a voxel is in a region.")
flags.DEFINE_enum("labels", None, list(LABELS), "Label convention written (default: each "
                  "case's release naming).")
flags.DEFINE_integer("min_et_voxels", 0, "BraTS post-processing: a predicted enhancing tumour "
                     "smaller than this becomes necrosis (e.g. 200; 0: off).")
flags.DEFINE_boolean("bias_correction", True, "N4 bias correction of raw inputs as in "
                     "brats/preprocess.py (skipped for folders it wrote).")
flags.DEFINE_boolean("probabilities", False, "Also write one probability map per output.")
flags.DEFINE_boolean("overwrite", False, "Redo cases whose output exists.")
flags.mark_flags_as_required(["model_file", "output_dir"])


def main(argv):
    del argv
    output_dir = Path(FLAGS.output_dir)
    logger = setup_logging(output_dir / "predict.log")
    try:
        patch_shape = None
        if FLAGS.patch_shape:
            try:
                patch_shape = tuple(int(n) for n in FLAGS.patch_shape)
            except ValueError:
                raise InputError(f"--patch_shape {','.join(FLAGS.patch_shape)}: expected three "
                                 "sizes such as 128,128,128") from None
        config = predict_config(
            FLAGS.model_file, patch_shape=patch_shape, step=FLAGS.step,
            weighting=FLAGS.weighting, tta=FLAGS.tta, batch_size=FLAGS.batch_size,
            threshold=FLAGS.threshold, labels=LABELS[FLAGS.labels] if FLAGS.labels else None,
            min_et_voxels=FLAGS.min_et_voxels, bias_correction=FLAGS.bias_correction,
            probabilities=FLAGS.probabilities)
        if FLAGS.whole_volume:
            config.patch_shape = None
        if FLAGS.validation:
            settings = load_settings(FLAGS.model_file)
            data_file = FLAGS.data_file or settings.get("data_file")
            keys_file = FLAGS.validation_keys_file or settings.get("validation_keys_file")
            if not data_file or not keys_file:
                raise InputError("--validation needs --data_file and --validation_keys_file "
                                 f"({settings_path(FLAGS.model_file)} does not name them)")
            run_validation_cases(keys_file, FLAGS.model_file, config.modalities,
                                 settings.get("labels", LABELS["brats2020"]), data_file,
                                 output_label_map=True, output_dir=output_dir, config=config)
            return 0
        if not FLAGS.input_dir:
            raise InputError("give --input_dir (cases to predict) or --validation")
        report = predict_cases(FLAGS.model_file, FLAGS.input_dir, output_dir, config,
                               overwrite=FLAGS.overwrite)
        logger.info(f"predicted {len(report.done)}, skipped {len(report.skipped)} (already "
                    f"done), failed {len(report.failed)}; log: {output_dir / 'predict.log'}")
        if report.failed:
            logger.error("failed cases:\n" + "\n".join(
                f"  {name}: {message.splitlines()[0]}" for name, message in report.failed.items()))
            return 1
    except InputError as error:
        logger.error(f"error: {error}")
        return 2
    return 0


if __name__ == "__main__":
    app.run(lambda argv: sys.exit(main(argv)))
