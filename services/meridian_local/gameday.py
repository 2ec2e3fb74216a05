"""Game days against a local run: steady load through the edge, faults, heal, convergence, checks.

The parts live by concern: the load and its clients (:mod:`meridian_local.load`), the history and its
checker (:mod:`meridian_local.history`), the report (:mod:`meridian_local.report`) and the timeline
(:mod:`meridian_local.timeline`). This module runs the scenarios and reads the replicas.

Scenarios (each fault on the zone under test: the smallest zone with two regions or more):

- ``region-loss``: the first region of the zone fails (its service is killed, replication to and from it
  held: its data survives); measures the time until the edge routes its clients elsewhere against
  interval x threshold, and the client-visible error window per client region (RTO); heals.
- ``hard-region-loss``: the same region is *destroyed*: what it had acknowledged and not yet replicated
  is gone, as in a real regional disaster; it comes back rebuilt from the surviving replicas. The
  history checker counts the acknowledged writes lost because they were unreplicated at the failure
  (the RPO, measured) apart from any lost by a bug (must be 0).
- ``partition``: the zone's two regions cannot reach each other for a while, under load; heals.
- ``conflicts``: users replicated to both sides, a partition, and each of them written on both sides on
  purpose; heals.
- ``oversell``: the strong keys (:mod:`meridian_local.oversell`): stock reserved and one email sent from
  every region at once, across a partition, a region loss and the loss of the sku's owner; checks that
  nothing is oversold and no email makes two accounts, and reports the share refused (503) per fault.
- ``bad-release``: a release that fails 30% of its requests (a rehearsal fault) rolled out under the load
  with ``meridian rollout --local``'s waves and alarm rule (:mod:`meridian_local.rollout`); measures the
  blast radius (regions that ever served it, requests it failed, time to rollback) beside the same figures
  for an all-at-once release, computed from this run's rates.

A game day checks only its own window: its own users, orders, counter, conflicts and stream gaps, so any
number of game days pass on one run.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import boto3

from meridian.hlc import Version
from meridian_local.applier import NO_RETRIES
from meridian_local.history import History, Op
from meridian_local.load import Client, Load, Sample
from meridian_local.report import latency_table
from meridian_local.state import control

__all__ = ["SCENARIOS", "GameDay", "History", "Op", "Sample", "run"]

SCENARIOS = ("region-loss", "hard-region-loss", "partition", "conflicts", "oversell", "bad-release")
#: The share of requests the bad release fails (a rehearsal fault, meridian.rehearsal).
BAD_RELEASE_FAULT = 0.3
#: what each scenario does to the zone under test, for the report and the timeline
FAULT_LABELS = {"region-loss": "region loss", "hard-region-loss": "hard region loss", "partition": "partition",
                "conflicts": "conflicts (partition + writes on both sides)",
                "oversell": "oversell (strong keys across a partition, a region loss, the owner's loss)",
                "bad-release": f"bad release (fails {BAD_RELEASE_FAULT:.0%} of requests) rolled out in waves"}


class GameDay:
    def __init__(self, state_dir: Path, *, scenarios: Iterable[str], phase_seconds: float = 6.0, workers: int = 8,
                 conflict_users: int = 5, seed: int = 7, think: float = 0.25, progress: Callable[[str], None] | None = None) -> None:
        self.state_dir = state_dir
        self.scenarios = list(scenarios)
        unknown = [s for s in self.scenarios if s not in SCENARIOS]
        if unknown:
            raise ValueError(f"unknown scenario {unknown[0]!r}: one of {', '.join(SCENARIOS)}")
        self.phase_seconds, self.workers, self.conflict_users, self.think = phase_seconds, workers, conflict_users, think
        self.progress = progress or (lambda _line: None)
        self.status = control(state_dir, "GET", "status")
        self.edge = self.status["edge"]
        self.zones: dict[str, list[str]] = self.status["zones"]
        self.regions = list(self.status["regions"])
        multi = sorted((z for z, rs in self.zones.items() if len(rs) >= 2), key=lambda z: len(self.zones[z]))
        if not multi:
            raise ValueError("no residency zone has two regions: nothing to fail over to")
        self.zone = multi[0]
        self.victim, self.peer = self.zones[self.zone][0], self.zones[self.zone][1]
        self.history = History()
        self.client = Client(self.edge, self.history)
        self.counter = f"gameday-{time.time_ns()}"  # this game day's own counter: earlier ones' increments are not ours
        self.load = Load(self.client, self.regions, self.zones, workers=workers, think=think, seed=seed, counter=self.counter)
        self.marks: list[tuple[float, str]] = []
        self.windows: list[dict[str, Any]] = []  # one per scenario: {scenario, fault_at, heal_at, end}
        self.injected: set[str] = set()  # users written on both sides on purpose
        self.started = time.time()
        self.metrics: dict[str, Any] = {"scenarios": self.scenarios, "zone": self.zone, "victim": self.victim, "peer": self.peer,
                                        "scenario_results": {}}

    # -- control --------------------------------------------------------------------------------------------
    def mark(self, label: str) -> None:
        self.marks.append((time.time(), label))
        self.progress(f"{time.time() - self.started:5.1f} s  {label}")

    async def ctl(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        return await asyncio.to_thread(control, self.state_dir, method, path, body)

    async def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float, step: float = 0.1) -> float | None:
        start = time.time()
        while time.time() - start < timeout:
            if predicate(await self.ctl("GET", "status")):
                return time.time() - start
            await asyncio.sleep(step)
        return None

    async def wait_drained(self, timeout: float = 60.0) -> float | None:
        """Seconds until every write made so far is replicated (the replicator's barrier: each stream read
        to its end, then every delivery applied); None if not within ``timeout``."""
        result = await asyncio.to_thread(control, self.state_dir, "POST", "drain", {"timeout": timeout}, timeout + 10)
        return float(result["seconds"]) if result.get("drained") else None

    async def wait_replicated(self, users: list[str], timeout: float = 30.0) -> bool:
        """Every replica of the zone holds these users (the load goes on: waiting for an empty replication
        queue could take long under it)."""
        table = next(t for t in self.status["tables"] if t.endswith(f"-{self.zone}-users"))
        # The directory entry too: a region finds a user through it (a user whose profile has arrived but whose
        # directory entry has not is a 404 there).
        directory = next(t for t in self.status["tables"] if t.endswith("-directory"))

        def present() -> bool:
            for region in self.status["tables"][table]:
                client = boto3.client("dynamodb", region_name=region, endpoint_url=self.status["aws_endpoint"], config=NO_RETRIES,
                                      aws_access_key_id="meridian-local", aws_secret_access_key="meridian-local")
                for user in users:
                    for name in (table, directory):
                        if "Item" not in client.get_item(TableName=name, Key={"user_id": {"S": user}}, ConsistentRead=True):
                            return False
            return True

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if await asyncio.to_thread(present):
                return True
            await asyncio.sleep(0.2)
        return False

    def phase(self, name: str) -> None:
        self.client.phase = name

    # -- scenarios --------------------------------------------------------------------------------------------
    async def region_loss(self, *, hard: bool = False) -> None:
        name = "hard-region-loss" if hard else "region-loss"
        hc = self.status["health_check"]
        target = hc["interval"] * hc["threshold"]
        before = await self.ctl("GET", "status")
        self.phase(name)
        t0 = time.time()
        self.mark(f"{'destroy' if hard else 'fail'} {self.victim}")
        await self.ctl("POST", f"fail/{self.victim}", {"hard": True} if hard else {})
        elapsed = await self.wait_for(lambda s: not s["regions"][self.victim]["healthy"], timeout=max(20.0, target * 6))
        if elapsed is not None:
            self.mark(f"edge: {self.victim} unhealthy")
        allowed = target + hc["interval"] * 1.5  # a failure lands anywhere in a check interval, and a check takes time
        result: dict[str, Any] = {"region": self.victim, "seconds": elapsed, "target_seconds": target, "allowed_seconds": allowed,
                                  "within_target": elapsed is not None and elapsed <= allowed, "hard": hard,
                                  "lag_at_failure_ms": {k: v for k, v in before.get("lag", {}).items() if k.startswith(f"{self.victim}->")}}
        await asyncio.sleep(self.phase_seconds)
        self.mark(f"heal {self.victim}")
        heal_at = time.time()
        await self.ctl("POST", "heal", {"region": self.victim})
        back = await self.wait_for(lambda s: s["regions"][self.victim]["healthy"], timeout=max(30.0, target * 8))
        result["recovery_seconds"] = back
        if back is not None:
            self.mark(f"edge: {self.victim} healthy")
        if hard:
            status = await self.ctl("GET", "status")
            loss: dict[str, Any] = next((h for h in reversed(status.get("hard_losses", [])) if h["region"] == self.victim), {})
            result["unreplicated_deliveries_at_failure"] = loss.get("unreplicated_deliveries_at_failure")
            result["oldest_unreplicated_age_seconds"] = loss.get("oldest_unreplicated_age_seconds")
            result["items_destroyed"] = loss.get("destroyed_count", 0)
        self.metrics["scenario_results"][name] = result
        self.windows.append({"scenario": name, "fault_at": t0, "heal_at": heal_at, "end": None})
        self.phase("after")

    async def oversell(self) -> None:
        from meridian.topology import load_stack_file
        from meridian_local import oversell
        from meridian_local.state import read_state

        state = read_state(self.state_dir) or {}
        topology = load_stack_file(Path(state["config"]))
        shared = bool((state.get("backend") or {}).get("shared"))  # one table behind every replica: nothing to partition
        self.phase("oversell")
        t0 = time.time()
        status = await self.ctl("GET", "status")
        owner_mechanism = (status.get("strong_tables") or {}).get("stock", "owner") == "owner"
        result = await oversell.run(self.state_dir, topology, units=80, per_phase=6, settle=max(1.0, self.phase_seconds / 2),
                                    mark=self.mark, partition=not shared, owner_mechanism=owner_mechanism)
        self.metrics["oversell"] = result.summary()
        self.windows.append({"scenario": "oversell", "fault_at": t0, "heal_at": time.time(), "end": None})
        self.phase("after")

    async def bad_release(self) -> None:
        """Roll a release failing 30% of its requests out under the load, as `meridian rollout --local` does."""
        from meridian_local.rollout import LocalRollout

        name = f"bad-release-{time.time_ns()}"

        def ctl(method: str, path: str, body: dict[str, Any] | None) -> dict[str, Any]:
            return control(self.state_dir, method, path, body, timeout=60.0)

        self.phase("bad-release")
        self.mark(f"roll out {name} (fails {BAD_RELEASE_FAULT:.0%})")
        rollout = await asyncio.to_thread(LocalRollout, ctl, release=name, fault_5xx=BAD_RELEASE_FAULT,
                                          say=lambda line: self.progress(f"        {line}"))
        before = dict(rollout.current)
        outcome = await asyncio.to_thread(rollout.run)
        if outcome.completed:  # the rule never fired: put every region back, so that the run stays usable
            for region, previous in before.items():
                await asyncio.to_thread(rollout.deploy, region, previous)
        status = await self.ctl("GET", "status")
        served = sorted(r for r, s in status["regions"].items() if any(h["release"] == name for h in s["release_history"]))
        wave = next((w for w in outcome.waves if w.result != "ok"), None)
        shifted = [t for w in outcome.waves for t in w.shifted_at.values()]
        start = min(shifted) if shifted else time.time()
        end = max(wave.restored_at.values()) if wave is not None and wave.restored_at else time.time()
        for at, label in ((start, f"{', '.join(served) or 'no region'} on {name}"),
                          *(((wave.tripped_at, "5xx-rate alarm fired"),) if wave is not None and wave.tripped_at else ()),
                          *(((end, "rolled back"),) if wave is not None else ())):
            self.marks.append((at, label))
        result = blast_radius(self.client.samples, served=served, places=self.regions, start=start, end=end, fault=BAD_RELEASE_FAULT)
        rule = outcome.rules[served[0]] if served else next(iter(outcome.rules.values()))
        result |= {"release": name, "rollout": outcome.to_json(), "canary": outcome.canary_reason, "alarm": rule.describe(),
                   "alarm_window_seconds": rule.window_seconds, "detect_seconds": round(wave.tripped_at - start, 2)
                   if wave is not None and wave.tripped_at else None,
                   "edge_answers_in_bake": {r: {"answers": a, "answers_5xx": e} for w in outcome.waves for r, (a, e) in w.answers.items()}}
        others = [r for r in self.regions if r not in served]
        if not result["measured"]["failed_requests"] and wave is None:
            result["verdict"], result["why"] = "INCONCLUSIVE", "no request reached the release: the fault never took effect"
        elif outcome.completed or wave is None:
            result["verdict"], result["why"] = "FAIL", "the 5xx-rate rule never fired: the bad release reached every region"
        elif len(served) == 1 and sorted(outcome.never_received) == sorted(others):
            result["verdict"], result["why"] = "PASS", f"rolled back in {served[0]}; {', '.join(others)} never ran it"
        else:
            result["verdict"], result["why"] = "FAIL", f"served by {', '.join(served)} before the rollback"
        self.metrics["scenario_results"]["bad-release"] = result
        self.windows.append({"scenario": "bad-release", "fault_at": start, "heal_at": end, "end": None})
        self.phase("after")

    async def partition(self, *, inject: int = 0) -> None:
        name = "conflicts" if inject else "partition"
        injected = []
        for _ in range(inject):  # written on both sides below: they must exist on both sides first
            user = await self.client.create_user("injector", self.victim, self.zone)
            if user:
                injected.append(user)
        if inject:
            await self.wait_replicated(injected)
        self.phase(name)
        t0 = time.time()
        self.mark(f"partition {self.victim}|{self.peer}" + (" + conflicts" if inject else ""))
        await self.ctl("POST", "partition", {"a": self.victim, "b": self.peer})
        await asyncio.sleep(self.phase_seconds / 2)
        for user in injected:
            sides = 0
            for place in (self.victim, self.peer):
                resp = await self.client.update(f"injector@{place}", place, user, f"split-{place}", session=False)
                sides += resp is not None and resp.status_code == 200 and resp.headers.get("X-Meridian-Region") == place
            if sides == 2:
                self.injected.add(user)
        await asyncio.sleep(self.phase_seconds / 2)
        self.mark("heal partition")
        heal_at = time.time()
        await self.ctl("POST", "heal", {})
        self.metrics["scenario_results"][name] = {"injected": len(self.injected) if inject else 0}
        self.windows.append({"scenario": name, "fault_at": t0, "heal_at": heal_at, "end": None})
        self.phase("after")

    # -- run ----------------------------------------------------------------------------------------------------
    async def run(self) -> dict[str, Any]:
        self.started = time.time()
        self.mark("start")
        self.phase("steady")
        load = asyncio.create_task(self.load.run())
        await asyncio.sleep(self.phase_seconds)
        for scenario in self.scenarios:
            if scenario in ("region-loss", "hard-region-loss"):
                await self.region_loss(hard=scenario == "hard-region-loss")
            elif scenario == "partition":
                await self.partition()
            elif scenario == "conflicts":
                await self.partition(inject=self.conflict_users)
            elif scenario == "oversell":
                await self.oversell()
            elif scenario == "bad-release":
                await self.bad_release()
            await asyncio.sleep(self.phase_seconds / 2)
            self.windows[-1]["end"] = time.time()
        self.load.stop.set()
        await load
        self.mark("load stopped")
        self.metrics["convergence_seconds"] = await self.wait_drained()
        self.mark("replication drained")
        self.metrics["duration_seconds"] = time.time() - self.started
        await self.client.close()
        status = await self.ctl("GET", "status")
        self.progress(f"{time.time() - self.started:5.1f} s  checking every replica ...")
        checks = await asyncio.to_thread(self.check, status)
        if "oversell" in self.metrics:
            checks["strong_keys"] = {k: v for k, v in self.metrics["oversell"].items() if k in ("pass", "value", "unit", "examples")}
        self.metrics |= {
            "started": self.started,
            "marks": [(round(at - self.started, 2), label) for at, label in self.marks],
            "windows": [{k: (round(v - self.started, 2) if isinstance(v, float) else v) for k, v in w.items()} for w in self.windows],
            "checks": checks,
            "replication": status["replication"],
            "lag": status.get("lag", {}),
            "requests": len(self.client.samples),
            "latency_ms": latency_table(self.client.samples),
            "requests_per_second": _rate(self.client.samples),
            "operations": self.history.counts(),
            "orders": {"concurrent_duplicate_pairs": dict(self.load.duplicate_pairs),
                       "duplicates_merged_by_replication": status["replication"].get("duplicates_merged", 0)
                       - self.status["replication"].get("duplicates_merged", 0)},
            "rto": rto(self.client.samples, self.windows, self.regions),
            "load": {"workers": self.workers, "think_seconds": self.think, "phase_seconds": self.phase_seconds},
        }
        return self.metrics

    # -- checks: the history against every replica, and what only the replicas show -------------------------
    def check(self, status: dict[str, Any]) -> dict[str, dict[str, Any]]:
        tables: dict[str, list[str]] = status["tables"]
        snapshot = read_replicas(status)
        losses = [h for h in status.get("hard_losses", []) if float(h["at"]) >= self.started]
        checks = self.history.check(snapshot, tables, self.zones, losses=losses, counters=[self.counter])
        return {**checks, **self.replica_checks(status, snapshot)}

    def replica_checks(self, status: dict[str, Any], snapshot: dict[tuple[str, str], list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
        tables: dict[str, list[str]] = status["tables"]
        residency = []
        for (table, region), items in snapshot.items():
            table_zone = next((z for z in self.zones if f"-{z}-" in table), None)
            if table_zone is not None and region not in self.zones[table_zone]:
                residency.append(f"table {table} exists in {region}, outside zone {table_zone}")
            for item in items:
                if "zone" in item and table_zone is not None and not table.endswith("-directory") and item["zone"] != table_zone:
                    residency.append(f"{table}@{region} holds an item of zone {item['zone']}")
        diverged = []
        for table, regions in tables.items():
            def canon(items: list[dict[str, Any]]) -> list[str]:
                return sorted(json.dumps(i, sort_keys=True, default=str) for i in items)
            first = canon(snapshot[(table, regions[0])])
            diverged += [f"{table}: {regions[0]} != {r}" for r in regions[1:] if canon(snapshot[(table, r)]) != first]
        mine = set(self.history.zones)
        recorded: dict[str, dict[str, Any]] = {}
        for (table, _region), items in snapshot.items():
            if table.endswith("-conflicts"):
                for item in items:
                    if str(item["item_key"]).split("#", 1)[1] in mine:  # this game day's users only
                        recorded[item["conflict_id"]] = item
        acked = {op.value for op in self.history.ops if op.kind in ("create", "update") and op.outcome == "ok" and op.value}
        conflict_users = {str(i["item_key"]).split("#", 1)[1] for i in recorded.values()}
        injected = {cid for cid, i in recorded.items() if str(i["item_key"]).split("#", 1)[1] in self.injected}
        missing = sorted(self.injected - conflict_users)
        unexplained = [f"{i['item_key']}: {i['winner_version']} over {i['loser_version']}" for i in recorded.values()
                       if not ({i["winner_version"], i["loser_version"]} & acked)
                       or Version.decode(i["winner_version"]).region == Version.decode(i["loser_version"]).region]
        gaps = [g for g in status["replication"].get("gap_events", []) if float(g.get("at", 0)) >= self.started]
        return {
            "residency_violations": {"value": len(residency), "unit": "items or tables outside their zone", "pass": not residency,
                                     "examples": residency[:5]},
            "replicas_identical": {"value": len(diverged), "unit": "tables whose replicas differ", "pass": not diverged,
                                   "tables": len(tables), "examples": diverged[:5]},
            "conflicts": {"value": len(missing) + len(unexplained), "unit": "injected not recorded + recorded not explained",
                          "injected": len(self.injected), "recorded": len(recorded), "recorded_injected": len(injected),
                          "recorded_natural": len(recorded) - len(injected), "injected_missing": missing[:5],
                          "unexplained": unexplained[:5], "pass": not missing and not unexplained,
                          "examples": [*(f"injected, not recorded: {u}" for u in missing), *(f"unexplained: {u}" for u in unexplained)][:5]},
            "stream_gaps": {"value": len(gaps), "unit": "gaps in replication streams", "pass": not gaps,
                            "examples": [f"{g['table']}@{g['region']} {g['kind']}: {g['detail']}" for g in gaps][:5]},
        }


def scan(endpoint: str, table: str, region: str) -> list[dict[str, Any]]:
    """Every item of one replica, read from the embedded DynamoDB directly (consistent)."""
    from meridian.store import from_item

    client = boto3.client("dynamodb", region_name=region, endpoint_url=endpoint, config=NO_RETRIES,
                          aws_access_key_id="meridian-local", aws_secret_access_key="meridian-local")
    items: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {"TableName": table, "ConsistentRead": True}
    while True:
        resp = client.scan(**kwargs)
        items += [from_item(i) for i in resp.get("Items", [])]
        if "LastEvaluatedKey" not in resp:
            return items
        kwargs["ExclusiveStartKey"] = resp["LastEvaluatedKey"]


def read_replicas(status: dict[str, Any]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """(table, region) -> items, for every replica of every table of the run (``status`` of its control API)."""
    return {(t, r): scan(status["aws_endpoint"], t, r) for t, regions in status["tables"].items() for r in regions}


def _rate(samples: list[Sample]) -> float:
    if len(samples) < 2:
        return 0.0
    return len(samples) / max(1e-9, samples[-1].at - samples[0].at)


def rto(samples: list[Sample], windows: list[dict[str, Any]], places: list[str]) -> dict[str, dict[str, dict[str, Any]]]:
    """Per scenario and client region: the client-visible error window (errors a client saw after its
    retry, or on a request it does not retry) from the fault until the last such error, in seconds."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for w in windows:
        end = w["end"] or float("inf")
        per: dict[str, dict[str, Any]] = {}
        for place in places:
            errors = [s for s in samples if s.place == place and s.final and s.status >= 500 and w["fault_at"] <= s.at <= end]
            last = max((s.at + s.latency for s in errors), default=None)
            per[place] = {"errors": len(errors), "rto_seconds": round(last - w["fault_at"], 2) if last is not None else 0.0,
                          "first_error_seconds": round(min(s.at for s in errors) - w["fault_at"], 2) if errors else None}
        out[w["scenario"]] = per
    return out


