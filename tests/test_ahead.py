"""`zstag.engine.ahead`: an iterator run by a thread of its own, a bounded number of items ahead."""

from __future__ import annotations

import threading
import time

import pytest

from zstag.engine.ahead import ahead


def test_items_arrive_in_order_from_another_thread():
    threads = set()

    def numbers():
        for i in range(50):
            threads.add(threading.current_thread().name)
            yield i

    assert list(ahead(numbers(), 2, name="producer")) == list(range(50))
    assert threads == {"producer"}


def test_the_producer_stays_at_most_depth_items_ahead():
    made = []

    def numbers():
        for i in range(20):
            made.append(i)
            yield i

    items = ahead(numbers(), 3)
    assert next(items) == 0
    time.sleep(0.3)  # room for the producer to run as far as it may
    # one taken, `depth` queued, and one more made that waits for a free slot
    assert len(made) <= 1 + 3 + 1
    assert list(items) == list(range(1, 20))


def test_an_error_is_raised_where_it_happened():
    def failing():
        yield 1
        yield 2
        raise ValueError("bad batch")

    items = ahead(failing(), 2)
    assert next(items) == 1 and next(items) == 2
    with pytest.raises(ValueError, match="bad batch"):
        next(items)


def test_closing_early_stops_the_producer_and_closes_its_source():
    closed, made = threading.Event(), []

    def endless():
        try:
            i = 0
            while True:
                made.append(i)
                yield i
                i += 1
        finally:
            closed.set()

    items = ahead(endless(), 2)
    assert [next(items) for _ in range(3)] == [0, 1, 2]
    items.close()  # joins the producer
    assert closed.is_set()
    count = len(made)
    time.sleep(0.2)
    assert len(made) == count  # nothing runs any more
    assert not [t for t in threading.enumerate() if t.name == "zstag-ahead"]
