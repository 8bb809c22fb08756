"""Inference over a volume: window positions and weights, sliding windows, the whole-volume
pass and test-time augmentation."""

import itertools

import numpy as np
import pytest

from helpers import channel_model
from unet3d.augment import generate_permutation_keys, permute_data, reverse_permute_data
from unet3d.config import PredictConfig
from unet3d.errors import InputError
from unet3d.inference import (gaussian_importance_map, predict_volume, predict_with_tta,
                              sliding_window_inference, tta_transforms, whole_volume_inference,
                              window_corners)


def identity(batch):
    return batch


# ------------------------------------------------------------------------- windows and weights

def test_gaussian_map_peaks_at_centre_and_is_symmetric():
    weights = gaussian_importance_map((8, 16, 5))
    assert weights.shape == (8, 16, 5) and weights.dtype == np.float32
    assert weights.min() > 0 and weights.max() == pytest.approx(1.0)
    np.testing.assert_allclose(weights, weights[::-1, ::-1, ::-1])
    assert weights[2, 8, 2] > weights[0, 8, 2]


def test_gaussian_map_sigma_is_an_eighth_of_the_window():
    line = gaussian_importance_map((1, 16, 1))[0, :, 0].astype(np.float64)
    centre = 7.5  # between voxels 7 and 8
    sigma = 16 / 8
    expected = np.exp(-0.5 * ((np.arange(16) - centre) / sigma) ** 2)
    np.testing.assert_allclose(line, expected / expected.max(), rtol=1e-6)


def test_window_corners_by_hand():
    # 200 voxels, window 128, step 0.5 (64): ceil(72 / 64) + 1 = 3 windows at 0, 36, 72
    corners = window_corners((200, 128, 129), (128, 128, 128), 0.5)
    assert sorted(set(corners[:, 0])) == [0, 36, 72]
    assert sorted(set(corners[:, 1])) == [0]
    assert sorted(set(corners[:, 2])) == [0, 1]
    assert len(corners) == 3 * 1 * 2


@pytest.mark.parametrize("size,patch,step", [(50, 16, 0.5), (37, 8, 0.25), (16, 16, 0.5),
                                             (33, 12, 1.0)])
def test_windows_cover_the_volume_within_the_step(size, patch, step):
    corners = window_corners((size, size, size), (patch,) * 3, step)
    positions = sorted(set(corners[:, 0]))
    assert positions[0] == 0 and positions[-1] == size - patch
    assert max(np.diff(positions), default=0) <= step * patch


def test_impossible_window_settings_are_refused():
    with pytest.raises(InputError, match="step"):
        window_corners((32, 32, 32), (16, 16, 16), 0)
    with pytest.raises(InputError, match="weighting"):
        sliding_window_inference(np.zeros((8, 8, 8, 1)), identity, (8, 8, 8), weighting="x")
    with pytest.raises(InputError, match="patch shape"):
        sliding_window_inference(np.zeros((8, 8, 8, 1)), identity, (8, 8))


@pytest.mark.parametrize("shape", [(40, 33, 20), (16, 16, 16), (10, 30, 7)])
@pytest.mark.parametrize("step", [0.25, 0.5, 1.0])
@pytest.mark.parametrize("weighting", ["gaussian", "constant"])
def test_identity_network_reproduces_its_input(shape, step, weighting):
    """The weights normalise: an identity network's windows put back give the input again, for
    volumes larger and smaller than the window (zero padding) and any overlap."""
    image = np.random.default_rng(0).random((*shape, 2), dtype=np.float32)
    out = sliding_window_inference(image, identity, (16, 16, 16), step, weighting, batch_size=3)
    assert out.shape == image.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, image, rtol=1e-5, atol=1e-6)


