"""Counters as per-region shards: a G-counter CRDT that DynamoDB global tables cannot break.

Global tables resolve whole items last-writer-wins, so one counter item incremented in two regions
loses increments. Each region adds only to its own shard item (``name``, ``shard=<region>``); the value
is the sum of the shards a replica holds. Merging two views keeps each shard's maximum, since a
shard only grows and only its own region writes it.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

__all__ = ["ShardedCounter"]


class ShardedCounter:
    def __init__(self, shards: Mapping[str, int] | None = None) -> None:
        self.shards: dict[str, int] = dict(shards or {})
        self._lock = threading.Lock()

    def add(self, region: str, by: int) -> None:
        if by < 0:
            raise ValueError("a G-counter only grows; use two counters for decrements")
        with self._lock:
            self.shards[region] = self.shards.get(region, 0) + by

    def value(self) -> int:
        return sum(self.shards.values())

    @staticmethod
    def merge(a: Mapping[str, int], b: Mapping[str, int]) -> dict[str, int]:
        return {r: max(a.get(r, 0), b.get(r, 0)) for r in {*a, *b}}
