"""Run an iterator in a background thread, a few items ahead (overlaps image decoding with compute)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

__all__ = ["prefetch"]

T = TypeVar("T")
_DONE = object()


def prefetch(items: Iterable[T], depth: int = 2) -> Iterator[T]:
    """Yield the items of ``items``, producing up to ``depth`` of them ahead in a thread.

    Exceptions raised while producing are re-raised in the consumer at the same position. Stopping
    early (``break`` or an exception in the consumer) stops the producer.

    Parameters
    ----------
    items : iterable
        The source (e.g. batches of decoded, preprocessed images).
    depth : int
        How many items may wait in the queue; ``0`` disables the thread.

    Yields
    ------
    object
        The items, in order.
    """
    if depth <= 0:
        yield from items
        return
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
        except BaseException as exc:
            q.put((_DONE, exc))
            return
        q.put((_DONE, None))

    thread = threading.Thread(target=produce, name="explainkit-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item, exc = q.get()
            if item is _DONE:
                if exc is not None:
                    raise exc
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)
