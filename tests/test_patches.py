"""Patch grids: corners, patch extraction with edge padding, reconstruction by averaging."""

import itertools

import numpy as np
import pytest

from unet3d.errors import InputError
from unet3d.utils.patches import (compute_patch_indices, get_patch_from_3d_data,
                                  get_set_of_patch_indices, reconstruct_from_patches)


def test_worked_example_144_cube_patch_64():
    # step 64, n = ceil(144/64) = 3, overflow = 192 - 144 = 48, start = -24, stop = 120.
    indices = compute_patch_indices((144, 144, 144), (64, 64, 64), 0)
    axis = [-24, 40, 104]
    assert indices.shape == (27, 3)
    assert np.issubdtype(indices.dtype, np.integer)
    np.testing.assert_array_equal(indices, np.array(list(itertools.product(axis, axis, axis))))


def test_anisotropic_corners_with_overlap():
    # image (100, 60, 30), patch (32, 32, 16), overlap 8: step (24, 24, 8)
    # n = (ceil(100/24), ceil(60/24), ceil(30/8)) = (5, 3, 4)
    # overflow = step*n - image + overlap = (120-100+8, 72-60+8, 32-30+8) = (28, 20, 10)
    # start = -ceil(overflow/2) = (-14, -10, -5); stop = image + start = (86, 50, 25)
    # x: -14, 10, 34, 58, 82   y: -10, 14, 38   z: -5, 3, 11, 19
    indices = compute_patch_indices((100, 60, 30), (32, 32, 16), 8)
    expected = list(itertools.product([-14, 10, 34, 58, 82], [-10, 14, 38], [-5, 3, 11, 19]))
    np.testing.assert_array_equal(indices, np.array(expected))
    # Per-axis overlap gives the same grid.
    np.testing.assert_array_equal(compute_patch_indices((100, 60, 30), (32, 32, 16), (8, 8, 8)),
                                  indices)


def test_odd_overflow_rounds_start_up():
    # image 45, patch 16, overlap 0: step 16, n = 3, overflow = 48 - 45 = 3,
    # start = -ceil(1.5) = -2, stop = 43 -> -2, 14, 30. Overlap 4: step 12, n = 4,
    # overflow = 48 - 45 + 4 = 7, start = -ceil(3.5) = -4, stop = 41 -> -4, 8, 20, 32.
    indices = compute_patch_indices((45, 45, 45), 16, (0, 4, 0))
    expected = list(itertools.product([-2, 14, 30], [-4, 8, 20, 32], [-2, 14, 30]))
    np.testing.assert_array_equal(indices, np.array(expected))


def test_explicit_start():
    # start 0: stop = image = (100, 60, 30); x: 0..96 by 24, y: 0..48 by 24, z: 0..24 by 8
    indices = compute_patch_indices((100, 60, 30), (32, 32, 16), 8, start=0)
    expected = list(itertools.product([0, 24, 48, 72, 96], [0, 24, 48], [0, 8, 16, 24]))
    np.testing.assert_array_equal(indices, np.array(expected))
    # Per-axis start (2, -3, 1): stop = (102, 57, 31); x: 2..98, y: -3, 21, 45, z: 1, 9, 17, 25
    indices = compute_patch_indices((100, 60, 30), (32, 32, 16), (8, 0, 8), start=(2, -3, 1))
    expected = list(itertools.product([2, 26, 50, 74, 98], [-3, 29], [1, 9, 17, 25]))
    np.testing.assert_array_equal(indices, np.array(expected))


def test_get_set_of_patch_indices_order():
    grid = get_set_of_patch_indices((0, 5, -2), (4, 6, 2), (2, 1, 3))
    np.testing.assert_array_equal(grid, [[0, 5, -2], [0, 5, 1], [2, 5, -2], [2, 5, 1]])


@pytest.fixture(params=[(), (3,)], ids=["no-channel", "channels"])
def volume(request):
    rng = np.random.default_rng(0)
    return rng.standard_normal((11, 9, 7) + request.param).astype(np.float32)


def test_interior_patch_is_plain_slice(volume):
    before = volume.copy()
    patch = get_patch_from_3d_data(volume, (4, 3, 5), (2, 6, 1))
    np.testing.assert_array_equal(patch, volume[2:6, 6:9, 1:6])
    assert patch.dtype == volume.dtype
    assert not np.shares_memory(patch, volume)
    np.testing.assert_array_equal(volume, before)


