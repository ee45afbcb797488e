"""Handing models over: the Android app's contract, golden test vectors and runtime compatibility.

    android.py        `export_android`, `check_compatibility` (LiteRT and the app's TFLite 2.14 runtime)
    runtime_probe.py  run as a script inside another runtime's Python to load and run models there
"""
