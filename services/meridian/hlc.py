"""Hybrid logical clock (Kulkarni et al., 2014) and the version order used for last-writer-wins.

A timestamp is (wall milliseconds, logical counter). ``now()`` is the send/local-event rule and
``update(remote)`` the receive rule. A remote timestamp more than ``max_drift_ms`` ahead of this
machine's clock is refused (:class:`ClockDriftError`) rather than adopted, so one bad clock cannot drag
every region's clock into the future. Versions are ``(hlc, region)``, encoded as fixed-width strings so
that DynamoDB's string comparison in condition expressions is the same total order.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["HLC", "ClockDriftError", "Timestamp", "Version"]


class ClockDriftError(ValueError):
    """A remote timestamp is too far ahead of the local clock to be trusted."""


@dataclass(frozen=True, order=True)
class Timestamp:
    wall: int
    logical: int = 0

    def encode(self) -> str:
        return f"{self.wall:013d}.{self.logical:06d}"

    @classmethod
    def decode(cls, text: str) -> Timestamp:
        wall, _, logical = text.partition(".")
        if not (wall.isdigit() and logical.isdigit()):
            raise ValueError(f"{text!r} is not an HLC timestamp")
        return cls(int(wall), int(logical))


@dataclass(frozen=True, order=True)
class Version:
    """The LWW order: HLC first, the writing region as the tiebreak."""

    hlc: Timestamp
    region: str

    def encode(self) -> str:
        return f"{self.hlc.encode()}@{self.region}"

    @classmethod
    def decode(cls, text: str) -> Version:
        hlc, sep, region = text.partition("@")
        if not sep or not region:
            raise ValueError(f"{text!r} is not a version (hlc@region)")
        return cls(Timestamp.decode(hlc), region)


class HLC:
    def __init__(self, *, max_drift_ms: int = 60_000, wall_clock: Callable[[], int] | None = None) -> None:
        self._wall = wall_clock or (lambda: int(time.time() * 1000))
        self._last = Timestamp(0, 0)
        self._max_drift = max_drift_ms
        self._lock = threading.Lock()

    def now(self) -> Timestamp:
        with self._lock:
            pt = self._wall()
            if pt > self._last.wall:
                self._last = Timestamp(pt, 0)
            else:
                self._last = Timestamp(self._last.wall, self._last.logical + 1)
            return self._last

    def update(self, remote: Timestamp) -> Timestamp:
        with self._lock:
            pt = self._wall()
            if remote.wall - pt > self._max_drift:
                raise ClockDriftError(
                    f"remote clock is {remote.wall - pt} ms ahead (limit {self._max_drift} ms); not adopted"
                )
            wall = max(self._last.wall, remote.wall, pt)
            if wall == self._last.wall == remote.wall:
                logical = max(self._last.logical, remote.logical) + 1
            elif wall == self._last.wall:
                logical = self._last.logical + 1
            elif wall == remote.wall:
                logical = remote.logical + 1
            else:
                logical = 0
            self._last = Timestamp(wall, logical)
            return self._last

    def peek(self) -> Timestamp:
        return self._last
