"""unet3d: the Isensee et al. 2017 3D U-Net pipeline for BraTS in TensorFlow 2 / Keras 3.

The pipeline's phases, the module of each and where every default lives: docs/architecture.md.
"""

__version__ = "0.2.0"
