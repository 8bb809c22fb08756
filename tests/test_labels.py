"""Label encodings: raw label channels and nested BraTS regions (WT, TC, ET), channels-last."""

import numpy as np
import pytest

from unet3d.errors import InputError
from unet3d.labels import (REGION_NAMES, brats_regions, encode_targets, get_multi_class_labels,
                           labels_to_regions, regions_to_labels)

# a 2x2x2 hand-built map: background, NCR (1), ED (2), ET (4) and one stray value 3
HAND = np.array([[[0, 1], [2, 4]],
                 [[4, 0], [3, 2]]], dtype=np.uint8)


def test_multi_class_labels_hand_example():
    out = get_multi_class_labels(HAND, 3, (1, 2, 4))
    assert out.shape == (2, 2, 2, 3) and out.dtype == np.uint8
    ncr = np.array([[[0, 1], [0, 0]], [[0, 0], [0, 0]]])
    ed = np.array([[[0, 0], [1, 0]], [[0, 0], [0, 1]]])
    et = np.array([[[0, 0], [0, 1]], [[1, 0], [0, 0]]])
    assert np.array_equal(out[..., 0], ncr)
    assert np.array_equal(out[..., 1], ed)
    assert np.array_equal(out[..., 2], et)
    assert out[1, 1, 0].sum() == 0  # label 3 is none of the channels


def test_multi_class_labels_default_values_and_batch_axis():
    out = get_multi_class_labels(HAND, 4)  # default values 1, 2, 3, 4
    for channel, value in enumerate((1, 2, 3, 4)):
        assert np.array_equal(out[..., channel], (HAND == value).astype(np.uint8))
    batch = np.stack([HAND, np.zeros_like(HAND)])
    out = get_multi_class_labels(batch, 3, (1, 2, 4))
    assert out.shape == (2, 2, 2, 2, 3)
    assert out[1].sum() == 0 and out[0].sum() == 5  # 1, 2, 4, 4, 2 (not the 3)


def test_multi_class_labels_mismatch_raises():
    with pytest.raises(InputError, match="n_labels"):
        get_multi_class_labels(HAND, 2, (1, 2, 4))
    with pytest.raises(InputError):
        get_multi_class_labels(HAND, 3, (1, 2))


def test_labels_to_regions_hand_example():
    out = labels_to_regions(HAND)
    assert out.shape == (2, 2, 2, 3) and out.dtype == np.uint8
    assert REGION_NAMES == ("wt", "tc", "et")
    wt = np.array([[[0, 1], [1, 1]], [[1, 0], [0, 1]]])   # 1, 2, 4 (not the stray 3)
    tc = np.array([[[0, 1], [0, 1]], [[1, 0], [0, 0]]])   # 1, 4
    et = np.array([[[0, 0], [0, 1]], [[1, 0], [0, 0]]])   # 4
    assert np.array_equal(out[..., 0], wt)
    assert np.array_equal(out[..., 1], tc)
    assert np.array_equal(out[..., 2], et)


def test_labels_to_regions_brats2023_labels():
    m = np.array([0, 1, 2, 3, 4], np.uint8).reshape(5, 1, 1)
    out = labels_to_regions(m, (1, 2, 3))
    assert out[:, 0, 0].tolist() == [[0, 0, 0], [1, 1, 0], [1, 0, 0], [1, 1, 1], [0, 0, 0]]
    assert brats_regions((1, 2, 3)) == {"wt": (1, 2, 3), "tc": (1, 3), "et": (3,)}
    # with the old labels, 3 is not a tumour label and 4 is ET
    out = labels_to_regions(m, (1, 2, 4))
    assert out[:, 0, 0].tolist() == [[0, 0, 0], [1, 1, 0], [1, 0, 0], [0, 0, 0], [1, 1, 1]]


@pytest.mark.parametrize("labels", [(1, 2, 4), (1, 2, 3)])
def test_regions_round_trip_random_maps(labels):
    rng = np.random.default_rng(sum(labels))
    m = rng.choice(np.array((0, *labels), np.uint8), size=(2, 9, 10, 11))
    regions = labels_to_regions(m, labels)
    # nested: ET inside TC inside WT
    assert np.all(regions[..., 2] <= regions[..., 1]) and np.all(regions[..., 1] <= regions[..., 0])
    back = regions_to_labels(regions, labels)
    assert back.dtype == np.uint8 and np.array_equal(back, m)
    # float probabilities of the same binary maps round-trip too
    assert np.array_equal(regions_to_labels(regions.astype(np.float32), labels), m)


