"""The data bench/gpu_jax.sh carries to a host without SimpleITK (a GPU host with JAX only): a
store of synthetic BraTS-size cases (240x240x155, as bench/train.py writes its own), which the
training benchmark reads through the real input pipeline and whose first case the prediction
benchmark predicts (already in the model's space). About 13 MB a case: the files that travel to
such a host are limited (64 MiB with the wheels), hence few cases.

    python bench/make_gpu_data.py                  # .gpudata/store.h5, 3 cases
"""

from __future__ import annotations

from pathlib import Path

from absl import app, flags

from common import synthetic_cases, work_folder
from unet3d.data import DataStore, write_data_to_file

FLAGS = flags.FLAGS
flags.DEFINE_string("out", ".gpudata", "Folder of the store (ignored by git: .git/info/exclude).")
flags.DEFINE_integer("n_cases", 3, "Synthetic cases in the store.")


def main(argv):
    del argv
    out = Path(FLAGS.out)
    out.mkdir(parents=True, exist_ok=True)
    with work_folder(None, "gpu_data_") as work:
        files, names = synthetic_cases(work, FLAGS.n_cases, (240, 240, 155), 0)
        write_data_to_file(files, out / "store.h5", subject_ids=names, progress=lambda line: None)
    with DataStore(out / "store.h5") as store:
        shapes = [store.case_shape(i) for i in range(len(store))]
    print(f"{out / 'store.h5'}: {len(shapes)} cases, brain crops {shapes}, "
          f"{(out / 'store.h5').stat().st_size / 2 ** 20:.1f} MiB")


if __name__ == "__main__":
    app.run(main)
