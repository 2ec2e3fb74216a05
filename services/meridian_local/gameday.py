"""Game days against a local run: steady load through the edge, a failure, heal, convergence, checks.

Clients in several places (``X-Meridian-Client-Region``) create users in every zone, update profiles,
place idempotent orders, increment counters and read with their session tokens. A third of the orders
are sent twice at once with the same Idempotency-Key (a client retrying before the first answer, or two
tabs), half of those pairs to two different regions of the user's zone — so the exactly-once check
below is earned under the interleavings that break it, not only under sequential retries. Every order
is recorded in a :class:`History` (invocation, then ok / failed / unknown). Scenarios:

- ``region-loss``: fail a region of a residency zone; measure the time until the edge routes its
  clients elsewhere against interval x threshold; count client errors and retries that rescued them.
- ``partition``: cut the link between two regions of the zone for a while, under load.
- ``conflicts``: during a partition, write the same users on both sides on purpose.

Then heal, wait for replication to drain, and check: acknowledged writes lost (0), residency
violations (0), replicas identical, the injected conflicts recorded and nothing unexplained,
read-your-writes violations (0), exactly-once orders (no acknowledged order lost, at most one order
per (user, Idempotency-Key) in every replica, one order id per key in every answer), and no gap in any
replication stream. Writes report.md, metrics.json and timeline.png.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import httpx

from meridian.hlc import Version
from meridian_local.applier import NO_RETRIES
from meridian_local.state import control

SCENARIOS = ("region-loss", "partition", "conflicts")


@dataclass
class Sample:
    at: float
    place: str
    op: str
    status: int
    latency: float
    executed: str
    phase: str
    retried: bool = False


@dataclass
class Op:
    """One client operation of a history: invoked, then ok / failed (definitely not done) / unknown."""

    process: str  # the client (its place)
    kind: str
    key: tuple[str, str]  # (user id, Idempotency-Key)
    body: str
    invoked: float
    completed: float | None = None
    outcome: str = "pending"  # ok | failed | unknown
    value: str | None = None  # the order id answered (ok)
    status: int | None = None
    region: str | None = None  # where it executed, as the answer says


class History:
    """A Jepsen-style history of order placements, and the checker of what it promises.

    ``unknown`` is honest: a timeout or a 5xx may or may not have executed, so the checker never
    counts it as lost and never as absent — it only insists that *at most one* order exists per key."""

    def __init__(self) -> None:
        self.ops: list[Op] = []
        self._lock = threading.Lock()

    def invoke(self, process: str, kind: str, key: tuple[str, str], body: Any = None) -> Op:
        op = Op(process, kind, key, json.dumps(body, sort_keys=True), time.time())
        with self._lock:
            self.ops.append(op)
        return op

    @staticmethod
    def complete(op: Op, status: int | None, value: str | None = None, region: str | None = None) -> Op:
        """2xx is ok; 4xx failed (refused before anything was written); anything else — 5xx, no answer — unknown."""
        op.completed, op.status, op.region = time.time(), status, region
        if status is not None and 200 <= status < 300 and value:
            op.outcome, op.value = "ok", value
        elif status is not None and 400 <= status < 500:
            op.outcome = "failed"
        else:
            op.outcome = "unknown"
        return op

    def check_orders(self, replicas: dict[str, list[dict[str, Any]]], users: set[str] | None = None) -> dict[str, Any]:
        """``replicas``: replica name -> the order items it holds, all of one zone's orders table; ``users``:
        the users whose orders live there (default: every user of the history).

        - lost: an order acknowledged (ok) missing from a replica, or stored under another key;
        - duplicated: a replica holding two orders for one (user, key);
        - answers_differ: two acknowledgements of one key with different order ids."""
        lost, duplicated, differ = [], [], []
        ops = [op for op in self.ops if users is None or op.key[0] in users]
        answered: dict[tuple[str, str], set[str]] = defaultdict(set)
        for op in ops:
            if op.outcome == "ok" and op.value:
                answered[op.key].add(op.value)
        for key, ids in answered.items():
            if len(ids) > 1:
                differ.append(f"{key}: {sorted(ids)}")
        for region, items in sorted(replicas.items()):
            by_id = {str(i["order_id"]): i for i in items}
            per_key: dict[tuple[str, str], set[str]] = defaultdict(set)
            for item in items:
                per_key[(str(item["user_id"]), str(item.get("idempotency_key")))].add(str(item["order_id"]))
            duplicated += [f"{region}: {key} -> {sorted(ids)}" for key, ids in per_key.items() if len(ids) > 1]
            for key, ids in answered.items():
                for order_id in ids:
                    found = by_id.get(order_id)
                    if found is None or (str(found["user_id"]), str(found.get("idempotency_key"))) != key:
                        lost.append(f"{region}: {order_id} for {key}")
        counts = {o: sum(1 for op in ops if op.outcome == o) for o in ("ok", "failed", "unknown", "pending")}
        return {"value": len(lost) + len(duplicated) + len(differ), **counts, "keys": len({op.key for op in ops}),
                "lost": lost[:5], "duplicated": duplicated[:5], "answers_differ": differ[:5],
                "pass": not lost and not duplicated and not differ and not counts["pending"]}


@dataclass
class Ledger:
    """What the game day was told succeeded: the source of the 'no acknowledged write lost' check."""

    users: dict[str, dict[str, Any]] = field(default_factory=dict)  # user_id -> {zone, versions: [...], place}
    orders: dict[str, tuple[str, str]] = field(default_factory=dict)  # order_id -> (user_id, zone)
    increments: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # region shard -> acked total
    ryw_violations: list[str] = field(default_factory=list)
    injected: set[str] = field(default_factory=set)  # user ids written on both sides on purpose
    history: History = field(default_factory=History)  # every order placement, with its outcome
    duplicate_pairs: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # "same region" / "two regions" -> pairs sent


class GameDay:
    def __init__(self, state_dir: Path, *, scenarios: Iterable[str], phase_seconds: float = 6.0, workers: int = 8,
                 conflict_users: int = 5, seed: int = 7, think: float = 0.25) -> None:
        self.state_dir = state_dir
        self.scenarios = list(scenarios)
        self.phase_seconds, self.workers, self.conflict_users, self.think = phase_seconds, workers, conflict_users, think
        self.rng = random.Random(seed)
        self.status = control(state_dir, "GET", "status")
        self.edge = self.status["edge"]
        self.zones: dict[str, list[str]] = self.status["zones"]
        self.regions = list(self.status["regions"])
        # The zone to break: the smallest zone with two regions or more (e.g. eu), else the all-regions zone.
        multi = sorted((z for z, rs in self.zones.items() if len(rs) >= 2), key=lambda z: len(self.zones[z]))
        self.zone = multi[0]
        self.victim, self.peer = self.zones[self.zone][0], self.zones[self.zone][1]
        self.samples: list[Sample] = []
        self.marks: list[tuple[float, str]] = []
        self.ledger = Ledger()
        self.phase = "before"
        self.metrics: dict[str, Any] = {"scenarios": self.scenarios, "zone": self.zone, "victim": self.victim, "peer": self.peer}
        self.http = httpx.AsyncClient(base_url=self.edge, timeout=10.0, limits=httpx.Limits(max_connections=64))
        self.stop = asyncio.Event()
        self.sessions: dict[str, str] = {}
        self.tokens: dict[str, str] = {}
        #: Each client (worker) owns its users and their sessions: read-your-writes is a per-session promise.
        self.worker_users: dict[int, list[str]] = defaultdict(list)

    # -- one request, with the client's single retry --------------------------------------------------
    async def request(self, place: str, op: str, method: str, path: str, *, json_body: Any = None,
                      headers: dict[str, str] | None = None) -> httpx.Response | None:
        headers = {"X-Meridian-Client-Region": place, **(headers or {})}
        user = path.split("/")[3] if path.startswith("/v1/users/") else None
        if user in self.tokens:  # the user's bearer token, from its creation
            headers["Authorization"] = f"Bearer {self.tokens[user]}"
        retried = False
        for attempt in range(2):
            start = time.time()
            try:
                resp = await self.http.request(method, path, json=json_body, headers=headers)
                status, executed = resp.status_code, resp.headers.get("X-Meridian-Region", "?")
            except httpx.HTTPError:
                resp, status, executed = None, 599, "?"
            self.samples.append(Sample(start, place, op, status, time.time() - start, executed, self.phase, retried))
            if resp is not None and status < 500:
                return resp
            retried = True
            await asyncio.sleep(0.3 * (attempt + 1))
        return None

    def zone_for(self, place: str) -> str:
        """Clients in a zone's region mostly live in that zone; everyone else in the all-regions zone."""
        own = [z for z, rs in self.zones.items() if place in rs and len(rs) < len(self.regions)]
        return own[0] if own and self.rng.random() < 0.8 else max(self.zones, key=lambda z: len(self.zones[z]))

    # -- steady load ------------------------------------------------------------------------------------
    async def create_user(self, place: str, owner: int = -1) -> str | None:
        zone = self.zone_for(place)
        resp = await self.request(place, "create", "POST", "/v1/users",
                                  json_body={"email": f"u{time.time_ns()}-{self.rng.randrange(10**9)}@example.com", "name": "gameday",
                                             "residency": zone})
        if resp is None or resp.status_code != 201:
            return None
        user = resp.json()["user_id"]
        self.ledger.users[user] = {"zone": zone, "versions": [], "place": place}
        self.sessions[user] = resp.headers["X-Meridian-Session"]
        self.tokens[user] = resp.json()["token"]
        self.worker_users[owner].append(user)
        return str(user)

    async def worker(self, place: str, me: int) -> None:
        while not self.stop.is_set():
            await asyncio.sleep(self.think)  # steady, not saturating: 2 cores host every region here
            users = self.worker_users[me]
            roll = self.rng.random()
            if not users or roll < 0.1:
                await self.create_user(place, me)
                continue
            user = self.rng.choice(users)
            session = {"X-Meridian-Session": self.sessions[user]}
            if roll < 0.4:
                resp = await self.request(place, "update", "PUT", f"/v1/users/{user}", json_body={"name": f"n{self.rng.randrange(10**6)}"}, headers=session)
                if resp is not None and resp.status_code == 200:
                    self.ledger.users[user]["versions"].append(resp.json()["version"])
                    self.sessions[user] = resp.headers["X-Meridian-Session"]
            elif roll < 0.6:
                key = f"k{self.rng.randrange(10**9)}"
                body = {"item": "widget", "qty": self.rng.randint(1, 5)}
                places = [place]
                if self.rng.random() < 1 / 3:
                    # The same request twice at once; half the time the second copy enters another region of the zone.
                    zone_regions = self.zones[self.ledger.users[user]["zone"]]
                    places.append(self.rng.choice(zone_regions) if self.rng.random() < 0.5 else place)
                    self.ledger.duplicate_pairs["same region" if places[1] == place else "two regions"] += 1
                await asyncio.gather(*(self.order(p, user, key, body, session) for p in places))
            elif roll < 0.75:
                resp = await self.request(place, "increment", "POST", "/v1/counters/gameday/increment", json_body={"by": 1})
                if resp is not None and resp.status_code == 200:
                    self.ledger.increments[resp.headers["X-Meridian-Region"]] += 1
            else:
                versions = list(self.ledger.users[user]["versions"])  # what was acknowledged before this read
                resp = await self.request(place, "read", "GET", f"/v1/users/{user}", headers=session)
                if resp is not None and resp.status_code == 200 and versions:
                    seen, wrote = Version.decode(resp.json()["version"]), Version.decode(versions[-1])
                    if seen.hlc < wrote.hlc:
                        self.ledger.ryw_violations.append(
                            f"{user}: read {seen.encode()} in {resp.headers.get('X-Meridian-Region')} "
                            f"(edge sent {place} to {resp.headers.get('X-Meridian-Edge-Target')}) after writing {wrote.encode()}")

    async def order(self, place: str, user: str, key: str, body: dict[str, Any], session: dict[str, str]) -> None:
        op = self.ledger.history.invoke(place, "order", (user, key), body)
        resp = await self.request(place, "order", "POST", f"/v1/users/{user}/orders", json_body=body, headers={**session, "Idempotency-Key": key})
        if resp is None:
            History.complete(op, None)
            return
        order_id = resp.json().get("order_id") if resp.status_code == 201 else None
        History.complete(op, resp.status_code, order_id, resp.headers.get("X-Meridian-Region"))
        if order_id:
            self.ledger.orders[order_id] = (user, self.ledger.users[user]["zone"])
            self.sessions[user] = resp.headers["X-Meridian-Session"]

    # -- control ------------------------------------------------------------------------------------------
    def mark(self, label: str) -> None:
        self.marks.append((time.time(), label))

    async def ctl(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        return await asyncio.to_thread(control, self.state_dir, method, path, body)

    async def wait_for(self, predicate: Any, timeout: float, step: float = 0.1) -> float | None:
        start = time.time()
        while time.time() - start < timeout:
            status = await self.ctl("GET", "status")
            if predicate(status):
                return time.time() - start
            await asyncio.sleep(step)
        return None

    async def region_loss(self) -> None:
        hc = self.status["health_check"]
        target = hc["interval"] * hc["threshold"]
        self.phase = "during"
        t0 = time.time()
        self.mark(f"fail {self.victim}")
        await self.ctl("POST", f"fail/{self.victim}")
        elapsed = await self.wait_for(lambda s: not s["regions"][self.victim]["healthy"], timeout=max(20.0, target * 6))
        self.metrics["failover"] = {
            "region": self.victim, "seconds": elapsed, "target_seconds": target,
            # A failure lands anywhere in a check interval, and a check takes time: allow 1.5 intervals more.
            "allowed_seconds": target + hc["interval"] * 1.5,
            "within_target": elapsed is not None and elapsed <= target + hc["interval"] * 1.5,
        }
        await asyncio.sleep(self.phase_seconds)
        window = [s for s in self.samples if t0 <= s.at <= t0 + (elapsed or 0)]
        self.metrics["failover"] |= {
            "client_errors_in_window": sum(1 for s in window if s.status >= 500 and s.retried),
            "retries_rescued": sum(1 for s in self.samples if s.at >= t0 and s.retried and s.status < 500),
            "first_attempt_failures": sum(1 for s in self.samples if s.at >= t0 and not s.retried and s.status >= 500),
        }
        self.mark(f"heal {self.victim}")
        await self.ctl("POST", "heal", {"region": self.victim})
        back = await self.wait_for(lambda s: s["regions"][self.victim]["healthy"], timeout=max(30.0, target * 8))
        self.metrics["failover"]["recovery_seconds"] = back
        self.phase = "after"

    async def partition(self, inject: int = 0) -> None:
        # The users written on both sides must exist on both sides before the link is cut.
        injected = []
        for _ in range(inject):
            user = await self.create_user(self.victim)
            if user and self.ledger.users[user]["zone"] == self.zone:
                injected.append(user)
        if inject:
            await self.wait_drained()
        self.phase = "during"
        self.mark(f"partition {self.victim}|{self.peer}")
        await self.ctl("POST", "partition", {"a": self.victim, "b": self.peer})
        await asyncio.sleep(self.phase_seconds / 2)
        for user in injected:
            ok = 0
            for place in (self.victim, self.peer):
                resp = await self.request(place, "update", "PUT", f"/v1/users/{user}", json_body={"name": f"split-{place}"})
                if resp is not None and resp.status_code == 200:
                    self.ledger.users[user]["versions"].append(resp.json()["version"])
                    ok += resp.headers.get("X-Meridian-Region") == place
            if ok == 2:
                self.ledger.injected.add(user)
        await asyncio.sleep(self.phase_seconds / 2)
        self.mark("heal partition")
        await self.ctl("POST", "heal", {})
        self.phase = "after"

    async def wait_drained(self, timeout: float = 60.0) -> float | None:
        await asyncio.sleep(0.7)  # idle streams are polled at least every 0.5 s
        return await self.wait_for(lambda s: s["replication"]["pending"] == 0, timeout=timeout, step=0.2)

    # -- run --------------------------------------------------------------------------------------------
    async def run(self) -> dict[str, Any]:
        started = time.time()
        self.mark("start")
        places = self.regions
        tasks = [asyncio.create_task(self.worker(places[i % len(places)], i)) for i in range(self.workers)]
        await asyncio.sleep(self.phase_seconds)
        for scenario in self.scenarios:
            if scenario == "region-loss":
                await self.region_loss()
            elif scenario == "partition":
                await self.partition()
            elif scenario == "conflicts":
                await self.partition(inject=self.conflict_users)
            await asyncio.sleep(self.phase_seconds / 2)
        self.stop.set()
        await asyncio.gather(*tasks)
        self.mark("load stopped")
        drained = await self.wait_drained()
        self.metrics["convergence_seconds"] = drained
        self.metrics["duration_seconds"] = time.time() - started
        await self.http.aclose()
        status = await self.ctl("GET", "status")
        self.metrics["marks"] = [(round(at - started, 2), label) for at, label in self.marks]
        self.metrics["checks"] = await asyncio.to_thread(Checks(status, self.ledger).run)
        self.metrics["replication"] = status["replication"]
        self.metrics["latency_ms"] = latency_table(self.samples)
        self.metrics["requests"] = len(self.samples)
        self.metrics["requests_per_second"] = len(self.samples) / max(1e-9, self.samples[-1].at - self.samples[0].at) if self.samples else 0
        self.metrics["read_your_writes_violations"] = len(self.ledger.ryw_violations)
        self.metrics["orders"] = {"concurrent_duplicate_pairs": dict(self.ledger.duplicate_pairs),
                                  "duplicates_merged_by_replication": status["replication"].get("duplicates_merged", 0)
                                  - self.status["replication"].get("duplicates_merged", 0)}
        return self.metrics


def latency_table(samples: list[Sample]) -> dict[str, dict[str, dict[str, float]]]:
    out: dict[str, dict[str, dict[str, float]]] = defaultdict(dict)
    groups: dict[tuple[str, str], list[float]] = defaultdict(list)
    for s in samples:
        if s.status < 500:
            groups[(s.place, s.phase)].append(s.latency * 1000)
    for (place, phase), values in sorted(groups.items()):
        values.sort()
        out[place][phase] = {"p50": values[len(values) // 2], "p99": values[min(len(values) - 1, int(len(values) * 0.99))], "n": len(values)}
    return dict(out)


class Checks:
    """Reads every replica in the embedded AWS and compares it with what clients were told."""

    def __init__(self, status: dict[str, Any], ledger: Ledger) -> None:
        self.status, self.ledger = status, ledger
        self.tables: dict[str, list[str]] = status["tables"]
        self.zones: dict[str, list[str]] = status["zones"]

    def scan(self, table: str, region: str) -> list[dict[str, Any]]:
        from meridian.store import from_item

        client = boto3.client("dynamodb", region_name=region, endpoint_url=self.status["aws_endpoint"], config=NO_RETRIES,
                              aws_access_key_id="meridian-local", aws_secret_access_key="meridian-local")
        items, kwargs = [], {"TableName": table}
        while True:
            resp = client.scan(**kwargs)
            items += [from_item(i) for i in resp.get("Items", [])]
            if "LastEvaluatedKey" not in resp:
                return items
            kwargs["ExclusiveStartKey"] = resp["LastEvaluatedKey"]

    def table_of(self, logical: str, zone: str) -> str:
        return next(t for t in self.tables if t.endswith(f"-{zone}-{logical}") or (logical == "directory" and t.endswith("-directory")))

    def run(self) -> dict[str, Any]:
        replicas = {(t, r): self.scan(t, r) for t, regions in self.tables.items() for r in regions}
        lost = []
        for user, info in self.ledger.users.items():
            table = self.table_of("users", info["zone"])
            latest = max((Version.decode(v) for v in info["versions"]), default=None)
            for region in self.tables[table]:
                found = next((i for i in replicas[(table, region)] if i["user_id"] == user), None)
                if found is None or (latest is not None and Version.decode(found["version"]) < latest):
                    lost.append(f"user {user} in {region}")
            directory = self.table_of("directory", "")
            for region in self.tables[directory]:
                if not any(i["user_id"] == user for i in replicas[(directory, region)]):
                    lost.append(f"directory {user} in {region}")
        for order, (_user, zone) in self.ledger.orders.items():
            table = self.table_of("orders", zone)
            for region in self.tables[table]:
                if not any(i["order_id"] == order for i in replicas[(table, region)]):
                    lost.append(f"order {order} in {region}")
        counters = self.table_of("counters", max(self.zones, key=lambda z: len(self.zones[z])))
        for region in self.tables[counters]:
            shards = {i["shard"]: int(i.get("value", 0)) for i in replicas[(counters, region)] if i["name"] == "gameday"}
            for shard, acked in self.ledger.increments.items():
                if shards.get(shard, 0) < acked:
                    lost.append(f"counter shard {shard} in {region}: {shards.get(shard, 0)} < {acked} acknowledged")

        residency = []
        for (table, region), items in replicas.items():
            table_zone = next((z for z in self.zones if f"-{z}-" in table), None)
            if table_zone is not None and region not in self.zones[table_zone]:
                residency.append(f"table {table} exists in {region}, outside zone {table_zone}")
            for item in items:
                if "zone" in item and not table.endswith("-directory") and table_zone is not None and item["zone"] != table_zone:
                    residency.append(f"{table}@{region} holds an item of zone {item['zone']}")
                if "zone" in item and region not in self.zones.get(str(item["zone"]), []) and not table.endswith("-directory"):
                    residency.append(f"{table}@{region} holds {item.get('user_id')} of zone {item['zone']}")

        exactly_once: dict[str, Any] = {"value": 0, "lost": [], "duplicated": [], "answers_differ": [], "pass": True}
        for user_zone in sorted({str(info["zone"]) for info in self.ledger.users.values()}):
            orders_table = self.table_of("orders", user_zone)
            zone_users = {u for u, info in self.ledger.users.items() if info["zone"] == user_zone}
            part = self.ledger.history.check_orders({f"{r}/{user_zone}": replicas[(orders_table, r)] for r in self.tables[orders_table]},
                                                    users=zone_users)
            for name in ("value", "ok", "failed", "unknown", "pending", "keys"):
                exactly_once[name] = exactly_once.get(name, 0) + part[name]
            for name in ("lost", "duplicated", "answers_differ"):
                exactly_once[name] = (exactly_once[name] + part[name])[:5]
            exactly_once["pass"] = exactly_once["pass"] and part["pass"]
        replication = self.status["replication"]
        gaps = [f"{g['table']}@{g['region']} {g['kind']}: {g['detail']}" for g in replication.get("gap_events", [])]

        diverged = []
        for table, regions in self.tables.items():
            def canon(items: list[dict[str, Any]]) -> list[str]:
                return sorted(json.dumps(i, sort_keys=True, default=str) for i in items)
            first = canon(replicas[(table, regions[0])])
            for region in regions[1:]:
                if canon(replicas[(table, region)]) != first:
                    diverged.append(f"{table}: {regions[0]} != {region}")

        recorded: dict[str, dict[str, Any]] = {}
        for table, regions in self.tables.items():
            if table.endswith("-conflicts"):
                for region in regions:
                    for item in replicas[(table, region)]:
                        # Only this game day's users: a local run keeps the records of earlier game days.
                        if str(item["item_key"]).split("#")[1] in self.ledger.users:
                            recorded[item["conflict_id"]] = item
        acked_versions = {v for info in self.ledger.users.values() for v in info["versions"]}
        conflict_users = {str(i["item_key"]).split("#", 1)[1] for i in recorded.values()}
        missing = sorted(self.ledger.injected - conflict_users)
        unexplained = [f"{i['item_key']}: {i['winner_version']} over {i['loser_version']}" for cid, i in recorded.items()
                       if not ({i["winner_version"], i["loser_version"]} & acked_versions)
                       or Version.decode(i["winner_version"]).region == Version.decode(i["loser_version"]).region]
        return {
            "acknowledged_writes_lost": {"value": len(lost), "pass": not lost, "examples": lost[:5]},
            "residency_violations": {"value": len(residency), "pass": not residency, "examples": residency[:5]},
            "replicas_identical": {"value": len(diverged), "pass": not diverged, "examples": diverged[:5]},
            "conflicts": {
                "injected": len(self.ledger.injected), "recorded": len(recorded), "injected_missing": missing[:5],
                "unexplained": unexplained[:5], "pass": not missing and not unexplained,
            },
            "read_your_writes": {"value": len(self.ledger.ryw_violations), "pass": not self.ledger.ryw_violations,
                                 "examples": self.ledger.ryw_violations[:5]},
            "exactly_once_orders": {**exactly_once, "examples": [*exactly_once["lost"], *exactly_once["duplicated"],
                                                                 *exactly_once["answers_differ"]][:5]},
            # A gap means the emulator lost its place in a stream; it resyncs, but the run is not clean.
            "stream_gaps": {"value": int(replication.get("gaps", 0)), "pass": not replication.get("gaps"), "examples": gaps[:5]},
        }


def write_report(metrics: dict[str, Any], samples: list[Sample], marks: list[tuple[float, str]], report_dir: Path) -> None:
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
    plot_timeline(samples, marks, report_dir / "timeline.png")
    checks = metrics["checks"]
    lines = [
        "# Game day report", "",
        f"Scenarios: {', '.join(metrics['scenarios'])}; zone under test `{metrics['zone']}` ({metrics['victim']}, {metrics['peer']}).",
        f"{metrics['requests']} requests in {metrics['duration_seconds']:.1f} s ({metrics['requests_per_second']:.0f}/s through the edge).", "",
        "| check | result | value |", "| --- | --- | --- |",
    ]
    for name, check in checks.items():
        value = check.get("value", f"{check.get('recorded')} recorded / {check.get('injected')} injected")
        lines.append(f"| {name} | {'PASS' if check['pass'] else 'FAIL'} | {value} |")
    if "exactly_once_orders" in checks and "orders" in metrics:
        e, o = checks["exactly_once_orders"], metrics["orders"]
        pairs = ", ".join(f"{n} {where}" for where, n in o["concurrent_duplicate_pairs"].items()) or "none"
        lines += ["", "## Exactly-once orders", "",
                  f"- {e.get('ok', 0)} placements acknowledged, {e.get('failed', 0)} refused, {e.get('unknown', 0)} with an unknown "
                  f"outcome, over {e.get('keys', 0)} Idempotency-Keys; sent twice at once: {pairs}.",
                  f"- every replica: {len(e['lost'])} acknowledged orders missing, {len(e['duplicated'])} keys with two orders, "
                  f"{len(e['answers_differ'])} keys answered with two ids; {o['duplicates_merged_by_replication']} double executions "
                  "(same key, two regions) merged by replication."]
    if "failover" in metrics:
        f = metrics["failover"]
        seconds = f"{f['seconds']:.2f}" if f["seconds"] is not None else "never"
        lines += ["", "## Failover", "",
                  f"- {f['region']} failed: the edge routed its clients elsewhere after **{seconds} s** "
                  f"(interval x threshold = {f['target_seconds']:.2f} s, allowed {f['allowed_seconds']:.2f} s with the check phase; "
                  f"{'within' if f['within_target'] else 'OUTSIDE'} it).",
                  f"- first attempts that failed after the failure: {f['first_attempt_failures']}; rescued by the client's retry: "
                  f"{f['retries_rescued']}; errors the client saw after retrying, in the window: {f['client_errors_in_window']}.",
                  f"- back to healthy after heal: {f['recovery_seconds']:.2f} s." if f.get("recovery_seconds") is not None else "- never healthy again after heal."]
    lines += ["", "## Latency (ms, successful requests)", "", "| client place | phase | p50 | p99 | n |", "| --- | --- | --- | --- | --- |"]
    for place, phases in metrics["latency_ms"].items():
        for phase, v in phases.items():
            lines.append(f"| {place} | {phase} | {v['p50']:.1f} | {v['p99']:.1f} | {v['n']} |")
    lines += ["", f"Replication after the run: {json.dumps(metrics['replication']['pairs'])}", "",
              "Timeline: ![timeline](timeline.png)", "",
              "Emulated parts: replication, the edge (Route 53 latency routing + Global Accelerator) and the "
              "inter-region network (see docs/local.md). The AWS APIs are moto's; the services are the real app."]
    (report_dir / "report.md").write_text("\n".join(lines) + "\n")


def plot_timeline(samples: list[Sample], marks: list[tuple[float, str]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not samples:
        return
    t0 = samples[0].at
    regions = sorted({s.executed for s in samples if s.executed != "?"})
    end = int(samples[-1].at - t0) + 1
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(13, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    for region in regions:
        counts = [0] * (end + 1)
        for s in samples:
            if s.executed == region and s.status < 500:
                counts[int(s.at - t0)] += 1
        top.plot(range(end + 1), counts, label=f"executed in {region}")
    errors = [0] * (end + 1)
    for s in samples:
        if s.status >= 500:
            errors[int(s.at - t0)] += 1
    bottom.bar(range(end + 1), errors, color="tab:red", label="5xx / no answer (before retry)")
    for at, label in marks:
        for ax in (top, bottom):
            ax.axvline(at - t0, color="grey", linestyle="--", linewidth=0.8)
        top.annotate(label, (at - t0, top.get_ylim()[1] * 0.98), rotation=90, fontsize=7, va="top", ha="right",
                     bbox={"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.8})
    top.set_ylabel("requests / s")
    top.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    top.set_title("Meridian game day: requests per second by executing region")
    bottom.set_ylabel("errors / s")
    bottom.set_xlabel("seconds since start")
    bottom.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(state_dir: Path, scenarios: Iterable[str], report_dir: Path, **kw: Any) -> dict[str, Any]:
    day = GameDay(state_dir, scenarios=scenarios, **kw)
    metrics = asyncio.run(day.run())
    write_report(metrics, day.samples, day.marks, report_dir)
    checks = metrics["checks"]
    failover_ok = metrics.get("failover", {}).get("within_target", True) if "region-loss" in day.scenarios else True
    metrics["passed"] = all(c["pass"] for c in checks.values()) and failover_ok
    (report_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
    return metrics
