"""Training / validation datasets from a data store: patch lists, random patches, multi-process
loading and a tiny `model.fit` (the split: test_splits.py)."""

import math
import os

import numpy as np
import pytest
from scipy import ndimage

from helpers import split_files as keys
from unet3d.augment import AugmentConfig, generate_permutation_keys, permute_data
from unet3d.data import DataStore, add_data_to_storage, create_data_file, write_data_to_file
from unet3d.errors import InputError
from unet3d.generator import (PatchListDataset, RandomPatchDataset, get_number_of_steps,
                              get_training_and_validation_datasets,
                              get_training_and_validation_generators)
from unet3d.utils.patches import compute_patch_indices

LABELS = (1, 2, 4)
PATCH = (16, 16, 16)


# --------------------------------------------------------------------------- fixtures / helpers


@pytest.fixture(scope="module")
def store(store_path):
    with DataStore(store_path) as s:
        yield s


# a store whose labels are painted from channel 0: ED where ch0 > 0.4, NCR > 0.55, ET > 0.7, so
# that WT = ch0 > 0.4, TC = ch0 > 0.55 and ET = ch0 > 0.7 exactly on the stored grid
REGION_THRESHOLDS = (0.4, 0.55, 0.7)


@pytest.fixture(scope="module")
def painted_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("painted") / "painted.h5"
    shape = (40, 40, 40)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    hdf5_file, data, truth, affine = create_data_file(path, n_channels=2, n_samples=3,
                                                      image_shape=shape)
    for case in range(3):
        rng = np.random.default_rng(100 + case)
        channels = []
        for _ in range(2):
            volume = np.zeros(shape)
            for _ in range(3):
                centre = rng.uniform(12, 28, 3)
                volume += np.exp(-np.sum((grid - centre) ** 2, axis=-1) / (2 * rng.uniform(4, 7) ** 2))
            channels.append((volume / volume.max()).astype(np.float32))
        label = np.zeros(shape, np.uint8)
        label[channels[0] > REGION_THRESHOLDS[0]] = 2
        label[channels[0] > REGION_THRESHOLDS[1]] = 1
        label[channels[0] > REGION_THRESHOLDS[2]] = 4
        add_data_to_storage(data, truth, affine, [*channels, label], np.eye(4), 2)
    hdf5_file.close()
    return path


def assert_regions_painted(images, targets, min_agreement=0.95):
    """Region targets agree with thresholds of image channel 0, except on the regions' borders
    (linear images vs nearest labels, the latter blocky where the patch is zoomed in): every
    disagreeing voxel lies within two voxels of a border of the target, the patch faces
    included (a zoomed-out patch sees the zeros outside the source patch or volume there)."""
    cube = np.ones((3, 3, 3), bool)
    for image, target in zip(images, targets):
        for channel, threshold in enumerate(REGION_THRESHOLDS):
            region = target[..., channel].astype(bool)
            differ = (image[..., 0] > threshold) != region
            assert np.mean(~differ) >= min_agreement, (channel, np.mean(~differ))
            border = (ndimage.binary_dilation(region, cube, iterations=2, border_value=0)
                      & ~ndimage.binary_erosion(region, cube, iterations=2, border_value=0))
            assert not np.any(differ & ~border), (channel, int(np.sum(differ & ~border)))


def edge_patch(array, corner, shape=PATCH):
    """Patch at `corner` with edge padding, computed with np.pad (the legacy semantics)."""
    pad = max(shape)
    widths = [(pad, pad)] * 3 + [(0, 0)] * (array.ndim - 3)
    padded = np.pad(array, widths, mode="edge")
    return padded[tuple(slice(c + pad, c + pad + n) for c, n in zip(corner, shape))]


def one_hot(truth, labels=LABELS):
    return np.stack([(truth == v) for v in labels], axis=-1).astype(np.uint8)


def nonblank_grid(store, case, patch=PATCH, overlap=0):
    """Grid corners of `case` whose truth patch holds a label (computed by plain slicing)."""
    truth = store.read_truth(case)
    out = []
    for corner in compute_patch_indices(store.case_shape(case), patch, overlap):
        region = tuple(slice(max(c, 0), c + n) for c, n in zip(corner, patch))
        if truth[region].any():
            out.append((case, tuple(int(v) for v in corner)))
    return out


def collect(ds):
    """Every batch of this epoch, with the (case, corner) list of each."""
    batches, samples = [], ds.samples
    for i in range(len(ds)):
        batches.append((ds[i], samples[i * ds.batch_size:(i + 1) * ds.batch_size]))
    return batches


