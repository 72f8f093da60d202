"""Ctrl-C is remembered even where Python swallows the KeyboardInterrupt it raises."""

from __future__ import annotations

import os
import signal

import pytest

from zstag.core import interrupt


@pytest.fixture(autouse=True)
def python_sigint_handler():
    """Python's own SIGINT handler, whatever the test run inherited: a shell starts background jobs
    with SIGINT ignored, and Python then keeps it ignored."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


class RaisesInDel:
    """An object whose finaliser receives the signal, like a decoder closed by the garbage collector."""

    def __del__(self) -> None:
        os.kill(os.getpid(), signal.SIGINT)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_an_interrupt_swallowed_in_a_finaliser_is_still_seen():
    with interrupt.remembered() as ctrl_c:
        ctrl_c.check()  # nothing pressed yet
        RaisesInDel()  # collected at once: its KeyboardInterrupt is printed as "Exception ignored" and lost
        with pytest.raises(KeyboardInterrupt):
            ctrl_c.check()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_the_interrupt_is_still_raised_at_once():
    with interrupt.remembered() as ctrl_c, pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(1000):  # the handler runs between bytecodes, well within this loop
            pass
    assert ctrl_c.pressed


def test_an_ignored_sigint_stays_ignored():
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with interrupt.remembered() as ctrl_c:
            os.kill(os.getpid(), signal.SIGINT)
            ctrl_c.check()
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
