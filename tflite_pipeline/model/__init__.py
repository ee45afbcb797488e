"""Keras models: building the baseline, loading users' files, file I/O, training.

    build.py       the flat MobileNetV2 (tf_keras), width and resolution from the recipe
    load.py        users' files, safely (tf_keras or Keras 3; Lambda layers refused unless trusted)
    rebuild.py     Keras 3 / nested models -> the flat tf_keras twin tfmot needs, proven equal
    properties.py  what a classifier is: input shape, classes, softmax or logits, parameters, finite weights
    files.py       our own model files, in one place: `.keras`, or `.h5` for QAT models
    train.py       training and fine-tuning; distill.py the teacher loss; distribute.py tf.distribute strategies
"""
