"""Training and validation batches from a data store, as `keras.utils.PyDataset`s for `model.fit`.

Two recipes:

- the legacy port's (`get_training_and_validation_generators`): a list of (case, patch corner)
  per epoch, shuffled and consumed in batches (the last one partial); whole images when
  `patch_shape` is None; optional random start offsets, blank-patch skipping, scale/flip
  augmentation and the 48 permutations; raw-label target channels.
- the paper / nnU-Net recipe (`get_training_and_validation_datasets`): `steps_per_epoch` batches of
  random patches, a third centred on a tumour voxel, the full spatial and intensity augmentation,
  nested-region targets WT/TC/ET; validation on a fixed grid of patches, each seen once per epoch.

Batches are (images float32 (batch, x, y, z, channels), targets uint8 (batch, x, y, z, n)),
channels-last. Batch `i` of epoch `e` is drawn from a generator seeded with (seed, e, i), so the
data depend only on the seed and the epoch, not on the number of workers or on timing; set
`dataset.epoch` to resume at an epoch. With `workers >= 1` Keras runs `__getitem__` in worker
processes; each opens its own store handle (`DataStore`), so no HDF5 handle crosses a fork.
"""

from __future__ import annotations

import functools
import math
import os
from multiprocessing import resource_tracker, shared_memory
from typing import Sequence

import keras
import numpy as np

from unet3d.augment import (AugmentConfig, augment_data, augment_intensities, extract_patch,
                            mirror, permute_data, random_permutation_key,
                            sample_spatial_transform)
from unet3d.config import PAPER
from unet3d.data import DataFile, open_store
from unet3d.errors import InputError
from unet3d.conventions import DEFAULT_CONVENTION, ConventionLike, as_convention
from unet3d.labels import encode_targets
from unet3d.labels import get_multi_class_labels  # noqa: F401 - the port's name
from unet3d.logs import get_logger
from unet3d.splits import get_validation_split
from unet3d.utils.patches import (compute_patch_indices, edge_pad_region, foreground_locations,
                                  get_patch_from_3d_data, patch_region, random_patch_corner)


