"""unet3d: the Isensee et al. 2017 3D U-Net pipeline for BraTS in TensorFlow 2 / Keras 3.

Phases, one module each: `synthetic` (BraTS-format test data), `brats` (naming conventions, case
discovery), `preprocessing` (N4 bias correction), `data` (the compressed HDF5 store).
"""

__version__ = "0.1.0"