# --------------------------------------------------------------------------- steps and splits

def test_number_of_steps():
    assert get_number_of_steps(10, 3) == 4
    assert get_number_of_steps(9, 3) == 3
    assert get_number_of_steps(1, 8) == 1
    assert get_number_of_steps(8, 1) == 8
    with pytest.raises(InputError, match="no samples"):
        get_number_of_steps(0, 4)
    with pytest.raises(InputError, match="batch size"):
        get_number_of_steps(5, 0)


# --------------------------------------------------------------------------- legacy generators

def test_legacy_validation_sees_every_nonblank_patch_once(store, tmp_path):
    train, valid, n_train, n_valid = get_training_and_validation_generators(
        store, batch_size=4, n_labels=3, training_keys_file=keys(tmp_path)[0],
        validation_keys_file=keys(tmp_path)[1], data_split=0.5, labels=LABELS,
        patch_shape=PATCH, validation_batch_size=5, seed=0)
    assert (n_train, n_valid) == (len(train), len(valid))
    expected = [s for case in valid.case_indices for s in nonblank_grid(store, case)]
    assert len(expected) > 5
    assert n_valid == math.ceil(len(expected) / 5)
    batches = collect(valid)
    seen = [s for _, chunk in batches for s in chunk]
    assert sorted(seen) == sorted(expected) and len(set(seen)) == len(seen)
    remainder = len(expected) % 5 or 5
    for i, ((images, targets), chunk) in enumerate(batches):
        size = remainder if i == len(batches) - 1 else 5
        assert images.shape == (size, *PATCH, 4) and images.dtype == np.float32
        assert targets.shape == (size, *PATCH, 3) and targets.dtype == np.uint8
        for k, (case, corner) in enumerate(chunk):
            truth = edge_patch(store.read_truth(case), corner)
            assert truth.any()  # blank patches are skipped
            np.testing.assert_array_equal(images[k], edge_patch(store.read_image(case), corner))
            np.testing.assert_array_equal(targets[k], one_hot(truth))
    # a second epoch sees the same samples in the same order (no shuffling for validation)
    before = valid.samples
    valid.on_epoch_end()
    assert valid.samples == before
    # the training set covers its own cases' non-blank patches, shuffled
    expected_train = [s for case in train.case_indices for s in nonblank_grid(store, case)]
    assert sorted(train.samples) == sorted(expected_train) and train.samples != expected_train
    assert n_train == math.ceil(len(expected_train) / 4)
    assert set(train.case_indices).isdisjoint(valid.case_indices)


def test_legacy_without_skip_blank_covers_every_patch(store, tmp_path):
    _, valid, _, n_valid = get_training_and_validation_generators(
        store, 3, 3, *keys(tmp_path), data_split=0.5, patch_shape=PATCH, skip_blank=False,
        validation_patch_overlap=4, seed=0)
    expected = [(case, tuple(int(v) for v in corner)) for case in valid.case_indices
                for corner in compute_patch_indices(store.case_shape(case), PATCH, 4)]
    assert sorted(valid.samples) == sorted(expected)
    assert n_valid == math.ceil(len(expected) / 3)
    images, targets = valid[n_valid - 1]
    assert len(images) == len(targets) == (len(expected) % 3 or 3)


def test_legacy_whole_images(store, tmp_path):
    train, valid, n_train, n_valid = get_training_and_validation_generators(
        store, 1, 3, *keys(tmp_path), data_split=0.5, labels=LABELS, patch_shape=None, seed=0)
    assert n_train == 2 and n_valid == 2
    for ds in (train, valid):
        assert sorted(c for c, _ in ds.samples) == sorted(ds.case_indices)
        for i, (case, corner) in enumerate(ds.samples):
            assert corner is None
            images, targets = ds[i]
            assert images.shape == (1, *store.case_shape(case), 4)
            np.testing.assert_array_equal(images[0], store.read_image(case))
            np.testing.assert_array_equal(targets[0], one_hot(store.read_truth(case)))
    with pytest.raises(InputError, match="different shapes"):
        get_training_and_validation_generators(store, 2, 3, *keys(tmp_path), patch_shape=None)


