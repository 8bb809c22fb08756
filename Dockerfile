# unet3d on NVIDIA GPUs: the package and the brats/ scripts on the official TensorFlow GPU image.
#
#   docker build -t unet3d .
#
# No data are baked in: mount the host's data folder (here /data) at /data and work there (-w).
# The training scripts write each run (model, checkpoint, logs, split) into its folder under
# runs/ of the working directory, so all of it stays in /data and a rerun of the same command
# resumes. --user makes the files written under /data yours (the image's own user is the
# unprivileged uid 10001).
#
#   docker run --rm -v /data:/data -w /data --user "$(id -u):$(id -g)" unet3d \
#       python /workspace/brats/preprocess.py --brats_dir MICCAI_BraTS2020_TrainingData \
#       --out_dir preprocessed --data_file brats_data.h5 --workers 8
#   docker run --rm --gpus all --shm-size 8g -v /data:/data -w /data --user "$(id -u):$(id -g)" \
#       unet3d python /workspace/brats/train_isensee2017.py --data_file brats_data.h5
#   docker run --rm --gpus all -v /data:/data -w /data --user "$(id -u):$(id -g)" unet3d \
#       python /workspace/brats/predict.py --help
#   docker run --rm --gpus all -v /data:/data -w /data --user "$(id -u):$(id -g)" unet3d \
#       python /workspace/brats/evaluate.py --help
#   docker run --rm -v /data:/data -w /data --user "$(id -u):$(id -g)" unet3d \
#       python /workspace/brats/export.py --model_file runs/paper/model.keras --output exported
#
# From the image's own working directory the scripts also run as `python brats/<script>.py`;
# `docker run --rm --gpus all unet3d` prints the versions and the GPUs TensorFlow sees. Several
# GPUs are used by the training scripts' mirrored strategy; --shm-size 8g gives the --workers
# processes room to hand their batches over.

# The TensorFlow of the base image. It must satisfy setup.py's "tensorflow" requirement
# (tests/test_docker.py checks it); pip is held to it below, so installing the package never
# replaces the image's GPU build. Another published tag: --build-arg TENSORFLOW_VERSION=2.20.0
ARG TENSORFLOW_VERSION=2.21.0
FROM tensorflow/tensorflow:${TENSORFLOW_VERSION}-gpu

ARG TENSORFLOW_VERSION
LABEL org.opencontainers.image.title="unet3d" \
      org.opencontainers.image.description="3D U-Net (Isensee et al. 2017) for BraTS segmentation" \
      org.opencontainers.image.version="0.2.0"

# Caches in /tmp: the package's numba kernels (cached compilations) and matplotlib need a writable
# folder whichever --user runs the container.
ENV KERAS_BACKEND=tensorflow \
    NUMBA_CACHE_DIR=/tmp/numba_cache \
    MPLCONFIGDIR=/tmp/matplotlib \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# The dependencies come from setup.py's install_requires (no second list to keep in step).
# PIP_BREAK_SYSTEM_PACKAGES: the image's TensorFlow lives in the system Python, so the package
# goes there too, even where that Python is marked as managed by the distribution.
COPY setup.py README.md /tmp/unet3d/
COPY unet3d /tmp/unet3d/unet3d
RUN PIP_BREAK_SYSTEM_PACKAGES=1 python -m pip install --no-cache-dir \
        /tmp/unet3d "tensorflow==${TENSORFLOW_VERSION}" \
    && rm -rf /tmp/unet3d

RUN groupadd --gid 10001 unet3d \
    && useradd --create-home --no-log-init --uid 10001 --gid unet3d --shell /bin/bash unet3d \
    && mkdir /data \
    && chown unet3d:unet3d /data

WORKDIR /workspace
COPY brats ./brats
USER 10001:10001

# By default: the versions, and the GPUs TensorFlow sees (none without --gpus).
CMD ["python", "-c", "import tensorflow as tf, unet3d; print('unet3d', unet3d.__version__, '- TensorFlow', tf.__version__, '- GPUs:', tf.config.list_physical_devices('GPU'))"]