def test_sliding_window_of_a_pointwise_model_equals_the_whole_volume_pass():
    """A 1x1x1 Keras model gives the same voxel values whatever window sees the voxel."""
    model = channel_model()
    image = np.random.default_rng(1).random((40, 36, 20, 4), dtype=np.float32)
    whole = whole_volume_inference(image, model, divisor=16)
    windows = sliding_window_inference(image, model, (16, 16, 16), 0.5, batch_size=2,
                                       tta="mirror")
    np.testing.assert_allclose(whole, image[..., :3], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(windows, image[..., :3], rtol=1e-5, atol=1e-6)


def test_gaussian_weighting_by_brute_force():
    """A predictor whose output is a different constant per window: each voxel gets the
    Gaussian-weighted mean of the constants of the windows covering it, computed here directly."""
    shape, patch, step = (20, 12, 10), (8, 8, 8), 0.5
    calls = []

    def per_window(batch):
        calls.append(len(calls) + 1)
        return np.full(batch.shape[:4] + (1,), float(calls[-1]), np.float32)

    out = sliding_window_inference(np.zeros((*shape, 1), np.float32), per_window, patch, step)
    axis = [np.exp(-0.5 * ((np.arange(n) - (n - 1) / 2) / (n / 8)) ** 2) for n in patch]
    weight = axis[0][:, None, None] * axis[1][None, :, None] * axis[2][None, None, :]
    total, norm = np.zeros(shape), np.zeros(shape)
    for value, corner in enumerate(window_corners(shape, patch, step), start=1):
        region = tuple(slice(c, c + p) for c, p in zip(corner, patch))
        total[region] += value * weight
        norm[region] += weight
    np.testing.assert_allclose(out[..., 0], total / norm, rtol=1e-4)
    constant = sliding_window_inference(np.zeros((*shape, 1), np.float32), per_window, patch,
                                        step, weighting="constant")
    assert not np.allclose(constant, out)  # the weighting matters


# ------------------------------------------------------------------------- test-time augmentation

@pytest.mark.parametrize("mode,count", [("none", 1), ("mirror", 8), ("permute", 48)])
def test_every_tta_variant_is_exactly_inverted(mode, count):
    batch = np.random.default_rng(2).random((2, 6, 6, 6, 3), dtype=np.float32)
    transforms = tta_transforms(mode)
    assert len(transforms) == count
    seen = set()
    for forward, inverse in transforms:
        moved = forward(batch)
        np.testing.assert_array_equal(inverse(moved), batch)
        seen.add(moved.tobytes())
    assert len(seen) == count  # all variants differ


def test_mirror_tta_averages_the_eight_flips():
    """With a predictor that is not flip-equivariant, the TTA mean equals the mean of the eight
    flip-predict-unflip results computed here independently."""
    ramp = np.arange(5 * 4 * 3, dtype=np.float32).reshape(1, 5, 4, 3, 1)

    def biased(batch):
        return batch + ramp

    batch = np.random.default_rng(3).random((1, 5, 4, 3, 1), dtype=np.float32)
    expected = np.zeros_like(batch)
    for axes in itertools.chain.from_iterable(itertools.combinations((1, 2, 3), r)
                                              for r in range(4)):
        expected += np.flip(biased(np.flip(batch, axes)), axes) if axes else biased(batch)
    np.testing.assert_allclose(predict_with_tta(biased, batch, tta_transforms("mirror")),
                               expected / 8, rtol=1e-6)


def test_permutation_tta_is_the_mean_over_the_48_permutations():
    ramp = np.arange(4 ** 3, dtype=np.float32).reshape(1, 4, 4, 4, 1)

    def biased(batch):
        return batch * 2 + ramp

    batch = np.random.default_rng(8).random((1, 4, 4, 4, 1), dtype=np.float32)
    keys = sorted(generate_permutation_keys())
    expected = np.mean([reverse_permute_data(biased(permute_data(batch[0], k)[np.newaxis])[0], k)
                        for k in keys], axis=0)
    np.testing.assert_allclose(predict_with_tta(biased, batch, tta_transforms("permute"))[0],
                               expected, rtol=1e-5)


def test_whole_volume_permutations_need_a_cube():
    with pytest.raises(InputError, match="cubic"):
        whole_volume_inference(np.zeros((32, 16, 16, 1), np.float32), identity, 16, tta="permute")


def test_predict_volume_runs_what_the_settings_say():
    """Sliding windows of the configured patch, or one whole-volume pass padded to the model's
    divisor; both put a 1x1x1 model's output back voxel for voxel."""
    model = channel_model()
    image = np.random.default_rng(9).random((20, 18, 17, 4), dtype=np.float32)
    windows = predict_volume(model, image, PredictConfig(patch_shape=(16, 16, 16)))
    whole = predict_volume(model, image, PredictConfig(whole_volume=True))
    for out in (windows, whole):
        np.testing.assert_allclose(out, image[..., :3], rtol=1e-5, atol=1e-6)
    with pytest.raises(InputError, match="no window"):
        predict_volume(model, image, PredictConfig())

