"""Training and fine-tuning (Adam + cosine decay, streamed from disk, optional distillation)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import tf_keras as keras

from tflite_pipeline.config.sections import DistillConfig, TrainConfig
from tflite_pipeline.data.folders import ImageFolder, data_errors
from tflite_pipeline.data.preprocess import PreprocessSpec
from tflite_pipeline.model.distill import DistillationLoss, PackedAccuracy, with_teacher_targets
from tflite_pipeline.model.files import copy_model
from tflite_pipeline.model.properties import outputs_probabilities

Log = Callable[[str], None]


def fit(model: keras.Model, train: ImageFolder, spec: PreprocessSpec, *, epochs: int, learning_rate: float,
        batch_size: int, seed: int = 0, augment: bool = False, validation: ImageFolder | None = None,
        callbacks: Sequence[keras.callbacks.Callback] = (), teacher: keras.Model | None = None,
        distill: DistillConfig | None = None, deterministic: bool = True, log: Log = print) -> keras.Model:
    """Compile and train `model` in place (stages pass a fresh tfmot-wrapped copy); returns it.

    With `teacher` and `distill`, the loss mixes the labels with the teacher's softened outputs.
    Raises `DataError` if an image cannot be decoded mid-training.
    """
    keras.utils.set_random_seed(seed)
    steps_per_epoch = -(-len(train) // batch_size)
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, max(1, epochs * steps_per_epoch))
    from_logits = not outputs_probabilities(model)
    num_classes = len(train.class_names)
    train_ds = train.dataset(spec, batch_size, shuffle=True, seed=seed, augment=augment, deterministic=deterministic)
    val_ds = validation.dataset(spec, batch_size) if validation is not None else None
    if teacher is not None and distill is not None:
        loss = DistillationLoss(num_classes, distill, from_logits=from_logits)
        metrics = [PackedAccuracy(num_classes)]
        train_ds = with_teacher_targets(train_ds, teacher, num_classes)
        val_ds = with_teacher_targets(val_ds, teacher, num_classes) if val_ds is not None else None
    else:
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits)
        metrics = ["accuracy"]
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss=loss, metrics=metrics)
    log(f"  {len(train)} images, {epochs} epochs of {steps_per_epoch} steps, lr {learning_rate:g}"
        + (f", distilling (T={distill.temperature:g}, alpha={distill.alpha:g})" if teacher is not None else ""))
    with data_errors():
        model.fit(train_ds, validation_data=val_ds, epochs=epochs, callbacks=list(callbacks), verbose=2)
    return model


@dataclass(frozen=True)
class FineTuner:
    """What every fine-tune stage of a run shares: data, batch size, seed, and the optional teacher."""

    train: ImageFolder
    spec: PreprocessSpec
    batch_size: int
    seed: int = 0
    augment: bool = False
    validation: ImageFolder | None = None
    teacher: keras.Model | None = None
    distill: DistillConfig | None = None
    deterministic: bool = True
    log: Log = print

    def steps(self, epochs: int) -> int:
        return epochs * -(-len(self.train) // self.batch_size)

    def fit(self, model: keras.Model, *, epochs: int, learning_rate: float,
            callbacks: Sequence[keras.callbacks.Callback] = ()) -> keras.Model:
        return fit(model, self.train, self.spec, epochs=epochs, learning_rate=learning_rate,
                   batch_size=self.batch_size, seed=self.seed, augment=self.augment, validation=self.validation,
                   callbacks=callbacks, teacher=self.teacher, distill=self.distill, deterministic=self.deterministic,
                   log=self.log)


def train_classifier(model: keras.Model, train: ImageFolder, spec: PreprocessSpec, config: TrainConfig, *,
                     validation: ImageFolder | None = None, deterministic: bool = True, log: Log = print
                     ) -> keras.Model:
    """Return a trained copy of `model` (the input is left untouched)."""
    if config.epochs == 0:
        return model
    return fit(copy_model(model), train, spec, epochs=config.epochs, learning_rate=config.learning_rate,
               batch_size=config.batch_size, seed=config.seed, augment=config.augment, validation=validation,
               deterministic=deterministic, log=log)
