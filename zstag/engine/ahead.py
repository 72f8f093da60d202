"""Run an iterator in a thread of its own, a few items ahead of the one consuming it."""

from __future__ import annotations

import queue
import threading
from collections.abc import Generator, Iterator
from typing import TypeVar

T = TypeVar("T")
_END = object()


def ahead(items: Iterator[T], depth: int, name: str = "zstag-ahead") -> Generator[T, None, None]:
    """The items of `items`, produced by a thread that runs at most `depth` items ahead.

    Why: the engine's main thread on a GPU both prepares batches (receives them from the workers,
    runs nvJPEG, whose host side blocks until the decoder is done) and queues forward passes and
    writes results; in one thread those waits add up instead of overlapping (docs/performance.md).
    An exception in the producer is raised here, at the item where it happened. Closing this
    iterator early (the caller stops, Ctrl-C) stops the producer after the item it is on and closes
    `items` in the producer's thread, so a DataLoader's workers shut down.
    """
    slots: queue.Queue[tuple[bool, object]] = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def offer(entry: tuple[bool, object]) -> bool:
        """Queue `entry` unless the consumer has gone; whether it was queued."""
        while not stop.is_set():
            try:
                slots.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not offer((True, item)):
                    return
            offer((True, _END))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which raises it
            offer((False, exc))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    producer = threading.Thread(target=produce, name=name, daemon=True)
    producer.start()
    try:
        while True:
            ok, item = slots.get()
            if not ok:
                assert isinstance(item, BaseException)
                raise item
            if item is _END:
                return
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        producer.join()
