"""The one place that prepares the TensorFlow stack; imported first by `tflite_pipeline/__init__.py`.

tfmot works only with Keras 2 (the `tf_keras` package). Setting `TF_USE_LEGACY_KERAS=1` before
TensorFlow is imported makes `tf.keras` resolve to it too. The package itself always imports
`tf_keras` explicitly, so it also works when the user imported TensorFlow first.

Quiet by default: TensorFlow's start-up chatter ("Could not find cuda drivers", "All log messages before
absl::InitializeLog() ...", "failed call to cuInit") reads like failures to a newcomer. Most of it is written
by C++ straight to file descriptor 2 before absl is initialized, so `TF_CPP_MIN_LOG_LEVEL` cannot hide it.
Unless `TFLITE_PIPELINE_VERBOSE=1` (what `tflite-pipeline --verbose` sets):

- the first `import tensorflow` (and its device discovery, where the cuInit line comes from) runs with fd 2
  sent to a small watcher process that drops the text when the import succeeds and writes it out when the
  import fails, even when the process dies in C++ (an abort on an unsupported CPU): no real error is lost;
- `hidden_native_output()` does the same around other chatty native calls (the converter, LiteRT's first
  delegate); our own progress goes to `stderr()`, the real stderr, meanwhile;
- `TF_CPP_MIN_LOG_LEVEL` is 3 unless the user set it, Python warnings raised in TensorFlow, Keras, tfmot and
  LiteRT are ignored, and the `tensorflow` / `absl` Python loggers show errors only.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import logging
import os
import platform
import secrets
import sys
import warnings
from collections.abc import Iterator
from importlib import metadata
from typing import TextIO

os.environ["TF_USE_LEGACY_KERAS"] = "1"

from tflite_pipeline.errors import DependencyError, PipelineError

VERBOSE_VARIABLE = "TFLITE_PIPELINE_VERBOSE"  # "1": TensorFlow's own logs and warnings are shown
_LOG_LEVEL = "TF_CPP_MIN_LOG_LEVEL"
_USER_LOG_LEVEL = os.environ.get(_LOG_LEVEL)  # the user's choice always wins
_NOISY_MODULES = r"(tensorflow|tf_keras|keras|tensorflow_model_optimization|ai_edge_litert|absl)(\.|$)"
_NOISY_LOGGERS = ("tensorflow", "absl")
_quieted_loggers: set[str] = set()


def _not_from_tfmot(record: logging.LogRecord) -> bool:
    """tfmot logs some warnings through the root logger (`logging.warning`, e.g. "Input layer does not contain
    zero weights, so apply CQAT instead."): a filter on the root logger drops those, and only those, when quiet."""
    return f"{os.sep}tensorflow_model_optimization{os.sep}" not in record.pathname


def verbose() -> bool:
    """Whether TensorFlow may talk: `TFLITE_PIPELINE_VERBOSE` is set to anything but "", 0, false, no or off."""
    return os.environ.get(VERBOSE_VARIABLE, "").strip().lower() not in ("", "0", "false", "no", "off")


def set_verbose(on: bool = True) -> None:
    """Switch TensorFlow's logs and warnings on or off for this process and the processes it starts (sets
    `TFLITE_PIPELINE_VERBOSE`). `TF_CPP_MIN_LOG_LEVEL` and the start-up lines follow only until TensorFlow is
    imported; the Python warnings and loggers follow at any time."""
    os.environ[VERBOSE_VARIABLE] = "1" if on else "0"
    _apply()


@contextlib.contextmanager
def verbosity(on: bool) -> Iterator[None]:
    """`set_verbose(on)` for a block, then the previous setting (the CLI's `--verbose`, in process)."""
    previous = os.environ.get(VERBOSE_VARIABLE)
    set_verbose(on)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(VERBOSE_VARIABLE, None)
        else:
            os.environ[VERBOSE_VARIABLE] = previous
        _apply()


def _apply() -> None:
    quiet = not verbose()
    if _USER_LOG_LEVEL is None:
        if quiet:
            os.environ[_LOG_LEVEL] = "3"  # C++ logs after absl is initialized: errors too (they reach us as exceptions)
        else:
            os.environ.pop(_LOG_LEVEL, None)
    ours = [entry for entry in warnings.filters if entry[0] == "ignore" and entry[1] is None
            and getattr(entry[3], "pattern", None) == _NOISY_MODULES]
    if quiet and not ours:
        warnings.filterwarnings("ignore", module=_NOISY_MODULES)
    elif not quiet and ours:
        for entry in ours:
            warnings.filters.remove(entry)
        getattr(warnings, "_filters_mutated", lambda: None)()
    _apply_logger_levels(quiet)


def _apply_logger_levels(quiet: bool) -> None:
    """The `tensorflow` and `absl` Python loggers show errors only when quiet (unless the user set their level),
    and tfmot's root-logger warnings are dropped. absl's logger is touched only once absl made it: created earlier,
    it would be a plain `Logger`."""
    root = logging.getLogger()
    if quiet:
        root.addFilter(_not_from_tfmot)   # a no-op when it is there already
    else:
        root.removeFilter(_not_from_tfmot)
    for name in _NOISY_LOGGERS:
        if name == "absl" and "absl.logging" not in sys.modules:
            continue
        logger = logging.getLogger(name)
        if quiet and logger.level == logging.NOTSET:
            logger.setLevel(logging.ERROR)
            _quieted_loggers.add(name)
        elif not quiet and name in _quieted_loggers:
            logger.setLevel(logging.NOTSET)
            _quieted_loggers.discard(name)


# The watcher: reads what fd 2 received until the parent writes the token and a verdict byte (0: drop it,
# 1: write it out). On end of file without a verdict the parent died mid-call (a C++ abort): it writes it out.
_WATCHER = r"""
import os, sys
token = sys.argv[1].encode()
data, found, verdict = bytearray(), -1, b""
while True:
    block = os.read(0, 65536)
    if not block:
        break
    data += block
    if found < 0:
        found = data.find(token, max(0, len(data) - len(block) - len(token) + 1))
    if found >= 0 and len(data) > found + len(token):
        verdict = bytes(data[found + len(token):found + len(token) + 1])
        del data[found:]
        break
if verdict != b"0" and data:
    sys.stderr.buffer.write(bytes(data))
    sys.stderr.buffer.flush()
"""


class _Hidden:
    """One `hidden_native_output` block: the real stderr's descriptor and, on demand, a stream on it."""

    def __init__(self, saved_fd: int) -> None:
        self.saved_fd = saved_fd
        self._stream: TextIO | None = None

    def stream(self) -> TextIO:
        if self._stream is None:
            self._stream = open(os.dup(self.saved_fd), "w", buffering=1, errors="backslashreplace",  # noqa: SIM115
                                encoding=getattr(sys.stderr, "encoding", None) or "utf-8")
        return self._stream

    def close(self) -> None:
        if self._stream is not None:
            with contextlib.suppress(OSError, ValueError):
                self._stream.close()
            self._stream = None


_hidden: _Hidden | None = None
_hidden_once: set[str] = set()


def _writes_to_fd2(stream: object) -> bool:
    try:
        return stream.fileno() == 2  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):  # pytest's capsys, a StringIO, a closed stream
        return False


