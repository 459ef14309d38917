"""An LRU cache of loaded models under a memory bound, loading each key once."""

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from torchwire.service.errors import ResourceExhausted

Loaded = TypeVar("Loaded")


class ModelCache(Generic[Loaded]):
    """Keeps loaded models while their total size fits `max_bytes`, evicting the least
    recently used. A model larger than the bound on its own is refused.

    Concurrent first requests for one key load it once.

    Args:
        max_bytes: the memory bound.
        load: builds the loaded model for a key.
        size_of: what a loaded model costs, in bytes.
        on_evict: releases a loaded model (stops its batcher, frees its session).
    """

    def __init__(
        self,
        max_bytes: int,
        load: Callable[[Hashable], Loaded],
        size_of: Callable[[Loaded], int],
        on_evict: Callable[[Loaded], None] = lambda _: None,
    ) -> None:
        self.max_bytes = max_bytes
        self._load = load
        self._size_of = size_of
        self._on_evict = on_evict
        self._models: OrderedDict[Hashable, tuple[Loaded, int]] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[Hashable, threading.Lock] = {}

    def get(self, key: Hashable) -> Loaded:
        """The loaded model for `key`, loading it on first use."""
        with self._lock:
            entry = self._models.get(key)
            if entry is not None:
                self._models.move_to_end(key)
                return entry[0]
            key_lock = self._loading.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                entry = self._models.get(key)
            if entry is None:
                loaded = self._load(key)
                entry = (loaded, self._size_of(loaded))
                if entry[1] > self.max_bytes:
                    self._on_evict(loaded)
                    with self._lock:
                        self._loading.pop(key, None)
                    raise ResourceExhausted(
                        f"the model needs {entry[1]} bytes loaded, more than "
                        f"max_loaded_bytes={self.max_bytes}"
                    )
            evicted = []
            with self._lock:
                self._models[key] = entry
                self._models.move_to_end(key)
                while len(self._models) > 1 and self.total_bytes() > self.max_bytes:
                    evicted.append(self._models.popitem(last=False)[1][0])
                self._loading.pop(key, None)
        for model in evicted:
            self._on_evict(model)
        return entry[0]

    def total_bytes(self) -> int:
        """What the loaded models cost together."""
        return sum(size for _, size in self._models.values())

    def evict(self, predicate: Callable[[Hashable], bool]) -> None:
        """Drops and releases every loaded model whose key matches."""
        with self._lock:
            doomed = [self._models.pop(key)[0] for key in list(self._models) if predicate(key)]
        for model in doomed:
            self._on_evict(model)

    def values(self) -> list[Loaded]:
        """The loaded models, least recently used first."""
        with self._lock:
            return [entry[0] for entry in self._models.values()]

    def loaded(self) -> list[Hashable]:
        """Keys of the loaded models, least recently used first."""
        with self._lock:
            return list(self._models)
