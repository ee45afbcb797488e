"""Run a `.tflite` in TensorFlow Lite for Microcontrollers' own interpreter; run as a child process.

    python micro_probe.py < request.json > answer.json

Request: {"model": path, "arena_bytes": int or "minimum", "inputs": npy path of raw input tensors [N, 1, H, W, C]
          or null, "outputs": npy path to write the raw outputs [N, ...] to}
Answer:  {"runtime": "tflite-micro <version>", "arena_bytes": int, "allocated": bool, "error": str, "ran": int}

"minimum" finds the smallest arena (to 16 bytes) in which the interpreter allocates its tensors, by doubling from
4 KB and then bisecting (each try in a forked process: in some arenas that are too small TFLM does not fail
cleanly but crashes), and runs the inputs in it. That is more than the recording allocator's total after
allocation: planning the arena takes scratch memory that is given back once the plan is made.

The interpreter is the `tflite-micro` package's (TFLM's reference kernels, its `RecordingMicroAllocator`).
TFLM reports the allocator's figures and its errors ("Didn't find op for builtin opcode ...", "Node CONV_2D
(number 3) failed to prepare ...") on the C++ stderr, which the parent reads (`micro.run_in_tflm`); a child
process also keeps a model TFLM crashes on from taking the pipeline with it. Standalone (numpy and tflite_micro
only), like `runtime_probe.py`.
"""

from __future__ import annotations

import json
import os
import sys


def main() -> int:
    from importlib import metadata

    import numpy as np
    from tflite_micro import runtime

    request = json.load(sys.stdin)
    answer = {"runtime": f"tflite-micro {metadata.version('tflite-micro')}", "arena_bytes": request["arena_bytes"],
              "allocated": False, "error": "", "ran": 0}
    try:
        with open(request["model"], "rb") as file:
            model = file.read()
        if request["arena_bytes"] == "minimum":
            answer["arena_bytes"] = _minimum_arena(runtime, model)
        interpreter = runtime.Interpreter.from_bytes(model, arena_size=int(answer["arena_bytes"]))
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


def _minimum_arena(runtime, model: bytes, step: int = 16, largest: int = 256 * 1024 * 1024) -> int:
    def allocates(size: int) -> bool:  # in a forked process: TFLM can crash in an arena that is too small
        pid = os.fork()
        if pid == 0:
            try:
                runtime.Interpreter.from_bytes(model, arena_size=size)
                code = 0
            except BaseException:
                code = 1
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        return os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0

    low, high = 0, 4096  # low: known too small (or 0); high: to be shown enough
    while not allocates(high):
        if high >= largest:
            raise RuntimeError(f"TFLM cannot allocate the model's tensors even in a {largest:,}-byte arena")
        low, high = high, high * 2
    while high - low > step:
        middle = (low + high) // 2 // step * step
        low, high = (low, middle) if allocates(middle) else (middle, high)
    return high


if __name__ == "__main__":
    sys.exit(main())