def stderr() -> TextIO:
    """Where our own progress goes: `sys.stderr`, or inside `hidden_native_output` the real stderr (when
    `sys.stderr` writes to fd 2, which is hidden there)."""
    if _hidden is not None and _writes_to_fd2(sys.stderr):
        return _hidden.stream()
    return sys.stderr


@contextlib.contextmanager
def hidden_native_output(*, once: str | None = None) -> Iterator[None]:
    """Run the block with file descriptor 2 (what C++ writes to) hidden, unless verbose.

    The text goes to a small watcher process: dropped when the block ends normally, or with a `KeyboardInterrupt`
    (Ctrl-C, SIGTERM) or a `PipelineError` (which say themselves what went wrong); written out after any other
    exception and when this process dies inside the block (a C++ abort), so a real error is never swallowed.
    `stderr()` is the real stderr meanwhile. `once`: only the first block with this key hides (a message a
    library prints once per process). Nested blocks run as part of the outer one."""
    global _hidden
    if verbose() or _hidden is not None or os.name != "posix" or (once is not None and once in _hidden_once):
        yield
        return
    if once is not None:
        _hidden_once.add(once)
    import subprocess

    with contextlib.suppress(Exception):
        sys.stderr.flush()
    token = secrets.token_hex(16)
    opened: list[int] = []
    try:
        read_fd, write_fd = os.pipe()
        opened += [read_fd, write_fd]
        saved_fd = os.dup(2)
        opened.append(saved_fd)
        watcher = subprocess.Popen([sys.executable, "-I", "-S", "-c", _WATCHER, token], stdin=read_fd,
                                   stdout=subprocess.DEVNULL, stderr=saved_fd, start_new_session=True)
    except OSError:  # no pipe, no descriptor or no interpreter to start: nothing is hidden
        for fd in opened:
            with contextlib.suppress(OSError):
                os.close(fd)
        yield
        return
    os.close(read_fd)
    os.dup2(write_fd, 2)
    _hidden = hidden = _Hidden(saved_fd)
    replay = True
    try:
        yield
        replay = False
    except (KeyboardInterrupt, PipelineError):
        replay = False
        raise
    finally:
        _hidden = None
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        hidden.close()
        os.dup2(saved_fd, 2)
        with contextlib.suppress(OSError):
            os.write(write_fd, token.encode() + (b"1" if replay else b"0"))
        os.close(write_fd)
        os.close(saved_fd)
        try:
            watcher.wait(timeout=10)
        except subprocess.TimeoutExpired:
            watcher.kill()


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder):
    """Hides the first `import tensorflow` (and its device discovery) in `hidden_native_output`, unless verbose."""

    def find_spec(self, name, path=None, target=None):  # the finder protocol
        if name != "tensorflow":
            return None
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(self)  # one import only
        if verbose():
            return None
        import importlib.util

        spec = importlib.util.find_spec(name)
        loader = getattr(spec, "loader", None)
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        exec_module = loader.exec_module

        def quiet_exec_module(module) -> None:
            try:
                with hidden_native_output():
                    exec_module(module)
                    with contextlib.suppress(Exception):  # the cuInit line comes here; a real failure recurs later
                        module.config.list_physical_devices()
                    _apply_logger_levels(quiet=True)
            finally:
                loader.__dict__.pop("exec_module", None)

        with contextlib.suppress(AttributeError, TypeError):  # a loader that takes no attributes: not hidden
            loader.exec_module = quiet_exec_module
        return spec


