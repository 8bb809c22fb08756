"""Augmentation: cube permutations, interpolation, spatial transforms, intensities, mirroring.

Expectations come from independent computations: numpy transposes/flips/rot90, scipy.ndimage,
analytic sphere volumes, and invariants (exact inversion, label/image alignment).
"""

import itertools

import numpy as np
import pytest
from scipy import ndimage

from unet3d.augment import (AugmentConfig, SpatialTransform, augment_data, augment_intensities,
                            elastic_displacement, extract_patch, generate_permutation_keys,
                            interpolate, mirror, permute_data, random_permutation_key,
                            reverse_permute_data, sample_spatial_transform)
from unet3d.errors import InputError

NO_AUGMENT = dict(p_rotation=0.0, p_scaling=0.0, p_elastic=0.0, p_gamma=0.0, p_brightness=0.0,
                  p_noise=0.0)


# --------------------------------------------------------------------------- helpers

def region_reader(image, label=None):
    """read_region(corner, shape) over numpy arrays, zero outside (independent of DataStore)."""
    def read(corner, shape):
        corner, shape = np.asarray(corner, int), np.asarray(shape, int)
        out = np.zeros((*shape, image.shape[-1]), dtype=np.float32)
        out_label = None if label is None else np.zeros(tuple(shape), dtype=label.dtype)
        lo = np.maximum(corner, 0)
        hi = np.minimum(corner + shape, image.shape[:3])
        if np.all(hi > lo):
            src = tuple(slice(l, h) for l, h in zip(lo, hi))
            dst = tuple(slice(l - c, h - c) for l, h, c in zip(lo, hi, corner))
            out[dst] = image[src]
            if label is not None:
                out_label[dst] = label[src]
        return out, out_label
    return read