def test_legacy_default_labels_are_one_to_n_labels(store, tmp_path):
    """As in the port (and documented): without `labels`, channel i is label i + 1, whatever
    labels the store holds, so a BraTS 2020 store needs labels=(1, 2, 4) for its ET channel."""
    _, valid, _, _ = get_training_and_validation_generators(
        store, 1, 3, *keys(tmp_path), data_split=0.5, patch_shape=None, seed=0)
    case, _ = valid.samples[0]
    _, targets = valid[0]
    truth = store.read_truth(case)
    assert (truth == 4).any()
    np.testing.assert_array_equal(targets[0], one_hot(truth, (1, 2, 3)))
    with pytest.raises(InputError, match="n_labels"):
        get_training_and_validation_generators(store, 1, 3, *keys(tmp_path), labels=(1, 2))
    with pytest.raises(InputError, match="unknown convention 'brats1999'"):
        get_training_and_validation_generators(store, 1, 3, *keys(tmp_path), labels="brats1999")


def test_legacy_permute(store, tmp_path):
    with pytest.raises(InputError, match="cubic"):
        get_training_and_validation_generators(store, 2, 3, *keys(tmp_path), patch_shape=(16, 16, 8),
                                               permute=True)
    train, _, _, _ = get_training_and_validation_generators(
        store, 2, 3, *keys(tmp_path), labels=LABELS, patch_shape=PATCH, permute=True, seed=3)
    samples = train.samples
    for i in range(3):
        images, targets = train[i]
        for k, (case, corner) in enumerate(samples[2 * i:2 * i + 2]):
            plain = edge_patch(store.read_image(case), corner)
            plain_truth = edge_patch(store.read_truth(case), corner)
            matching = [key for key in generate_permutation_keys()
                        if np.array_equal(permute_data(plain, key), images[k])]
            assert matching, "batch patch is no cube permutation of the stored patch"
            assert any(np.array_equal(one_hot(permute_data(plain_truth, key)), targets[k])
                       for key in matching)


def test_legacy_augmentation_shapes_and_determinism(store, tmp_path):
    args = dict(batch_size=2, n_labels=3, training_keys_file=keys(tmp_path)[0],
                validation_keys_file=keys(tmp_path)[1], patch_shape=PATCH, augment=True,
                augment_distortion_factor=0.25, seed=1)
    a, _, _, _ = get_training_and_validation_generators(store, **args)
    b, _, _, _ = get_training_and_validation_generators(store, **args)
    (ia, ta), (ib, tb) = a[0], b[0]
    assert ia.shape == (2, *PATCH, 4) and ta.shape == (2, *PATCH, 3)
    assert np.array_equal(ia, ib) and np.array_equal(ta, tb)
    assert set(np.unique(ta)) <= {0, 1} and ta.sum(axis=-1).max() <= 1


def test_training_patch_start_offset_changes_corners_not_length(store, tmp_path):
    train, _, n_train, _ = get_training_and_validation_generators(
        store, 3, 3, *keys(tmp_path), patch_shape=PATCH, training_patch_start_offset=(8, 8, 8),
        skip_blank=False, seed=0)
    corner_sets = []
    for epoch in range(4):
        assert len(train) == n_train and len(train.samples) == len(train._samples)
        corners = {(case, corner) for case, corner in train.samples}
        for _, corner in corners:
            # each grid starts at -offset with offset in [0, 8]: corner mod 16 in {0, 8..15}
            assert all(c % 16 == 0 or c % 16 >= 8 for c in corner)
        corner_sets.append(corners)
        images, _ = train[len(train) - 1]
        assert images.shape[1:] == (*PATCH, 4)
        train.on_epoch_end()
        assert train.epoch == epoch + 1
    assert len({frozenset(c) for c in corner_sets}) > 1


def test_empty_patch_list_raises(store):
    with pytest.raises(InputError, match="no samples"):
        PatchListDataset(store, [], batch_size=2, patch_shape=PATCH)
    with pytest.raises(InputError, match="out of range"):
        PatchListDataset(store, [0, 7], batch_size=2, patch_shape=PATCH)


# --------------------------------------------------------------------------- paper datasets

@pytest.fixture
def paper(store, tmp_path):
    def make(**kwargs):
        args = dict(patch_shape=PATCH, batch_size=2, steps_per_epoch=4, seed=0)
        args.update(kwargs)
        return get_training_and_validation_datasets(store, *keys(tmp_path), **args)
    return make


