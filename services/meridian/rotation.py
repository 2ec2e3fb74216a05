"""Key rotation of the stack's secret: one code path for ``meridian keys rotate`` and the key-rotator Lambda.

The secret (``<project>-<stack>/session-keys``, in the primary region, replicated to every region) is JSON
with one key ring per purpose (:mod:`meridian.keys`): ``session`` (read-your-writes tokens), ``peer``
(region-to-region calls), ``users`` (built-in user tokens), ``operator`` (the operator credential) and
``claims`` (keys the email claims; never rotated: claims are keyed by it).

A rotation puts a fresh key, with a dated key id, at the head of each ring and keeps the previous one
(``keep=1``), so whatever the previous key signed still verifies. Two timings make it safe:

- **Activation.** Regions re-read the secret every ``MERIDIAN_KEYS_REFRESH_SECONDS`` (default 300,
  :mod:`meridian.keysource`), not all at once. A region that signed with the new key at once would send
  tokens and peer calls that a region still on the old ring refuses. So a new key is *accepted* as soon as a
  region sees it but *signs* only once it is :data:`ACTIVATION_SECONDS` old (two refresh periods), when every
  region has it: :func:`signing_ring`.
- **Minimum age.** Rotating again drops the key before the current one. Every token lives at most
  :data:`LONGEST_TOKEN_TTL` (one day), so the current key must be at least :data:`MIN_KEY_AGE_SECONDS` old
  (TTL plus activation plus a margin) before the next rotation: :func:`plan_rotation` refuses otherwise
  unless forced (a leaked key, where ending its sessions is the point). The scheduled rotation's interval
  (``meridian:keyRotationDays``) is at least :data:`MIN_ROTATION_DAYS`, two TTLs.

Pure apart from :func:`rotate_secret`, which takes a boto3 Secrets Manager client.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from meridian.keys import KeyRing, KeyRingError

__all__ = [
    "ACTIVATION_SECONDS",
    "ALL_SIGNING",
    "DEFAULT_REFRESH_SECONDS",
    "KeyTooYoung",
    "LONGEST_TOKEN_TTL",
    "MAX_ROTATION_DAYS",
    "MIN_KEY_AGE_SECONDS",
    "MIN_ROTATION_DAYS",
    "RING_FIELDS",
    "RingChange",
    "Rotation",
    "RotationError",
    "issued_at",
    "key_id",
    "parse_secret",
    "plan_rotation",
    "read_rings",
    "rotate_secret",
    "secret_name",
    "signing_ring",
]

#: ring name (``--ring``) -> the field of the secret's JSON that holds it
RING_FIELDS: Mapping[str, str] = {"session": "session", "peer": "peer", "users": "users", "operator": "operator"}
#: What ``--ring all`` and the scheduled rotation rotate: the keys the service signs with. The operator
#: credential is held by people and scripts, so it rotates only when asked for (``--ring operator``).
ALL_SIGNING: tuple[str, ...] = ("session", "peer", "users")
#: The longest any token lives: a user token (meridian.auth) or a session token (meridian.sessions), one day
#: each (a test holds this to both; not imported, so that the Lambda's package needs no PyJWT).
LONGEST_TOKEN_TTL = 24 * 3600
#: How often each region re-reads the secret by default (meridian.keysource).
DEFAULT_REFRESH_SECONDS = 300
#: A new key signs only this long after its rotation: every region has read it by then (two refreshes).
ACTIVATION_SECONDS = 2 * DEFAULT_REFRESH_SECONDS
#: The current key must be this old before the next rotation drops the key before it.
MIN_KEY_AGE_SECONDS = LONGEST_TOKEN_TTL + ACTIVATION_SECONDS + 3600
#: The smallest scheduled rotation interval: two of the longest token TTLs.
MIN_ROTATION_DAYS = 2 * LONGEST_TOKEN_TTL // 86400
#: The largest: a year (a key that never rotates is what rotation exists to avoid).
MAX_ROTATION_DAYS = 365
#: Key ids are dated: ``20261123T101500Z`` (UTC, to the second).
_KID_FORMAT = "%Y%m%dT%H%M%SZ"


class RotationError(ValueError):
    """A rotation that cannot (or must not) be done; the message is one line and says what to do."""


class KeyTooYoung(RotationError):
    """The current key is too young to rotate again: the key before it may still verify live tokens."""


def secret_name(project: str, stack: str) -> str:
    """The secret's name, as infra/program.py declares it."""
    return f"{project}-{stack}/session-keys"


def key_id(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).strftime(_KID_FORMAT)


def issued_at(kid: str) -> float | None:
    """When a dated key id was made, or None (a key from before rotation existed, or another scheme)."""
    try:
        return datetime.strptime(kid, _KID_FORMAT).replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None


def signing_ring(ring: KeyRing, *, now: float, activation: float = ACTIVATION_SECONDS) -> KeyRing:
    """``ring`` as a region should use it at ``now``: a current key younger than ``activation`` is accepted
    but does not sign yet (the key after it signs), so that no region signs with a key another region has
    not read. A ring of one key, or a current key without a date, is used as it is."""
    made = issued_at(ring.current)
    if len(ring.keys) < 2 or made is None or now - made >= activation:
        return ring
    newest, previous, *rest = ring.keys
    return KeyRing(current=previous[0], keys=(previous, newest, *rest))


