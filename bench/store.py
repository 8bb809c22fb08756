"""Random 128^3 patch reads: the store's layout against the legacy port's, side by side.

Writes synthetic BraTS cases, stores them once with `write_data_to_file` (the default layout) and
then copies the very same arrays into the legacy port's layout (float32 (N, C, X, Y, Z), Blosc
level 5, default chunks) and into a few alternative layouts (the default without its Fletcher-32
checksums among them). Every layout then serves the same
random four-channel patches through `DataStore.read_patch` (channels-last float32, as training
consumes them), interleaved round by round so machine noise hits them alike. Prints patches/s,
file size and the ratio to the legacy layout.

    python bench/store.py                      # 4 cases of 240x240x155, 40 patches of 128^3
    python bench/store.py --n_cases 8 --n_patches 100 --patch 128,128,128
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import tables
from absl import app, flags

from unet3d.data import DataStore, write_data_to_file
from unet3d.legacy.data import add_data_to_storage, create_data_file
from unet3d.store_writer import FILTERS, StoreWriter
from common import synthetic_cases, work_folder

FLAGS = flags.FLAGS
flags.DEFINE_integer("n_cases", 4, "Synthetic cases to store.")
flags.DEFINE_string("shape", "240,240,155", "Shape of the synthetic cases.")
flags.DEFINE_string("patch", "128,128,128", "Patch shape read.")
flags.DEFINE_integer("n_patches", 40, "Patches read per layout.")
flags.DEFINE_integer("rounds", 4, "Rounds the patches are split into, layouts interleaved.")
flags.DEFINE_integer("seed", 0, "Seed of the data and of the patch positions.")
flags.DEFINE_string("work_dir", None, "Folder for the files (default: a temporary folder).")


def copy_store(store: DataStore, out_file: Path, dtype, filters, chunk_edge) -> None:
    """Write `store`'s arrays again with another dtype, codec or chunk edge."""
    with StoreWriter(out_file, store.n_channels, store.spatial_shape, store.has_truth, dtype,
                     filters=filters, chunk_edge=chunk_edge) as writer:
        for index in range(len(store)):
            writer.append(store.read_image(index), store.read_truth(index), store.case_info(index))
        writer.commit(store.subject_ids)


def copy_store_legacy(store: DataStore, out_file: Path) -> None:
    """Write `store`'s arrays in the legacy port's layout (channels-first float32, full slabs)."""
    hdf5_file, data, truth, affine = create_data_file(out_file, store.n_channels, len(store),
                                                      store.spatial_shape)
    with hdf5_file:
        for index in range(len(store)):
            slab, labels = store.read_patch(index, (0, 0, 0), store.spatial_shape)
            add_data_to_storage(data, truth, affine, [*np.moveaxis(slab, -1, 0), labels],
                                np.eye(4), store.n_channels)


def main(argv):
    del argv
    shape = tuple(int(n) for n in FLAGS.shape.split(","))
    patch = tuple(int(n) for n in FLAGS.patch.split(","))
    with work_folder(FLAGS.work_dir, "bench_store_") as work:
        files, names = synthetic_cases(work, FLAGS.n_cases, shape, FLAGS.seed)
        start = time.perf_counter()
        write_data_to_file(files, work / "store.h5", subject_ids=names, progress=lambda line: None)
        print(f"default store written in {time.perf_counter() - start:.1f} s")
        reference = DataStore(work / "store.h5")

        layouts = {"default: uint16, 32^3 chunks, blosc:lz4, Fletcher-32": work / "store.h5"}
        variants = [
            ("uint16, 32^3 chunks, blosc:lz4, no checksum", np.uint16,
             tables.Filters(complevel=5, complib="blosc:lz4", shuffle=True), 32),
            ("float16, 32^3 chunks, blosc:lz4", np.float16, FILTERS, 32),
            ("float32, 32^3 chunks, blosc:lz4", np.float32, FILTERS, 32),
            ("uint16, 64^3 chunks, blosc:lz4", np.uint16, FILTERS, 64),
            ("uint16, 16^3 chunks, blosc:lz4", np.uint16, FILTERS, 16),
            ("uint16, 32^3 chunks, blosc2:lz4", np.uint16,
             tables.Filters(complevel=5, complib="blosc2:lz4", shuffle=True), 32),
            ("uint16, 32^3 chunks, blosc:zstd", np.uint16,
             tables.Filters(complevel=5, complib="blosc:zstd", shuffle=True), 32),
        ]
        for name, dtype, filters, chunk_edge in variants:
            path = work / f"variant_{len(layouts)}.h5"
            copy_store(reference, path, dtype, filters, chunk_edge)
            layouts[name] = path
        legacy_name = "legacy: float32 (N,C,X,Y,Z), blosc 5, default chunks"
        copy_store_legacy(reference, work / "legacy.h5")
        layouts[legacy_name] = work / "legacy.h5"

        rng = np.random.default_rng(FLAGS.seed)
        requests = []
        for _ in range(FLAGS.n_patches):
            index = int(rng.integers(len(reference)))
            extent = reference.case_shape(index)
            corner = [int(rng.integers(min(0, n - p), max(0, n - p) + 1))
                      for n, p in zip(extent, patch)]
            requests.append((index, corner))
        # Same patches from every layout: check they agree before timing them.
        stores = {name: DataStore(path) for name, path in layouts.items()}
        expected = stores[legacy_name].read_patch(*requests[0], patch)[0]
        for name, store in stores.items():
            got = store.read_patch(*requests[0], patch)[0]
            np.testing.assert_allclose(got, expected, atol=1e-3, err_msg=name)

        seconds = dict.fromkeys(stores, 0.0)
        for chunk in np.array_split(np.arange(len(requests)), FLAGS.rounds):
            for name, store in stores.items():
                start = time.perf_counter()
                for k in chunk:
                    store.read_patch(*requests[k], patch)
                seconds[name] += time.perf_counter() - start
        legacy_rate = len(requests) / seconds[legacy_name]
        legacy_mb = layouts[legacy_name].stat().st_size / 1e6
        print(f"\n{FLAGS.n_cases} cases {shape}, {len(requests)} random {patch} x "
              f"{reference.n_channels}-channel patches per layout\n")
        print("| layout | MB | size vs legacy | patches/s | read speed vs legacy |")
        print("|---|---:|---:|---:|---:|")
        for name, path in layouts.items():
            rate = len(requests) / seconds[name]
            mb = path.stat().st_size / 1e6
            print(f"| {name} | {mb:.1f} | {mb / legacy_mb:.2f} | {rate:.1f} | {rate / legacy_rate:.2f}x |")
        for store in stores.values():
            store.close()
        reference.close()


if __name__ == "__main__":
    app.run(main)
