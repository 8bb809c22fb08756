"""The legacy port's training API (`unet3d/training.py` of the Keras-2 port): `get_callbacks` and
`train_model`, also importable from `unet3d.training` as in the port. The BraTS scripts use
`unet3d.training.run_training` (resumable) instead.
"""

from __future__ import annotations

import os

import keras

from unet3d.training import NaNGuard, step_decay

__all__ = ["get_callbacks", "train_model"]


def get_callbacks(model_file: str | os.PathLike, initial_learning_rate: float = 1e-4,
                  learning_rate_drop: float = 0.5, learning_rate_epochs: int | None = None,
                  learning_rate_patience: int = 50, logging_file: str | os.PathLike = "training.log",
                  verbosity: int = 1, early_stopping_patience: int | None = None
                  ) -> list[keras.callbacks.Callback]:
    """The port's callbacks: best-val_loss checkpoint of the full model, CSV log (appending),
    step decay when `learning_rate_epochs` is set else reduce-on-plateau (factor
    `learning_rate_drop`), early stopping when `early_stopping_patience` is set; plus `NaNGuard`."""
    callbacks = [keras.callbacks.ModelCheckpoint(str(model_file), save_best_only=True),
                 keras.callbacks.CSVLogger(str(logging_file), append=True), NaNGuard()]
    if learning_rate_epochs:
        callbacks.append(keras.callbacks.LearningRateScheduler(
            lambda epoch: step_decay(epoch, initial_learning_rate, learning_rate_drop,
                                     learning_rate_epochs)))
    else:
        callbacks.append(keras.callbacks.ReduceLROnPlateau(
            factor=learning_rate_drop, patience=learning_rate_patience, verbose=verbosity))
    if early_stopping_patience:
        callbacks.append(keras.callbacks.EarlyStopping(verbose=verbosity,
                                                       patience=early_stopping_patience))
    return callbacks


def train_model(model: keras.Model, model_file: str | os.PathLike, training_generator,
                validation_generator, steps_per_epoch: int, validation_steps: int,
                initial_learning_rate: float = 0.001, learning_rate_drop: float = 0.5,
                learning_rate_epochs: int | None = None, n_epochs: int = 500,
                learning_rate_patience: int = 20, early_stopping_patience: int | None = None
                ) -> keras.callbacks.History:
    """The port's `train_model`: `model.fit` with `get_callbacks` (log in training.log)."""
    return model.fit(training_generator, steps_per_epoch=steps_per_epoch, epochs=n_epochs,
                     validation_data=validation_generator, validation_steps=validation_steps,
                     shuffle=False,
                     callbacks=get_callbacks(model_file, initial_learning_rate, learning_rate_drop,
                                             learning_rate_epochs, learning_rate_patience,
                                             early_stopping_patience=early_stopping_patience))
