"""Knowledge distillation: a float teacher's softened outputs guide the student's fine-tune.

The teacher runs inside the input pipeline and its probabilities travel with the labels
(`y = [one-hot label | teacher probabilities]`), so the student stays an ordinary Keras model:
tfmot's pruning/QAT wrappers, their callbacks and tf.distribute strategies work unchanged.
"""

from __future__ import annotations

import tensorflow as tf
import tf_keras as keras

from tflite_pipeline.config.sections import DistillConfig
from tflite_pipeline.model.properties import outputs_probabilities

_EPS = 1e-7


def with_teacher_targets(dataset: tf.data.Dataset, teacher: keras.Model, num_classes: int) -> tf.data.Dataset:
    """Map `(images, labels)` to `(images, [one_hot(labels) | teacher probabilities])`; a teacher that
    outputs logits gets a softmax."""
    teacher_gives_logits = not outputs_probabilities(teacher)

    def attach(images, labels):
        soft = tf.cast(teacher(images, training=False), tf.float32)
        soft = tf.nn.softmax(soft) if teacher_gives_logits else soft
        return images, tf.concat([tf.one_hot(labels, num_classes), soft], axis=1)

    return dataset.map(attach, num_parallel_calls=1)


def _log_probs(outputs: tf.Tensor, from_logits: bool) -> tf.Tensor:
    return tf.nn.log_softmax(outputs) if from_logits else tf.math.log(tf.clip_by_value(outputs, _EPS, 1.0))


class DistillationLoss(keras.losses.Loss):
    """`alpha * CE(labels, student) + (1 - alpha) * T^2 * KL(softmax(teacher/T) || softmax(student/T))`."""

    def __init__(self, num_classes: int, config: DistillConfig, *, from_logits: bool = False,
                 name: str = "distillation") -> None:
        super().__init__(name=name)
        self.num_classes, self.temperature, self.alpha = num_classes, config.temperature, config.alpha
        self.from_logits = from_logits

    def call(self, y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
        labels, teacher = y_true[:, :self.num_classes], y_true[:, self.num_classes:]
        student_log = _log_probs(y_pred, self.from_logits)
        hard = -tf.reduce_sum(labels * student_log, axis=1)
        t = self.temperature
        teacher_soft = tf.nn.softmax(tf.math.log(tf.clip_by_value(teacher, _EPS, 1.0)) / t)
        student_soft_log = tf.nn.log_softmax(student_log / t)
        kl = tf.reduce_sum(teacher_soft * (tf.math.log(teacher_soft + _EPS) - student_soft_log), axis=1)
        return self.alpha * hard + (1.0 - self.alpha) * (t * t) * kl

    def get_config(self) -> dict:
        return {"name": self.name, "num_classes": self.num_classes}


class PackedAccuracy(keras.metrics.MeanMetricWrapper):
    """Top-1 accuracy against the one-hot part of packed distillation targets."""

    def __init__(self, num_classes: int, name: str = "accuracy") -> None:
        def accuracy(y_true, y_pred):
            return keras.metrics.categorical_accuracy(y_true[:, :num_classes], y_pred)
        super().__init__(accuracy, name=name)