def smooth_volume(shape=(48, 48, 48), channels=2, seed=0):
    """A smooth random image (sum of Gaussian blobs) in [0, ~1], float32 (x, y, z, C)."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    image = np.zeros((*shape, channels), dtype=np.float64)
    for c in range(channels):
        for _ in range(4):
            centre = rng.uniform(0.3, 0.7, 3) * np.array(shape)
            width = rng.uniform(5, 9)
            image[..., c] += np.exp(-np.sum((grid - centre) ** 2, axis=-1) / (2 * width ** 2))
    return (image / image.max()).astype(np.float32)


def sphere(shape, centre, radius):
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    return (np.sum((grid - np.asarray(centre)) ** 2, axis=-1) <= radius ** 2).astype(np.uint8)


def grid_coords(matrix, centre, patch_shape):
    """centre + matrix @ (o - (patch_shape - 1) / 2), written independently of the library."""
    offsets = np.stack(np.meshgrid(*[np.arange(n) - (n - 1) / 2 for n in patch_shape],
                                   indexing="ij"))
    return np.einsum("ij,j...->i...", matrix, offsets) + np.asarray(centre)[:, None, None, None]


def cube_group(x):
    """The 48 symmetries of a cube: every axis permutation times every set of flips."""
    out = []
    for perm in itertools.permutations(range(3)):
        for flips in itertools.product([False, True], repeat=3):
            y = np.transpose(x, (*perm, *range(3, x.ndim)))
            axes = tuple(a for a in range(3) if flips[a])
            out.append(np.ascontiguousarray(np.flip(y, axes) if axes else y))
    return out


# --------------------------------------------------------------------------- permutations

def test_48_permutation_keys():
    keys = generate_permutation_keys()
    assert len(keys) == 48
    for key in keys:
        (ry, rz), fx, fy, fz, t = key
        assert {ry, rz, fx, fy, fz, t} <= {0, 1}


def test_permutations_are_the_full_cube_symmetry_group():
    x = np.random.default_rng(0).random((5, 5, 5))
    outputs = [permute_data(x, key) for key in generate_permutation_keys()]
    as_bytes = {o.tobytes() for o in outputs}
    assert len(as_bytes) == 48  # 48 distinct arrays
    expected = {g.tobytes() for g in cube_group(x)}
    assert len(expected) == 48
    assert as_bytes == expected
    for o in outputs:
        assert o.shape == x.shape and o.flags.c_contiguous


@pytest.mark.parametrize("shape", [(6, 6, 6), (6, 6, 6, 3)])
def test_reverse_permutation_is_exact(shape):
    x = np.random.default_rng(1).random(shape).astype(np.float32)
    for key in generate_permutation_keys():
        y = permute_data(x, key)
        assert y.shape == x.shape
        assert np.array_equal(reverse_permute_data(y, key), x)


def test_permutation_keeps_channel_axis_and_labels_aligned():
    x = np.random.default_rng(2).random((4, 4, 4, 3))
    for key in generate_permutation_keys():
        y = permute_data(x, key)
        for c in range(3):  # each channel is permuted as a plain 3D volume would be
            assert np.array_equal(y[..., c], permute_data(x[..., c], key))


def test_permutation_of_non_cube_raises():
    with pytest.raises(InputError):
        permute_data(np.zeros((4, 4, 5)), random_permutation_key(np.random.default_rng(0)))
    with pytest.raises(InputError):
        reverse_permute_data(np.zeros((4, 5, 4, 2)), ((0, 0), 0, 0, 0, 0))


def test_random_permutation_key_seeded():
    a = [random_permutation_key(np.random.default_rng(s)) for s in range(30)]
    b = [random_permutation_key(np.random.default_rng(s)) for s in range(30)]
    assert a == b
    assert set(a) <= generate_permutation_keys()
    assert len(set(a)) > 5  # not constant
    rng = np.random.default_rng(123)
    drawn = {random_permutation_key(rng) for _ in range(2000)}
    assert drawn == generate_permutation_keys()  # every key is reachable


# --------------------------------------------------------------------------- interpolation

def test_interpolate_integer_coordinates_is_exact():
    rng = np.random.default_rng(3)
    volume = rng.normal(size=(7, 8, 9, 2)).astype(np.float32)
    label = rng.integers(0, 5, size=(7, 8, 9)).astype(np.uint8)
    coords = np.stack([rng.integers(0, n, size=(4, 5, 6)) for n in (7, 8, 9)]).astype(np.float32)
    out, out_label = interpolate(volume, coords, label)
    idx = tuple(coords.astype(int))
    assert out.dtype == np.float32 and out.shape == (4, 5, 6, 2)
    assert out_label.dtype == np.uint8 and out_label.shape == (4, 5, 6)
    assert np.array_equal(out, volume[idx])
    assert np.array_equal(out_label, label[idx])
    out2, none = interpolate(volume, coords)
    assert none is None and np.array_equal(out2, out)


def test_interpolate_matches_scipy_linear_with_zero_padding():
    rng = np.random.default_rng(4)
    shape = (9, 10, 11)
    volume = rng.normal(size=(*shape, 3)).astype(np.float32)
    coords = np.stack([rng.uniform(-2.0, n + 1.0, size=(6, 7, 8)) for n in shape]).astype(np.float32)
    # make sure a good share of points sits in the border band (-1, 0) / (n-1, n)
    coords[0, 0] = rng.uniform(-1, 0, size=(7, 8))
    coords[1, :, 0] = rng.uniform(shape[1] - 1, shape[1], size=(6, 8))
    out, _ = interpolate(volume, coords)
    for c in range(3):
        # "points outside read 0": the volume is extended by zeros and interpolated
        expected = ndimage.map_coordinates(volume[..., c].astype(np.float64), coords, order=1,
                                           mode="grid-constant", cval=0.0)
        np.testing.assert_allclose(out[..., c], expected, atol=1e-5, rtol=1e-5)
    # scipy's "constant" mode agrees wherever it is defined the same way: inside [0, n-1] on
    # every axis, and beyond one voxel outside (where both read 0)
    upper = np.array(shape)[:, None, None, None] - 1
    inside = np.all((coords >= 0) & (coords <= upper), axis=0)
    far = np.any((coords <= -1) | (coords >= upper + 1), axis=0)
    assert inside.sum() > 50 and far.sum() > 50
    for c in range(3):
        constant = ndimage.map_coordinates(volume[..., c].astype(np.float64), coords, order=1,
                                           mode="constant", cval=0.0)
        np.testing.assert_allclose(out[..., c][inside], constant[inside], atol=1e-5)
        np.testing.assert_allclose(out[..., c][far], 0.0, atol=0)


def test_interpolate_label_is_nearest_neighbour():
    rng = np.random.default_rng(5)
    shape = (9, 10, 11)
    volume = np.zeros((*shape, 1), np.float32)
    label = rng.integers(1, 7, size=shape).astype(np.uint8)
    # coordinates away from .5 ties: integer + fraction in [-0.4, 0.4]
    coords = np.stack([rng.integers(-2, n + 2, size=(8, 8, 8)) + rng.uniform(-0.4, 0.4, (8, 8, 8))
                       for n in shape]).astype(np.float32)
    _, out_label = interpolate(volume, coords, label)
    expected = ndimage.map_coordinates(label, coords, order=0, mode="grid-constant", cval=0)
    assert np.array_equal(out_label, expected)
    # independent: round to the nearest voxel, 0 outside
    nearest = np.rint(coords).astype(int)
    ok = np.all((nearest >= 0) & (nearest < np.array(shape)[:, None, None, None]), axis=0)
    manual = np.zeros((8, 8, 8), np.uint8)
    manual[ok] = label[tuple(n[ok] for n in nearest)]
    assert np.array_equal(out_label, manual)
    assert (out_label == 0).sum() > 0 and (out_label > 0).sum() > 100


# --------------------------------------------------------------------------- extract_patch

def test_extract_patch_identity_is_a_crop_with_zero_padding():
    volume = smooth_volume((20, 22, 24), channels=2, seed=1)
    label = (volume[..., 0] > 0.4).astype(np.uint8)
    read = region_reader(volume, label)
    patch = (8, 10, 12)
    padded = np.pad(volume, [(10, 10)] * 3 + [(0, 0)])
    padded_label = np.pad(label, [(10, 10)] * 3)
    for corner in [(0, 0, 0), (5, 3, 7), (-4, 15, 16), (14, -9, 0)]:
        centre = np.array(corner) + (np.array(patch) - 1) / 2
        for transform in (None, SpatialTransform(np.eye(3))):
            image, lab = extract_patch(read, volume.shape[:3], centre, patch, transform)
            sl = tuple(slice(c + 10, c + 10 + p) for c, p in zip(corner, patch))
            assert np.array_equal(image, padded[sl])
            assert np.array_equal(lab, padded_label[sl])


@pytest.mark.parametrize("patch, centre", [((15, 15, 9), (12, 14, 11)),      # odd: integral centre
                                           ((16, 16, 10), (12.5, 13.5, 10.5))])  # even: corner integral
def test_extract_patch_90_degree_rotation_is_rot90(patch, centre):
    volume = smooth_volume((26, 28, 22), channels=2, seed=2)
    label = np.random.default_rng(0).integers(0, 5, volume.shape[:3]).astype(np.uint8)
    read = region_reader(volume, label)
    matrix = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    image, lab = extract_patch(read, volume.shape[:3], centre, patch, SpatialTransform(matrix))
    corner = [int(round(c - (n - 1) / 2)) for c, n in zip(centre, patch)]
    crop = tuple(slice(c, c + n) for c, n in zip(corner, patch))
    # source = centre + M (o - pc): x_src = pc - (o_y - pc), y_src = o_x, i.e.
    # out[i, j] = crop[n - 1 - j, i] = rot90(crop, -1) in the (x, y) plane
    assert np.array_equal(lab, np.rot90(label[crop], -1, axes=(0, 1)))
    np.testing.assert_allclose(image, np.rot90(volume[crop], -1, axes=(0, 1)), atol=1e-6)


@pytest.mark.parametrize("seed", range(4))
def test_extract_patch_matches_full_volume_resampling_near_the_border(seed):
    """Only part of the volume is read; the result must equal resampling the whole volume."""
    rng = np.random.default_rng(seed)
    volume = rng.normal(size=(30, 26, 28, 2)).astype(np.float32)
    label = rng.integers(0, 4, volume.shape[:3]).astype(np.uint8)
    config = AugmentConfig(p_rotation=1, p_scaling=1, p_elastic=0, max_rotation_degrees=40)
    patch = (16, 18, 14)
    transform = sample_spatial_transform(rng, config, patch)
    centre = rng.uniform(-2, 6, 3) if seed % 2 else np.array(volume.shape[:3]) - rng.uniform(0, 6, 3)
    image, lab = extract_patch(region_reader(volume, label), volume.shape[:3], centre, patch,
                               transform)
    coords = grid_coords(transform.matrix, centre, patch).astype(np.float32)
    for c in range(2):
        expected = ndimage.map_coordinates(volume[..., c].astype(np.float64), coords, order=1,
                                           mode="grid-constant", cval=0.0)
        np.testing.assert_allclose(image[..., c], expected, atol=2e-4)
    frac = coords - np.floor(coords)
    no_tie = np.all(np.abs(frac - 0.5) > 1e-3, axis=0)
    expected_label = ndimage.map_coordinates(label, coords, order=0, mode="grid-constant", cval=0)
    assert np.array_equal(lab[no_tie], expected_label[no_tie])
    assert (image != 0).any() and (image == 0).any()  # the patch does cross the border


def test_extract_patch_wholly_outside_reads_zero():
    volume = smooth_volume((16, 16, 16), channels=1, seed=3) + 1
    label = np.ones((16, 16, 16), np.uint8)
    transform = SpatialTransform(np.diag([1.0, -1.0, 1.0]))
    image, lab = extract_patch(region_reader(volume, label), (16, 16, 16), (60.0, 8.0, 8.0),
                               (8, 8, 8), transform)
    assert image.shape == (8, 8, 8, 1) and lab.shape == (8, 8, 8)
    assert not image.any() and not lab.any()


# --------------------------------------------------------------------------- spatial transforms

@pytest.mark.parametrize("seed", range(5))
def test_label_stays_aligned_with_image_under_full_spatial_augmentation(seed):
    volume = smooth_volume((48, 48, 48), channels=2, seed=10 + seed)
    threshold = 0.45
    label = (volume[..., 0] > threshold).astype(np.uint8)
    rng = np.random.default_rng(seed)
    config = AugmentConfig(p_rotation=1, p_scaling=1, p_elastic=1, elastic_magnitude=(2.0, 4.0))
    patch = (32, 32, 32)
    transform = sample_spatial_transform(rng, config, patch)
    assert transform.displacement is not None and not transform.is_identity
    image, lab = extract_patch(region_reader(volume, label), volume.shape[:3], (23.5, 23.5, 23.5),
                               patch, transform)
    painted = image[..., 0] > threshold
    assert 0.03 < lab.mean() < 0.97  # the patch holds both object and background
    agreement = np.mean(painted == lab.astype(bool))
    assert agreement >= 0.97, agreement
    # a one-voxel misalignment along any axis would be much worse
    shifted = np.mean(np.roll(painted, 2, axis=seed % 3) == lab.astype(bool))
    assert shifted < agreement


@pytest.mark.parametrize("seed", range(4))
def test_rotation_preserves_label_volume(seed):
    shape = (48, 48, 48)
    label = sphere(shape, (23.5, 23.5, 23.5), 11)
    volume = label[..., None].astype(np.float32)
    rng = np.random.default_rng(seed)
    config = AugmentConfig(**{**NO_AUGMENT, "p_rotation": 1.0, "max_rotation_degrees": 45.0})
    transform = sample_spatial_transform(rng, config, (40, 40, 40))
    assert transform.displacement is None
    np.testing.assert_allclose(transform.matrix @ transform.matrix.T, np.eye(3), atol=1e-12)
    assert not np.allclose(transform.matrix, np.eye(3), atol=0.05)
    _, lab = extract_patch(region_reader(volume, label), shape, (23.5, 23.5, 23.5), (40, 40, 40),
                           transform)
    assert abs(int(lab.sum()) / int(label.sum()) - 1) < 0.03


@pytest.mark.parametrize("scale", [1.25, 1.5])
def test_fixed_scaling_changes_label_volume_by_inverse_cube(scale):
    shape = (48, 48, 48)
    label = sphere(shape, (23.5, 23.5, 23.5), 10)
    volume = label[..., None].astype(np.float32)
    config = AugmentConfig(**{**NO_AUGMENT, "p_scaling": 1.0, "scale_range": (scale, scale)})
    for seed in range(3):
        transform = sample_spatial_transform(np.random.default_rng(seed), config, (32, 32, 32))
        np.testing.assert_allclose(transform.matrix, np.diag([scale] * 3), rtol=1e-12)
        _, lab = extract_patch(region_reader(volume, label), shape, (23.5, 23.5, 23.5),
                               (32, 32, 32), transform)
        ratio = lab.sum() / label.sum()
        assert abs(ratio * scale ** 3 - 1) < 0.05, ratio


@pytest.mark.parametrize("scale_range", [(0.8, 0.8), (0.7, 0.9)])
def test_scale_range_below_one_is_respected(scale_range):
    config = AugmentConfig(**{**NO_AUGMENT, "p_scaling": 1.0, "scale_range": scale_range})
    for seed in range(6):
        transform = sample_spatial_transform(np.random.default_rng(seed), config, (32, 32, 32))
        scales = np.diag(transform.matrix)
        assert np.all(scales >= scale_range[0] - 1e-12) and np.all(scales <= scale_range[1] + 1e-12)


def test_drawn_scales_stay_inside_a_range_that_straddles_one():
    config = AugmentConfig(**{**NO_AUGMENT, "p_scaling": 1.0, "scale_range": (0.7, 1.4)})
    rng = np.random.default_rng(0)
    scales = np.array([np.diag(sample_spatial_transform(rng, config, (8, 8, 8)).matrix)
                       for _ in range(300)])
    assert scales.min() >= 0.7 and scales.max() <= 1.4
    assert (scales < 1).mean() > 0.3 and (scales > 1).mean() > 0.3
    # per-axis by default: the three factors differ
    assert np.mean(np.ptp(scales, axis=1) > 1e-6) > 0.9
    isotropic = AugmentConfig(**{**NO_AUGMENT, "p_scaling": 1.0, "scale_per_axis": False})
    m = sample_spatial_transform(rng, isotropic, (8, 8, 8)).matrix
    assert m[0, 0] == m[1, 1] == m[2, 2] and m[0, 0] != 1


def test_probability_zero_gives_identity_transform():
    config = AugmentConfig(**NO_AUGMENT)
    for seed in range(5):
        transform = sample_spatial_transform(np.random.default_rng(seed), config, (16, 16, 16))
        assert transform.is_identity


def test_bad_config_raises():
    with pytest.raises(InputError):
        AugmentConfig(p_rotation=1.5)
    with pytest.raises(InputError):
        AugmentConfig(scale_range=(1.2, 0.9))
    with pytest.raises(InputError):
        AugmentConfig(mirror_axes=(3,))


# --------------------------------------------------------------------------- elastic field

def test_elastic_displacement_smooth_deterministic_and_zero_for_zero_magnitude():
    shape = (32, 24, 20)
    a = elastic_displacement(np.random.default_rng(7), shape, 3.0, 8)
    b = elastic_displacement(np.random.default_rng(7), shape, 3.0, 8)
    c = elastic_displacement(np.random.default_rng(8), shape, 3.0, 8)
    assert a.shape == (3, *shape) and a.dtype == np.float32
    assert np.array_equal(a, b) and not np.allclose(a, c)
    zero = elastic_displacement(np.random.default_rng(7), shape, 0.0, 8)
    assert np.array_equal(zero, np.zeros_like(zero))
    # linear in the magnitude (same random control points)
    one = elastic_displacement(np.random.default_rng(7), shape, 1.0, 8)
    np.testing.assert_allclose(a, 3 * one, rtol=1e-5, atol=1e-5)
    # smooth: neighbouring voxels move almost together (white noise would give ratio ~1.4)
    for axis in (1, 2, 3):
        ratio = np.diff(a, axis=axis).std() / a.std()
        assert ratio < 0.2, ratio
    # zero mean over many draws; control points of std m spread by a cubic B-spline (whose
    # squared weights average to 151/315 per axis) give a field of std m * (151/315) ** 1.5
    fields = np.stack([elastic_displacement(np.random.default_rng(s), (16, 16, 16), 2.0, 8)
                       for s in range(40)])
    assert abs(fields.mean()) < 0.1
    expected_std = 2.0 * (151 / 315) ** 1.5
    assert abs(fields.std() / expected_std - 1) < 0.15, fields.std() / expected_std


def test_elastic_displacement_moves_the_sampling_points():
    volume = smooth_volume((32, 32, 32), channels=1, seed=4)
    config = AugmentConfig(**{**NO_AUGMENT, "p_elastic": 1.0, "elastic_magnitude": (3.0, 3.0),
                              "elastic_spacing": 8})
    transform = sample_spatial_transform(np.random.default_rng(0), config, (16, 16, 16))
    assert transform.displacement is not None and np.array_equal(transform.matrix, np.eye(3))
    image, _ = extract_patch(region_reader(volume), (32, 32, 32), (15.5, 15.5, 15.5), (16, 16, 16),
                             transform)
    coords = grid_coords(np.eye(3), (15.5, 15.5, 15.5), (16, 16, 16)) + transform.displacement
    expected = ndimage.map_coordinates(volume[..., 0].astype(np.float64), coords, order=1,
                                       mode="grid-constant")
    np.testing.assert_allclose(image[..., 0], expected, atol=1e-5)
    plain = volume[8:24, 8:24, 8:24, 0]
    assert not np.allclose(image[..., 0], plain, atol=1e-3)


# --------------------------------------------------------------------------- intensities

def test_intensities_with_zero_probabilities_unchanged():
    image = np.random.default_rng(0).random((8, 8, 8, 3)).astype(np.float32)
    original = image.copy()
    out = augment_intensities(np.random.default_rng(1), image, AugmentConfig(**NO_AUGMENT))
    assert np.array_equal(out, original)


def test_gamma_brightness_and_noise():
    base = np.random.default_rng(0).random((32, 32, 32, 2)).astype(np.float32)
    squared = augment_intensities(np.random.default_rng(1), base.copy(),
                                  AugmentConfig(**{**NO_AUGMENT, "p_gamma": 1.0,
                                                   "gamma_range": (2.0, 2.0)}))
    np.testing.assert_allclose(squared, base ** 2, rtol=1e-6)
    brighter = augment_intensities(np.random.default_rng(1), base.copy(),
                                   AugmentConfig(**{**NO_AUGMENT, "p_brightness": 1.0,
                                                    "brightness_range": (1.2, 1.2)}))
    np.testing.assert_allclose(brighter, base * 1.2, rtol=1e-6)
    noisy = augment_intensities(np.random.default_rng(1), base.copy(),
                                AugmentConfig(**{**NO_AUGMENT, "p_noise": 1.0,
                                                 "noise_std_range": (0.05, 0.05)}))
    for c in range(2):
        diff = noisy[..., c] - base[..., c]
        assert abs(diff.std() - 0.05) < 0.0025 and abs(diff.mean()) < 0.002
    ranged = augment_intensities(np.random.default_rng(2), base.copy(),
                                 AugmentConfig(**{**NO_AUGMENT, "p_noise": 1.0,
                                                  "noise_std_range": (0.02, 0.04)}))
    stds = [(ranged[..., c] - base[..., c]).std() for c in range(2)]
    assert all(0.019 < s < 0.041 for s in stds)
    assert abs(stds[0] - stds[1]) > 1e-4  # drawn per channel


def test_gamma_clips_negative_values_and_works_in_place():
    image = np.array([-0.5, 0.0, 0.25, 0.5, 1.0], np.float32).reshape(5, 1, 1, 1)
    out = augment_intensities(np.random.default_rng(0), image,
                              AugmentConfig(**{**NO_AUGMENT, "p_gamma": 1.0, "gamma_range": (2, 2)}))
    assert out is image
    np.testing.assert_allclose(out.ravel(), [0.0, 0.0, 0.0625, 0.25, 1.0])


# --------------------------------------------------------------------------- mirroring

def flipped_axes(out: np.ndarray, original: np.ndarray) -> tuple[int, ...]:
    """The one set of spatial axes whose flip turns `original` into `out` (asserts there is one)."""
    matches = [axes for r in range(4) for axes in itertools.combinations(range(3), r)
               if np.array_equal(out, np.flip(original, axes) if axes else original)]
    assert len(matches) == 1
    return matches[0]


def test_mirror_flips_image_and_label_together():
    image = smooth_volume((12, 14, 16), channels=2, seed=5)
    label = (image[..., 0] > 0.4).astype(np.uint8)
    seen = set()
    for seed in range(20):
        out_image, out_label, none = mirror(np.random.default_rng(seed), (0, 1, 2), image, label,
                                            None)
        assert none is None
        assert np.array_equal(out_label, (out_image[..., 0] > 0.4).astype(np.uint8))
        axes = flipped_axes(out_image, image)
        assert np.array_equal(out_label, np.flip(label, axes) if axes else label)
        seen.add(axes)
    assert len(seen) >= 5
    # only the allowed axes are flipped
    for seed in range(10):
        out_image, = mirror(np.random.default_rng(seed), (2,), image)
        assert (np.array_equal(out_image, image) or
                np.array_equal(out_image, np.flip(image, 2)))


# --------------------------------------------------------------------------- legacy augment_data

def test_augment_data_without_augmentation_is_identity():
    image = np.random.default_rng(0).normal(size=(10, 12, 14, 2)).astype(np.float32)
    label = np.random.default_rng(1).integers(0, 5, (10, 12, 14)).astype(np.uint8)
    out_image, out_label = augment_data(image, label, scale_deviation=None, flip=False,
                                        rng=np.random.default_rng(0))
    assert out_image.dtype == np.float32 and np.array_equal(out_image, image)
    assert np.array_equal(out_label, label)


def test_augment_data_flip_only_is_a_flip():
    image = np.random.default_rng(0).normal(size=(10, 12, 14, 2)).astype(np.float32)
    label = np.random.default_rng(1).integers(0, 5, (10, 12, 14)).astype(np.uint8)
    seen = set()
    for seed in range(16):
        out_image, out_label = augment_data(image, label, scale_deviation=None, flip=True,
                                            rng=np.random.default_rng(seed))
        axes = flipped_axes(out_image, image)
        assert np.array_equal(out_label, np.flip(label, axes) if axes else label)
        seen.add(axes)
    assert len(seen) >= 4


def test_augment_data_scaling_keeps_label_aligned():
    image = smooth_volume((32, 32, 32), channels=1, seed=6)
    label = (image[..., 0] > 0.45).astype(np.uint8)
    for seed in range(3):
        out_image, out_label = augment_data(image, label, scale_deviation=0.2, flip=True,
                                            rng=np.random.default_rng(seed))
        assert out_image.shape == image.shape and out_label.shape == label.shape
        assert not np.array_equal(out_label, label)
        agreement = np.mean((out_image[..., 0] > 0.45) == out_label.astype(bool))
        assert agreement >= 0.97


# --------------------------------------------------------------------------- determinism

def _pipeline(seed):
    volume = smooth_volume((40, 40, 40), channels=2, seed=1)
    label = (volume[..., 1] > 0.5).astype(np.uint8)
    rng = np.random.default_rng(seed)
    config = AugmentConfig(p_rotation=1, p_scaling=1, p_elastic=1, p_gamma=1, p_brightness=1,
                           p_noise=1)
    transform = sample_spatial_transform(rng, config, (24, 24, 24))
    image, lab = extract_patch(region_reader(volume, label), (40, 40, 40), (19.5, 19.5, 19.5),
                               (24, 24, 24), transform)
    image, lab = mirror(rng, config.mirror_axes, image, lab)
    return augment_intensities(rng, image, config), lab


def test_seeded_determinism():
    a_image, a_label = _pipeline(11)
    b_image, b_label = _pipeline(11)
    c_image, _ = _pipeline(12)
    assert np.array_equal(a_image, b_image) and np.array_equal(a_label, b_label)
    assert not np.allclose(a_image, c_image)
