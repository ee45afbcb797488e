"""Images in: image-folder datasets and the one preprocessing spec every step shares.

    folders.py     `ImageFolder` (a class-per-folder listing, streamed through tf.data), `open_splits`, labels.txt
    preprocess.py  `PreprocessSpec`: decode, resize, normalize; the same arithmetic in training, calibration,
                   verification and the Android app
"""