def blast_radius(samples: list[Sample], *, served: list[str], places: list[str], start: float, end: float,
                 fault: float) -> dict[str, Any]:
    """A bad release's damage, measured, beside an all-at-once release's, computed from the same rates.

    Measured (the client's attempts between the first region's move to the release and the rollback):
    attempts answered 5xx that entered a region running it (each client region's edge sends it to its own
    region while healthy) or were executed there, and those a client saw after its retry. All at once:
    every region would have run it for the same time (the same alarm on the same rate fires after the
    same window, and the rollback takes as long), so the failures are the failure rate measured where it
    ran x every region's request rate x that time."""
    seconds = max(end - start, 1e-9)
    window = [s for s in samples if start <= s.at <= end]
    entered = [s for s in window if s.place in served]
    failed = [s for s in window if s.status >= 500 and (s.place in served or s.executed in served)]
    seen = [s for s in failed if s.final]
    rate = sum(s.status >= 500 for s in entered) / len(entered) if entered else 0.0
    seen_rate = sum(s.status >= 500 and s.final for s in entered) / max(1, sum(s.final for s in entered))
    all_rate = len(window) / seconds
    final_rate = sum(s.final for s in window) / seconds
    return {
        "fault_share": fault,
        "measured": {"regions_served": served, "failed_requests": len(failed), "failed_after_retry": len(seen),
                     "time_to_rollback_seconds": round(seconds, 2), "failure_rate": round(rate, 4),
                     "requests_in_window": len(window), "requests_into_the_release": len(entered)},
        "all_at_once": {"regions_served": list(places), "failed_requests": round(rate * all_rate * seconds),
                        "failed_after_retry": round(seen_rate * final_rate * seconds), "time_to_rollback_seconds": round(seconds, 2),
                        "every_region_requests_per_second": round(all_rate, 2),
                        "formula": f"failure rate {rate:.1%} x every region's {all_rate:.1f} requests/s x {seconds:.1f} s"},
    }


