"""Figures and the training log (unet3d.plots); the PNGs themselves are checked through
brats/evaluate.py in test_evaluation.py."""

import numpy as np
import pytest

from unet3d.errors import InputError
from unet3d.plots import overlay_slice, read_training_log


def test_overlay_slice():
    truth, pred = np.zeros((2, 8, 8, 9), dtype=bool)
    truth[0:2, 0:2, 2] = True
    truth[0:3, 0:3, 5] = True
    pred[0, 0, 1] = True
    assert overlay_slice(truth, pred) == 5
    assert overlay_slice(np.zeros_like(truth), pred) == 1
    assert overlay_slice(np.zeros_like(truth), np.zeros_like(pred)) == 4


def test_read_training_log(tmp_path):
    log = tmp_path / "training.log"
    log.write_text("epoch,loss,val_loss\n0,0.9,0.8\n1,0.7,NA\n")
    history = read_training_log(log)
    assert history["epoch"].tolist() == [0, 1] and history["loss"].tolist() == [0.9, 0.7]
    assert history["val_loss"][0] == 0.8 and np.isnan(history["val_loss"][1])
    log.write_text("epoch,val_loss\n0,0.8\n")
    with pytest.raises(InputError, match="no column loss"):
        read_training_log(log)
    log.write_text("epoch,loss\n0,oops\n")
    with pytest.raises(InputError, match="line 2: loss = 'oops' is not a number"):
        read_training_log(log)
