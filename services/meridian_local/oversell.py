"""The `oversell` scenario: stock N, reservations from every client region at once, and the same new
email sent from every region at once, across a partition, the loss of a region and the loss of the sku's
owner region. What it checks is what strong keys promise; what it reports is what they cost.

Checks (against what each client was told and the stored state):
- acknowledged reservations <= N, and every acknowledged one holds its units in the stock item;
- final available = N - acknowledged (nothing taken without an answer, nothing given twice);
- no acknowledged reservation lost after the faults heal;
- one account per email: at most one creation acknowledged per email, and at most one user stored with it
  in any replica.
Reported: the share of attempts not served (503 ``consistency_unavailable``: the CP choice) in each
phase, per client region.

Phases: ``before`` (all healthy), ``partition`` (the owner cut from one region), ``region-loss`` (a region
that is not the owner down; its clients are served by the others), ``owner-loss`` (the owner itself down,
with its storage: its keys are unavailable everywhere until it returns — a handover cannot fence a replica
that does not answer, so ownership does not move; the scenario shows the handover refusing), then, on the
owner mechanism, the planned move: ``handover`` (reservations while ``meridian ownership move-from`` fences
the owner, waits for its writes to reach the new owner and publishes), ``moved`` (the new owner serves
every region), ``return`` (reservations while ownership comes back), ``after`` (healed).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import httpx

from meridian.keys import KeyRing
from meridian.ownership import HandoverError, handover, owner_region
from meridian.topology import Topology
from meridian_local.state import control, dynamodb_clients, read_state


@dataclass
class Attempt:
    place: str
    phase: str
    key: str
    status: int | None  # None: no answer (unknown outcome)
    reservation_id: str | None = None
    message: str = ""  # why, when not served


@dataclass
class OversellResult:
    units: int
    owner: str = ""  # the sku's owner region
    cut: str = ""  # the region partitioned from it
    lost: str = ""  # the region lost (not the owner)
    #: the handovers the scenario ran or tried: (phase, what happened)
    handovers: list[tuple[str, str]] = field(default_factory=list)
    attempts: list[Attempt] = field(default_factory=list)
    available: int = -1
    reserved: int = -1
    held: set[str] = field(default_factory=set)  # reservation ids holding units in the stock item
    #: email -> (phase, client region, status) of each creation attempt with it
    emails: dict[str, list[tuple[str, str, int | None]]] = field(default_factory=dict)
    #: email -> ids of the users stored with it, in any replica of its zone
    accounts: dict[str, set[str]] = field(default_factory=dict)

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
        for email, tries in self.emails.items():
            if (created := sum(1 for _, _, status in tries if status == 201)) > 1:
                out.append(f"{email}: {created} accounts acknowledged")
            if len(self.accounts.get(email, ())) > 1:
                out.append(f"{email}: {len(self.accounts[email])} users stored with it")
        return out

    def refused_share(self) -> dict[str, dict[str, float]]:
        """phase -> client region -> share of reservation attempts not served: 503 ``consistency_unavailable``
        (the CP refusal), or any other 5xx or no answer (a lost region's own clients, until the edge fails
        them over)."""
        return _shares((a.phase, a.place, a.status) for a in self.attempts)

    def email_refused_share(self) -> dict[str, dict[str, float]]:
        """phase -> client region -> share of account creations not served (as :meth:`refused_share`)."""
        return _shares(t for tries in self.emails.values() for t in tries)

    def summary(self) -> dict[str, Any]:
        """What the game day's metrics and report carry."""
        problems = self.problems()
        statuses = Counter(str(a.status) for a in self.attempts)
        return {"pass": not problems, "value": len(problems), "unit": "broken strong-key promises", "examples": problems,
                "units": self.units, "owner": self.owner, "cut": self.cut, "lost": self.lost,
                "handovers": [{"phase": phase, "outcome": outcome} for phase, outcome in self.handovers],
                "acknowledged": len(self.acknowledged), "available": self.available, "reserved": self.reserved,
                "answers": dict(statuses), "refused_share": self.refused_share(),
                "answers_by_phase": {phase: {place: dict(Counter(str(a.status) for a in self.attempts if (a.phase, a.place) == (phase, place)))
                                             for place in dict.fromkeys(a.place for a in self.attempts)}
                                     for phase in dict.fromkeys(a.phase for a in self.attempts)},
                "refusals": {phase: sorted({a.message for a in self.attempts if a.phase == phase and a.message})[:3]
                             for phase in dict.fromkeys(a.phase for a in self.attempts)},
                "emails": len(self.emails), "email_refused_share": self.email_refused_share(),
                "accounts_per_email_max": max((len(v) for v in self.accounts.values()), default=0)}


