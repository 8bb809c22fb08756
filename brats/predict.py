"""Predict BraTS cases with a trained model, on each case's original grid.

    python brats/predict.py --model_file runs/paper/model.keras --input_dir data/new_cases \
        --output_dir predictions
    python brats/predict.py --model_file runs/paper --input_dir data/new_cases \
        --output_dir predictions     # the ensemble of the fold models of runs/paper/fold_<k>/
    python brats/predict.py --model_file runs/paper/model.keras --validation \
        --output_dir prediction     # the port's validation run, on the model's store and split

Input cases are raw BraTS folders of any release (label files optional) or a folder written by
brats/preprocess.py; they get the preprocessing the model's training cases had (its model card:
N4, brain crop or the port's resampling, normalisation). Writes <output_dir>/<case>.nii.gz (BraTS
submission naming, the input's grid and affine, the labels of the model's convention, or of
--convention for the same tissues), with --probabilities also one map per output
(<case>_{wt,tc,et}.nii.gz, ...), one progress line per case, and the log to
<output_dir>/predict.log. The window is the training patch the card records, and the card says
whether the model predicts whole volumes and with which test-time augmentation (paper2017: whole
volume, mirroring; --patch_shape, --nowhole_volume, --tta override it). A model without a
card needs --modalities, --target and --patch_shape (or --whole_volume). --runtime onnxruntime or
openvino runs the network's ONNX graph instead of Keras (pip install -e .[onnx] or .[openvino]),
--precision bfloat16 or auto in bfloat16 where the hardware has it (docs/export.md): the same
windows and outputs, another speed. Rerunning skips finished
cases (--overwrite redoes them). Exit status 1 if a case failed (the others are written), 2 for
bad arguments or input.
"""

from pathlib import Path

from absl import flags

from unet3d import cli
from unet3d.config import PredictConfig
from unet3d.errors import InputError, OutputError
from unet3d.logs import setup_logging

FLAGS = flags.FLAGS
flags.DEFINE_multi_string("model_file", None, "The trained model (.keras, with its model "
                          "card). Repeated, or a folder of fold runs (fold_<k>/model.keras) or "
                          "of .keras files: an ensemble, whose probabilities are averaged (the "
                          "models must share their settings).")
flags.DEFINE_string("input_dir", None, "Folder of cases to predict (any BraTS naming).")
flags.DEFINE_string("output_dir", None, "Where to write <case>.nii.gz.")
flags.DEFINE_boolean("overwrite", False, "Redo cases whose output exists.")
flags.DEFINE_boolean("validation", False, "Instead of --input_dir, predict the store's validation "
                     "split into <output_dir>/<case>/ with the normalised inputs and the truth, "
                     "as the port's run_validation_cases.")
flags.DEFINE_string("data_file", None, "--validation: the data store (default: the one the model "
                    "card records).")
flags.DEFINE_string("validation_keys_file", None, "--validation: the saved split (default: the "
                    "one the model card records).")
cli.define_flags(PredictConfig, PredictConfig())
flags.adopt_module_key_flags(cli)  # --helpshort lists the PredictConfig flags
flags.mark_flags_as_required(["model_file", "output_dir"])


def validation(config: PredictConfig, output_dir: Path) -> None:
    """The port's validation run on the store and split of --data_file / --validation_keys_file,
    by default those the model card records."""
    from unet3d.prediction import load_for_prediction
    from unet3d.store_prediction import predict_store_cases

    from unet3d.ensemble import model_files

    files = model_files(FLAGS.model_file)
    if len(files) > 1:
        raise InputError("--validation predicts with one model (its store and split): give "
                         "one --model_file")
    model, card, config = load_for_prediction(files[0], config)
    recorded = card.training
    data_file = FLAGS.data_file or (recorded.data_file if recorded else None)
    keys_file = FLAGS.validation_keys_file or (recorded.validation_keys_file if recorded else None)
    if not data_file or not keys_file:
        raise InputError("--validation needs --data_file and --validation_keys_file (the model "
                         f"card of {files[0]} does not name them)")
    predict_store_cases(model, card, config, data_file, keys_file, output_dir)


def main(argv) -> int:
    del argv
    output_dir = Path(FLAGS.output_dir)
    logger = setup_logging(output_dir / "predict.log")
    try:
        config = cli.config_from_flags(PredictConfig, PredictConfig())
        if FLAGS.validation:
            if FLAGS.input_dir:
                raise InputError("--validation predicts the store's validation split: leave "
                                 "--input_dir out, or drop --validation to predict --input_dir")
            validation(config, output_dir)
            return 0
        if not FLAGS.input_dir:
            raise InputError("give --input_dir (cases to predict) or --validation")
        from unet3d.prediction import predict_cases  # TensorFlow: after cli.run hid its log

        report = predict_cases(FLAGS.model_file, FLAGS.input_dir, output_dir, config,
                               overwrite=FLAGS.overwrite)
    except InputError as error:
        logger.error(f"error: {error}")
        return 2
    except OutputError as error:  # a file could not be written: not bad usage
        logger.error(f"error: {error}")
        return 1
    logger.info(f"predicted {len(report.done)}, skipped {len(report.skipped)} (already done), "
                f"failed {len(report.failed)}; log: {output_dir / 'predict.log'}")
    if report.failed:
        logger.error("failed cases:\n" + "\n".join(
            f"  {name}: {message.splitlines()[0]}" for name, message in report.failed.items()))
        return 1
    return 0


if __name__ == "__main__":
    cli.run(main)
