"""Convert a model trained by the legacy Keras-2 port (isensee_2017_model.h5,
tumor_segmentation_model.h5: channels-first HDF5) into a .keras model for this package.

    python brats/convert_legacy_model.py --model_file isensee_2017_model.h5 \
        --output runs/legacy/model.keras
    python brats/predict.py --model_file runs/legacy/model.keras --input_dir data/new_cases \
        --output_dir predictions

Rebuilds the network channels-last (the Isensee 2017 network or the plain 3D U-Net, the sizes read
from the file), copies the weights, and writes <output> with its model card: the port's
modalities (t1, t1ce, flair, t2), labels 1, 2, 4, N4 on t1, t1ce, t2, and each brain box resampled
to the file's input size (--image_shape when the file does not record it). The converted model
computes what the old one computed (inputs and outputs channels-last). Exit status 2 for bad
arguments or a file it cannot convert (the message names the first layer it could not place), 1
when the output could not be written.
"""

from absl import flags

from unet3d import cli
from unet3d.errors import InputError
from unet3d.logs import setup_logging

FLAGS = flags.FLAGS
flags.DEFINE_string("model_file", None, "The port's model (.h5).")
flags.DEFINE_string("output", None, "The .keras file to write.")
flags.DEFINE_list("image_shape", None, "The resampled image shape the model was trained on "
                  "(default: the input size the file records), e.g. 128,128,128.")
flags.DEFINE_boolean("overwrite", False, "Replace --output if it exists.")
flags.mark_flags_as_required(["model_file", "output"])


def main(argv) -> int:
    del argv
    from unet3d.legacy.models import convert_legacy_model  # TensorFlow: after cli.run hid its log

    logger = setup_logging()

    def convert() -> int:
        shape = None
        if FLAGS.image_shape:
            if len(FLAGS.image_shape) != 3 or not all(n.isdigit() for n in FLAGS.image_shape):
                raise InputError(f"--image_shape {','.join(FLAGS.image_shape)}: give three "
                                 "sizes, e.g. 128,128,128")
            shape = tuple(int(n) for n in FLAGS.image_shape)
        convert_legacy_model(FLAGS.model_file, FLAGS.output, shape, overwrite=FLAGS.overwrite)
        return 0
    return cli.report_errors(convert, logger)


if __name__ == "__main__":
    cli.run(main)
