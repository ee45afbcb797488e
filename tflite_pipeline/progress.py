"""Progress lines on stderr, and the step they say a command is in.

Every long step logs a line `[step] ...` before it starts; `current_step()` is the last one, so a command
stopped by Ctrl-C or SIGTERM can say what it stopped.
"""

from __future__ import annotations

import sys
from typing import Callable

Log = Callable[[str], None]  # where a step writes its progress lines; `log` by default

_current = ""


def log(message: str) -> None:
    """Print `message` to stderr at once, and remember its `[step]` prefix."""
    global _current
    if message.startswith("[") and "]" in message:
        _current = message[1:message.index("]")]
    print(message, file=sys.stderr, flush=True)


def current_step() -> str:
    return _current


def reset() -> None:
    global _current
    _current = ""