def test_random_patches_shapes_and_dtypes(paper, store):
    train, valid = paper()
    assert isinstance(train, RandomPatchDataset) and isinstance(valid, PatchListDataset)
    assert len(train) == 4
    for i in range(len(train)):
        images, targets = train[i]
        assert images.shape == (2, *PATCH, 4) and images.dtype == np.float32
        assert targets.shape == (2, *PATCH, 3) and targets.dtype == np.uint8
        assert np.all(targets[..., 2] <= targets[..., 1]) and np.all(targets[..., 1] <= targets[..., 0])
    with pytest.raises(IndexError):
        train[4]
    # validation: every grid patch of the validation cases, blank ones included
    expected = [(case, tuple(int(v) for v in corner)) for case in valid.case_indices
                for corner in compute_patch_indices(store.case_shape(case), PATCH, 0)]
    assert sorted(valid.samples) == sorted(expected)
    images, targets = valid[0]
    assert images.shape == (2, *PATCH, 4) and targets.shape == (2, *PATCH, 3)


def test_random_patches_are_deterministic_per_seed_and_epoch(paper, store, tmp_path):
    train, _ = paper()
    again = RandomPatchDataset(store, train.case_indices, PATCH, 2, 4, seed=0)
    other_seed = RandomPatchDataset(store, train.case_indices, PATCH, 2, 4, seed=1)
    first = train[1]
    for a, b in zip(first, train[1]):
        assert np.array_equal(a, b)
    for a, b in zip(first, again[1]):
        assert np.array_equal(a, b)
    assert not np.array_equal(first[0], other_seed[1][0])
    train.epoch = 3
    third = train[1]
    train.epoch = 3
    assert np.array_equal(third[0], train[1][0]) and np.array_equal(third[1], train[1][1])
    assert not np.array_equal(third[0], first[0])
    train.epoch = 2
    train.on_epoch_end()
    assert train.epoch == 3 and np.array_equal(third[0], train[1][0])
    train.on_epoch_end()
    assert not np.array_equal(third[0], train[1][0])


def test_foreground_oversampling(paper, store):
    fg, _ = paper(foreground_fraction=1.0, augment=None, steps_per_epoch=12, batch_size=4,
                  target="labels")
    bg, _ = paper(foreground_fraction=0.0, augment=None, steps_per_epoch=12, batch_size=4,
                  target="labels")
    centre_labels, fg_fraction, bg_fraction, bg_empty = [], [], [], 0
    for i in range(12):
        _, targets = fg[i]
        for t in targets:
            assert t.any(), "a foreground patch without tumour"
            fg_fraction.append(t.any(axis=-1).mean())
            centre = t[8, 8, 8]
            centre_labels.append(LABELS[int(np.argmax(centre))] if centre.any() else 0)
        _, targets = bg[i]
        for t in targets:
            bg_fraction.append(t.any(axis=-1).mean())
            bg_empty += not t.any()
    # patches are centred on a tumour voxel; the label is drawn uniformly among those present
    centre_labels = np.array(centre_labels)
    assert np.mean(centre_labels > 0) >= 0.8
    for label in LABELS:
        assert np.mean(centre_labels == label) >= 0.15, (label, np.bincount(centre_labels))
    assert np.mean(fg_fraction) > 3 * np.mean(bg_fraction)
    assert bg_empty > 0


def find_corners(full, patch):
    """Every corner c (patch inside `full`) with full[c:c+shape] == patch, by probing."""
    n = np.array(full.shape[:3]) - np.array(patch.shape[:3]) + 1
    if np.any(n < 1):
        return []
    mask = np.ones(tuple(n), bool)
    probes = [(0, 0, 0), (8, 8, 8), (15, 15, 15), (3, 11, 5), (12, 2, 9), (6, 14, 13)]
    for p in probes:
        mask &= full[p[0]:p[0] + n[0], p[1]:p[1] + n[1], p[2]:p[2] + n[2], :] .__eq__(
            patch[p]).all(axis=-1)
    return [tuple(c) for c in np.argwhere(mask)
            if np.array_equal(full[tuple(slice(a, a + m) for a, m in zip(c, patch.shape[:3]))],
                              patch)]


def test_plain_training_patches_are_crops_of_the_store(store):
    """Without augmentation a training patch is a plain crop of a case, target aligned."""
    ds = RandomPatchDataset(store, [0, 1, 2, 3], PATCH, batch_size=3, steps_per_epoch=2,
                            target="labels", augment=None, foreground_fraction=0.5, seed=4)
    images_of = {case: store.read_image(case) for case in range(4)}
    truths_of = {case: store.read_truth(case) for case in range(4)}
    for i in range(2):
        images, targets = ds[i]
        for image, target in zip(images, targets):
            assert image.any()
            found = [(case, corner) for case in range(4)
                     for corner in find_corners(images_of[case], image)]
            assert found, "training patch is not a crop of any case"
            assert any(np.array_equal(target, one_hot(truths_of[case][tuple(
                slice(a, a + m) for a, m in zip(corner, PATCH))])) for case, corner in found)


