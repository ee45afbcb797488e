"""Handing models over: the Android app's contract, golden test vectors and runtime compatibility.

    android.py        `export_android`: models, labels, model_config.json and golden vectors into the app
    compatibility.py  the app's model contract and `check_compatibility` (LiteRT and the TFLite 2.14 runtime)
    runtime_probe.py  run as a script inside another runtime's Python to load and run models there
"""
