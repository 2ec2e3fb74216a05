"""Client load through the edge, every operation recorded in a :class:`~meridian_local.history.History`.

A :class:`Client` is what a well-behaved application does: it keeps each user's bearer token (from the
201 of ``POST /v1/users``) and sends it on every ``/v1/users/{id}...`` call, keeps each user's session
token (``X-Meridian-Session``) for read-your-writes, and retries once, after a short pause, a request
that got no answer or a 5xx. Every attempt is a :class:`Sample` (for latency, the timeline and RTO);
every logical operation one history entry (its outcome is the last attempt's).

:class:`Load` runs workers in several client places (``X-Meridian-Client-Region``): user creations in
each zone, profile updates, idempotent orders (a third sent twice at once with the same key, half of
those pairs into two regions of the zone), counter increments and reads with the session token.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import httpx

from meridian_local.history import History, Op

__all__ = ["Client", "Load", "Sample"]


@dataclass
class Sample:
    """One attempt of one request, as the client saw it."""

    at: float
    place: str
    op: str
    status: int  # 599: no answer
    latency: float
    executed: str  # the region that answered (X-Meridian-Region), "?" when none
    phase: str
    retried: bool = False  # the client's second attempt
    final: bool = False  # the client's last attempt: if it failed, the client saw the error


class Client:
    def __init__(self, edge: str, history: History | None = None, *, timeout: float = 10.0, retry_pause: float = 0.3,
                 max_connections: int = 64) -> None:
        self.http = httpx.AsyncClient(base_url=edge, timeout=timeout, limits=httpx.Limits(max_connections=max_connections))
        self.history = history or History()
        self.retry_pause = retry_pause
        self.samples: list[Sample] = []
        self.phase = "steady"
        self.tokens: dict[str, str] = {}  # user -> bearer token from its creation
        self.sessions: dict[str, str] = {}  # user -> the latest session token its owner holds
        self.acked: dict[str, str] = {}  # user -> the newest version its owner's session had acknowledged

    async def close(self) -> None:
        await self.http.aclose()

    async def request(self, place: str, op: str, method: str, path: str, *, json_body: Any = None,
                      headers: dict[str, str] | None = None, retry: bool = True) -> httpx.Response | None:
        """The answer (the last attempt's, retried once on no answer or a 5xx), or None when none came."""
        headers = {"X-Meridian-Client-Region": place, **(headers or {})}
        user = path.split("/")[3] if path.startswith("/v1/users/") else None
        if user in self.tokens:
            headers.setdefault("Authorization", f"Bearer {self.tokens[user]}")
        resp: httpx.Response | None = None
        attempts = 2 if retry else 1
        for attempt in range(attempts):
            start = time.time()
            try:
                resp = await self.http.request(method, path, json=json_body, headers=headers)
                status, executed = resp.status_code, resp.headers.get("X-Meridian-Region", "?")
            except httpx.HTTPError:
                resp, status, executed = None, 599, "?"
            done = (resp is not None and status < 500) or attempt == attempts - 1
            self.samples.append(Sample(start, place, op, status, time.time() - start, executed, self.phase, attempt > 0, done))
            if done:
                return resp
            await asyncio.sleep(self.retry_pause)
        return resp

    @staticmethod
    def _done(op: Op, resp: httpx.Response | None, value: str | None = None) -> None:
        error = None
        if resp is not None and resp.status_code >= 400:
            try:
                error = str(resp.json().get("error"))
            except ValueError:
                error = resp.text[:60]
        History.complete(op, resp.status_code if resp is not None else None, value,
                         resp.headers.get("X-Meridian-Region") if resp is not None else None, error=error if resp is not None else "no answer")

    def _json(self, resp: httpx.Response | None, status: int, field: str) -> str | None:
        if resp is None or resp.status_code != status:
            return None
        try:
            value = resp.json().get(field)
        except ValueError:
            return None
        return str(value) if value is not None else None

    # -- operations ---------------------------------------------------------------------------------------
    async def create_user(self, process: str, place: str, zone: str) -> str | None:
        body = {"email": f"u{time.time_ns()}-{random.randrange(10**9)}@example.com", "name": "gameday", "residency": zone}
        op = self.history.invoke(process, "create", ("?",), body, place=place)
        resp = await self.request(place, "create", "POST", "/v1/users", json_body=body, retry=False)
        user = self._json(resp, 201, "user_id")
        if resp is None or user is None:
            self._done(op, resp)
            return None
        op.key = (user,)
        self.tokens[user] = str(resp.json()["token"])
        self.sessions[user] = resp.headers.get("X-Meridian-Session", "")
        self.history.zones[user] = zone
        # A creation answers no version; the user's first version is read back by the checker from the replicas.
        version = await self._version_of(place, user)
        self._done(op, resp, version or "")
        if version:
            self.acked[user] = version
        return user

    async def _version_of(self, place: str, user: str) -> str | None:
        resp = await self.request(place, "read", "GET", f"/v1/users/{user}", headers=self._session(user))
        return self._json(resp, 200, "version")

    def _session(self, user: str) -> dict[str, str]:
        return {"X-Meridian-Session": self.sessions[user]} if self.sessions.get(user) else {}

    async def update(self, process: str, place: str, user: str, name: str, *, session: bool = True) -> httpx.Response | None:
        body = {"name": name}
        op = self.history.invoke(process, "update", (user,), body, place=place)
        resp = await self.request(place, "update", "PUT", f"/v1/users/{user}", json_body=body,
                                  headers=self._session(user) if session else {})
        version = self._json(resp, 200, "version")
        self._done(op, resp, version)
        if version and session and resp is not None:
            self.acked[user] = version
            self.sessions[user] = resp.headers.get("X-Meridian-Session", self.sessions.get(user, ""))
        return resp

    async def order(self, process: str, place: str, user: str, key: str, body: dict[str, Any]) -> httpx.Response | None:
        op = self.history.invoke(process, "order", (user, key), body, place=place)
        resp = await self.request(place, "order", "POST", f"/v1/users/{user}/orders", json_body=body,
                                  headers={**self._session(user), "Idempotency-Key": key})
        order_id = self._json(resp, 201, "order_id")
        self._done(op, resp, order_id)
        if order_id and resp is not None and resp.headers.get("X-Meridian-Session"):
            self.sessions[user] = resp.headers["X-Meridian-Session"]
        return resp

    async def increment(self, process: str, place: str, name: str, by: int = 1) -> httpx.Response | None:
        op = self.history.invoke(process, "increment", (name,), {"by": by}, place=place)
        resp = await self.request(place, "increment", "POST", f"/v1/counters/{name}/increment", json_body={"by": by}, retry=False)
        self._done(op, resp)
        return resp

    async def read(self, process: str, place: str, user: str) -> httpx.Response | None:
        op = self.history.invoke(process, "read", (user,), None, place=place, floor=self.acked.get(user))
        resp = await self.request(place, "read", "GET", f"/v1/users/{user}", headers=self._session(user))
        self._done(op, resp, self._json(resp, 200, "version"))
        return resp


class Load:
    """Steady load from ``workers`` clients spread over ``places``; each worker owns its users."""

    def __init__(self, client: Client, places: list[str], zones: dict[str, list[str]], *, workers: int, think: float = 0.25,
                 seed: int = 7, counter: str = "gameday") -> None:
        self.client, self.places, self.zones = client, places, zones
        self.workers, self.think, self.counter = workers, think, counter
        self.rng = random.Random(seed)
        self.users: dict[int, list[str]] = defaultdict(list)
        self.duplicate_pairs: dict[str, int] = defaultdict(int)  # "same region" / "two regions" -> pairs sent
        self.stop = asyncio.Event()

    def zone_for(self, place: str) -> str:
        """Clients in a zone's region mostly live in that zone; everyone else in the all-regions zone."""
        own = [z for z, rs in self.zones.items() if place in rs and len(rs) < len(self.places)]
        return own[0] if own and self.rng.random() < 0.8 else max(self.zones, key=lambda z: len(self.zones[z]))

    async def run(self) -> None:
        await asyncio.gather(*(self.worker(self.places[i % len(self.places)], i) for i in range(self.workers)))

    async def worker(self, place: str, me: int) -> None:
        process = f"w{me}@{place}"
        client = self.client
        while not self.stop.is_set():
            await asyncio.sleep(self.think)  # steady, not saturating: 2 cores host every region here
            users = self.users[me]
            roll = self.rng.random()
            if not users or roll < 0.1:
                user = await client.create_user(process, place, self.zone_for(place))
                if user:
                    users.append(user)
                continue
            user = self.rng.choice(users)
            if roll < 0.4:
                await client.update(process, place, user, f"n{self.rng.randrange(10**6)}")
            elif roll < 0.6:
                key, body = f"k{self.rng.randrange(10**9)}", {"item": "widget", "qty": self.rng.randint(1, 5)}
                places = [place]
                if self.rng.random() < 1 / 3:
                    # The same request twice at once; half the time the second copy enters another region of the zone.
                    zone_regions = self.zones[client.history.zones[user]]
                    places.append(self.rng.choice(zone_regions) if self.rng.random() < 0.5 else place)
                    self.duplicate_pairs["same region" if places[1] == place else "two regions"] += 1
                await asyncio.gather(*(client.order(process, p, user, key, body) for p in places))
            elif roll < 0.75:
                await client.increment(process, place, self.counter)
            else:
                await client.read(process, place, user)
