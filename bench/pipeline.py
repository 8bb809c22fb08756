"""Input pipeline throughput: training patches per second, as `model.fit` would receive them.

Writes synthetic BraTS cases, stores them once in the paper layout (brain box crop, native
resolution) and once in the legacy layout (resampled to 128^3), then draws training batches
through Keras' own `PyDataset` machinery (the adapter `model.fit` uses, worker processes
included) for each recipe and worker count, interleaved round by round so machine noise hits
them alike. Prints patches/s, patches/s per worker and the ratio to one worker.

    python bench/pipeline.py                  # 6 cases of 240x240x155, 128^3 patches
    python bench/pipeline.py --rounds 3 --steps 50 --workers 1,2
"""

from __future__ import annotations

import time

from absl import app, flags
from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter

from unet3d.augment import AugmentConfig
from unet3d.data import write_data_to_file
from unet3d.generator import PatchListDataset, RandomPatchDataset

from common import synthetic_cases, work_folder

FLAGS = flags.FLAGS
flags.DEFINE_integer("n_cases", 6, "Synthetic cases to store.")
flags.DEFINE_string("shape", "240,240,155", "Shape of the synthetic cases.")
flags.DEFINE_string("patch", "128,128,128", "Training patch shape.")
flags.DEFINE_integer("batch_size", 2, "Patches per batch (the paper's 2).")
flags.DEFINE_integer("steps", 25, "Batches per measured epoch.")
flags.DEFINE_integer("rounds", 2, "Epochs measured per configuration, interleaved.")
flags.DEFINE_list("workers", ["0", "1", "2"],
                  "Worker process counts to measure (0: batches made in the training process).")
flags.DEFINE_integer("seed", 0, "Seed of the data and of the sampling.")
flags.DEFINE_string("work_dir", None, "Folder for the files (default: a temporary folder).")


def time_epoch(dataset) -> float:
    """Seconds to draw one epoch of `dataset` the way `model.fit` does (workers started anew)."""
    adapter = PyDatasetAdapter(dataset)
    start = time.perf_counter()
    adapter.on_epoch_begin()
    for _ in zip(range(len(dataset)), adapter.get_numpy_iterator()):
        pass
    adapter.on_epoch_end()
    return time.perf_counter() - start


def main(argv):
    del argv
    shape = tuple(int(n) for n in FLAGS.shape.split(","))
    patch = tuple(int(n) for n in FLAGS.patch.split(","))
    with work_folder(FLAGS.work_dir, "bench_pipeline_") as work:
        files, names = synthetic_cases(work, FLAGS.n_cases, shape, FLAGS.seed)
        write_data_to_file(files, work / "paper.h5", subject_ids=names, progress=lambda line: None)
        write_data_to_file(files, work / "legacy.h5", image_shape=patch, subject_ids=names,
                           progress=lambda line: None)
        all_cases = list(range(len(names)))

        def paper(workers, augment):
            return RandomPatchDataset(work / "paper.h5", all_cases, patch, FLAGS.batch_size,
                                      FLAGS.steps, augment=augment, seed=FLAGS.seed,
                                      workers=workers)

        def legacy(workers):
            # The port's BraTS config: whole 128^3 images, permutations, start offsets unused.
            repeats = max(1, FLAGS.steps * FLAGS.batch_size // len(all_cases))
            return PatchListDataset(work / "legacy.h5", all_cases * repeats, batch_size=1,
                                    permute=True, seed=FLAGS.seed, workers=workers)

        configs = {}
        for workers in (int(w) for w in FLAGS.workers):
            configs[("paper, default augmentation", workers)] = paper(workers, AugmentConfig())
        for workers in (int(w) for w in FLAGS.workers):
            configs[("paper, every spatial transform (p=1)", workers)] = paper(
                workers, AugmentConfig(p_rotation=1, p_scaling=1, p_elastic=1))
        configs[("paper, no augmentation (reads only)", 0)] = paper(0, None)
        for workers in (int(w) for w in FLAGS.workers):
            configs[("legacy: 128^3 images + permutations", workers)] = legacy(workers)

        for dataset in configs.values():  # warm up: compile, first reads, page cache
            dataset[0]
        seconds = dict.fromkeys(configs, 0.0)
        patches = dict.fromkeys(configs, 0)
        for _ in range(FLAGS.rounds):
            for key, dataset in configs.items():
                seconds[key] += time_epoch(dataset)
                patches[key] += len(dataset) * dataset.batch_size

        print(f"\n{FLAGS.n_cases} cases of {shape}; {patch} x 4-channel training patches, "
              f"batch {FLAGS.batch_size}, {FLAGS.rounds} epochs of {FLAGS.steps} batches each "
              "(worker start-up included)\n")
        print("| recipe | workers | patches/s | per worker | vs 1 worker |")
        print("|---|---:|---:|---:|---:|")
        for (recipe, workers), total in seconds.items():
            rate = patches[(recipe, workers)] / total
            one = (recipe, 1)
            ratio = f"{rate / (patches[one] / seconds[one]):.2f}x" if one in seconds else "-"
            print(f"| {recipe} | {workers} | {rate:.2f} | {rate / max(workers, 1):.2f} | {ratio} |")


if __name__ == "__main__":
    app.run(main)
