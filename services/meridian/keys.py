"""Key rings: a current signing key and the previous ones still accepted, each with a key id.

Every HMAC key the service uses (session tokens, user tokens, region-to-region calls) is a ring, so a
key rotates without breaking what the old key signed: the new key becomes current (it signs), the old
one stays accepted (it verifies) until what it signed has expired, then it is dropped.

A ring is written as one string — what Secrets Manager holds and the task definition passes in an
environment variable — of space-separated ``kid=secret`` pairs, the current key first::

    2026-11-23=Vb0c...  2026-08-01=q3Xa...

A string without ``=`` is a ring of one key whose id is derived from it (``k`` and 8 hex digits of its
SHA-256), so a stack created before rotation existed keeps working. Key ids are 1-32 characters of
``[A-Za-z0-9._-]``; secrets at least 32 characters.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

__all__ = ["KeyRingError", "KeyRing", "MIN_SECRET_CHARS"]

MIN_SECRET_CHARS = 32
_KID = re.compile(r"^[A-Za-z0-9._-]{1,32}$")


class KeyRingError(ValueError):
    """A key ring that cannot be used: the message says what to fix."""


@dataclass(frozen=True)
class KeyRing:
    current: str  # the key id that signs
    keys: tuple[tuple[str, bytes], ...]  # (kid, secret), the current one first

    @classmethod
    def parse(cls, text: str, *, name: str = "key ring") -> KeyRing:
        parts = text.split()
        if not parts:
            raise KeyRingError(f"{name} is empty")
        if len(parts) == 1 and "=" not in parts[0]:
            secret = parts[0]
            pairs = [(derived_kid(secret), secret)]
        else:
            pairs = []
            for part in parts:
                kid, sep, secret = part.partition("=")
                if not sep or not _KID.match(kid):
                    raise KeyRingError(f"{name}: {part[:12]!r}... is not kid=secret (kid: 1-32 of A-Z a-z 0-9 . _ -)")
                pairs.append((kid, secret))
        for kid, secret in pairs:
            if len(secret) < MIN_SECRET_CHARS:
                raise KeyRingError(f"{name}: key {kid!r} is {len(secret)} characters; use at least {MIN_SECRET_CHARS}")
        kids = [k for k, _ in pairs]
        if len(set(kids)) != len(kids):
            raise KeyRingError(f"{name}: key ids repeat ({', '.join(kids)})")
        return cls(current=pairs[0][0], keys=tuple((k, s.encode()) for k, s in pairs))

    @classmethod
    def single(cls, secret: bytes, kid: str | None = None) -> KeyRing:
        """A ring of one key (tests, and callers that hold one secret)."""
        kid = kid or derived_kid(secret.decode(errors="replace"))
        return cls(current=kid, keys=((kid, secret),))

    @property
    def signing_key(self) -> bytes:
        return self.keys[0][1]

    def get(self, kid: str) -> bytes | None:
        return next((secret for k, secret in self.keys if k == kid), None)

    def rotated(self, kid: str, secret: str, *, keep: int = 1) -> KeyRing:
        """The ring after a rotation: ``kid`` current, the ``keep`` most recent old keys still accepted."""
        if kid in dict(self.keys):
            raise KeyRingError(f"key id {kid!r} is already in the ring; choose a new one")
        ring = KeyRing.parse(f"{kid}={secret}", name="new key")
        return KeyRing(current=kid, keys=(*ring.keys, *self.keys[:keep]))

    def encode(self) -> str:
        return " ".join(f"{k}={s.decode()}" for k, s in self.keys)


def derived_kid(secret: str) -> str:
    return "k" + hashlib.sha256(secret.encode()).hexdigest()[:8]
