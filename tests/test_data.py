"""The HDF5 data store: paper-mode contents, legacy layouts, atomicity, concurrency, bad input."""

import multiprocessing
import signal
import subprocess
import sys
import textwrap
import tracemalloc

import h5py
import numpy as np
import pytest
import tables

from unet3d.brats import MODALITIES, find_cases
from unet3d.data import (DataStore, add_data_to_storage, create_data_file, open_data_file,
                         write_data_to_file, write_store_from_folder)
from unet3d.errors import InputError
from unet3d.io import read_nifti, write_nifti
from unet3d.model_space import ModelSpace, restore_to_original
from unet3d.synthetic import make_synthetic_brats




def test_paper_mode_zscore_inside_the_brain_and_zero_outside(cases, store_path):
    with DataStore(store_path) as store:
        assert len(store) == 4 and store.n_channels == 4 and store.has_truth
        assert store.subject_ids == [c.name for c in cases]
        assert store.labels == (1, 2, 4) and store.modalities == MODALITIES
        assert store.space == ModelSpace() and store.spacing == (1.0, 1.0, 1.0)
        for index, case in enumerate(cases):
            image, truth = store.read_image(index), store.read_truth(index)
            info = store.case_info(index)
            raw = [read_nifti(p, dtype=np.float64)[0] for p in case.files()[:4]]
            brain = np.any([r != 0 for r in raw], axis=0)
            stored_brain = restore_to_original(image, info.crop_start, info.original.shape)
            for channel, modality in enumerate(raw):
                values = stored_brain[..., channel]
                assert np.all(values[~brain] == 0)
                z = values[brain] * 10 - 5           # undo the rescaling to [0, 1]
                expected = (modality[brain] - modality[brain].mean()) / modality[brain].std()
                np.testing.assert_allclose(z, np.clip(expected, -5, 5), atol=2e-3)
                assert abs(z.mean()) < 0.01 and abs(z.std() - 1) < 0.01
            assert truth.dtype == np.uint8 and image.dtype == np.float32


def test_crop_box_round_trip_to_the_original_grid_is_exact(cases, store_path):
    with DataStore(store_path) as store:
        for index, case in enumerate(cases):
            info = store.case_info(index)
            seg, geometry = read_nifti(case.label)
            assert info.original == geometry and not info.resampled
            restored = restore_to_original(store.read_truth(index), info.crop_start, geometry.shape)
            assert np.array_equal(restored, seg)
            # The crop box is the brain's bounding box: tight on every side.
            image = store.read_image(index)
            for axis in range(3):
                other = tuple(a for a in range(4) if a != axis)
                occupied = np.flatnonzero(image.any(axis=other))
                assert occupied[0] == 0 and occupied[-1] == image.shape[axis] - 1
            # The stored affine maps stored voxel (0, 0, 0) to the original crop start.
            affine = store.file.root.affine[index]
            np.testing.assert_allclose(affine[:3, 3], (geometry.affine @ [*info.crop_start, 1])[:3])


def test_read_patch_pads_with_zeros_outside_the_case(store_path):
    with DataStore(store_path) as store:
        image, truth = store.read_image(1), store.read_truth(1)
        corner, size = (-3, 5, image.shape[2] - 10), (16, 20, 24)
        patch, patch_truth = store.read_patch(1, corner, size)
        padded = np.pad(image, [(8, 24), (8, 24), (8, 24), (0, 0)])
        padded_truth = np.pad(truth, [(8, 24)] * 3)
        region = tuple(slice(c + 8, c + 8 + s) for c, s in zip(corner, size))
        assert np.array_equal(patch, padded[region]) and np.array_equal(patch_truth, padded_truth[region])


def test_legacy_resampling_mode(cases, tmp_path):
    path = tmp_path / "legacy_mode.h5"
    write_data_to_file([c.files() for c in cases[:2]], path, image_shape=(32, 40, 24))
    with DataStore(path) as store:
        assert store.spatial_shape == (32, 40, 24) and store.case_shape(0) == (32, 40, 24)
        truth = store.read_truth(0)
        assert set(np.unique(truth)) <= {0, 1, 2, 4} and truth.any()
        assert store.case_info(0).resampled and store.subject_ids == ["case 0", "case 1"]
        assert store.space == ModelSpace(image_shape=(32, 40, 24))
        assert store.preprocessing is None  # written from files of unknown preprocessing


