"""Running an iterator in a background thread, a bounded number of items ahead."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import TypeVar

T = TypeVar("T")


class _Failed:
    def __init__(self, exc: BaseException):
        self.exc = exc


_DONE = object()


def prefetch(items: Iterator[T], depth: int = 32) -> Iterator[T]:
    """Run `items` in a background thread, `depth` items ahead. OpenCV's decoders release the
    GIL, so decoding overlaps the detector. An error in the thread is raised here; leaving
    the loop early stops the thread."""
    q: queue.Queue = queue.Queue(maxsize=max(depth, 1))
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in items:
                if not put(item):
                    return
        except BaseException as exc:  # handed to the consumer, which raises it
            put(_Failed(exc))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()  # a generator's finally (VideoCapture.release) runs in its own thread
            put(_DONE)

    thread = threading.Thread(target=work, name="detect-decode", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                return
            if isinstance(item, _Failed):
                raise item.exc
            yield item
    finally:
        stop.set()
        thread.join()