def _shares(rows: Iterable[tuple[str, str, int | None]]) -> dict[str, dict[str, float]]:
    by: dict[str, Counter[str]] = defaultdict(Counter)
    refused: dict[str, Counter[str]] = defaultdict(Counter)
    for phase, place, status in rows:
        by[phase][place] += 1
        refused[phase][place] += status is None or status >= 500
    return {phase: {place: round(refused[phase][place] / n, 3) for place, n in places.items()} for phase, places in by.items()}


def operator_token(state_dir: Path, topology: Topology) -> str:
    """The operator key of a local run, from its embedded Secrets Manager (as an operator reads it on AWS)."""
    state = read_state(state_dir) or {}
    client = boto3.client("secretsmanager", region_name=topology.secret_region, endpoint_url=state["aws_endpoint"],
                          aws_access_key_id="meridian-local", aws_secret_access_key="meridian-local")
    secret = client.get_secret_value(SecretId=f"{topology.project}-{topology.stack}/session-keys")["SecretString"]
    return KeyRing.parse(str(json.loads(secret)["operator"]), name="operator").signing_key.decode()


async def run(state_dir: Path, topology: Topology, *, units: int = 60, per_phase: int = 8, settle: float = 3.0,
              emails_per_phase: int = 2, mark: Callable[[str], None] | None = None, partition: bool = True,
              owner_mechanism: bool = True) -> OversellResult:
    """The phases of the module docstring. Each phase: ``per_phase`` reservations from every client region
    at once, beside ``emails_per_phase`` new emails each sent from every region at once. ``mark`` is told
    when each fault starts and heals (the game day's timeline). ``partition=False`` leaves the partition
    phase out (a backend whose replicas share one table: the replicas cannot be cut apart);
    ``owner_mechanism=False`` (an MRSC set: no owner to move) the handover phases."""
    state = read_state(state_dir) or {}
    mark = mark or (lambda _label: None)
    sku = f"oversell-{time.time_ns()}"
    regions = list(topology.regions)
    zone = topology.global_zone.name
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
            r = await http.post("/v1/users", json={"email": f"o{time.time_ns()}@example.com", "name": "O", "residency": zone},
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
            body = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
            return Attempt(place, phase, key, r.status_code, body.get("reservation_id") if r.status_code == 201 else None,
                           "" if r.status_code < 500 else str(body.get("message", r.text))[:200])

        async def create(place: str, phase: str, email: str) -> tuple[str, str, int | None]:
            try:
                r = await http.post("/v1/users", json={"email": email, "name": "Twin", "residency": zone},
                                    headers={"X-Meridian-Client-Region": place})
            except httpx.HTTPError:
                return phase, place, None
            return phase, place, r.status_code

        async def burst(phase: str) -> None:
            # Case and Unicode variants of one address are one account (meridian.strong.normalize_email).
            emails = [f"twin-{phase}-{i}-{time.time_ns()}@example.com" for i in range(emails_per_phase)]
            variants = [(place, email.upper() if n % 2 else email) for email in emails for n, place in enumerate(regions)]
            reservations, creations = await asyncio.gather(
                asyncio.gather(*(attempt(p, phase) for p in regions for _ in range(per_phase))),
                asyncio.gather(*(create(place, phase, email) for place, email in variants)))
            result.attempts += reservations
            for (_, email), outcome in zip(variants, creations, strict=True):
                result.emails.setdefault(email.lower(), []).append(outcome)

        async def fault(phase: str, label: str, path: str, body: dict[str, Any], heal: dict[str, Any]) -> None:
            control(state_dir, "POST", path, body)
            mark(label)
            try:
                if path.startswith("fail/"):  # the edge's health checks notice first (the failover window is not the CP price)
                    await edge_sees(path.removeprefix("fail/"), healthy=False)
                await asyncio.sleep(settle)  # the services' probes notice
                await burst(phase)
            finally:
                control(state_dir, "POST", "heal", heal)
                mark(f"heal {label}")
            await healed()
            await asyncio.sleep(settle)

        async def edge_sees(region: str, *, healthy: bool, timeout: float = 30.0) -> None:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if (await asyncio.to_thread(control, state_dir, "GET", "status"))["regions"][region].get("healthy") == healthy:
                    return
                await asyncio.sleep(0.1)

        async def healed(timeout: float = 60.0) -> None:
            """Every region's service serving again (a lost region's process restarts at heal) and healthy at the edge."""
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                regions = (await asyncio.to_thread(control, state_dir, "GET", "status"))["regions"]
                if all(r.get("state") == "serving" and r.get("healthy") for r in regions.values()):
                    return
                await asyncio.sleep(0.2)

        def hand_over(phase: str, exclude: list[str]) -> None:
            try:
                report = handover(topology, dynamodb_clients(state_dir), exclude=exclude, timeout=30.0)
                result.handovers.append((phase, "; ".join(report.steps)))
            except HandoverError as exc:
                result.handovers.append((phase, f"refused: {exc}"))

        async def owner_lost_and_handover_refused() -> None:
            control(state_dir, "POST", f"fail/{owner}", {})
            mark(f"oversell: owner {owner} lost")
            try:
                await edge_sees(owner, healthy=False)
                await asyncio.sleep(settle)
                await asyncio.to_thread(hand_over, "owner-loss", [owner])  # its replica does not answer: refused
                await burst("owner-loss")
            finally:
                control(state_dir, "POST", "heal", {"region": owner})
                mark(f"heal oversell: owner {owner} lost")
            await healed()
            await asyncio.sleep(settle)

        async def moved_and_back() -> None:
            """A planned move: reservations while the owner is fenced and its writes cross, then with the new
            owner serving, then while ownership comes back."""
            mark(f"oversell: ownership moves from {owner}")
            await asyncio.gather(asyncio.to_thread(hand_over, "handover", [owner]), burst("handover"))
            await burst("moved")
            mark(f"oversell: ownership returns to {owner}")
            await asyncio.gather(asyncio.to_thread(hand_over, "return", []), burst("return"))

        await burst("before")
        if partition:
            await fault("partition", f"oversell: partition {owner}|{others[0]}", "partition", {"a": owner, "b": others[0]}, {})
        await fault("region-loss", f"oversell: {others[-1]} lost", f"fail/{others[-1]}", {}, {"region": others[-1]})
        if owner_mechanism:
            await owner_lost_and_handover_refused()
            await moved_and_back()
        else:
            await fault("owner-loss", f"oversell: owner {owner} lost", f"fail/{owner}", {}, {"region": owner})
        await burst("after")
    aws = {"endpoint_url": state["aws_endpoint"], "aws_access_key_id": "meridian-local", "aws_secret_access_key": "meridian-local"}
    client = boto3.client("dynamodb", region_name=owner, **aws)
    item = client.get_item(TableName=topology.table_name("stock", zone), Key={"sku": {"S": sku}}, ConsistentRead=True)["Item"]
    result.available, result.reserved = int(item["available"]["N"]), int(item["reserved"]["N"])
    result.held = set(item.get("active", {}).get("SS", []))
    wanted = set(result.emails)
    for region in topology.global_zone.regions:  # every replica: a second account anywhere is a broken promise
        pages = boto3.client("dynamodb", region_name=region, **aws).get_paginator("scan").paginate(
            TableName=topology.table_name("users", zone), ProjectionExpression="user_id, email")
        for page in pages:
            for user in page["Items"]:
                if (email := user.get("email", {}).get("S", "").lower()) in wanted:
                    result.accounts.setdefault(email, set()).add(user["user_id"]["S"])
    return result
