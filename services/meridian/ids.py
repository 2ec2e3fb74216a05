"""Time-ordered, globally unique IDs that carry their origin region: ``ord_01JD3…<16 random>_eu-west-1``.

The first 10 characters after the prefix are the millisecond timestamp in Crockford base32, so IDs sort
by creation time across regions; 16 characters (80 bits) of randomness make collisions between
processes negligible; within one process the random part is incremented for IDs of the same millisecond
(ULID's monotonic rule), so a process's IDs are strictly increasing. No auto-increment anywhere.

A *derived* id (:func:`derived_id`) is a function of what identifies a request, not of the time: the
same (user, Idempotency-Key) gives the same order id in every region and on either side of a partition,
so a duplicated or retried request collides with its first execution on the same item (D11). It has
the same shape and still ends with the region (the user's home region); its time field starts with
``Z`` (a timestamp reaches that only after the year 37,000), so :func:`parse_id` tells the two apart
and reports no creation time for a derived id.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
from dataclasses import dataclass

__all__ = ["IdError", "ParsedId", "derived_id", "new_id", "parse_id"]

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_DECODE = {c: i for i, c in enumerate(_ALPHABET)}
_PATTERN = re.compile(r"^([a-z]{1,8})_([0-9A-HJKMNP-TV-Z]{10})([0-9A-HJKMNP-TV-Z]{16})_([a-z]{2}(?:-[a-z]+)+-\d+)$")
_DERIVED = "Z"  # first character of a derived id's time field
_lock = threading.Lock()
_last = (-1, 0)


class IdError(ValueError):
    """Not a Meridian ID."""


@dataclass(frozen=True)
class ParsedId:
    prefix: str
    timestamp_ms: int | None  # None for a derived id: it carries no creation time
    region: str
    derived: bool = False


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


def derived_id(prefix: str, region: str, *parts: str) -> str:
    """The id of the thing ``parts`` identify (e.g. user id and Idempotency-Key): the same in every process.

    125 bits of SHA-256 over the length-prefixed parts (no two different tuples give the same input)."""
    if not parts:
        raise ValueError("a derived id needs at least one part")
    data = b"".join(len(p.encode()).to_bytes(4, "big") + p.encode() for p in (prefix, region, *parts))
    value = int.from_bytes(hashlib.sha256(data).digest()[:16], "big") >> 3
    return f"{prefix}_{_DERIVED}{_encode(value, 25)}_{region}"


def parse_id(value: str) -> ParsedId:
    match = _PATTERN.match(value)
    if not match:
        raise IdError(f"{value!r} is not a Meridian id (prefix_<26 chars>_<region>)")
    if match.group(2).startswith(_DERIVED):
        return ParsedId(prefix=match.group(1), timestamp_ms=None, region=match.group(4), derived=True)
    ms = 0
    for ch in match.group(2):
        ms = ms * 32 + _DECODE[ch]
    return ParsedId(prefix=match.group(1), timestamp_ms=ms, region=match.group(4))