def test_patch_larger_than_the_case_holds_the_whole_case(store):
    big = (48, 48, 48)  # every case is smaller on every axis (at most 38 x 46 x 39)
    assert all(np.all(np.array(store.case_shape(c)) < 48) for c in range(4))
    ds = RandomPatchDataset(store, [0, 1, 2, 3], big, batch_size=2, steps_per_epoch=3,
                            target="labels", augment=None, foreground_fraction=0.5, seed=2)
    case_counts = {case: (np.count_nonzero(store.read_image(case)),
                          tuple(int((store.read_truth(case) == v).sum()) for v in LABELS))
                   for case in range(4)}
    for i in range(3):
        images, targets = ds[i]
        assert images.shape == (2, *big, 4) and targets.shape == (2, *big, 3)
        for image, target in zip(images, targets):
            counts = (np.count_nonzero(image), tuple(int(n) for n in target.sum(axis=(0, 1, 2))))
            assert counts in case_counts.values()


def test_label_targets_are_consistent_with_region_targets(paper):
    regions, _ = paper(target="regions", augment=AugmentConfig(), seed=5)
    labels, _ = paper(target="labels", augment=AugmentConfig(), seed=5)
    for i in range(len(regions)):
        ri, rt = regions[i]
        li, lt = labels[i]
        np.testing.assert_array_equal(ri, li)
        assert lt.shape == (2, *PATCH, 3) and lt.sum(axis=-1).max() <= 1
        ncr, ed, et = lt[..., 0], lt[..., 1], lt[..., 2]
        np.testing.assert_array_equal(rt[..., 0], ncr | ed | et)
        np.testing.assert_array_equal(rt[..., 1], ncr | et)
        np.testing.assert_array_equal(rt[..., 2], et)


def test_paper_validation_patches_read_background_outside_the_case(paper, store):
    _, valid = paper()
    samples = valid.samples
    for i in range(len(valid)):
        images, _ = valid[i]
        for k, (case, corner) in enumerate(samples[i * 2:(i + 1) * 2]):
            expected, _ = store.read_patch(case, corner, PATCH)
            np.testing.assert_array_equal(images[k], expected)


def test_augmented_random_patches_keep_targets_aligned(painted_store):
    config = AugmentConfig(p_rotation=1, p_scaling=1, p_elastic=1, p_gamma=0, p_brightness=0,
                           p_noise=0)
    ds = RandomPatchDataset(painted_store, [0, 1, 2], (24, 24, 24), batch_size=3,
                            steps_per_epoch=4, augment=config, foreground_fraction=0.7, seed=3)
    assert ds.labels == (1, 2, 4)
    plain = RandomPatchDataset(painted_store, [0, 1, 2], (24, 24, 24), batch_size=3,
                               steps_per_epoch=4, augment=None, foreground_fraction=0.7, seed=3)
    foreground = 0
    for i in range(len(ds)):
        images, targets = ds[i]
        assert_regions_painted(images, targets)
        foreground += int(targets[..., 0].any(axis=(1, 2, 3)).sum())
        plain_images, plain_targets = plain[i]
        assert_regions_painted(plain_images, plain_targets, min_agreement=1.0)  # exact on the grid
    assert foreground >= 6


def test_augmented_legacy_patches_keep_targets_aligned(painted_store):
    ds = PatchListDataset(painted_store, [0, 1, 2], batch_size=4, target="regions",
                          patch_shape=(16, 16, 16), augment=True, augment_distortion_factor=0.2,
                          permute=True, seed=1)
    for i in range(min(len(ds), 4)):
        images, targets = ds[i]
        assert_regions_painted(images, targets)


def test_unlabelled_store_cannot_train(cases, tmp_path):
    path = tmp_path / "unlabelled.h5"
    write_data_to_file([c.files()[:4] for c in cases], path, with_truth=False)
    with pytest.raises(InputError, match="no labels"):
        RandomPatchDataset(path, [0, 1], PATCH, steps_per_epoch=1)
    with pytest.raises(InputError, match="no labels"):
        PatchListDataset(path, [0, 1], patch_shape=PATCH)
    with pytest.raises(InputError, match="no labels"):
        get_training_and_validation_datasets(path, *keys(tmp_path), patch_shape=PATCH)
    with pytest.raises(InputError, match="no labels"):
        get_training_and_validation_generators(path, 1, 3, *keys(tmp_path, "b"), patch_shape=PATCH)


