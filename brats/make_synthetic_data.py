"""Write synthetic BraTS-format cases (NIfTI, real BraTS names) for tests, the demo and benchmarks.

    python brats/make_synthetic_data.py --out_dir DIR [--n_cases 8] [--shape 240,240,155]
        [--seed 0] [--convention brats2020] [--overwrite]

Case k is drawn from seed (seed, k): the same seed writes the same bytes. Every 4th case has no
enhancing tumour. --convention writes the cases of any BraTS release or task (names, modalities,
labels, and what the task adds: a resection cavity, a cyst, several lesions); --naming of older
versions still works. See `unet3d.synthetic` for what the cases contain.
"""

import sys
from pathlib import Path

from absl import flags

from unet3d import cli

from unet3d.errors import InputError, OutputError
from unet3d.synthetic import make_synthetic_brats, parse_shape

FLAGS = flags.FLAGS
flags.DEFINE_string("out_dir", None, "Folder to write the case folders into (created if needed).")
flags.DEFINE_integer("n_cases", 8, "Number of cases to write (cases 1 to n_cases).")
flags.DEFINE_string("shape", "240,240,155", "Grid size X,Y,Z in voxels, each at least 32; "
                    "BraTS' is 240,240,155. Small shapes such as 64,64,48 are fast.")
flags.DEFINE_integer("seed", 0, "Random seed (non-negative); the same seed writes the same files.")
cli.define_convention_flag("The release or task whose file names, modalities and labels the "
                           "cases follow (docs/real_brats_data.md).", default="brats2020",
                           aliases=("naming",))
flags.DEFINE_bool("overwrite", False, "Replace case folders that already exist.")
flags.mark_flag_as_required("out_dir")


def report(index: int, n_cases: int, case_dir: Path, seconds: float) -> None:
    print(f"[{index}/{n_cases}] {case_dir.name} written ({seconds:.1f} s)", flush=True)


def main(argv) -> int:
    del argv
    try:
        make_synthetic_brats(FLAGS.out_dir, n_cases=FLAGS.n_cases, shape=parse_shape(FLAGS.shape),
                             seed=FLAGS.seed, convention=FLAGS.convention,
                             overwrite=FLAGS.overwrite,
                             progress=report)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OutputError as error:  # a file could not be written: not bad usage
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {FLAGS.n_cases} case(s) to {FLAGS.out_dir}")
    return 0


if __name__ == "__main__":
    cli.run(main)
