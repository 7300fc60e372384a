"""Decoded training samples kept in memory up to a budget (both families' datasets use it)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable


class SampleCache:
    """Decoded training samples by index, least recently used dropped beyond ``max_bytes``.

    A pass over LIVECell's 5,000 images would otherwise keep every one: cheap for Mask
    R-CNN's crops (≈ 0.5 MB an image), not for cellpose's flow targets (≈ 6 MB). ``size``
    says what an entry costs. Each DataLoader worker holds its own cache.
    """

    def __init__(self, max_bytes: float, size) -> None:
        self.max_bytes, self.size = max_bytes, size
        self.entries: OrderedDict[Hashable, tuple[object, int]] = OrderedDict()  # value, its size when put
        self.bytes = 0
        self.evicted = 0

    def get(self, index: Hashable):
        if index in self.entries:
            self.entries.move_to_end(index)
            return self.entries[index][0]
        return None

    def put(self, index: Hashable, value) -> None:
        if index in self.entries:
            self.bytes -= self.entries.pop(index)[1]
        nbytes = int(self.size(value))
        self.entries[index] = (value, nbytes)
        self.bytes += nbytes
        while self.bytes > self.max_bytes and len(self.entries) > 1:
            _, (_, old) = self.entries.popitem(last=False)
            self.bytes -= old
            self.evicted += 1
