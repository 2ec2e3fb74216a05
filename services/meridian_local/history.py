"""A history of client operations and the checker of what the service promised, in the spirit of Jepsen's.

Every operation is recorded twice: at its *invocation* (client, the region the client is in, time,
request) and at its *completion*: ``ok`` (acknowledged: a 2xx), ``failed`` (refused: a 4xx, nothing was
written) or ``unknown`` (a timeout, a lost answer, a 5xx after the request was sent: it may or may not
have executed). The checker never counts an unknown operation as done nor as absent; it reads every
replica of the embedded DynamoDB directly after replication has converged and checks:

- **no acknowledged write lost**: every acknowledged user creation and profile update is in every
  replica of its zone's users table (that version or a newer one) and in every directory replica;
  every acknowledged order is in every replica of its zone's orders table. After a *hard* region loss
  (a disaster that destroys what the region had not replicated), a lost write is classified: lost
  because unreplicated at the failure (it executed in the lost region, before the failure, and its item
  is among those the loss destroyed) or lost by a bug (anything else: must be 0);
- **exactly-once orders**: at most one order per (user, Idempotency-Key) in every replica, and every
  acknowledgement of one key answered with the same order id;
- **read-your-writes**: a read carrying the session token of a client that had an acknowledged write
  returns that write's version or a newer one;
- **counter totals** within [acknowledged, acknowledged + unknown] in every replica (minus, after a
  hard loss, the increments the loss destroyed: reported separately).
"""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from meridian.hlc import Version

__all__ = ["History", "Op", "Snapshot"]

#: replica (table, region) -> the items it holds (plain values, meridian.store.from_item)
Snapshot = Mapping[tuple[str, str], list[dict[str, Any]]]
WRITES = ("create", "update", "order", "increment")


@dataclass
class Op:
    """One client operation: invoked, then ok / failed (definitely not done) / unknown."""

    process: str  # the client
    kind: str  # create | update | order | increment | read
    key: tuple[str, ...]  # (user,) | (user, Idempotency-Key) | (counter,)
    body: str  # the request body, JSON
    invoked: float
    place: str | None = None  # the region the client is in
    floor: str | None = None  # read: the newest version this session had acknowledged when it read
    completed: float | None = None
    outcome: str = "pending"  # ok | failed | unknown | pending
    value: str | None = None  # ok: the order id (order), the version (create, update, read)
    status: int | None = None
    region: str | None = None  # where it executed, as the answer says
    error: str | None = None  # failed / unknown: the error code or exception

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Loss:
    """A hard region loss as the run reports it (``hard_losses`` in the status)."""

    region: str
    at: float
    destroyed: list[dict[str, Any]] = field(default_factory=list)

    def destroyed_item(self, table: str, ident: str) -> dict[str, Any] | None:
        return next((d for d in self.destroyed if d["table"] == table and ident in {str(v) for v in d["key"].values()}), None)


def _version(text: str | None) -> Version | None:
    return Version.decode(text) if text else None


