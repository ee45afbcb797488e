"""Load and run `.tflite` files in one TFLite/LiteRT runtime; run as a script in that runtime's Python.

    python runtime_probe.py < request.json > answer.json

Standalone on purpose (numpy and an interpreter module only, no tflite_pipeline import), so it runs
in a separate virtual environment that holds an older runtime such as `tflite-runtime==2.14.0`,
whose numpy 1.x cannot share a process with this package. `android.check_runtime` writes the
request and reads the answer.

Request: {"models": [{"path": str, "inputs": [npy path, ...], "probes": [{"op": str, "path": str}]}]}
Answer:  {"runtime": "tflite_runtime 2.14.0", "models": [{"path", "loaded", "error", "outputs": [npy path],
          "probes": [{"op", "loaded", "error"}]}]}
A probe is a copy of the model that keeps one operator code and no operators: loading it tells
whether this runtime has a kernel for that op at that version, independently of the other ops.
"""

from __future__ import annotations

import json
import sys


def _interpreter_class():
    """LiteRT when installed (the runtime the app ships), else the legacy `tflite_runtime` package."""
    from importlib import metadata

    try:
        from ai_edge_litert import interpreter as module
        distribution = "ai-edge-litert"
    except ImportError:
        from tflite_runtime import interpreter as module
        distribution = "tflite-runtime"
    return module.Interpreter, f"{distribution} {metadata.version(distribution)}"


def _message(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _run_model(interpreter_class, entry: dict) -> dict:
    import numpy as np

    answer = {"path": entry["path"], "loaded": False, "error": "", "outputs": [], "probes": []}
    for probe in entry.get("probes", ()):
        try:
            interpreter_class(model_path=probe["path"]).allocate_tensors()
            answer["probes"].append({"op": probe["op"], "loaded": True, "error": ""})
        except Exception as error:
            answer["probes"].append({"op": probe["op"], "loaded": False, "error": _message(error)})
    try:
        interpreter = interpreter_class(model_path=entry["path"], num_threads=1)
        interpreter.allocate_tensors()
        answer["loaded"] = True
        detail = interpreter.get_input_details()[0]
        out_index = interpreter.get_output_details()[0]["index"]
        for number, input_path in enumerate(entry.get("inputs", ())):
            interpreter.set_tensor(detail["index"], np.load(input_path).astype(detail["dtype"]))
            interpreter.invoke()
            output_path = f"{entry['path']}.out{number}.npy"
            np.save(output_path, interpreter.get_tensor(out_index))
            answer["outputs"].append(output_path)
    except Exception as error:
        answer["error"] = _message(error)
    return answer


def main() -> int:
    request = json.load(sys.stdin)
    interpreter_class, runtime = _interpreter_class()
    answer = {"runtime": runtime, "models": [_run_model(interpreter_class, entry) for entry in request["models"]]}
    json.dump(answer, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
