"""Network outputs -> BraTS label maps, and the small-ET post-processing."""

import numpy as np

from unet3d.labels import labels_to_regions
from unet3d.postprocessing import get_prediction_labels, probabilities_to_labels, remove_small_enhancing


def test_region_outputs_round_trip_to_labels():
    truth = np.random.default_rng(5).choice(np.array([0, 1, 2, 4], np.uint8), size=(6, 7, 8))
    regions = labels_to_regions(truth, (1, 2, 4)).astype(np.float32)
    np.testing.assert_array_equal(probabilities_to_labels(regions, "regions", (1, 2, 4)), truth)
    truth23 = np.where(truth == 4, 3, truth).astype(np.uint8)
    np.testing.assert_array_equal(
        probabilities_to_labels(labels_to_regions(truth23, (1, 2, 3)), "regions", (1, 2, 3)),
        truth23)


def test_legacy_prediction_labels_by_hand():
    # voxel a: channel 2 wins (0.7) -> label 4; voxel b: max 0.4 < 0.5 -> 0; voxel c: ch 0 -> 1
    prediction = np.array([[0.1, 0.2, 0.7], [0.4, 0.3, 0.1], [0.9, 0.8, 0.0]],
                          np.float32).reshape(1, 3, 1, 1, 3)
    (labels,) = get_prediction_labels(prediction, 0.5, (1, 2, 4))
    assert labels.ravel().tolist() == [4, 0, 1]
    assert probabilities_to_labels(prediction[0], "labels", (1, 2, 4)).ravel().tolist() == [4, 0, 1]


def test_small_enhancing_tumour_becomes_necrosis():
    label_map = np.zeros((10, 10, 10), np.uint8)
    label_map[:2, :2, :2] = 4          # 8 voxels of ET
    label_map[5:, 5:, 5:] = 2
    out = remove_small_enhancing(label_map, (1, 2, 4), min_voxels=9)
    assert (out[:2, :2, :2] == 1).all() and (out[5:, 5:, 5:] == 2).all()
    assert (remove_small_enhancing(label_map, (1, 2, 4), min_voxels=8) == label_map).all()