class History:
    """A concurrent-safe log of operations; ``check`` compares it with what the replicas hold."""

    def __init__(self) -> None:
        self.ops: list[Op] = []
        self.zones: dict[str, str] = {}  # user -> residency zone (from its acknowledged creation)
        self._destroyed_versions: set[str] = set()  # acknowledged versions a hard region loss destroyed
        self._destroyed_orders: set[str] = set()  # acknowledged order ids a hard region loss destroyed
        self._lock = threading.Lock()

    # -- recording ---------------------------------------------------------------------------------------
    def invoke(self, process: str, kind: str, key: tuple[str, ...], body: Any = None, *, place: str | None = None,
               floor: str | None = None) -> Op:
        op = Op(process, kind, tuple(key), json.dumps(body, sort_keys=True), time.time(), place=place, floor=floor)
        with self._lock:
            self.ops.append(op)
        return op

    @staticmethod
    def complete(op: Op, status: int | None, value: str | None = None, region: str | None = None, error: str | None = None) -> Op:
        """2xx with its value is ok; 4xx failed (refused before anything was written); anything else unknown."""
        op.completed, op.status, op.region, op.error = time.time(), status, region, error
        if status is not None and 200 <= status < 300 and (value or op.kind in ("increment", "create")):
            op.outcome, op.value = "ok", value
        elif status is not None and 400 <= status < 500:
            op.outcome = "failed"
        else:
            op.outcome = "unknown"
        return op

    def since(self, t: float) -> History:
        """The operations invoked at or after ``t`` (a game day checks only its own window)."""
        out = History()
        out.ops = [op for op in self.ops if op.invoked >= t]
        out.zones = dict(self.zones)
        return out

    def counts(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = defaultdict(lambda: {"ok": 0, "failed": 0, "unknown": 0, "pending": 0})
        for op in self.ops:
            out[op.kind][op.outcome] += 1
        return dict(out)

    # -- checks ------------------------------------------------------------------------------------------
    def check(self, snapshot: Snapshot, tables: Mapping[str, list[str]], zones: Mapping[str, list[str]],
              losses: Iterable[Mapping[str, Any]] = (), counters: Iterable[str] = ()) -> dict[str, dict[str, Any]]:
        """Every check of this history against ``snapshot`` (every replica, after convergence)."""
        naming = _Naming(tables, zones)
        self._destroyed_versions.clear()
        self._destroyed_orders.clear()
        hard = [Loss(str(h["region"]), float(h["at"]), list(h.get("destroyed") or [])) for h in losses]
        return {
            "acknowledged_writes_lost": self.check_lost(snapshot, naming, hard),
            "exactly_once_orders": self.check_exactly_once(snapshot, naming),
            "read_your_writes": self.check_read_your_writes(),  # after check_lost: it knows what a hard loss destroyed
            "counter_bounds": self.check_counters(snapshot, naming, hard, counters),
        }

    def destroyed(self, naming: _Naming, losses: list[Loss]) -> dict[int, Loss]:
        """Acknowledged writes a hard region loss destroyed (id(op) -> the loss): executed in the lost region
        before the failure, and its item destroyed there in this write's version or a newer one while the
        survivors held only an older one (or none) — unreplicated at the failure."""
        out: dict[int, Loss] = {}
        for op in self.ops:
            if op.outcome != "ok" or op.kind not in ("create", "update", "order"):
                continue
            zone = self.zones.get(op.key[0])
            if zone is None:
                continue
            for loss in losses:
                if op.region != loss.region or op.invoked > loss.at:
                    continue
                if op.kind == "order":
                    entry = loss.destroyed_item(naming.table("orders", zone), str(op.value))
                    hit = entry is not None and entry.get("survivor_version") is None
                else:
                    entry = loss.destroyed_item(naming.table("users", zone), op.key[0])
                    hit = entry is not None and (not op.value or (
                        _newer_or_same(entry.get("version"), op.value)
                        and not _newer_or_same(entry.get("survivor_version"), op.value)))
                if hit:
                    out[id(op)] = loss
                    if op.value:
                        (self._destroyed_orders if op.kind == "order" else self._destroyed_versions).add(op.value)
        return out

    def check_lost(self, snapshot: Snapshot, naming: _Naming, losses: list[Loss]) -> dict[str, Any]:
        destroyed = self.destroyed(naming, losses)
        latest: dict[str, Op] = {}  # user -> the acknowledged write with the newest version
        orders: list[Op] = []
        for op in self.ops:
            if op.outcome != "ok":
                continue
            if op.kind in ("create", "update"):
                have = latest.get(op.key[0])  # a creation may know no version: then presence is what it promised
                if have is None or (op.value and (not have.value or Version.decode(op.value) > Version.decode(have.value))):
                    latest[op.key[0]] = op
            elif op.kind == "order":
                orders.append(op)
        checked, bugs = 0, []

        def lost(op: Op, where: str, what: str) -> None:
            if id(op) not in destroyed:
                bugs.append(f"{what} in {where}")

        for user, op in latest.items():
            zone = self.zones.get(user)
            if zone is None:
                continue
            table = naming.table("users", zone)
            for region in naming.regions(table):
                checked += 1
                found = naming.find(snapshot, table, region, user_id=user)
                if found is None or (op.value and Version.decode(str(found["version"])) < Version.decode(op.value)):
                    lost(op, f"{table}@{region}", f"user {user} version {op.value}")
            directory = naming.table("directory", None)
            for region in naming.regions(directory):
                checked += 1
                if naming.find(snapshot, directory, region, user_id=user) is None:
                    creation = next((o for o in self.ops if o.kind == "create" and o.key == (user,) and o.outcome == "ok"), op)
                    lost(creation, f"{directory}@{region}", f"directory pointer of {user}")
        for op in orders:
            zone = self.zones.get(op.key[0])
            if zone is None or not op.value:
                continue
            table = naming.table("orders", zone)
            for region in naming.regions(table):
                checked += 1
                found = naming.find(snapshot, table, region, order_id=op.value)
                if found is None or (str(found["user_id"]), str(found.get("idempotency_key"))) != op.key:
                    lost(op, f"{table}@{region}", f"order {op.value} of {op.key}")
        by_id = {id(op): op for op in self.ops}
        ages = [loss.at - (by_id[i].completed or loss.at) for i, loss in destroyed.items()]
        examples = sorted(f"{by_id[i].kind} {by_id[i].key} {by_id[i].value} acknowledged {loss.at - (by_id[i].completed or loss.at):.2f} s "
                          f"before {loss.region} was lost" for i, loss in destroyed.items())
        return {"value": len(bugs), "pass": not bugs, "checked": checked, "lost_by_bug": len(bugs),
                "lost_unreplicated": len(destroyed), "rpo_seconds": round(max(ages), 3) if ages else None,
                "examples": bugs[:5], "unreplicated_examples": examples[:5]}

    def check_exactly_once(self, snapshot: Snapshot, naming: _Naming) -> dict[str, Any]:
        result: dict[str, Any] = {"value": 0, "lost": [], "duplicated": [], "answers_differ": [], "pass": True}
        for zone in sorted(set(self.zones.values())):
            users = {u for u, z in self.zones.items() if z == zone}
            table = naming.table("orders", zone)
            part = self.check_orders({f"{r}/{zone}": snapshot.get((table, r), []) for r in naming.regions(table)}, users=users)
            for name in ("value", "ok", "failed", "unknown", "pending", "keys"):
                result[name] = result.get(name, 0) + part[name]
            for name in ("lost", "duplicated", "answers_differ"):
                result[name] = (result[name] + part[name])[:5]
            result["pass"] = result["pass"] and part["pass"]
        result["examples"] = [*result["duplicated"], *result["answers_differ"], *result["lost"]][:5]
        return result

    def check_orders(self, replicas: dict[str, list[dict[str, Any]]], users: set[str] | None = None) -> dict[str, Any]:
        """``replicas``: replica name -> the order items it holds, all of one zone's orders table; ``users``:
        the users whose orders live there (default: every user of the history).

        - lost: an order acknowledged (ok) missing from a replica, or stored under another key;
        - duplicated: a replica holding two orders for one (user, key);
        - answers_differ: two acknowledgements of one key with different order ids."""
        lost, duplicated, differ = [], [], []
        ops = [op for op in self.ops if op.kind == "order" and (users is None or op.key[0] in users)]
        answered: dict[tuple[str, ...], set[str]] = defaultdict(set)
        for op in ops:
            if op.outcome == "ok" and op.value:
                answered[op.key].add(op.value)
        for key, ids in answered.items():
            if len(ids) > 1:
                differ.append(f"{key}: {sorted(ids)}")
        mine = {op.key[0] for op in ops}
        for region, items in sorted(replicas.items()):
            by_id = {str(i["order_id"]): i for i in items}
            per_key: dict[tuple[str, str], set[str]] = defaultdict(set)
            for item in items:
                if users is None or str(item["user_id"]) in mine:
                    per_key[(str(item["user_id"]), str(item.get("idempotency_key")))].add(str(item["order_id"]))
            duplicated += [f"{region}: {key} -> {sorted(ids)}" for key, ids in per_key.items() if len(ids) > 1]
            for key, ids in answered.items():
                for order_id in ids - self._destroyed_orders:  # destroyed by a hard loss: counted as its RPO
                    found = by_id.get(order_id)
                    if found is None or (str(found["user_id"]), str(found.get("idempotency_key"))) != key:
                        lost.append(f"{region}: {order_id} for {key}")
        counts = {o: sum(1 for op in ops if op.outcome == o) for o in ("ok", "failed", "unknown", "pending")}
        return {"value": len(lost) + len(duplicated) + len(differ), **counts, "keys": len({op.key for op in ops}),
                "lost": lost[:5], "duplicated": duplicated[:5], "answers_differ": differ[:5],
                "pass": not lost and not duplicated and not differ and not counts["pending"]}

    def check_read_your_writes(self) -> dict[str, Any]:
        reads = [op for op in self.ops if op.kind == "read" and op.floor]
        violations, after_loss = [], 0
        for op in reads:
            if op.outcome == "ok" and op.value and Version.decode(op.value).hlc < Version.decode(str(op.floor)).hlc:
                if op.floor in self._destroyed_versions:
                    after_loss += 1  # the write it had seen was destroyed with its region: the disaster, not a bug
                    continue
                violations.append(f"{op.key[0]}: read {op.value} in {op.region} by {op.process} after writing {op.floor}")
        ok = sum(1 for op in reads if op.outcome == "ok")
        return {"value": len(violations), "pass": not violations, "reads_checked": ok,
                "after_hard_loss": after_loss,
                "refused": sum(1 for op in reads if op.outcome == "failed"), "unknown": sum(1 for op in reads if op.outcome == "unknown"),
                "examples": violations[:5]}

    def check_counters(self, snapshot: Snapshot, naming: _Naming, losses: list[Loss], names: Iterable[str] = ()) -> dict[str, Any]:
        incs = [op for op in self.ops if op.kind == "increment"]
        out: dict[str, Any] = {"value": 0, "pass": True, "counters": {}, "examples": []}
        for name in sorted(set(names) | {op.key[0] for op in incs}):
            acked = sum(json.loads(op.body).get("by", 1) for op in incs if op.key[0] == name and op.outcome == "ok")
            unknown = sum(json.loads(op.body).get("by", 1) for op in incs if op.key[0] == name and op.outcome in ("unknown", "pending"))
            table = naming.table("counters", naming.widest)
            destroyed = 0
            for loss in losses:
                for d in loss.destroyed:
                    if d["table"] == table and d["key"].get("name") == name:
                        destroyed += int(d.get("value") or 0) - int(d.get("survivor_value") or 0)
            totals = {region: sum(int(i.get("value", 0)) for i in snapshot.get((table, region), []) if i.get("name") == name)
                      for region in naming.regions(table)}
            low, high = acked - destroyed, acked + unknown
            bad = {r: t for r, t in totals.items() if not low <= t <= high}
            by_shard: dict[str, int] = defaultdict(int)  # each region increments its own shard
            for op in incs:
                if op.key[0] == name and op.outcome == "ok" and op.region:
                    by_shard[op.region] += json.loads(op.body).get("by", 1)
            shards = {region: {str(i.get("shard")): int(i.get("value", 0)) for i in snapshot.get((table, region), []) if i.get("name") == name}
                      for region in naming.regions(table)}
            out["counters"][name] = {"acknowledged": acked, "unknown": unknown, "destroyed_by_hard_loss": destroyed,
                                     "totals": totals, "bounds": [low, high], "acknowledged_by_shard": dict(by_shard), "shards": shards}
            for region, total in bad.items():
                out["examples"].append(f"{name}@{region}: {total} outside [{low}, {high}]")
        out["value"] = len(out["examples"])
        out["pass"] = not out["examples"]
        out["examples"] = out["examples"][:5]
        return out


def _newer_or_same(destroyed: Any, acked: str | None) -> bool:
    a, b = _version(str(destroyed) if destroyed else None), _version(acked)
    return a is not None and b is not None and a >= b


class _Naming:
    """Physical table names of a run (``tables`` of its status) by logical name and zone."""

    def __init__(self, tables: Mapping[str, list[str]], zones: Mapping[str, list[str]]) -> None:
        self.tables, self.zones = tables, zones
        self.widest = max(zones, key=lambda z: len(zones[z])) if zones else ""
        self._index: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}

    def table(self, logical: str, zone: str | None) -> str:
        if logical == "directory":
            return next(t for t in self.tables if t.endswith("-directory"))
        return next(t for t in self.tables if t.endswith(f"-{zone}-{logical}"))

    def regions(self, table: str) -> list[str]:
        return list(self.tables.get(table, []))

    def find(self, snapshot: Snapshot, table: str, region: str, **where: str) -> dict[str, Any] | None:
        (attr, value), = where.items()
        index = self._index.get((f"{table}:{attr}", region))
        if index is None:
            index = {str(i.get(attr)): i for i in snapshot.get((table, region), [])}
            self._index[(f"{table}:{attr}", region)] = index
        return index.get(value)
