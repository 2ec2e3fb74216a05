"""The `oversell` scenario: stock N, reservations from every client region at once, a partition and a
region loss mid-way. What it checks is what strong keys promise; what it reports is what they cost.

Checks (against the history of what each client was told and the owner's stored state):
- acknowledged reservations <= N, and every acknowledged one holds its units in the stock item;
- final available = N - acknowledged (nothing taken without an answer, nothing given twice);
- no acknowledged reservation lost after the faults heal.
Reported: the share of reservation attempts refused with 503 during each fault, per client region.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import httpx

from meridian.keys import KeyRing
from meridian.strong import owner_region
from meridian.topology import Topology
from meridian_local.state import control, read_state


@dataclass
class Attempt:
    place: str
    phase: str
    key: str
    status: int | None  # None: no answer (unknown outcome)
    reservation_id: str | None = None


@dataclass
class OversellResult:
    units: int
    owner: str = ""  # the sku's owner region
    cut: str = ""  # the region partitioned from it
    lost: str = ""  # the region lost (not the owner)
    attempts: list[Attempt] = field(default_factory=list)
    available: int = -1
    reserved: int = -1
    held: set[str] = field(default_factory=set)  # reservation ids holding units in the stock item

    @property
    def acknowledged(self) -> list[Attempt]:
        return [a for a in self.attempts if a.status == 201]

    def problems(self) -> list[str]:
        acked = {a.reservation_id for a in self.acknowledged}
        unknown = sum(1 for a in self.attempts if a.status is None or a.status >= 500 and a.status != 503)
        out = []
        if len(acked) > self.units:
            out.append(f"oversold: {len(acked)} acknowledged for {self.units} units")
        if missing := acked - self.held:
            out.append(f"{len(missing)} acknowledged reservation(s) hold no units")
        if not len(acked) <= self.units - self.available <= len(acked) + unknown:
            out.append(f"available {self.available} is not {self.units} - {len(acked)} acknowledged (+ up to {unknown} unknown)")
        if self.reserved != self.units - self.available:
            out.append(f"reserved {self.reserved} + available {self.available} != {self.units}")
        return out

    def refused_share(self) -> dict[str, dict[str, float]]:
        """phase -> client region -> share of attempts answered 503."""
        by: dict[str, Counter[str]] = defaultdict(Counter)
        refused: dict[str, Counter[str]] = defaultdict(Counter)
        for a in self.attempts:
            by[a.phase][a.place] += 1
            refused[a.phase][a.place] += a.status == 503
        return {phase: {place: round(refused[phase][place] / n, 3) for place, n in places.items()} for phase, places in by.items()}


def operator_token(state_dir: Path, topology: Topology) -> str:
    """The operator key of a local run, from its embedded Secrets Manager (as an operator reads it on AWS)."""
    state = read_state(state_dir) or {}
    client = boto3.client("secretsmanager", region_name=topology.secret_region, endpoint_url=state["aws_endpoint"],
                          aws_access_key_id="meridian-local", aws_secret_access_key="meridian-local")
    secret = client.get_secret_value(SecretId=f"{topology.project}-{topology.stack}/session-keys")["SecretString"]
    return KeyRing.parse(str(json.loads(secret)["operator"]), name="operator").signing_key.decode()


async def run(state_dir: Path, topology: Topology, *, units: int = 60, per_phase: int = 8, settle: float = 3.0) -> OversellResult:
    """Phases: before (all healthy), partition (the sku's owner cut from one region), region-loss (a
    region that is not the owner down), after (healed). Each phase: ``per_phase`` reservations from
    every client region at once."""
    state = read_state(state_dir) or {}
    sku = f"oversell-{time.time_ns()}"
    regions = list(topology.regions)
    owner = owner_region(sku, topology.global_zone.regions)
    others = [r for r in regions if r != owner]
    result = OversellResult(units=units, owner=owner, cut=others[0], lost=others[-1])
    keys = itertools.count()
    async with httpx.AsyncClient(base_url=state["edge"], timeout=15) as http:
        r = await http.put(f"/v1/stock/{sku}", json={"available": units},
                           headers={"Authorization": f"Bearer {operator_token(state_dir, topology)}", "X-Meridian-Client-Region": owner})
        r.raise_for_status()
        users: dict[str, tuple[str, str]] = {}
        for place in regions:
            r = await http.post("/v1/users", json={"email": f"o{time.time_ns()}@example.com", "name": "O", "residency": topology.global_zone.name},
                                headers={"X-Meridian-Client-Region": place})
            r.raise_for_status()
            users[place] = (r.json()["user_id"], r.json()["token"])

        async def attempt(place: str, phase: str) -> Attempt:
            user, token = users[place]
            key = f"{phase}-{next(keys)}"
            try:
                r = await http.post(f"/v1/users/{user}/reservations", json={"sku": sku, "quantity": 1},
                                    headers={"Idempotency-Key": key, "Authorization": f"Bearer {token}", "X-Meridian-Client-Region": place})
            except httpx.HTTPError:
                return Attempt(place, phase, key, None)
            return Attempt(place, phase, key, r.status_code, r.json().get("reservation_id") if r.status_code == 201 else None)

        async def burst(phase: str) -> None:
            result.attempts += await asyncio.gather(*(attempt(p, phase) for p in regions for _ in range(per_phase)))

        await burst("before")
        control(state_dir, "POST", "partition", {"a": owner, "b": others[0]})
        try:
            await asyncio.sleep(settle)  # the cut side's probes notice
            await burst("partition")
        finally:
            control(state_dir, "POST", "heal", {})
        victim = others[-1]
        control(state_dir, "POST", f"fail/{victim}")
        try:
            await asyncio.sleep(settle)
            await burst("region-loss")
        finally:
            control(state_dir, "POST", "heal", {"region": victim})
        await asyncio.sleep(settle)
        await burst("after")
    client = boto3.client("dynamodb", region_name=owner, endpoint_url=state["aws_endpoint"],
                          aws_access_key_id="meridian-local", aws_secret_access_key="meridian-local")
    item = client.get_item(TableName=topology.table_name("stock", topology.global_zone.name), Key={"sku": {"S": sku}},
                           ConsistentRead=True)["Item"]
    result.available, result.reserved = int(item["available"]["N"]), int(item["reserved"]["N"])
    result.held = set(item.get("active", {}).get("SS", []))
    return result