@pytest.mark.parametrize("corner", [(-3, 0, 0), (8, -2, 5), (-5, 7, -6), (12, 12, 9), (-20, 0, 3)])
def test_outside_patch_is_edge_padding(volume, corner):
    before = volume.copy()
    shape, margin = (6, 5, 4), 30
    padded = np.pad(volume, [(margin, margin)] * 3 + [(0, 0)] * (volume.ndim - 3), mode="edge")
    expected = padded[tuple(slice(c + margin, c + margin + s) for c, s in zip(corner, shape))]
    patch = get_patch_from_3d_data(volume, shape, corner)
    assert patch.shape == shape + volume.shape[3:]
    np.testing.assert_array_equal(patch, expected)
    np.testing.assert_array_equal(volume, before)


@pytest.mark.parametrize("shape, patch, overlap", [
    ((16, 16, 16), (8, 8, 8), 0),
    ((17, 13, 10), (8, 6, 4), 0),
    ((17, 13, 10), (8, 6, 4), (3, 2, 1)),
    ((20, 9, 15), (7, 7, 7), 3),
    ((5, 6, 7), (8, 8, 8), 2),
])
@pytest.mark.parametrize("channels", [(), (2,)])
def test_reconstruct_inverts_patching(shape, patch, overlap, channels):
    data = np.random.default_rng(1).random(shape + channels).astype(np.float32)
    indices = compute_patch_indices(shape, patch, overlap)
    patches = [get_patch_from_3d_data(data, patch, index) for index in indices]
    result = reconstruct_from_patches(patches, indices, data.shape)
    assert result.dtype == np.float32 and result.shape == data.shape
    np.testing.assert_array_equal(result, data)
    # float64 patches, given as one stacked array, give float64.
    result = reconstruct_from_patches(np.stack(patches).astype(np.float64), indices, data.shape)
    assert result.dtype == np.float64
    np.testing.assert_allclose(result, data, rtol=1e-12)


def test_reconstruct_averages_overlap_and_fills_default():
    patches = [np.full((4, 2, 2), 1.0, np.float32), np.full((4, 2, 2), 3.0, np.float32)]
    result = reconstruct_from_patches(patches, [(0, 0, 0), (2, 0, 0)], (8, 3, 2), default_value=-1)
    expected = np.full((8, 3, 2), -1.0, np.float32)
    expected[0:2, 0:2] = 1
    expected[2:4, 0:2] = 2
    expected[4:6, 0:2] = 3
    np.testing.assert_array_equal(result, expected)


def test_reconstruct_crops_outside_and_keeps_channels():
    patch = np.arange(2 * 2 * 2 * 2, dtype=np.float32).reshape(2, 2, 2, 2)
    result = reconstruct_from_patches([patch], [(-1, 2, 0)], (3, 3, 2, 2))
    expected = np.zeros((3, 3, 2, 2), np.float32)
    expected[0, 2] = patch[1, 0]
    np.testing.assert_array_equal(result, expected)


@pytest.mark.parametrize("patch_size, overlap", [((8, 8, 8), 8), ((8, 8, 8), (0, 9, 0)), (8, -1)])
def test_bad_overlap(patch_size, overlap):
    with pytest.raises(InputError, match="overlap"):
        compute_patch_indices((20, 20, 20), patch_size, overlap)


@pytest.mark.parametrize("patch_size", [(8, 0, 8), (8, -4, 8), 0])
def test_non_positive_patch_size(patch_size):
    with pytest.raises(InputError, match="positive"):
        compute_patch_indices((20, 20, 20), patch_size, 0)
    with pytest.raises(InputError, match="positive"):
        get_patch_from_3d_data(np.zeros((4, 4, 4)), patch_size, (0, 0, 0))


def test_other_bad_inputs():
    with pytest.raises(InputError, match="3 spatial"):
        compute_patch_indices((20, 20, 20, 4), 8, 0)
    with pytest.raises(InputError, match="3 ints"):
        compute_patch_indices((20, 20, 20), (8, 8), 0)
    with pytest.raises(InputError, match=r"\(X, Y, Z\)"):
        get_patch_from_3d_data(np.zeros((4, 4)), 2, (0, 0, 0))
    with pytest.raises(InputError, match="2 patches but 1"):
        reconstruct_from_patches([np.zeros((2, 2, 2))] * 2, [(0, 0, 0)], (4, 4, 4))
    with pytest.raises(InputError, match="does not match"):
        reconstruct_from_patches([np.zeros((2, 2, 2, 3))], [(0, 0, 0)], (4, 4, 4))
