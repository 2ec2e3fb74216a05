"""The service's key rings, refreshed from the stack's secret while it runs: a rotation needs no redeploy.

ECS hands each task the rings at start (``MERIDIAN_SESSION_KEY`` ... from the secret, meridian.settings).
When ``MERIDIAN_KEYS_SECRET_ARN`` is set (the task definition sets it to the secret's replica in the task's
own region, infra/components/service.py), :func:`start_refresh` re-reads that secret every
``MERIDIAN_KEYS_REFRESH_SECONDS`` (default 300) and swaps the rings in the running service
(``Service.use_keys``). A read that fails (Secrets Manager unreachable, access denied, a malformed value)
keeps the rings the service has and is logged; the next period tries again.

A freshly rotated key is accepted at once but signs only once it is two refresh periods old
(:func:`meridian.rotation.signing_ring`), so that no region signs with a key another region has not read
yet. Tokens and in-flight region-to-region calls signed with the previous key keep verifying: a rotation
keeps it in the ring.

Like meridian.settings, this module reads its own two environment variables (settings has no field for
them); nothing else here touches the environment.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from meridian.keys import KeyRing
from meridian.rotation import DEFAULT_REFRESH_SECONDS, RotationError, read_rings, signing_ring

__all__ = ["ENV_REFRESH", "ENV_SECRET", "KeySource", "KeySourceError", "Rings", "start_refresh"]

ENV_SECRET = "MERIDIAN_KEYS_SECRET_ARN"
ENV_REFRESH = "MERIDIAN_KEYS_REFRESH_SECONDS"

log = logging.getLogger("meridian.keysource")


class KeySourceError(ValueError):
    """A key-source setting that cannot work (one line)."""


@dataclass(frozen=True)
class Rings:
    session: KeyRing
    peer: KeyRing
    users: KeyRing
    operator: KeyRing

    @classmethod
    def of(cls, rings: Mapping[str, KeyRing]) -> Rings:
        return cls(session=rings["session"], peer=rings["peer"], users=rings["users"], operator=rings["operator"])

    def for_signing(self, *, now: float, activation: float) -> Rings:
        """The rings as a region uses them at ``now`` (a just-rotated key accepted, not yet signing)."""
        def stage(ring: KeyRing) -> KeyRing:
            return signing_ring(ring, now=now, activation=activation)

        return Rings(session=stage(self.session), peer=stage(self.peer), users=stage(self.users), operator=self.operator)

    def describe(self) -> str:
        """Key ids only, never a secret."""
        return "; ".join(f"{name} signs with {ring.current} (accepts {', '.join(k for k, _ in ring.keys)})"
                         for name, ring in (("session", self.session), ("peer", self.peer), ("users", self.users)))


class KeyUser(Protocol):
    """What the refresh needs of the service (meridian.api.app.Service)."""

    def use_keys(self, *, session: KeyRing, peer: KeyRing, users: KeyRing, operator: KeyRing) -> None: ...


def _secret_name(arn: str) -> str | None:
    """The name in a secret's ARN (``arn:...:secret:NAME-AbCdEf``), or None if ``arn`` is not one."""
    if ":secret:" not in arn:
        return None
    tail = arn.partition(":secret:")[2]
    name, dash, suffix = tail.rpartition("-")
    return name if dash and len(suffix) == 6 else tail


