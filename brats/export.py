"""Export a trained model as a TensorFlow SavedModel or an ONNX model, to serve or load without
unet3d.

    python brats/export.py --model_file runs/paper/model.keras --output exported/isensee2017
    python brats/export.py --model_file runs/paper/model.keras --output exported/onnx \
        --format onnx      # needs pip install -e .[onnx]; docs/export.md serves it from C++/Java

Writes <output>/saved_model/ (serving signature "serving_default": "image", float32
(batch, x, y, z, channels) with sizes multiples of 16 for the Isensee model -> "segmentation",
float32 (batch, x, y, z, labels)) or <output>/model.onnx (the same input and output, batch and
spatial axes dynamic, the model card in its metadata, checked against the Keras model before it
is published), a copy of the .keras file, signature.json and README.txt.
The folder appears complete or not at all. Exit status 2 for bad arguments or input (missing or
unreadable model file, existing --output without --overwrite), 1 when it could not be written.
"""

from pathlib import Path

from absl import flags

from unet3d import cli
from unet3d.config import EXPORT_FORMATS

from unet3d.errors import InputError, OutputError
from unet3d.logs import setup_logging

FLAGS = flags.FLAGS
flags.DEFINE_multi_string("model_file", None, "The trained model (.keras), e.g. "
                          "runs/paper/model.keras. Repeated, or a folder of fold runs "
                          "(fold_<k>/model.keras): one model averaging them (an ensemble).")
flags.DEFINE_string("output", None, "Folder to create with the export.")
flags.DEFINE_boolean("overwrite", False, "Replace --output if it exists.")
flags.DEFINE_enum("format", "savedmodel", EXPORT_FORMATS, "savedmodel (TensorFlow) or "
                  "onnx (ONNX Runtime, OpenVINO, TensorRT; pip install -e .[onnx]).")
flags.DEFINE_list("channel_names", None, "The model's input channels in order (default: its "
                  "model card's; names contradicting the card are refused), recorded in "
                  "signature.json (this package's data stores hold t1,t1ce,flair,t2).")
flags.DEFINE_list("output_names", None, "The model's output channels in order (default: its "
                  "model card's), recorded in "
                  "signature.json (e.g. wt,tc,et for region training).")
flags.mark_flags_as_required(["model_file", "output"])


def main(argv):
    del argv
    import tempfile

    from unet3d.ensemble import model_files
    from unet3d.export import export_model, write_ensemble  # imports TensorFlow: after cli.run

    logger = setup_logging()
    try:
        with tempfile.TemporaryDirectory() as folder:
            model_file = model_files(FLAGS.model_file)
            if len(model_file) > 1:
                logger.info(f"exporting the ensemble of {len(model_file)} models: "
                            f"{', '.join(map(str, model_file))}")
                model_file = [write_ensemble(model_file, Path(folder) / "ensemble.keras")]
            output = export_model(model_file[0], FLAGS.output,
                                  channel_names=FLAGS.channel_names,
                                  output_names=FLAGS.output_names, overwrite=FLAGS.overwrite,
                                  format=FLAGS.format)
    except InputError as error:
        logger.error(f"error: {error}")
        return 2
    except OutputError as error:  # a file could not be written: not bad usage
        logger.error(f"error: {error}")
        return 1
    logger.info(f"exported {', '.join(FLAGS.model_file)} to {output}; see "
                f"{output / 'README.txt'}")
    return 0


if __name__ == "__main__":
    cli.run(main)
