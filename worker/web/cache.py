"""The dashboard's data, read at most once per freshness window however many browsers poll
it: a page that refreshes itself, open in twenty tabs, must not cost the jobs their
database. An action taken through the endpoint clears it at once."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class FreshCache(Generic[T]):
    """One value, read again once `fresh_s` old or after `clear()`.

    A read that an action overtook is returned to its caller but not kept: the page an
    action leads back to always shows the action's effect.
    """

    def __init__(self, fresh_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._fresh_s = fresh_s
        self._clock = clock
        self._lock = threading.Lock()
        self._kept: tuple[float, T] | None = None
        self._generation = 0  # counts clears: a value read across one is not kept

    def get(self, read: Callable[[], T]) -> T:
        with self._lock:
            if self._kept is not None and self._clock() - self._kept[0] < self._fresh_s:
                return self._kept[1]
            generation = self._generation
        read_at = self._clock()
        value = read()
        with self._lock:
            if self._generation == generation:
                self._kept = (read_at, value)
        return value

    def clear(self) -> None:
        with self._lock:
            self._kept = None
            self._generation += 1