_apply()
if "tensorflow" not in sys.modules:
    if not any(isinstance(finder, _QuietTensorFlowImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlowImport())
elif not verbose():  # imported before us: its start-up lines are out, but device discovery (cuInit) may be ahead
    with hidden_native_output(), contextlib.suppress(Exception):
        sys.modules["tensorflow"].config.list_physical_devices()

_FIX = "Reinstall with `make setup` (or `pip install -e .`) so the pinned versions in pyproject.toml are used."


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _major_minor(version: str) -> tuple[int, int]:
    major, minor = version.split(".")[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


def library_versions() -> dict[str, str | None]:
    """Versions of the libraries whose combination decides the output (written into every report)."""
    tensorflow = _version("tensorflow") or _version("tensorflow-cpu")
    return {
        "tensorflow": tensorflow,
        "tf_keras": _version("tf-keras") or _version("tf_keras"),
        "tensorflow_model_optimization": _version("tensorflow-model-optimization"),
        "ai_edge_litert": _version("ai-edge-litert"),
        "numpy": _version("numpy"),
        "pillow": _version("pillow"),
    }


def run_versions() -> dict[str, str | None]:
    """This package, Python and `library_versions()`: what a report, a manifest and a stage-cache key record
    (a release that changes how a stage trains must bump `__version__`, so older cache entries go unused)."""
    from tflite_pipeline import __version__

    return {"tflite_pipeline": __version__, "python": platform.python_version(), **library_versions()}


def check_versions(versions: dict[str, str | None] | None = None) -> None:
    """Raise `DependencyError` unless tensorflow, tf_keras, tfmot and LiteRT fit together."""
    v = library_versions() if versions is None else versions
    missing = [name for name in ("tensorflow", "tf_keras", "tensorflow_model_optimization", "ai_edge_litert")
               if not v.get(name)]
    if missing:
        raise DependencyError(f"Missing packages: {', '.join(missing)}. {_FIX}")
    if _major_minor(v["tensorflow"]) != _major_minor(v["tf_keras"]):
        raise DependencyError(
            f"Received tensorflow=={v['tensorflow']} with tf_keras=={v['tf_keras']}; their major.minor "
            f"versions must match (tf_keras is Keras 2 built for one TensorFlow release). {_FIX}")
    if _major_minor(v["tensorflow_model_optimization"]) < (0, 8):
        raise DependencyError(
            f"Received tensorflow-model-optimization=={v['tensorflow_model_optimization']}; "
            f"0.8 or newer is needed for TensorFlow 2.16+. {_FIX}")


check_versions()
