"""Preprocess BraTS cases (N4 bias correction) and optionally write the training data store.

    python brats/preprocess.py --brats_dir data/MICCAI_BraTS2020_TrainingData
        --out_dir data/preprocessed --data_file brats_data.h5 --workers 2

Finds the cases of any BraTS release or task under --brats_dir (the convention is detected from
the file names, and where two releases share them from the label values; --convention overrides
it), writes <out_dir>/<case>/{t1,t1ce,flair,t2,truth}.nii.gz (the convention's modalities, or
--modalities) on the original grid, one progress line per case,
and logs to <out_dir>/preprocess.log. The N4 settings are flags of `PreprocessConfig`
(unet3d/preprocessing.py); they are recorded in <out_dir>/preprocess.json, then in the data store
and the model card of models trained on it. Rerunning the same command resumes: finished cases are
skipped unless --overwrite. Exit status 1 if any case failed (the others are still written), 2 for
bad arguments or input.
"""

import dataclasses
from pathlib import Path

from absl import flags

from unet3d import cli
from unet3d.config import TrainConfig
from unet3d.data import write_store_from_folder
from unet3d.errors import InputError, OutputError
from unet3d.logs import setup_logging
from unet3d.preprocessing import FULL_QUALITY_N4, PreprocessConfig, preprocess_brats

FLAGS = flags.FLAGS
flags.DEFINE_string("brats_dir", None, "Folder holding the BraTS cases (any release naming; "
                    "HGG/ and LGG/ sub-folders are searched too).")
flags.DEFINE_string("out_dir", None, "Where to write <case>/{t1,t1ce,flair,t2,truth}.nii.gz.")
flags.DEFINE_string("data_file", None, "Also write the HDF5 data store of the preprocessed cases "
                    "here (e.g. brats_data.h5).")
flags.DEFINE_integer("workers", 1, "Cases processed in parallel (processes).")
flags.DEFINE_boolean("overwrite", False, "Redo cases already preprocessed and replace --data_file.")
flags.DEFINE_boolean("full_quality_n4", False, "Start from the slower, finer N4 ("
                     + ", ".join(f"--{name} {cli.format_value(value)}"
                                 for name, value in FULL_QUALITY_N4.items())
                     + ") instead of the fast defaults.")
cli.define_flags(PreprocessConfig, PreprocessConfig())
cli.define_flags(TrainConfig, TrainConfig(), only=("image_shape",))
cli.define_convention_flag("The BraTS release or task of the cases (docs/real_brats_data.md). "
                           "'none': detected from the file names and labels.")
flags.adopt_module_key_flags(cli)  # --helpshort lists them
flags.mark_flags_as_required(["brats_dir", "out_dir"])


def main(argv) -> int:
    del argv
    out_dir = Path(FLAGS.out_dir)
    logger = setup_logging(out_dir / "preprocess.log")
    try:
        if FLAGS.data_file and Path(FLAGS.data_file).exists() and not FLAGS.overwrite:
            raise InputError(f"--data_file {FLAGS.data_file} already exists; pass --overwrite to "
                             "rebuild it, or choose another name")
        if FLAGS.image_shape is not None and not FLAGS.data_file:
            raise InputError("--image_shape is the shape of the store: give --data_file too")
        if FLAGS.image_shape is not None and min(FLAGS.image_shape) < 1:
            raise InputError(f"--image_shape {cli.format_value(FLAGS.image_shape)}: three "
                             "positive sizes such as 128,128,128")
        base = (dataclasses.replace(PreprocessConfig(), **FULL_QUALITY_N4)
                if FLAGS.full_quality_n4 else PreprocessConfig())
        config = cli.config_from_flags(PreprocessConfig, base)
        report = preprocess_brats(FLAGS.brats_dir, out_dir, config, workers=FLAGS.workers,
                                  overwrite=FLAGS.overwrite, convention=FLAGS.convention)
        logger.info(f"preprocessed {len(report.done)}, skipped {len(report.skipped)} (already "
                    f"done), failed {len(report.failed)}; log: {out_dir / 'preprocess.log'}")
        if report.failed:
            logger.error("failed cases:\n" + "\n".join(
                f"  {name}: {message.splitlines()[0]}" for name, message in report.failed.items()))
            if FLAGS.data_file:
                logger.error(f"--data_file {FLAGS.data_file} not written: fix or remove the failed "
                             "cases, then rerun the same command (finished cases are skipped)")
            return 1
        if FLAGS.data_file:
            logger.info(f"writing the data store {FLAGS.data_file}")
            write_store_from_folder(out_dir, FLAGS.data_file, image_shape=FLAGS.image_shape,
                                    convention=report.convention)
            logger.info(f"data store written: {FLAGS.data_file}")
    except InputError as error:
        logger.error(f"error: {error}")
        return 2
    except OutputError as error:  # a file could not be written: not bad usage
        logger.error(f"error: {error}")
        return 1
    return 0


if __name__ == "__main__":
    cli.run(main)