class KeySource:
    """Reads the key rings from one secret (a boto3 Secrets Manager ``client``, in the secret's region)."""

    def __init__(self, secret_id: str, *, client: Any, interval: float = DEFAULT_REFRESH_SECONDS,
                 activation: float | None = None, clock: Callable[[], float] = time.time) -> None:
        if interval <= 0:
            raise KeySourceError(f"{ENV_REFRESH} is {interval:g}; use a positive number of seconds")
        self.secret_id, self.client, self.interval, self.clock = secret_id, client, interval, clock
        self.activation = 2 * interval if activation is None else activation
        self.latest: Rings | None = None  # the last rings read (or seeded), unstaged
        self.applied: Rings | None = None  # what the service was last given
        self.failures = 0
        self._fallback = False  # the ARN was not found and the name was (an emulator: see _get)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, client: Any = None) -> KeySource | None:
        """The source the environment asks for, or None when ``MERIDIAN_KEYS_SECRET_ARN`` is not set."""
        env = os.environ if env is None else env
        secret = env.get(ENV_SECRET, "").strip()
        if not secret:
            return None
        raw = env.get(ENV_REFRESH, str(DEFAULT_REFRESH_SECONDS))
        try:
            interval = float(raw)
        except ValueError:
            raise KeySourceError(f"{ENV_REFRESH} is {raw!r}; use a number of seconds such as 300") from None
        if client is None:
            import boto3

            parts = secret.split(":")
            region = parts[3] if secret.startswith("arn:") and len(parts) > 3 and parts[3] else env.get("AWS_REGION")
            client = boto3.client("secretsmanager", region_name=region)
        return cls(secret, client=client, interval=interval)

    def _get(self) -> str:
        """The secret's current value. An emulator that gave the secret another ARN than the plan (the local
        run's moto) is read by the name in the ARN; on AWS the ARN is found and the name is never used."""
        from botocore.exceptions import ClientError

        name = _secret_name(self.secret_id)
        if not self._fallback:
            try:
                return str(self.client.get_secret_value(SecretId=self.secret_id)["SecretString"])
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "ResourceNotFoundException" or name in (None, self.secret_id):
                    raise
                self._fallback = True
        return str(self.client.get_secret_value(SecretId=name)["SecretString"])

    def fetch(self) -> Rings | None:
        """Read the secret now: the rings, or None (logged) when it cannot be read; ``latest`` keeps the
        last good ones."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            rings = Rings.of(read_rings(self._get()))
        except (BotoCoreError, ClientError, RotationError, KeyError, TypeError) as exc:
            self.failures += 1
            log.warning("key rings not refreshed from %s (%s: %s); keeping the current ones", self.secret_id, type(exc).__name__, exc)
            return None
        self.latest = rings
        return rings

    def seed(self, rings: Rings) -> None:
        """Start from the rings the service already has (the task's environment, read at start)."""
        if self.latest is None:
            self.latest = rings

    def apply(self, service: KeyUser) -> bool:
        """Give ``service`` the latest rings as they sign now; True when that changed its rings."""
        if self.latest is None:
            return False
        staged = self.latest.for_signing(now=self.clock(), activation=self.activation)
        if staged == self.applied:
            return False
        service.use_keys(session=staged.session, peer=staged.peer, users=staged.users, operator=staged.operator)
        if self.applied is not None:
            log.info("key rings updated: %s", staged.describe())
        self.applied = staged
        return True

    async def run(self, service: KeyUser) -> None:
        """Every ``interval``: read the secret (in a thread: boto3 blocks) and apply what it holds."""
        while True:
            await asyncio.sleep(self.interval)
            await asyncio.to_thread(self.fetch)
            self.apply(service)


class _HasSettings(KeyUser, Protocol):
    @property
    def settings(self) -> Any: ...


def start_refresh(service: _HasSettings, env: Mapping[str, str] | None = None) -> asyncio.Task[None] | None:
    """Start refreshing ``service``'s rings (from an app's lifespan); None when the environment names no
    secret. The service's own rings are staged at once: a task started just after a rotation does not sign
    with a key the other regions may not have read yet."""
    try:
        source = KeySource.from_env(env)
    except KeySourceError as exc:
        log.error("key rings will not be refreshed: %s", exc)
        return None
    if source is None:
        return None
    s = service.settings
    source.seed(Rings(session=s.session_key, peer=s.peer_key, users=s.user_key, operator=s.operator_key))
    source.apply(service)
    log.info("key rings refresh from %s every %g s: %s", source.secret_id, source.interval, source.applied.describe() if source.applied else "")
    return asyncio.create_task(source.run(service))
