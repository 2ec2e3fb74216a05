"""Time-ordered, globally unique IDs that carry their origin region: ``ord_01JD3…<16 random>_eu-west-1``.

The first 10 characters after the prefix are the millisecond timestamp in Crockford base32, so IDs sort
by creation time across regions; 16 characters (80 bits) of randomness make collisions between
processes negligible; within one process the random part is incremented for IDs of the same millisecond
(ULID's monotonic rule), so a process's IDs are strictly increasing. No auto-increment anywhere.
"""

from __future__ import annotations

import os
import re
import threading
import time
from dataclasses import dataclass

__all__ = ["IdError", "ParsedId", "new_id", "parse_id"]

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_DECODE = {c: i for i, c in enumerate(_ALPHABET)}
_PATTERN = re.compile(r"^([a-z]{1,8})_([0-9A-HJKMNP-TV-Z]{10})([0-9A-HJKMNP-TV-Z]{16})_([a-z]{2}(?:-[a-z]+)+-\d+)$")
_lock = threading.Lock()
_last = (-1, 0)


class IdError(ValueError):
    """Not a Meridian ID."""


@dataclass(frozen=True)
class ParsedId:
    prefix: str
    timestamp_ms: int
    region: str


def _encode(value: int, length: int) -> str:
    out = []
    for _ in range(length):
        value, rem = divmod(value, 32)
        out.append(_ALPHABET[rem])
    return "".join(reversed(out))


def new_id(prefix: str, region: str, *, now_ms: int | None = None) -> str:
    """A new id; ``now_ms`` pins the time (then the process's monotonic sequence is not used)."""
    global _last
    if now_ms is not None:
        return f"{prefix}_{_encode(now_ms, 10)}{_encode(int.from_bytes(os.urandom(10), 'big'), 16)}_{region}"
    ms = int(time.time() * 1000)
    with _lock:
        last_ms, last_rand = _last
        rand = last_rand + 1 if ms <= last_ms else int.from_bytes(os.urandom(10), "big") >> 1
        ms = max(ms, last_ms)
        _last = (ms, rand)
    return f"{prefix}_{_encode(ms, 10)}{_encode(rand % (1 << 80), 16)}_{region}"


def parse_id(value: str) -> ParsedId:
    match = _PATTERN.match(value)
    if not match:
        raise IdError(f"{value!r} is not a Meridian id (prefix_<26 chars>_<region>)")
    ms = 0
    for ch in match.group(2):
        ms = ms * 32 + _DECODE[ch]
    return ParsedId(prefix=match.group(1), timestamp_ms=ms, region=match.group(4))
