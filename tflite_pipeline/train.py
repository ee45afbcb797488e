"""Training the float baseline (Adam + cosine decay, streamed from disk)."""

from __future__ import annotations

from typing import Callable

import tf_keras as keras

from .data import ImageFolder, PreprocessSpec, data_errors
from .models import copy_model
from .recipe import TrainConfig


def train_classifier(model: keras.Model, train: ImageFolder, spec: PreprocessSpec, config: TrainConfig, *,
                     validation: ImageFolder | None = None, log: Callable[[str], None] = print) -> keras.Model:
    """Return a trained copy of `model` (the input is left untouched).

    The model must output softmax probabilities (as `build_mobilenet_v2` does). Raises `DataError`
    if an image cannot be decoded mid-training.
    """
    if config.epochs == 0:
        return model
    keras.utils.set_random_seed(config.seed)
    trained = copy_model(model)
    steps_per_epoch = -(-len(train) // config.batch_size)
    schedule = keras.optimizers.schedules.CosineDecay(config.learning_rate, config.epochs * steps_per_epoch)
    trained.compile(optimizer=keras.optimizers.Adam(schedule), loss="sparse_categorical_crossentropy",
                    metrics=["accuracy"])
    train_ds = train.dataset(spec, config.batch_size, shuffle=True, seed=config.seed, augment=config.augment)
    val_ds = validation.dataset(spec, config.batch_size) if validation is not None else None
    log(f"training {trained.name}: {len(train)} images, {config.epochs} epochs of {steps_per_epoch} steps")
    with data_errors():
        trained.fit(train_ds, validation_data=val_ds, epochs=config.epochs, verbose=2)
    return trained