def test_regions_to_labels_thresholds_probabilities():
    #            WT    TC    ET      expected
    probs = np.array([[0.6, 0.4, 0.1],  # ED
                      [0.9, 0.7, 0.2],  # NCR
                      [0.9, 0.8, 0.5],  # ET (>= threshold)
                      [0.4, 0.3, 0.2],  # background
                      [0.5, 0.1, 0.0]], np.float32).reshape(5, 1, 1, 3)
    assert regions_to_labels(probs)[:, 0, 0].tolist() == [2, 1, 4, 0, 2]
    assert regions_to_labels(probs, (1, 2, 3))[:, 0, 0].tolist() == [2, 1, 3, 0, 2]
    # a higher threshold moves voxels out of the regions
    assert regions_to_labels(probs, threshold=0.75)[:, 0, 0].tolist() == [0, 2, 1, 0, 0]


def test_bad_label_triples_and_shapes_raise():
    for bad in [(), (1, 1, 4), (0, 1, 2), (1, 2, 300), "brats1999"]:
        with pytest.raises(InputError):
            labels_to_regions(HAND, bad)
        with pytest.raises(InputError):
            regions_to_labels(np.zeros((2, 2, 2, 3)), bad)
    with pytest.raises(InputError, match="3 region channels"):
        regions_to_labels(np.zeros((2, 2, 2, 2)))


def test_encode_targets():
    assert np.array_equal(encode_targets(HAND, "regions", (1, 2, 4)), labels_to_regions(HAND))
    assert np.array_equal(encode_targets(HAND, "labels", (1, 2, 4)),
                          get_multi_class_labels(HAND, 3, (1, 2, 4)))
    with pytest.raises(InputError, match="target"):
        encode_targets(HAND, "onehot", (1, 2, 4))


@pytest.mark.parametrize("convention", ["brats2020", "brats2024-gli"])
def test_classes_are_one_hot_with_background_and_argmax_inverts_them(convention):
    from unet3d.conventions import as_convention
    from unet3d.labels import output_names
    from unet3d.postprocessing import probabilities_to_labels

    values = as_convention(convention).values
    truth = np.random.default_rng(3).choice(np.array((0, *values), np.uint8), (6, 5, 4))
    classes = encode_targets(truth, "classes", convention)
    assert classes.shape == (6, 5, 4, len(values) + 1) and classes.dtype == np.uint8
    assert np.array_equal(classes.sum(axis=-1), np.ones(truth.shape))  # exactly one class
    assert np.array_equal(classes[..., 0], truth == 0)
    for channel, value in enumerate(values, start=1):
        assert np.array_equal(classes[..., channel], truth == value)
    assert np.array_equal(probabilities_to_labels(classes.astype(np.float32), "classes",
                                                  convention), truth)
    assert output_names("classes", convention) == (
        "background", *(f"label_{v}" for v in values))


def test_classes_decode_by_argmax_without_a_threshold():
    from unet3d.postprocessing import probabilities_to_labels, without_postoperative

    # background 0.4 beats each label but not their sum: the argmax says background
    probabilities = np.array([[[[0.4, 0.3, 0.2, 0.1], [0.1, 0.2, 0.3, 0.4],
                                [0.2, 0.35, 0.35, 0.1]]]], np.float32)
    assert probabilities_to_labels(probabilities, "classes", "brats2020").tolist() == [
        [[0, 4, 1]]]  # a tie goes to the first class
    # brats2024-gli: the resection cavity (label 4, the last channel) zeroed before a pre-op argmax
    postop = np.array([[[[0.1, 0.2, 0.1, 0.1, 0.5]]]], np.float32)
    assert probabilities_to_labels(postop, "classes", "brats2024-gli").tolist() == [[[4]]]
    pre = without_postoperative(postop, "classes", "brats2024-gli")
    assert probabilities_to_labels(pre, "classes", "brats2024-gli").tolist() == [[[1]]]