def parse_secret(text: str) -> dict[str, Any]:
    """The secret's JSON object; every ring it must hold parses."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise RotationError("the secret is not JSON; it should be the object infra/program.py writes") from None
    if not isinstance(value, dict):
        raise RotationError("the secret is not a JSON object; it should be the object infra/program.py writes")
    missing = [f for f in RING_FIELDS.values() if not isinstance(value.get(f), str)]
    if missing:
        raise RotationError(f"the secret lacks the key ring(s) {', '.join(missing)}")
    for ring, name in RING_FIELDS.items():
        try:
            KeyRing.parse(value[name], name=f"ring {ring!r}")
        except KeyRingError as exc:
            raise RotationError(str(exc)) from None
    return value


def read_rings(text: str) -> dict[str, KeyRing]:
    """ring name -> ring, from the secret's JSON."""
    value = parse_secret(text)
    return {ring: KeyRing.parse(value[name], name=f"ring {ring!r}") for ring, name in RING_FIELDS.items()}


@dataclass(frozen=True)
class RingChange:
    ring: str
    new_kid: str
    kept: tuple[str, ...]  # key ids still accepted (the previous current first)
    dropped: tuple[str, ...]  # key ids no longer accepted

    def describe(self) -> str:
        kept = ", ".join(self.kept) or "none"
        dropped = f"; drops {', '.join(self.dropped)}" if self.dropped else ""
        return f"{self.ring}: new current key {self.new_kid}; still accepted: {kept}{dropped}"


@dataclass(frozen=True)
class Rotation:
    changes: tuple[RingChange, ...]
    secret_string: str = field(repr=False)  # the new secret value (never print it)
    version_id: str | None = None  # the version Secrets Manager created (None in a dry run)


def _age_problem(ring_name: str, ring: KeyRing, now: float) -> str | None:
    if len(ring.keys) < 2:
        return None  # nothing would be dropped
    made = issued_at(ring.current)
    if made is None or now - made >= MIN_KEY_AGE_SECONDS:
        return None
    hours = (now - made) / 3600
    return (f"ring {ring_name!r}: its current key {ring.current} is {hours:.1f} h old; rotating now would drop key "
            f"{ring.keys[1][0]}, which may still verify tokens for up to {LONGEST_TOKEN_TTL // 3600} h. Wait until it is "
            f"{MIN_KEY_AGE_SECONDS / 3600:.0f} h old, or pass --force if a key leaked (its sessions then end)")


def plan_rotation(text: str, rings: Iterable[str], *, now: float | None = None, force: bool = False,
                  new_secret: Callable[[], str] = lambda: secrets.token_urlsafe(48)) -> Rotation:
    """The secret after rotating ``rings`` (names of :data:`RING_FIELDS`) at ``now``. Fields other than the
    rotated rings (``claims``) are kept as they are."""
    now = time.time() if now is None else now
    wanted = list(dict.fromkeys(rings))
    unknown = [r for r in wanted if r not in RING_FIELDS]
    if unknown or not wanted:
        raise RotationError(f"unknown ring {', '.join(unknown) or '(none)'}; rotate one of {', '.join(RING_FIELDS)}")
    value = parse_secret(text)
    kid = key_id(now)
    changes: list[RingChange] = []
    for name in wanted:
        ring = KeyRing.parse(value[RING_FIELDS[name]], name=f"ring {name!r}")
        problem = None if force else _age_problem(name, ring, now)
        if problem:
            raise KeyTooYoung(problem)
        try:
            rotated = ring.rotated(kid, new_secret(), keep=1)
        except KeyRingError as exc:
            raise RotationError(f"ring {name!r}: {exc}") from None
        kept = tuple(k for k, _ in rotated.keys[1:])
        changes.append(RingChange(name, kid, kept, tuple(k for k, _ in ring.keys if k not in kept)))
        value[RING_FIELDS[name]] = rotated.encode()
    return Rotation(tuple(changes), json.dumps(value, separators=(",", ":")))


def rotate_secret(client: Any, secret_id: str, rings: Sequence[str], *, now: float | None = None, force: bool = False,
                  dry_run: bool = False) -> Rotation:
    """Read the secret's current version, rotate ``rings``, write the result as a new version (unless
    ``dry_run``). Secrets Manager's errors propagate (botocore's ``ClientError`` / ``BotoCoreError``)."""
    current = client.get_secret_value(SecretId=secret_id)
    text = current.get("SecretString")
    if not isinstance(text, str):
        raise RotationError(f"secret {secret_id} holds binary data, not the JSON key rings")
    rotation = plan_rotation(text, rings, now=now, force=force)
    if dry_run:
        return rotation
    written = client.put_secret_value(SecretId=secret_id, SecretString=rotation.secret_string,
                                      ClientRequestToken=_request_token(current, rotation))
    return Rotation(rotation.changes, rotation.secret_string, str(written.get("VersionId", "")) or None)


def _request_token(current: Mapping[str, Any], rotation: Rotation) -> str:
    """Secrets Manager's idempotency token (32-64 characters): a retried put of the same rotation of the
    same version creates no second version."""
    basis = f"{current.get('VersionId', '')}:{rotation.secret_string}".encode()
    return hashlib.sha256(basis).hexdigest()[:64]
