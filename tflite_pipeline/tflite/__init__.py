"""TFLite files: making them, reading them, proving them.

    convert.py      float32 / float16 / dynamic / strict full-integer int8 (representative dataset)
    flatbuffer.py   reading a `.tflite` without TensorFlow: tensors, quantization, ops, weights
    interpreter.py  the LiteRT interpreter as a classifier (quantize inputs, dequantize outputs)
    parity.py       LiteRT vs float Keras on the same images: the parity gate
    diagnose.py     per-layer quantization error and the accuracy-budgeted float fallback
    bench.py        latency, size and peak memory on this machine's CPU
"""
