"""Progress lines on stderr, and the step they say a command is in.

Every long step logs a line `[step] ...` before it starts; `current_step()` is the last one, so a command
stopped by Ctrl-C or SIGTERM can say what it stopped.

Long loops also show a bar with counts and the time left, and a one-line summary when they finish:

    with progress.bar("verify", total=len(folder), unit="images") as bar:
        for batch in batches:
            ...
            bar.advance(len(batch))
        bar.finish(f"[verify] {len(folder)} images in {progress.duration(bar.elapsed)}")

On a terminal the bar is one line redrawn with `\\r` (at most every 0.2 s). Elsewhere (CI, tests, pipes) and
when the caller passed its own `log` callable, it is a few plain lines: one when it starts, then at most one per
10% of the total and per 10 s (a line needs both), and the summary, so logs stay short.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import TextIO

from tflite_pipeline import env

Log = Callable[[str], None]  # where a step writes its progress lines; `log` by default

REDRAW_SECONDS = 0.2     # a terminal bar is redrawn at most this often
PLAIN_SECONDS = 10.0     # a plain progress line at most this often ...
PLAIN_FRACTION = 0.1     # ... and only after this much more of the total

_current = ""
_drawn: Progress | None = None  # the terminal bar on the current line, cleared before a log line


def _stream() -> TextIO:
    return env.stderr()


def log(message: str) -> None:
    """Print `message` to stderr at once, and remember its `[step]` prefix."""
    global _current
    if message.startswith("[") and "]" in message:
        _current = message[1:message.index("]")]
    stream = _stream()
    bar = _drawn
    if bar is not None:
        bar._erase(stream)
    print(message, file=stream, flush=True)
    if bar is not None:
        bar._draw(stream)


def current_step() -> str:
    return _current


def reset() -> None:
    global _current
    _current = ""


def step_for(default: str, log: Log | None = None) -> str:
    """The step the last `[step]` line named, when lines go to this module's `log` (None too); else `default`
    (a caller's own `log` never updates `current_step()`, so it may be stale)."""
    return _current if (log is None or log is globals()["log"]) and _current else default


def duration(seconds: float) -> str:
    """`18.2 s` under a minute, else `1:05` / `1:02:03` (what summaries print)."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    return clock_time(seconds)


def clock_time(seconds: float) -> str:
    """`0:41`, `12:05`, `1:02:03`: an eta."""
    seconds = max(0, int(seconds + 0.5))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def size(num_bytes: int) -> str:
    """`612.3 KiB` / `3.40 MiB`, as the report writes sizes."""
    return f"{num_bytes / 2**20:,.2f} MiB" if num_bytes >= 2**20 else f"{num_bytes / 1024:,.1f} KiB"


class Progress:
    """A counted step: `advance(n)` / `update(done)` as work gets done, `say(line)` for a line of its own (an
    epoch's metrics) and `finish(summary)` at the end. Use `bar(...)`; as a context manager it finishes on
    success and, on an error or a stop, just ends its line (no summary)."""

    def __init__(self, step: str, total: int | None, unit: str = "", *, what: str = "", text: str | None = None,
                 log: Log | None = None, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.step, self.total, self.unit, self.what = step, total, unit, what
        self.done = 0
        self.text = text  # replaces the `done/total unit` part of the line when set
        self._plain_log = log if log is not None and log is not globals()["log"] else None
        self._stream = stream
        self._clock = clock
        self.started = clock()
        self._tty = self._plain_log is None and _isatty(self._out())
        self._finished = False
        self._last_line, self._last_line_done = self.started, 0
        self._last_draw = -math.inf
        self._width = 0
        if self._tty:
            global _drawn
            if _drawn is not None and _drawn is not self:
                _drawn.close()
            _drawn = self
            self._draw(self._out())
        else:
            self._emit(self.line())

    # --- what it shows

    @property
    def elapsed(self) -> float:
        return self._clock() - self.started

    def eta(self) -> float | None:
        """Seconds left at the rate so far; None before the first unit or without a total."""
        if not self.total or self.done <= 0 or self.done >= self.total:
            return None
        return self.elapsed * (self.total - self.done) / self.done

    def line(self) -> str:
        """`[train] epoch 2/5  batch 120/469  eta 0:41`, `[verify] 640/2000 images  eta 0:05`."""
        if self.text is not None:
            count = self.text
        elif self.total is not None:
            count = f"{self.done}/{self.total} {self.unit}".rstrip()
        else:
            count = f"{self.done} {self.unit}".rstrip()
        out = " ".join(part for part in (f"[{self.step}]", self.what, count) if part)
        eta = self.eta()
        return out + (f"  eta {clock_time(eta)}" if eta is not None else "")

    # --- what the step calls

    def advance(self, n: int = 1, *, text: str | None = None) -> None:
        self.update(self.done + n, text=text)

    def update(self, done: int, *, text: str | None = None) -> None:
        self.done = done
        if text is not None:
            self.text = text
        if self._finished:
            return
        now = self._clock()
        if self._tty:
            if now - self._last_draw >= REDRAW_SECONDS:
                self._draw(self._out())
            return
        moved = (self.done - self._last_line_done >= PLAIN_FRACTION * self.total) if self.total else True
        if moved and now - self._last_line >= PLAIN_SECONDS and not (self.total and self.done >= self.total):
            self._emit(self.line())

    def say(self, message: str) -> None:
        """A line of its own (it counts as this step's latest plain line)."""
        if self._tty:
            stream = self._out()
            self._erase(stream)
            print(message, file=stream, flush=True)
            if not self._finished:
                self._draw(stream)
        else:
            self._emit(message)

    def finish(self, summary: str | None = None) -> None:
        """End with the summary line (default `[step] what done/total unit in 3.2 s`)."""
        if self._finished:
            return
        if summary is None:
            count = f"{self.done}/{self.total}" if self.total is not None and self.done != self.total else \
                str(self.done)
            summary = " ".join(part for part in (f"[{self.step}]", self.what, f"{count} {self.unit}".rstrip(),
                                                 f"in {duration(self.elapsed)}") if part)
        self._finished = True
        if self._tty:
            stream = self._out()
            self._erase(stream)
            print(summary, file=stream, flush=True)
            self._release()
        else:
            self._emit(summary)

    def close(self) -> None:
        """Stop without a summary (an error or a stop): a terminal bar keeps its last state on its own line."""
        if self._finished:
            return
        self._finished = True
        if self._tty:
            stream = self._out()
            self._draw(stream)
            stream.write("\n")
            stream.flush()
            self._release()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc_info: object) -> None:
        if kind is None:
            self.finish()
        else:
            self.close()

    # --- rendering

    def _out(self) -> TextIO:
        return self._stream if self._stream is not None else _stream()

    def _emit(self, message: str) -> None:
        self._last_line, self._last_line_done = self._clock(), self.done
        (self._plain_log or log)(message)

    def _draw(self, stream: TextIO) -> None:
        text = self.line()
        stream.write("\r" + text + " " * max(0, self._width - len(text)))
        stream.flush()
        self._width = len(text)
        self._last_draw = self._clock()

    def _erase(self, stream: TextIO) -> None:
        if self._width:
            stream.write("\r" + " " * self._width + "\r")
            self._width = 0

    def _release(self) -> None:
        global _drawn
        if _drawn is self:
            _drawn = None


def _isatty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def bar(step: str, total: int | None, unit: str = "", *, what: str = "", text: str | None = None,
        log: Log | None = None, inherit_step: bool = False, stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic) -> Progress:
    """A progress bar for `total` units (None: unknown, no eta) of `step`, shown at once.

    `log`: the `log` callable the calling function was given. This module's `log` (or None) draws on stderr,
    redrawn in place on a terminal; any other callable (e.g. `lines.append`) receives the few plain lines.
    `inherit_step`: label the lines with the step the last `[step]` line named (a pruning stage's training
    shows `[prune] epoch ...`), `step` when there is none or when lines go to another `log`. `text` replaces the
    `done/total unit` part (`epoch 2/5  batch 120/469`; `advance(text=...)` changes it); `stream` and `clock` are
    for tests."""
    if inherit_step:
        step = step_for(step, log)
    return Progress(step, total, unit, what=what, text=text, log=log, stream=stream, clock=clock)