def _from_shared_memory(name: str, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """Unpickling side of `_SharedArray`: copy the array out and free the block."""
    block = shared_memory.SharedMemory(name=name)
    try:
        return np.ndarray(shape, dtype, buffer=block.buf).copy()
    finally:
        block.close()
        block.unlink()


class _SharedArray:
    """An array a worker process hands to the training process through shared memory: pickling
    sends only the block's name, instead of pushing ~80 MB per batch through a pipe.

    Blocks are registered with the resource tracker the training process started before the
    workers (one tracker for all), so blocks of a crashed run are removed when it ends.
    """

    def __init__(self, array: np.ndarray):
        self.block = shared_memory.SharedMemory(create=True, size=max(array.nbytes, 1))
        np.ndarray(array.shape, array.dtype, buffer=self.block.buf)[...] = array
        self.shape, self.dtype = array.shape, array.dtype.str

    def __reduce__(self):
        return _from_shared_memory, (self.block.name, self.shape, self.dtype)

    def __del__(self) -> None:
        self.block.close()


def get_number_of_steps(n_samples: int, batch_size: int) -> int:
    """Batches needed to see `n_samples` once: ceil(n_samples / batch_size); 0 samples is an error."""
    if batch_size < 1:
        raise InputError(f"batch size {batch_size}: need at least 1")
    if n_samples < 1:
        raise InputError("no samples to train on (0 steps): the store is empty, the split left "
                         "no case here, or every patch is blank (skip_blank); check the store "
                         "and the keys files, or pass skip_blank=False")
    return math.ceil(n_samples / batch_size)


class _StoreDataset(keras.utils.PyDataset):
    """Batches from a store; subclasses define `__len__` and `_sample(index, rng)` per epoch."""

    def __init__(self, data_file: DataFile, case_indices: Sequence[int], batch_size: int,
                 target: str, labels: ConventionLike | None, seed: int, workers: int,
                 max_queue_size: int):
        super().__init__(workers=max(int(workers), 1), use_multiprocessing=workers > 0,
                         max_queue_size=max_queue_size)
        self.store = open_store(data_file)
        if not self.store.has_truth:
            raise InputError(f"{self.store.path}: this store has no labels; training and "
                             "validation need a store written with label files")
        self.case_indices = [int(c) for c in case_indices]
        bad = [c for c in self.case_indices if not 0 <= c < self.store.n_cases]
        if bad:
            raise InputError(f"{self.store.path}: case indices {bad[:5]} out of range "
                             f"(the store has {self.store.n_cases} cases)")
        if batch_size < 1:
            raise InputError(f"batch size {batch_size}: need at least 1")
        self.batch_size = int(batch_size)
        self.convention = as_convention(labels if labels is not None else
                                        (self.store.convention or DEFAULT_CONVENTION))
        self.labels = self.convention.values
        encode_targets(np.zeros((1, 1, 1), np.uint8), target, self.convention)  # checks target
        self.target = target
        self.seed = int(seed)
        self._epoch = 0
        self._owner = os.getpid()
        if self.use_multiprocessing:
            resource_tracker.ensure_running()  # shared with the workers (see _SharedArray)

    @property
    def epoch(self) -> int:
        """The epoch the batches are drawn for (counts from 0; set it to resume)."""
        return self._epoch

    @epoch.setter
    def epoch(self, value: int) -> None:
        if int(value) != self._epoch:
            self._epoch = int(value)
            self._start_epoch()

    def _start_epoch(self) -> None:
        """Prepare the epoch (in the main process, before Keras forks workers)."""

    def on_epoch_end(self) -> None:
        self.epoch = self._epoch + 1

    def _rng(self, *key: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self._epoch, *key])

    def _check_index(self, index: int) -> None:
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} out of range ({len(self)} per epoch)")

    def _batch(self, samples: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
        images = np.stack([image for image, _ in samples])
        targets = np.stack([encode_targets(truth, self.target, self.convention)
                            for _, truth in samples])
        if os.getpid() != self._owner and self.use_multiprocessing:
            return _SharedArray(images), _SharedArray(targets)  # arrive as arrays
        return images, targets


class PatchListDataset(_StoreDataset):
    """The legacy port's generator: every (case, patch) of the list once per epoch.

    Args:
        data_file: store path or `DataStore`.
        case_indices: cases to draw from.
        batch_size: samples per batch; the last batch of an epoch may be smaller.
        target: "labels" (one channel per label value, the port) or "regions" (the
            convention's, e.g. WT/TC/ET).
        labels: the truths' convention (a name, or the label values; default: the store's).
        patch_shape: (x, y, z) patch, or None for whole cases (they must then share one shape
            when batch_size > 1).
        patch_overlap: overlap of the patch grid (int or 3 ints).
        patch_start_offset: if set, each epoch the grid starts at a random negative offset of up
            to this many voxels per axis (the port's training_patch_start_offset).
        shuffle: shuffle the list each epoch.
        skip_blank: leave out samples whose truth is all zero (checked before augmentation).
        augment, augment_flip, augment_distortion_factor: the port's `augment_data`.
        permute: apply one of the 48 cube permutations at random (cubic patches only).
        padding: what a patch reaching past the case holds there: "edge" (the nearest voxel, the
            port) or "zero" (background, as the paper recipe's training patches).
        seed: seeds the offsets, shuffling and augmentation.
        workers: worker processes producing batches (0: in the training process).
        batch_multiple: every batch holds a multiple of this many samples (the replicas of a
            distributed run, which split each batch evenly): the last batch of an epoch is cut
            to a multiple, its remainder left out of the epoch.

    The number of batches is fixed at construction (from epoch 0's list); with random offsets a
    later epoch's list may be longer or shorter and is cut or repeated to the same length.
    """

    def __init__(self, data_file: DataFile, case_indices: Sequence[int], batch_size: int = 1,
                 target: str = "labels", labels: ConventionLike | None = None,
                 patch_shape: Sequence[int] | None = None, patch_overlap: int | Sequence[int] = 0,
                 patch_start_offset: Sequence[int] | None = None, shuffle: bool = True,
                 skip_blank: bool = True, augment: bool = False, augment_flip: bool = True,
                 augment_distortion_factor: float | None = 0.25, permute: bool = False,
                 padding: str = "edge", seed: int = 0, workers: int = 0,
                 max_queue_size: int = 10, batch_multiple: int = 1):
        super().__init__(data_file, case_indices, batch_size, target, labels, seed, workers,
                         max_queue_size)
        if batch_size % batch_multiple:
            raise InputError(f"batch size {batch_size} is not a multiple of {batch_multiple} "
                             "(the replicas)")
        self.patch_shape = None if patch_shape is None else tuple(int(n) for n in patch_shape)
        self.patch_overlap = patch_overlap
        self.patch_start_offset = (None if patch_start_offset is None or self.patch_shape is None
                                   else np.broadcast_to(patch_start_offset, 3).astype(int))
        self.shuffle, self.skip_blank = shuffle, skip_blank
        self.augment, self.augment_flip = augment, augment_flip
        self.augment_distortion_factor = augment_distortion_factor
        self.permute = permute
        if padding not in ("edge", "zero"):
            raise InputError(f"padding {padding!r}: use 'edge' or 'zero'")
        self.padding = padding
        self._check_shapes()
        self._fixed = None if self.patch_start_offset is not None else self._list_samples(None)
        self._samples = self._epoch_samples()
        # fixed: Keras reads the length once; a last batch cut to a multiple of batch_multiple
        self._n_samples = len(self._samples) - len(self._samples) % batch_size % batch_multiple
        get_number_of_steps(self._n_samples, self.batch_size)  # 0 samples: a clear error

    def _check_shapes(self) -> None:
        shapes = {self.store.case_shape(c) for c in self.case_indices}
        sample_shapes = {self.patch_shape} if self.patch_shape else shapes
        if self.patch_shape is None and self.batch_size > 1 and len(shapes) > 1:
            raise InputError(f"{self.store.path}: cases have different shapes {sorted(shapes)[:3]}"
                             "...; whole-image batches need one shape: give a patch shape, use "
                             "batch size 1, or write the store with --image_shape")
        if self.permute and any(len(set(s)) != 1 for s in sample_shapes):
            raise InputError(f"permute needs cubic samples, got {sorted(sample_shapes)[:3]}; "
                             "use a cubic patch shape or turn permutation off")

    def _list_samples(self, rng: np.random.Generator | None) -> list[tuple[int, tuple | None]]:
        """(case, corner) of every patch of every case, blank ones left out if `skip_blank`;
        `rng` draws the random start offsets (None: the centred grid)."""
        samples = []
        for case in self.case_indices:
            if self.patch_shape is None:
                corners = [None]
            else:
                start = (None if rng is None else
                         -np.array([rng.integers(0, m + 1) for m in self.patch_start_offset]))
                corners = [tuple(int(v) for v in corner) for corner in compute_patch_indices(
                    self.store.case_shape(case), self.patch_shape, self.patch_overlap, start)]
            truth = self.store.read_truth(case) if self.skip_blank else None
            for corner in corners:
                if truth is None or self._crop(truth, corner).any():
                    samples.append((case, corner))
        return samples

    def _crop(self, array: np.ndarray, corner: tuple[int, int, int] | None) -> np.ndarray:
        """The sample at `corner` of a whole case `array` (None: all of it), padded as set."""
        if corner is None:
            return array
        if self.padding == "edge":
            return get_patch_from_3d_data(array, self.patch_shape, corner)
        inside = tuple(slice(max(c, 0), max(c + p, 0)) for c, p in zip(corner, self.patch_shape))
        return array[inside]  # the zero padding adds nothing to a blank test

    def _epoch_samples(self) -> list[tuple[int, tuple | None]]:
        rng = self._rng()
        samples = self._fixed if self._fixed is not None else self._list_samples(rng)
        if self.shuffle:
            samples = [samples[k] for k in rng.permutation(len(samples))]
        return samples

    def _start_epoch(self) -> None:
        samples = self._epoch_samples()
        if not samples:
            raise InputError(f"{self.store.path}: epoch {self.epoch} has no non-blank patch")
        self._samples = [samples[k % len(samples)] for k in range(self._n_samples)]

    def __len__(self) -> int:
        return math.ceil(self._n_samples / self.batch_size)

    @property
    def samples(self) -> list[tuple[int, tuple[int, int, int] | None]]:
        """This epoch's (case index, patch corner or None) list, in order."""
        return list(self._samples)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        self._check_index(index)
        chunk = self._samples[index * self.batch_size:
                              min((index + 1) * self.batch_size, self._n_samples)]
        return self._batch([self._sample(case, corner, self._rng(index, k))
                            for k, (case, corner) in enumerate(chunk)])

    def _sample(self, case: int, corner, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        if corner is None:
            image, truth = self.store.read_image(case), self.store.read_truth(case)
        elif self.padding == "zero":
            image, truth = self.store.read_patch(case, corner, self.patch_shape)
        else:  # read only the covered part, edge-padded as get_patch_from_3d_data would
            first, last = patch_region(corner, self.patch_shape, self.store.case_shape(case))
            image, truth = self.store.read_patch(case, first, last - first)
            image = edge_pad_region(image, first, corner, self.patch_shape)
            truth = edge_pad_region(truth, first, corner, self.patch_shape)
        if self.augment:
            image, truth = augment_data(image, truth, self.augment_distortion_factor,
                                        self.augment_flip, rng)
        if self.permute:
            key = random_permutation_key(rng)
            image, truth = permute_data(image, key), permute_data(truth, key)
        return image, truth


class RandomPatchDataset(_StoreDataset):
    """The paper / nnU-Net training data: `steps_per_epoch` batches of random patches.

    Each sample picks a case uniformly, and with probability `foreground_fraction` centres the
    patch on a voxel of a label drawn uniformly among the labels the case has (else a uniform
    position), then applies `augment` (None: plain crops). Positions are indexed once from each
    case's truth (at most 10,000 per label).

    Args:
        data_file: store path or `DataStore`.
        case_indices: cases to draw from.
        patch_shape: (x, y, z); default the paper's (`unet3d.config.PAPER`), as the next two.
        batch_size: patches per batch.
        steps_per_epoch: batches per epoch.
        target: "regions" (the convention's, e.g. WT/TC/ET; default) or "labels".
        labels: the truths' convention (a name, or the label values; default: the store's).
        augment: `AugmentConfig` or None.
        foreground_fraction: probability of a tumour-centred patch (default 1/3).
        seed: seeds every draw.
        workers: worker processes producing batches (0: in the training process).
    """

    def __init__(self, data_file: DataFile, case_indices: Sequence[int],
                 patch_shape: Sequence[int] = PAPER.patch_shape,
                 batch_size: int = PAPER.batch_size,
                 steps_per_epoch: int = PAPER.steps_per_epoch, target: str = PAPER.target,
                 labels: ConventionLike | None = None,
                 augment: AugmentConfig | None = AugmentConfig(),
                 foreground_fraction: float = 1 / 3, seed: int = 0, workers: int = 0,
                 max_queue_size: int = 10):
        super().__init__(data_file, case_indices, batch_size, target, labels, seed, workers,
                         max_queue_size)
        if not self.case_indices:
            raise InputError(f"{self.store.path}: no training cases (0 steps); check the split")
        if steps_per_epoch < 1:
            raise InputError(f"steps_per_epoch={steps_per_epoch}: need at least 1")
        if not 0 <= foreground_fraction <= 1:
            raise InputError(f"foreground_fraction={foreground_fraction}: a probability in [0, 1]")
        self.patch_shape = tuple(int(n) for n in patch_shape)
        if len(self.patch_shape) != 3 or min(self.patch_shape) < 1:
            raise InputError(f"patch shape {patch_shape}: need 3 positive sizes")
        self.steps_per_epoch = int(steps_per_epoch)
        self.augment = augment
        self.foreground_fraction = float(foreground_fraction)
        get_logger().info("indexing tumour voxels of %d cases", len(self.case_indices))
        self.locations = {case: foreground_locations(self.store.read_truth(case), self.labels,
                                                     rng=np.random.default_rng([self.seed, case]))
                          for case in self.case_indices}

    def __len__(self) -> int:
        return self.steps_per_epoch

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        self._check_index(index)
        rng = self._rng(index)
        return self._batch([self._sample(rng) for _ in range(self.batch_size)])

    def _sample(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        case = self.case_indices[int(rng.integers(len(self.case_indices)))]
        shape = self.store.case_shape(case)
        oversample = rng.random() < self.foreground_fraction
        corner = random_patch_corner(rng, shape, self.patch_shape,
                                     self.locations[case] if oversample else None)
        centre = corner + (np.array(self.patch_shape) - 1) / 2
        config = self.augment
        transform = sample_spatial_transform(rng, config, self.patch_shape) if config else None
        image, truth = extract_patch(functools.partial(self.store.read_patch, case), shape, centre,
                                     self.patch_shape, transform)
        if config is not None:
            image, truth = mirror(rng, config.mirror_axes, image, truth)
            augment_intensities(rng, image, config)
        return image, truth


def get_training_and_validation_generators(
        data_file: DataFile, batch_size: int, n_labels: int,
        training_keys_file: str | os.PathLike, validation_keys_file: str | os.PathLike,
        data_split: float = PAPER.data_split, overwrite: bool = False,
        labels: Sequence[int] | None = None,
        augment: bool = False, augment_flip: bool = True,
        augment_distortion_factor: float | None = 0.25, patch_shape: Sequence[int] | None = None,
        validation_patch_overlap: int = 0,
        training_patch_start_offset: Sequence[int] | None = None,
        validation_batch_size: int | None = None, skip_blank: bool = True, permute: bool = False,
        seed: int = 0, workers: int = 0
) -> tuple[PatchListDataset, PatchListDataset, int, int]:
    """The legacy port's data: (training, validation, n_training_steps, n_validation_steps).

    Both datasets go straight to `model.fit(training, validation_data=validation, ...)`. Targets
    are one channel per label (`labels`, default 1..n_labels), channels-last. Validation batches
    are neither shuffled, offset nor augmented; every validation sample is seen once per epoch.
    """
    store = open_store(data_file)
    labels = tuple(range(1, n_labels + 1)) if labels is None else as_convention(labels).values
    if len(labels) != n_labels:
        raise InputError(f"n_labels={n_labels} but labels={labels}")
    training, validation = get_validation_split(store, training_keys_file, validation_keys_file,
                                                data_split, overwrite, seed)
    common = dict(target="labels", labels=labels, patch_shape=patch_shape, skip_blank=skip_blank,
                  seed=seed, workers=workers)
    train = PatchListDataset(store, training, batch_size, patch_start_offset=training_patch_start_offset,
                             augment=augment, augment_flip=augment_flip,
                             augment_distortion_factor=augment_distortion_factor, permute=permute,
                             **common)
    valid = PatchListDataset(store, validation, validation_batch_size or batch_size,
                             patch_overlap=validation_patch_overlap, shuffle=False, **common)
    return train, valid, len(train), len(valid)


def get_training_and_validation_datasets(
        data_file: DataFile, training_keys_file: str | os.PathLike,
        validation_keys_file: str | os.PathLike, patch_shape: Sequence[int] = PAPER.patch_shape,
        batch_size: int = PAPER.batch_size, steps_per_epoch: int = PAPER.steps_per_epoch,
        validation_batch_size: int | None = None, data_split: float = PAPER.data_split,
        overwrite: bool = False, target: str = PAPER.target,
        labels: ConventionLike | None = None, augment: AugmentConfig | None = AugmentConfig(),
        foreground_fraction: float = 1 / 3, seed: int = 0, workers: int = 0
) -> tuple[RandomPatchDataset, PatchListDataset]:
    """The paper recipe's data: (training `RandomPatchDataset`, validation `PatchListDataset`).

    Validation covers each validation case with a non-overlapping grid of `patch_shape` patches
    (blank ones included, so Dice sees the empty regions too), each once per epoch.
    """
    store = open_store(data_file)
    training, validation = get_validation_split(store, training_keys_file, validation_keys_file,
                                                data_split, overwrite, seed)
    train = RandomPatchDataset(store, training, patch_shape, batch_size, steps_per_epoch, target,
                               labels, augment, foreground_fraction, seed, workers)
    valid = PatchListDataset(store, validation, validation_batch_size or batch_size, target,
                             labels, patch_shape, shuffle=False, skip_blank=False, padding="zero",
                             seed=seed, workers=workers)
    return train, valid