def test_unlabelled_store(cases, tmp_path):
    path = tmp_path / "unlabelled.h5"
    write_data_to_file([c.files()[:4] for c in cases[:2]], path, with_truth=False)
    with DataStore(path) as store:
        assert not store.has_truth
        patch, truth = store.read_patch(0, (0, 0, 0), (8, 8, 8))
        assert truth is None and patch.shape == (8, 8, 8, 4)
        with pytest.raises(InputError, match="no labels"):
            store.read_truth(0)


def test_legacy_layout_store_reads_channels_last(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "brats_data.h5"
    hdf5_file, data, truth, affine = create_data_file(path, n_channels=4, n_samples=2,
                                                      image_shape=(24, 20, 16))
    volumes = [rng.normal(size=(4, 24, 20, 16)).astype(np.float32) for _ in range(2)]
    labels = [rng.choice([0, 1, 2, 4], size=(24, 20, 16)).astype(np.uint8) for _ in range(2)]
    for volume, label in zip(volumes, labels):
        add_data_to_storage(data, truth, affine, [*volume, label], np.eye(4), 4)
    hdf5_file.create_array(hdf5_file.root, "subject_ids", obj=[b"a", b"b"])
    hdf5_file.close()
    with tables.open_file(str(path)) as raw:
        assert raw.root.data.shape == (2, 4, 24, 20, 16) and raw.root.truth.shape == (2, 1, 24, 20, 16)
        assert raw.root.data.filters.complib == "blosc" and raw.root.data.filters.complevel == 5
    with DataStore(path) as store:
        assert store.legacy_layout and store.subject_ids == ["a", "b"] and store.case_info(0) is None
        for index in range(2):
            assert np.array_equal(store.read_image(index), np.moveaxis(volumes[index], 0, -1))
            assert np.array_equal(store.read_truth(index), labels[index])
        patch, patch_truth = store.read_patch(1, (4, 2, 0), (8, 8, 8))
        assert np.array_equal(patch, np.moveaxis(volumes[1][:, 4:12, 2:10, 0:8], 0, -1))
        assert np.array_equal(patch_truth, labels[1][4:12, 2:10, 0:8])


def test_failed_write_leaves_no_file(cases, tmp_path):
    path = tmp_path / "broken.h5"
    files = [c.files() for c in cases[:2]] + [(*cases[2].files()[:4], tmp_path / "missing_seg.nii.gz")]
    with pytest.raises(InputError, match="missing_seg.nii.gz: file not found"):
        write_data_to_file(files, path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_killed_write_leaves_no_valid_looking_file(tmp_path):
    make_synthetic_brats(tmp_path / "cases", n_cases=6, shape=(96, 96, 64), seed=1)
    target = tmp_path / "store.h5"
    script = textwrap.dedent(f"""
        import time
        from unet3d.brats import find_cases
        from unet3d.data import write_data_to_file
        cases = find_cases({str(tmp_path / 'cases')!r})
        def progress(line):
            print(line, flush=True)
            time.sleep(30)          # stall after the first case so the test can kill us mid-write
        write_data_to_file([c.files() for c in cases], {str(target)!r}, progress=progress)
    """)
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert "[1/6]" in process.stdout.readline()
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not target.exists()
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".store.h5.")]
    assert leftovers and all(p.name.endswith(".partial") for p in leftovers)
    with pytest.raises(InputError, match="not found"):
        open_data_file(target)


def read_all(store: DataStore) -> list:
    return [(store.read_image(i).sum(dtype=np.float64), store.read_truth(i).sum(dtype=np.int64),
             store.read_patch(i, (5, 7, 3), (20, 20, 20))[0].sum(dtype=np.float64))
            for i in range(len(store))]


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_four_processes_read_one_store_concurrently(store_path, method):
    store = DataStore(store_path)
    expected = read_all(store)      # the parent's handle is open before the workers start
    with multiprocessing.get_context(method).Pool(4) as pool:
        results = pool.map(read_all, [store] * 8)
    assert all(result == expected for result in results)
    store.close()


