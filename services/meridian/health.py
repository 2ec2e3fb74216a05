"""What this region believes about the others: its own probes of their ``/health/ready``.

A region turns unhealthy after ``failure_threshold`` consecutive failed probes and healthy again after
the same number of successes (Route 53's rule). Unknown regions count as healthy until probed.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

__all__ = ["HealthView"]


@dataclass
class _State:
    healthy: bool = True
    failures: int = 0
    successes: int = 0


class HealthView:
    def __init__(self, regions: list[str] | tuple[str, ...], *, failure_threshold: int = 3) -> None:
        self._threshold = failure_threshold
        self._states = {r: _State() for r in regions}
        self._lock = threading.Lock()

    def record(self, region: str, ok: bool) -> bool:
        """Record one probe result; returns the region's health after it."""
        with self._lock:
            s = self._states.setdefault(region, _State())
            if ok:
                s.successes, s.failures = s.successes + 1, 0
                if not s.healthy and s.successes >= self._threshold:
                    s.healthy = True
            else:
                s.failures, s.successes = s.failures + 1, 0
                if s.healthy and s.failures >= self._threshold:
                    s.healthy = False
            return s.healthy

    def mark(self, region: str, healthy: bool) -> None:
        with self._lock:
            self._states[region] = _State(healthy=healthy)

    def is_healthy(self, region: str) -> bool:
        return self._states.get(region, _State()).healthy

    def snapshot(self) -> dict[str, bool]:
        with self._lock:
            return {r: s.healthy for r, s in self._states.items()}