def run(state_dir: Path, scenarios: Iterable[str], report_dir: Path, *, progress: Callable[[str], None] | None = None,
        **kw: Any) -> dict[str, Any]:
    from meridian_local import report, timeline

    day = GameDay(state_dir, scenarios=scenarios, progress=progress, **kw)
    metrics = asyncio.run(day.run())
    checks = metrics["checks"]
    failures = {f"failover of {r['region']}": f"{r['seconds'] if r['seconds'] is not None else 'never'} s, allowed {r['allowed_seconds']:.2f} s"
                for r in metrics["scenario_results"].values() if "within_target" in r and not r["within_target"]}
    bad = metrics["scenario_results"].get("bad-release")
    if bad is not None and bad["verdict"] != "PASS":  # INCONCLUSIVE is no pass either: the run could not show it
        failures[f"bad release {bad['verdict']}"] = bad["why"]
    metrics["passed"] = all(c["pass"] for c in checks.values()) and not failures
    metrics["failures"] = {**{name: report.reason(name, c) for name, c in checks.items() if not c["pass"]}, **failures}
    metrics["parameters"] = report.parameters(day.status, state_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    timeline.plot(day.client.samples, day.marks, metrics["windows"], metrics["lag"], report_dir / "timeline.png", started=day.started)
    (report_dir / "history.jsonl").write_text("".join(json.dumps(op.to_json()) + "\n" for op in day.history.ops))
    (report_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
    (report_dir / "report.md").write_text(report.markdown(metrics))
    return metrics