def test_corrupt_chunk_names_file_and_case(store_path, tmp_path):
    path = tmp_path / "corrupt.h5"
    path.write_bytes(store_path.read_bytes())
    with h5py.File(path, "r") as f:
        info = f["data"].id.get_chunk_info_by_coord((2, 0, 0, 0, 0))
    with open(path, "r+b") as f:
        f.seek(info.byte_offset + 16)
        f.write(b"\xff" * min(256, info.size - 16))
    with DataStore(path) as store:
        store.read_image(0)          # other cases stay readable
        with pytest.raises(InputError, match=rf"corrupt.h5: case 2 \({store.subject_ids[2]}\).*corrupt"):
            store.read_image(2)


def test_truncated_or_foreign_files(tmp_path, store_path):
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(store_path.read_bytes()[:2000])
    with pytest.raises(InputError, match="truncated.h5: not a readable HDF5"):
        DataStore(truncated)
    with pytest.raises(InputError, match="missing.h5: data file not found"):
        DataStore(tmp_path / "missing.h5")
    other = tmp_path / "other.h5"
    with tables.open_file(str(other), "w") as f:
        f.create_array(f.root, "x", obj=[1, 2])
    with pytest.raises(InputError, match="other.h5: not a data store"):
        DataStore(other)


def test_memory_while_writing_does_not_grow_with_cases(tmp_path):
    make_synthetic_brats(tmp_path / "cases", n_cases=6, shape=(64, 64, 48), seed=2)
    cases = find_cases(tmp_path / "cases")
    peaks = []
    for n in (2, 6):
        tracemalloc.start()
        write_data_to_file([c.files() for c in cases[:n]], tmp_path / f"s{n}.h5",
                           progress=lambda line: None)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[1] < 1.2 * peaks[0]


def bad_case(cases, tmp_path, name, change):
    """A copy of case 0's files in which `change(arrays, geometry)` altered one file."""
    files = list(cases[0].files())
    index, array, geometry = change(*zip(*(read_nifti(p) for p in files)))
    files[index] = tmp_path / name
    write_nifti(array, geometry, files[index])
    return files


@pytest.mark.parametrize("name, change, message", [
    ("shape_t2.nii.gz", lambda a, g: (3, a[3][:-1], g[3].cropped((0, 0, 0), np.subtract(g[3].shape, (1, 0, 0)))),
     r"case bad: shape_t2.nii.gz \(shape \(63, 64, 48\).* is not on the grid of"),
    ("moved_t1ce.nii.gz", lambda a, g: (1, a[1], g[1].cropped((2, 0, 0), np.add(g[1].shape, (2, 0, 0)))),
     "moved_t1ce.nii.gz .*origin.* is not on the grid"),
    ("nan_flair.nii.gz", lambda a, g: (2, np.where(a[2] > 0, np.nan, 0).astype(np.float32), g[2]),
     "nan_flair.nii.gz: .* voxels are NaN"),
    ("labels_seg.nii.gz", lambda a, g: (4, np.where(a[4] == 4, 5, a[4]).astype(np.uint8), g[4]),
     r"case bad: labels_seg.nii.gz holds label values \[5\]"),
    ("blank_t1.nii.gz", lambda a, g: (0, np.where(a[0] > 0, 100, 0).astype(np.int16), g[0]),
     "case bad: blank_t1.nii.gz: the image is constant inside the brain"),
])
def test_bad_input_errors_name_the_case_and_file(cases, tmp_path, name, change, message):
    files = bad_case(cases, tmp_path, name, change)
    with pytest.raises(InputError, match=message):
        write_data_to_file([files], tmp_path / "store.h5", subject_ids=["bad"])
    assert not (tmp_path / "store.h5").exists()


def test_store_from_a_folder_with_and_without_labels(synthetic_brats, tmp_path):
    path = write_store_from_folder(synthetic_brats, tmp_path / "a.h5", progress=lambda line: None)
    with DataStore(path) as store:
        assert store.has_truth and len(store) == 4
    (synthetic_brats / "BraTS20_Training_001" / "BraTS20_Training_001_seg.nii.gz").rename(
        tmp_path / "moved_seg.nii.gz")
    try:
        with pytest.raises(InputError, match="1 of 4 cases have no label file.*BraTS20_Training_001"):
            write_store_from_folder(synthetic_brats, tmp_path / "b.h5")
    finally:
        (tmp_path / "moved_seg.nii.gz").rename(
            synthetic_brats / "BraTS20_Training_001" / "BraTS20_Training_001_seg.nii.gz")
    with pytest.raises(InputError, match="no cases to write"):
        write_data_to_file([], tmp_path / "c.h5")
