"""Export a trained model as a TensorFlow SavedModel or an ONNX model, to serve or load without
this package.

    export_model("runs/paper/model.keras", "exported/isensee2017")                 # SavedModel
    export_model("runs/paper/model.keras", "exported/isensee2017", format="onnx")  # ONNX

writes the folder

    exported/isensee2017/
        saved_model/               TensorFlow SavedModel, serving signature "serving_default"
        (or model.onnx             the ONNX graph of unet3d.onnx_graph, the card in its metadata)
        model.keras                the Keras model file, copied as trained (its model card inside)
        signature.json             inputs and outputs: names, shapes, dtypes, channel names, and
                                   the model card (how inputs must be made: unet3d.model.card)
        README.txt                 the same for people, with how to load it

The signature takes `image`, float32 `(batch, x, y, z, channels)` (channels-last) with any
spatial sizes that are multiples of the network's divisor (16 for the Isensee model), and returns
`segmentation`, float32 `(batch, x, y, z, n_labels)`: the model's output (probabilities for the
sigmoid models this package trains). Other sizes fail with a message giving the sizes (the SavedModel)
or an error of the runtime (ONNX). Loading the SavedModel needs TensorFlow only:

    serve = tf.saved_model.load("exported/isensee2017/saved_model").signatures["serving_default"]
    probabilities = serve(image=tf.constant(batch))["segmentation"]

and the ONNX model any ONNX runtime (docs/export.md: Python, C++, Java, OpenVINO). The ONNX
export is checked against the Keras model before it is published
(`unet3d.onnx_graph.check_onnx`).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Sequence

import keras

import unet3d
from unet3d.config import EXPORT_FORMATS
from unet3d.errors import InputError, OutputError
from unet3d.atomic import atomic_folder, write_failure
from unet3d.ensemble import check_same_settings, ensemble_model, model_files
from unet3d.model import ModelCard, load_old_model, model_divisors, read_card, save_model
from unet3d.model.card import embed_card, embedded_card
from unet3d.onnx_graph import INPUT_NAME, OPSET, OUTPUT_NAME, check_onnx, onnx_model

SAVED_MODEL_DIR = "saved_model"
ONNX_FILE = "model.onnx"
SIGNATURE_NAME = "serving_default"


def export_model(model_file: str | os.PathLike, output_dir: str | os.PathLike,
                 channel_names: Sequence[str] | None = None,
                 output_names: Sequence[str] | None = None, overwrite: bool = False,
                 format: str = "savedmodel") -> Path:
    """Write `output_dir` with the SavedModel (or ONNX model) of `model_file`, a copy of the file
    and its description (see the module docstring); returns `output_dir`.

    Args:
        model_file: a `.keras` model of one channels-last input `(batch, *spatial, channels)` and
            one output `(batch, *spatial, n_labels)`, as the training scripts save it.
        output_dir: the folder to create. It is built beside itself under a hidden temporary name
            and renamed when complete, so it never holds a partial export.
        channel_names: the input channels in order (e.g. `("t1", "t1ce", "flair", "t2")`),
            recorded in signature.json; None: the modalities of the model card, else not
            recorded.
        output_names: the output channels in order (e.g. `("wt", "tc", "et")`); None: those of
            the model card, else not recorded.
        overwrite: replace an existing `output_dir` instead of raising `InputError`.
        format: "savedmodel" (needs the TensorFlow backend) or "onnx" (needs the onnx package,
            `pip install -e .[onnx]`; any backend).

    Raises `InputError` naming the file or folder when the model file is missing or unreadable,
    `output_dir` exists (without `overwrite`), the model has several inputs or outputs, a layer
    has no ONNX operator, or the names do not match its channels; `OutputError` when a file
    cannot be written or the ONNX model's outputs differ from the Keras model's.
    """
    model_file, output_dir = Path(model_file), Path(output_dir)
    if format not in EXPORT_FORMATS:
        raise InputError(f"unknown export format {format!r}: choose one of {', '.join(EXPORT_FORMATS)}")
    _check_output(model_file, output_dir, overwrite)
    if format == "savedmodel" and keras.backend.backend() != "tensorflow":
        raise InputError(f"exporting a SavedModel needs the TensorFlow backend, not "
                         f"{keras.backend.backend()!r}: run with KERAS_BACKEND=tensorflow")
    model = load_old_model(model_file, compile=False)
    card = read_card(model_file)
    if card is not None:
        for flag, given, recorded in (("--channel_names", channel_names, card.modalities),
                                      ("--output_names", output_names, card.output_names)):
            if given is not None and tuple(given) != tuple(recorded):
                raise InputError(f"{flag} {','.join(given)} contradicts the model card of "
                                 f"{model_file} ({','.join(recorded)}): leave {flag} out")
        channel_names, output_names = card.modalities, card.output_names
    signature = describe_signature(model, model_file, channel_names, output_names, card, format)

    with atomic_folder(output_dir) as tmp:
        if format == "onnx":
            write_onnx(model, tmp / ONNX_FILE, card, output_dir / ONNX_FILE)
        else:
            write_saved_model(model, tmp / SAVED_MODEL_DIR,
                              signature["inputs"][INPUT_NAME]["spatial_multiple_of"])
        shutil.copyfile(model_file, tmp / model_file.name)
        if card is not None and embedded_card(model_file) is None:  # unet3d 0.1's model
            embed_card(tmp / model_file.name, card)
        (tmp / "signature.json").write_text(json.dumps(signature, indent=2) + "\n")
        (tmp / "README.txt").write_text(readme(signature))
    return output_dir


def write_ensemble(model_file: str | os.PathLike | Sequence[str | os.PathLike],
                   path: str | os.PathLike) -> Path:
    """Save the models `model_file` names (several files, or a folder of fold runs:
    `unet3d.ensemble.model_files`) as one `.keras` model at `path` whose output is their mean,
    with their shared model card; `export_model` exports it as any model. The models must have
    cards with the same settings (`check_same_settings`)."""
    files = model_files(model_file)
    cards = {file: read_card(file) for file in files}
    unknown = [str(file) for file, card in cards.items() if card is None]
    if unknown:
        raise InputError(f"{', '.join(unknown)}: no model card, so the ensemble's settings "
                         "cannot be checked; export each model alone")
    check_same_settings(cards)
    models = [load_old_model(file, compile=False) for file in files]
    save_model(ensemble_model(models), path, cards[files[0]])
    return Path(path)


def _check_output(model_file: Path, output_dir: Path, overwrite: bool) -> None:
    if output_dir.exists() and not output_dir.is_dir():
        raise InputError(f"output {output_dir} is a file, not a folder: choose another folder")
    if output_dir.resolve() in model_file.resolve().parents:
        raise InputError(f"{model_file} is inside the output folder {output_dir}: exporting there "
                         "would replace the folder the model lives in; choose another --output")
    if output_dir.exists() and not overwrite:
        raise InputError(f"output folder {output_dir} already exists: pass --overwrite "
                         "(overwrite=True) to replace it, or choose another folder")


def write_saved_model(model: keras.Model, path: Path, divisors: Sequence[int]) -> None:
    """Write `model` as a SavedModel at `path` with the signature `serving_default`:
    `image` float32 `(batch, *spatial, channels)` -> `segmentation` float32
    `(batch, *spatial, n_labels)`, spatial sizes free but checked to be multiples of `divisors`."""
    import tensorflow as tf

    input_shape = (None,) * (len(model.inputs[0].shape) - 1) + (model.inputs[0].shape[-1],)
    divisors = tf.constant(divisors, dtype=tf.int32)

    def serve(image):
        sizes = tf.shape(image)[1:-1]
        tf.debugging.Assert(tf.reduce_all(sizes % divisors == 0),
                            [f"{INPUT_NAME}: spatial sizes", sizes, "must be multiples of",
                             divisors, "(pad or crop the volume)"])
        return {OUTPUT_NAME: tf.cast(model(image, training=False), tf.float32)}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(SIGNATURE_NAME, serve, input_signature=[
        tf.TensorSpec(input_shape, tf.float32, name=INPUT_NAME)])
    archive.write_out(str(path), verbose=False)


def write_onnx(model: keras.Model, path: Path, card: ModelCard | None,
               published: Path | None = None) -> None:
    """Write the ONNX graph of `model` (`unet3d.onnx_graph.onnx_model`, `card` in its metadata)
    to `path`, read it back and check it against `model` (`check_onnx`); errors name
    `published`, where the file will be once the export is complete (default `path`)."""
    published = published or path
    import onnx
    from google.protobuf.message import DecodeError

    try:
        onnx.save(onnx_model(model, card), path)
        written = onnx.load(path)
    except OSError as error:
        raise write_failure(published, error) from error
    except DecodeError as error:
        raise OutputError(f"{published} was not written whole ({error}): check the disk and "
                          "export again") from None
    check_onnx(model, written, published)


def describe_signature(model: keras.Model, model_file: Path,
                       channel_names: Sequence[str] | None,
                       output_names: Sequence[str] | None, card: ModelCard | None = None,
                       format: str = "savedmodel") -> dict:
    """The content of signature.json: the export's format and files, its input and its output,
    and the model card (None for a model without one)."""
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise InputError(f"model file {model_file} has {len(model.inputs)} inputs and "
                         f"{len(model.outputs)} outputs: only models of one input and one output "
                         "(not deep-supervision models) can be exported")
    input_shape, output_shape = model.inputs[0].shape, model.outputs[0].shape
    n_spatial = len(input_shape) - 2
    spatial_axes = list("xyz"[:n_spatial])
    divisors = list(model_divisors(model))
    if format == "onnx":
        files = {"format": "onnx", "onnx": ONNX_FILE, "opset": OPSET}
        runtime = {"onnx": _version("onnx")}
    else:
        files = {"format": "savedmodel", "saved_model": SAVED_MODEL_DIR,
                 "signature": SIGNATURE_NAME}
        runtime = {"tensorflow": _version("tensorflow")}
    return {
        **files,
        "keras_model": model_file.name,
        "inputs": {INPUT_NAME: {
            "dtype": "float32",
            "shape": [None] * (n_spatial + 1) + [input_shape[-1]],
            "axes": ["batch", *spatial_axes, "channels"],
            "spatial_multiple_of": divisors,
            "channels": _names(channel_names, input_shape[-1], "input channels", model_file),
        }},
        "outputs": {OUTPUT_NAME: {
            "dtype": "float32",
            "shape": [None] * (n_spatial + 1) + [output_shape[-1]],
            "axes": ["batch", *spatial_axes, "labels"],
            "activation": _output_activation(model),
            "channels": _names(output_names, output_shape[-1], "output channels", model_file),
        }},
        "versions": {"unet3d": unet3d.__version__, **runtime, "keras": keras.__version__},
        "model_card": json.loads(card.to_json()) if card is not None else None,
    }


def _output_activation(model: keras.Model) -> str | None:
    """The activation of the model's output layer; an ensemble's is its members' (the first's:
    they share their settings)."""
    last = model.layers[-1]
    members = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    if isinstance(last, keras.layers.Average) and members:
        return _output_activation(members[0])
    return last.get_config().get("activation")


def readme(signature: dict) -> str:
    """README.txt of an export described by `signature` (see `describe_signature`)."""
    image, output = signature["inputs"][INPUT_NAME], signature["outputs"][OUTPUT_NAME]
    versions = signature["versions"]
    onnx_format = signature.get("format") == "onnx"
    multiple = " x ".join(map(str, image["spatial_multiple_of"]))
    input_channels = _listed(image["channels"], "not recorded (this package's data stores "
                                                "hold t1, t1ce, flair, t2)")
    if onnx_format:
        made = f"ONNX {versions['onnx']}, opset {signature['opset']}"
        files = [f"  {signature['onnx']}  ONNX model, float32; the model card in its metadata "
                 "(key unet3d_model_card)"]
        loading = [
            "Loading, with ONNX Runtime (C++, Java, C# and OpenVINO: docs/export.md of unet3d):",
            "  import onnxruntime",
            f"  session = onnxruntime.InferenceSession(\"{signature['onnx']}\")",
            f"  result = session.run([\"{OUTPUT_NAME}\"], {{\"{INPUT_NAME}\": batch}})[0]",
        ]
    else:
        saved_model, name = signature["saved_model"], signature["signature"]
        made = f"TensorFlow {versions['tensorflow']}"
        files = [f"  {saved_model}/  TensorFlow SavedModel; serving signature \"{name}\""]
        loading = [
            "Loading, with TensorFlow only (paths relative to this folder):",
            "  import tensorflow as tf",
            f"  serve = tf.saved_model.load(\"{saved_model}\").signatures[\"{name}\"]",
            f"  result = serve({INPUT_NAME}=tf.constant(batch))[\"{OUTPUT_NAME}\"]",
        ]
    lines = [
        f"Exported model (unet3d {versions['unet3d']}, {made}, Keras {versions['keras']})",
        "",
        "Files",
        *files,
        (f"  {signature['keras_model']}  the Keras model as trained (keras.saving.load_model, "
         "with unet3d installed), its model card inside"),
        "  signature.json  this description, machine-readable, with the model card",
        "",
        (f"Input \"{INPUT_NAME}\": {image['dtype']}, ({', '.join(image['axes'])}), "
         f"{image['shape'][-1]} channels"),
        f"  spatial sizes: any multiples of {multiple} (others are refused: pad or crop)",
        f"  channels, in order: {input_channels}",
        ("  values: preprocessed and normalised as the training data were: "
         + ("see \"model_card\" in signature.json (unet3d/model/card.py)"
            if signature.get("model_card") else "not recorded (the model has no model card)")),
        "",
        (f"Output \"{OUTPUT_NAME}\": {output['dtype']}, ({', '.join(output['axes'])}), "
         f"{output['shape'][-1]} channels, activation {output['activation'] or 'unknown'}"),
        f"  channels, in order: {_listed(output['channels'], 'not recorded')}",
        "",
        *loading,
    ]
    return "\n".join(lines) + "\n"


def _version(package: str) -> str:
    from importlib.metadata import version
    return version(package)


def _names(names: Sequence[str] | None, count: int, what: str, model_file: Path) -> list | None:
    if names is None:
        return None
    if len(names) != count:
        raise InputError(f"{len(names)} names given ({', '.join(names)}) for the {count} {what} "
                         f"of model file {model_file}: give one name per channel, in order")
    return list(names)


def _listed(names: list | None, default: str) -> str:
    return ", ".join(names) if names else default
