"""Run a `.tflite` in TensorFlow Lite for Microcontrollers' own interpreter; run as a child process.

    python micro_probe.py < request.json > answer.json

Request: {"model": path, "arena_bytes": int, "inputs": npy path of raw input tensors [N, 1, H, W, C] or null,
          "outputs": npy path to write the raw outputs [N, ...] to}
Answer:  {"runtime": "tflite-micro <version>", "allocated": bool, "error": str, "ran": int}

The interpreter is the `tflite-micro` package's (TFLM's reference kernels, its `RecordingMicroAllocator`).
TFLM reports the allocator's figures and its errors ("Didn't find op for builtin opcode ...", "Node CONV_2D
(number 3) failed to prepare ...") on the C++ stderr, which the parent reads (`micro.run_in_tflm`); a child
process also keeps a model TFLM crashes on from taking the pipeline with it. Standalone (numpy and tflite_micro
only), like `runtime_probe.py`.
"""

from __future__ import annotations

import json
import sys


def main() -> int:
    from importlib import metadata

    import numpy as np
    from tflite_micro import runtime

    request = json.load(sys.stdin)
    answer = {"runtime": f"tflite-micro {metadata.version('tflite-micro')}", "allocated": False, "error": "",
              "ran": 0}
    try:
        with open(request["model"], "rb") as file:
            interpreter = runtime.Interpreter.from_bytes(file.read(), arena_size=int(request["arena_bytes"]))
        answer["allocated"] = True
        inputs = np.load(request["inputs"]) if request.get("inputs") else None
        outputs = []
        for tensor in inputs if inputs is not None else ():
            interpreter.set_input(tensor, 0)
            interpreter.invoke()
            outputs.append(np.array(interpreter.get_output(0)))
            answer["ran"] += 1
        if outputs and request.get("outputs"):
            np.save(request["outputs"], np.stack(outputs))
        sys.stderr.flush()
        interpreter.print_allocations()
    except Exception as error:  # TFLM's words; the parent turns them into a typed error
        answer["error"] = " ".join(str(error).split()) or type(error).__name__
    json.dump(answer, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
