"""Ctrl-C that cannot be lost.

Python turns SIGINT into a KeyboardInterrupt wherever the main thread happens to be. Raised inside
a `__del__` method or a weakref callback (a decoder's file being closed by the garbage collector,
say), it is printed as "Exception ignored" and swallowed, and a long run goes on as if nothing had
been pressed. `remembered()` keeps the usual behaviour (the interrupt is raised at once) and also
records it, so the run's loop stops at its next `check()` even when the first raise was lost.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


class CtrlC:
    """Whether SIGINT arrived while `remembered()` was active."""

    def __init__(self) -> None:
        self.pressed = False

    def check(self) -> None:
        """Raise KeyboardInterrupt if Ctrl-C was pressed, whether or not its first raise got through."""
        if self.pressed:
            raise KeyboardInterrupt


@contextlib.contextmanager
def remembered() -> Iterator[CtrlC]:
    """Record SIGINT for the duration. Left alone where Python's own handler is not installed (not
    the main thread, or SIGINT ignored by the parent, as under `nohup`): nothing to remember then."""
    ctrl_c = CtrlC()
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield ctrl_c
        return

    def handler(signum: int, frame: object) -> None:
        ctrl_c.pressed = True
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, handler)
    try:
        yield ctrl_c
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
