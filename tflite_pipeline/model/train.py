"""Training and fine-tuning (Adam + cosine decay, streamed from disk, optional distillation)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import tf_keras as keras

from tflite_pipeline import progress
from tflite_pipeline.config.sections import DistillConfig, TrainConfig
from tflite_pipeline.data.folders import ImageFolder, data_errors
from tflite_pipeline.data.preprocess import PreprocessSpec
from tflite_pipeline.model.distill import DistillationLoss, PackedAccuracy, with_teacher_targets
from tflite_pipeline.model.files import copy_model
from tflite_pipeline.model.properties import outputs_probabilities
from tflite_pipeline.progress import Log


class TrainingProgress(keras.callbacks.Callback):
    """Keras' progress bar replaced (`fit(..., verbose=0)`): one `progress.bar` over every batch of every epoch
    (`[train] epoch 2/5  batch 120/469  eta 0:41`, labelled with the current step: `[prune] ...` in a pruning
    stage), a line per epoch with its metrics, and a summary at the end."""

    def __init__(self, epochs: int, steps_per_epoch: int, log: Log | None = None) -> None:
        super().__init__()
        self._supports_tf_logs = True  # batch logs are not read: Keras need not copy them to numpy every batch
        self.epochs, self.steps = epochs, steps_per_epoch
        self.log = log
        self.bar: progress.Progress | None = None
        self._epoch, self._epoch_start, self._last_logs = 0, 0.0, {}

    def on_train_begin(self, logs=None) -> None:  # Keras' signature
        self.bar = progress.bar("train", self.epochs * self.steps, "batches", log=self.log, inherit_step=True,
                                text=self._text(0))

    def on_epoch_begin(self, epoch, logs=None) -> None:
        self._epoch = epoch
        self._epoch_start = self.bar.elapsed if self.bar else 0.0
        self._show(0)

    def on_train_batch_end(self, batch, logs=None) -> None:
        self._show(batch + 1)

    def on_epoch_end(self, epoch, logs=None) -> None:
        if self.bar is None:
            return
        self._last_logs = dict(logs or {})
        metrics = format_metrics(self._last_logs)
        seconds = progress.duration(self.bar.elapsed - self._epoch_start)
        self.bar.say(f"[{self.bar.step}] epoch {epoch + 1}/{self.epochs}" + (f": {metrics}" if metrics else "")
                     + f" ({seconds})")

    def on_train_end(self, logs=None) -> None:
        if self.bar is not None:
            metrics = format_metrics(self._last_logs)
            self.bar.finish(f"[{self.bar.step}] trained {self.epochs} epoch{'s' if self.epochs != 1 else ''} in "
                            f"{progress.duration(self.bar.elapsed)}" + (f": {metrics}" if metrics else ""))

    def close(self) -> None:
        """End the bar's line when training stopped early (an error, Ctrl-C): Keras skips `on_train_end`."""
        if self.bar is not None:
            self.bar.close()

    def _show(self, batch: int) -> None:
        if self.bar is not None:
            self.bar.update(self._epoch * self.steps + batch, text=self._text(batch))

    def _text(self, batch: int) -> str:
        return f"epoch {self._epoch + 1}/{self.epochs}  batch {batch}/{self.steps}"


def format_metrics(logs: dict) -> str:
    """`loss 0.7801, accuracy 73.04%, val_loss 0.8012, val_accuracy 72.10%`: Keras' epoch logs, accuracies in %."""
    parts = []
    for name, value in logs.items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        parts.append(f"{name} {number:.2%}" if "accuracy" in name else f"{name} {number:.4f}")
    return ", ".join(parts)


def fit(model: keras.Model, train: ImageFolder, spec: PreprocessSpec, *, epochs: int, learning_rate: float,
        batch_size: int, seed: int = 0, augment: bool = False, validation: ImageFolder | None = None,
        callbacks: Sequence[keras.callbacks.Callback] = (), teacher: keras.Model | None = None,
        distill: DistillConfig | None = None, deterministic: bool = True, log: Log = progress.log) -> keras.Model:
    """Compile and train `model` in place (stages pass a fresh tfmot-wrapped copy); returns it.

    With `teacher` and `distill`, the loss mixes the labels with the teacher's softened outputs.
    Progress goes to `log` (`TrainingProgress`; Keras' own progress bar is off).
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
    shown = TrainingProgress(epochs, steps_per_epoch, log)
    try:
        with data_errors():
            model.fit(train_ds, validation_data=val_ds, epochs=epochs, callbacks=[*callbacks, shown], verbose=0)
    finally:
        shown.close()
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
    log: Log = progress.log

    def steps(self, epochs: int) -> int:
        return epochs * -(-len(self.train) // self.batch_size)

    def fit(self, model: keras.Model, *, epochs: int, learning_rate: float,
            callbacks: Sequence[keras.callbacks.Callback] = ()) -> keras.Model:
        return fit(model, self.train, self.spec, epochs=epochs, learning_rate=learning_rate,
                   batch_size=self.batch_size, seed=self.seed, augment=self.augment, validation=self.validation,
                   callbacks=callbacks, teacher=self.teacher, distill=self.distill, deterministic=self.deterministic,
                   log=self.log)


def train_classifier(model: keras.Model, train: ImageFolder, spec: PreprocessSpec, config: TrainConfig, *,
                     validation: ImageFolder | None = None, deterministic: bool = True, log: Log = progress.log
                     ) -> keras.Model:
    """Return a trained copy of `model` (the input is left untouched)."""
    if config.epochs == 0:
        return model
    return fit(copy_model(model), train, spec, epochs=config.epochs, learning_rate=config.learning_rate,
               batch_size=config.batch_size, seed=config.seed, augment=config.augment, validation=validation,
               deterministic=deterministic, log=log)