def test_random_dataset_bad_arguments(store):
    with pytest.raises(InputError):
        RandomPatchDataset(store, [], PATCH)
    with pytest.raises(InputError):
        RandomPatchDataset(store, [0], PATCH, steps_per_epoch=0)
    with pytest.raises(InputError):
        RandomPatchDataset(store, [0], PATCH, foreground_fraction=1.5)
    with pytest.raises(InputError):
        RandomPatchDataset(store, [0], (16, 16))
    with pytest.raises(InputError):
        RandomPatchDataset(store, [0], PATCH, target="onehot")


# --------------------------------------------------------------------------- Keras

class PidRecordingDataset(RandomPatchDataset):
    """Appends the pid of the process that builds each batch to `pid_file`."""

    pid_file = None

    def __getitem__(self, index):
        with open(self.pid_file, "a") as f:
            f.write(f"{os.getpid()}\n")
        return super().__getitem__(index)


def test_multiprocess_loading_matches_single_process(store_path, tmp_path):
    from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter

    common = dict(patch_shape=PATCH, batch_size=2, steps_per_epoch=6, seed=9)
    parallel = PidRecordingDataset(store_path, [0, 1, 2, 3], workers=4, **common)
    parallel.pid_file = tmp_path / "pids.txt"
    assert parallel.use_multiprocessing and parallel.workers == 4
    adapter = PyDatasetAdapter(parallel)
    for epoch in range(2):
        reference = RandomPatchDataset(DataStore(store_path), [0, 1, 2, 3], workers=1, **common)
        reference.epoch = epoch
        expected = [reference[i] for i in range(len(reference))]
        adapter.on_epoch_begin()
        got = []
        for batch in adapter.get_numpy_iterator():
            got.append(batch)
            if len(got) == len(parallel):
                break
        adapter.on_epoch_end()
        assert len(got) == len(expected) == 6
        for (gi, gt), (ei, et) in zip(got, expected):
            assert np.array_equal(gi, ei) and np.array_equal(gt, et)
        assert parallel.epoch == epoch + 1
    # the two epochs differ
    assert not np.array_equal(expected[0][0], RandomPatchDataset(store_path, [0, 1, 2, 3],
                                                                 **common)[0][0])
    # the batches were built in worker processes, not here
    pids = set(parallel.pid_file.read_text().split())
    assert str(os.getpid()) not in pids and len(pids) > 1


def test_model_fit_runs_on_the_datasets(paper):
    import keras

    train, valid = paper(steps_per_epoch=2, batch_size=2)
    inputs = keras.Input((*PATCH, 4))
    model = keras.Model(inputs, keras.layers.Conv3D(3, 1, activation="sigmoid")(inputs))
    model.compile(optimizer="adam", loss="binary_crossentropy")
    history = model.fit(train, epochs=2, verbose=0)
    assert len(history.history["loss"]) == 2 and np.all(np.isfinite(history.history["loss"]))
    # Keras calls on_epoch_end once per epoch (the TF trainer also once before the first epoch)
    assert train.epoch in (2, 3)
    history = model.fit(train, validation_data=valid, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0]) and np.isfinite(history.history["val_loss"][0])


def test_the_grids_last_batch_is_cut_to_a_multiple_of_the_replicas(painted_store):
    # three whole 40^3 cases in batches of 4: one batch of 3, which 2 replicas cannot split
    whole = dict(batch_size=4, target="regions", skip_blank=False, shuffle=False)
    plain = PatchListDataset(painted_store, [0, 1, 2], **whole)
    cut = PatchListDataset(painted_store, [0, 1, 2], batch_multiple=2, **whole)
    assert [len(plain[i][0]) for i in range(len(plain))] == [3]
    assert [len(cut[i][0]) for i in range(len(cut))] == [2]
    np.testing.assert_array_equal(cut[0][0], plain[0][0][:2])  # the same samples, one left out
    two = PatchListDataset(painted_store, [0, 1], batch_multiple=2, **whole)
    assert [len(two[i][0]) for i in range(len(two))] == [2]  # nothing to cut
    with pytest.raises(InputError, match="not a multiple of 4"):
        PatchListDataset(painted_store, [0, 1, 2], batch_size=2, batch_multiple=4)
