"""Where a game day runs: the local run or a deployed stack, behind one interface (:class:`Target`).

The game day's driver (:mod:`meridian_cli.gameday_aws`) needs the same few things of either: the entry URL
and each region's, the residency zones and the tables' replica sets, a region lost and restored, global-table
replication paused in a region, a region cut off from a peer, and every replica of every table read back
for the history checker. :class:`LocalTarget` does them with the local run's control API (the emulator's
fail, heal and partition); :class:`AwsTarget` with the project's evacuation (``meridian evacuate``) and the
AWS FIS experiment templates the blueprint declares per region (infra/components/fis.py).

What each fault is, per target (the report states it):

| fault | local run (emulated) | AWS (real) |
| --- | --- | --- |
| region loss | the region's service killed, replication to and from it held | evacuation: record, alarm, Route 53 health check, GA dial 0 |
| pause replication | the region partitioned from its peers (also cuts region-to-region calls) | FIS ``aws:dynamodb:global-table-pause-replication`` |
| disrupt connectivity | the region partitioned from the template's peer | FIS ``aws:network:route-table-disrupt-cross-region-connectivity`` |
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from meridian.topology import Topology

__all__ = ["AwsTarget", "Endpoints", "Fault", "LocalTarget", "Target", "TargetError", "stack_outputs"]

#: (table, region) -> the items of that replica, as plain values (meridian.store.from_item)
Snapshot = dict[tuple[str, str], list[dict[str, Any]]]
#: FIS experiment states that end an experiment (botocore's fis model, ExperimentStatus)
ENDED = ("completed", "stopped", "failed", "cancelled")


class TargetError(Exception):
    """A fault the target refused or could not inject, or a target that cannot be used: one line, with why."""


@dataclass(frozen=True)
class Endpoints:
    entry: str  # the URL clients use: the local edge, or the stack's latency name / accelerator
    regions: dict[str, str]  # region -> that region's own URL


@dataclass
class Fault:
    """One injected fault, from its start to its end, as the target saw it."""

    kind: str  # region-loss | pause-replication | disrupt-connectivity
    region: str
    started_at: float
    detail: str  # what was done, e.g. "FIS experiment EXP123 of template EXT456"
    emulated: str = ""  # local run: how the emulator plays the fault; "" when it is the real thing
    peer: str | None = None
    experiment_id: str = ""
    ended_at: float | None = None
    #: running | ended (by the game day) | completed (ran its full duration) | stopped-by-condition | failed | cancelled
    outcome: str = "running"
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}


@runtime_checkable
class Target(Protocol):
    """What a game day does to, and reads from, a running Meridian."""

    name: str  # "local" | "aws"
    stack: str

    def endpoints(self) -> Endpoints: ...
    def zones(self) -> dict[str, list[str]]: ...
    def tables(self) -> dict[str, list[str]]: ...
    def lose_region(self, region: str) -> Fault: ...
    def region_out(self, region: str) -> bool: ...
    def restore_region(self, region: str) -> None: ...
    def pause_replication(self, region: str, seconds: float) -> Fault: ...
    def disrupt_connectivity(self, region: str, seconds: float) -> Fault: ...
    def poll(self, fault: Fault) -> Fault: ...
    def end(self, fault: Fault) -> Fault: ...
    def read_replicas(self) -> Snapshot: ...
    def settle(self, timeout: float) -> float | None: ...


# -- the local run ---------------------------------------------------------------------------------------------
class LocalTarget:
    """The local run, through its control API (``meridian local fail|heal|partition`` do the same)."""

    name = "local"

    def __init__(self, state_dir: Path, control: Callable[..., dict[str, Any]] | None = None) -> None:
        from meridian_local.state import control as local_control

        self.state_dir = state_dir
        self._control = control or local_control
        self.status = self.ctl("GET", "status")
        self.stack = str(self.status["stack"])

    def ctl(self, method: str, path: str, body: dict[str, Any] | None = None, timeout: float = 30.0) -> dict[str, Any]:
        from meridian_local.state import NotRunning

        try:
            return self._control(self.state_dir, method, path, body, timeout)
        except (NotRunning, ValueError) as exc:
            raise TargetError(f"local run: {exc}") from None

    def endpoints(self) -> Endpoints:
        return Endpoints(self.status["edge"], {r: s["url"] for r, s in self.status["regions"].items()})

    def zones(self) -> dict[str, list[str]]:
        return {z: list(rs) for z, rs in self.status["zones"].items()}

    def tables(self) -> dict[str, list[str]]:
        return {t: list(rs) for t, rs in self.status["tables"].items()}

    def _peers(self, region: str) -> list[str]:
        return sorted({r for rs in self.status["zones"].values() if region in rs for r in rs} - {region})

    def lose_region(self, region: str) -> Fault:
        self.ctl("POST", f"fail/{region}", {})
        return Fault("region-loss", region, time.time(), f"local: {region}'s service killed",
                     emulated="the service process is killed and replication to and from it held (its data survives)")

    def region_out(self, region: str) -> bool:
        """The emulated edge no longer sends traffic there (its health checks found it unhealthy)."""
        return not self.ctl("GET", "status")["regions"][region]["healthy"]

    def restore_region(self, region: str) -> None:
        self.ctl("POST", "heal", {"region": region})

    def pause_replication(self, region: str, seconds: float) -> Fault:
        peers = self._peers(region)
        for peer in peers:
            self.ctl("POST", "partition", {"a": region, "b": peer})
        return Fault("pause-replication", region, time.time(), f"local: {region} partitioned from {', '.join(peers)}",
                     emulated="a partition from every peer: replication held, and region-to-region calls cut too "
                              "(AWS pauses replication only)")

    def disrupt_connectivity(self, region: str, seconds: float) -> Fault:
        peers = self._peers(region)
        if not peers:
            raise TargetError(f"{region} shares no zone with another region: nothing to cut it off from")
        self.ctl("POST", "partition", {"a": region, "b": peers[0]})
        return Fault("disrupt-connectivity", region, time.time(), f"local: {region}|{peers[0]} partitioned", peer=peers[0],
                     emulated="a partition: region-to-region calls and replication between the two held (on AWS replication goes on)")

    def poll(self, fault: Fault) -> Fault:
        return fault  # the emulator's faults end only when healed

    def end(self, fault: Fault) -> Fault:
        if fault.outcome == "running":
            self.ctl("POST", "heal", {"region": fault.region})
            fault.outcome, fault.ended_at = "ended", time.time()
        return fault

    def read_replicas(self) -> Snapshot:
        from meridian_local.gameday import read_replicas

        return read_replicas(self.ctl("GET", "status"))

    def settle(self, timeout: float) -> float | None:
        result = self.ctl("POST", "drain", {"timeout": timeout}, timeout + 10)
        return float(result["seconds"]) if result.get("drained") else None


# -- a deployed stack ------------------------------------------------------------------------------------------
def stack_outputs(stack: str, cwd: Path, run: Callable[..., Any] = subprocess.run) -> dict[str, Any]:
    """The stack's outputs as ``pulumi stack output --json --show-secrets`` prints them; one line if not."""
    try:
        done = run(["pulumi", "stack", "output", "--json", "--show-secrets", "--stack", stack], cwd=cwd,
                   capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.SubprocessError) as exc:
        raise TargetError(f"cannot run `pulumi stack output` ({exc}); the AWS game day needs the Pulumi CLI logged in to the stack's backend") from None
    if done.returncode != 0:
        first = (done.stderr or done.stdout or "").strip().splitlines()
        raise TargetError(f"`pulumi stack output --stack {stack}` failed: {first[0] if first else 'no message'}")
    try:
        outputs = json.loads(done.stdout or "{}")
    except json.JSONDecodeError:
        raise TargetError(f"`pulumi stack output --stack {stack}` printed no JSON") from None
    if not isinstance(outputs, dict) or not outputs:
        raise TargetError(f"stack {stack} has no outputs: run `pulumi up` first")
    return outputs


def _api_error() -> tuple[type[BaseException], ...]:
    from meridian.evacuation import API_ERRORS

    return API_ERRORS


def _why(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict) and response.get("Error"):
        err = response["Error"]
        return f"{err.get('Code', 'Error')}: {err.get('Message', '')}".strip()
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


@dataclass
class AwsTarget:
    """A deployed stack: its outputs (``pulumi stack output``), boto3 clients, evacuation and FIS.

    ``clients(service, region)`` makes the boto3 clients (tests pass stubbed ones); ``sleep`` and ``clock``
    pace the waits (tests pass instant ones). ``wait_seconds`` bounds each wait for an experiment's state."""

    topology: Topology
    outputs: Mapping[str, Any]
    clients: Callable[[str, str], Any] = field(default=lambda service, region: _boto3(service, region))
    sleep: Callable[[float], None] = time.sleep
    wait_seconds: float = 300.0
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    name: str = "aws"

    def __post_init__(self) -> None:
        self.stack = self.topology.stack
        self._stopped_by_us: set[str] = set()
        if not self.outputs.get("apiUrl"):
            raise TargetError(f"stack {self.stack}'s outputs lack apiUrl: run `pulumi up` first")
        regions = self.outputs.get("regions") or {}
        missing = [r for r in self.topology.regions if not (regions.get(r) or {}).get("url")]
        if missing:
            raise TargetError(f"stack {self.stack}'s outputs lack regions.{missing[0]}.url: run `pulumi up` first")

    # -- reading the stack ------------------------------------------------------------------------------------
    def endpoints(self) -> Endpoints:
        return Endpoints(str(self.outputs["apiUrl"]), {r: str(self.outputs["regions"][r]["url"]) for r in self.topology.regions})

    def zones(self) -> dict[str, list[str]]:
        return {z.name: list(z.regions) for z in self.topology.zones}

    def tables(self) -> dict[str, list[str]]:
        """physical table -> the regions of its replicas (the zone's regions, its home region first)."""
        return {self.topology.table_name(spec.name, zone.name): list(self.topology.replica_order(zone))
                for spec in self.topology.tables for zone in self.topology.table_zones(spec)}

    def template(self, region: str, fault: str) -> str:
        """The id of ``region``'s FIS template for ``fault`` (pause_replication | disrupt_connectivity)."""
        templates = self.outputs.get("fisTemplates") or {}
        template = (templates.get(region) or {}).get(fault)
        if not template:
            raise TargetError(f"stack {self.stack}'s outputs have no fisTemplates.{region}.{fault}: deploy it with "
                              "meridian:faultInjection on (the default on AWS) and run `pulumi up`")
        return str(template)

    def check_templates(self, region: str) -> None:
        """Refuse at once, before any load, a run whose faults cannot be injected (the game day's preflight)."""
        for fault in ("pause_replication", "disrupt_connectivity"):
            template = self.template(region, fault)
            try:
                self.clients("fis", region).get_experiment_template(id=template)
            except _api_error() as exc:
                raise TargetError(f"FIS template {template} ({fault} in {region}) cannot be read: {_why(exc)}") from None

    # -- region loss: the project's evacuation --------------------------------------------------------------------
    def _evacuations(self, region: str) -> tuple[Any, str]:
        from meridian_cli import evacuate

        via = evacuate.default_via(self.topology, region)
        publish = evacuate._Publisher()
        return evacuate._evacuations(self.topology, via, publish), evacuate._identity(via)

    def lose_region(self, region: str) -> Fault:
        evacuations, who = self._evacuations(region)
        try:
            change = evacuations.evacuate(region, by=who, reason=f"game day {self.run_id}")
        except _api_error() as exc:
            raise TargetError(f"cannot evacuate {region}: {_why(exc)}") from None
        if not change.allowed:
            raise TargetError(f"evacuation of {region} refused: {change.reason}")
        dial = "" if change.dial_to is None else f", accelerator dial {change.dial_to:.0f}"
        return Fault("region-loss", region, time.time(), f"evacuated by {who}{dial}" + (f" ({change.dial_note})" if change.dial_note else ""))

    def region_out(self, region: str) -> bool:
        """The region's evacuation alarm is in ALARM: Route 53's health check on it withdraws the region."""
        from meridian.evacuation import alarm_name

        name = alarm_name(self.topology, region)
        try:
            alarms = self.clients("cloudwatch", region).describe_alarms(AlarmNames=[name], AlarmTypes=["MetricAlarm"])["MetricAlarms"]
        except _api_error() as exc:
            raise TargetError(f"cannot read alarm {name} in {region}: {_why(exc)}") from None
        return any(a.get("StateValue") == "ALARM" for a in alarms)

    def restore_region(self, region: str) -> None:
        evacuations, who = self._evacuations(region)
        try:
            change = evacuations.restore(region, by=who)
        except _api_error() as exc:
            raise TargetError(f"cannot restore {region}: {_why(exc)} (run `meridian restore {region} --stack {self.stack}`)") from None
        if change.action == "none":
            raise TargetError(f"{region} not restored: {change.reason}")

    # -- FIS ------------------------------------------------------------------------------------------------------
    def pause_replication(self, region: str, seconds: float) -> Fault:
        return self._experiment("pause-replication", region, self.template(region, "pause_replication"), seconds)

    def disrupt_connectivity(self, region: str, seconds: float) -> Fault:
        peer = (self.outputs.get("fisTemplates", {}).get(region) or {}).get("disrupt_peer")
        fault = self._experiment("disrupt-connectivity", region, self.template(region, "disrupt_connectivity"), seconds)
        fault.peer = str(peer) if peer else None
        return fault

    def _experiment(self, kind: str, region: str, template: str, seconds: float) -> Fault:
        from infra.components.fis import MAX_DURATION

        ceiling = int(MAX_DURATION.removeprefix("PT").removesuffix("M")) * 60
        if seconds > ceiling:
            raise TargetError(f"{kind} for {seconds:g} s: the template's action lasts at most {MAX_DURATION}")
        fis = self.clients("fis", region)
        try:
            started = fis.start_experiment(
                clientToken=f"meridian-{self.run_id}-{kind}-{region}", experimentTemplateId=template,
                tags={"meridian:stack": self.stack, "meridian:gameday": self.run_id, "meridian:fault": kind})
        except _api_error() as exc:
            raise TargetError(f"FIS refused to start {kind} in {region} (template {template}): {_why(exc)}") from None
        experiment = started["experiment"]
        fault = Fault(kind, region, time.time(), f"FIS experiment {experiment['id']} of template {template}",
                      experiment_id=str(experiment["id"]))
        state = self._wait(fis, fault, until=("running", *ENDED))
        if state["status"] != "running":
            self._ended(fault, state)
            raise TargetError(f"FIS experiment {fault.experiment_id} ({kind} in {region}) {fault.outcome}: {fault.reason}")
        return fault

    def _state(self, fis: Any, fault: Fault) -> dict[str, Any]:
        try:
            state: dict[str, Any] = fis.get_experiment(id=fault.experiment_id)["experiment"]["state"]
        except _api_error() as exc:
            raise TargetError(f"cannot read FIS experiment {fault.experiment_id}: {_why(exc)}") from None
        return state

    def _wait(self, fis: Any, fault: Fault, *, until: tuple[str, ...]) -> dict[str, Any]:
        waited = 0.0
        while True:
            state = self._state(fis, fault)
            if state["status"] in until:
                return state
            if waited >= self.wait_seconds:
                raise TargetError(f"FIS experiment {fault.experiment_id} still {state['status']} after {self.wait_seconds:g} s")
            self.sleep(5.0)
            waited += 5.0

    def _ended(self, fault: Fault, state: dict[str, Any]) -> None:
        """Record how the experiment ended, and why in AWS's words."""
        status = state["status"]
        fault.ended_at = fault.ended_at or time.time()
        error = state.get("error") or {}
        fault.reason = "; ".join(x for x in (state.get("reason", ""), error.get("code", "")) if x)
        if status == "stopped" and fault.experiment_id not in self._stopped_by_us:
            fault.outcome = "stopped-by-condition"
        elif status == "stopped":
            fault.outcome = "ended"
        else:
            fault.outcome = status

    def poll(self, fault: Fault) -> Fault:
        """Has the experiment ended by itself (a stop condition fired, it failed)? Never raises for AWS's answer."""
        if not fault.experiment_id or fault.outcome != "running":
            return fault
        state = self._state(self.clients("fis", fault.region), fault)
        if state["status"] in ENDED:
            self._ended(fault, state)
        return fault

    def end(self, fault: Fault) -> Fault:
        """Stop the experiment (FIS rolls its action back) and wait until it has; a region loss is restored."""
        if fault.kind == "region-loss":
            if fault.outcome == "running":
                self.restore_region(fault.region)
                fault.outcome, fault.ended_at = "ended", time.time()
            return fault
        self.poll(fault)
        if fault.outcome != "running":
            return fault
        fis = self.clients("fis", fault.region)
        self._stopped_by_us.add(fault.experiment_id)
        try:
            fis.stop_experiment(id=fault.experiment_id)
        except _api_error() as exc:
            raise TargetError(f"cannot stop FIS experiment {fault.experiment_id}: {_why(exc)}; stop it with "
                              f"`aws fis stop-experiment --id {fault.experiment_id} --region {fault.region}`") from None
        self._ended(fault, self._wait(fis, fault, until=ENDED))
        return fault

    # -- the replicas ---------------------------------------------------------------------------------------------
    def read_replicas(self) -> Snapshot:
        from meridian.store import from_item

        out: Snapshot = {}
        for table, regions in self.tables().items():
            for region in regions:
                client, items = self.clients("dynamodb", region), []
                kwargs: dict[str, Any] = {"TableName": table, "ConsistentRead": True}
                try:
                    while True:
                        page = client.scan(**kwargs)
                        items += [from_item(i) for i in page.get("Items", [])]
                        if "LastEvaluatedKey" not in page:
                            break
                        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
                except _api_error() as exc:
                    raise TargetError(f"cannot read {table} in {region}: {_why(exc)}") from None
                out[(table, region)] = items
        return out

    def settle(self, timeout: float) -> float | None:
        """Seconds until every table's replicas hold the same items (AWS offers no replication barrier), or None."""
        start, waited = time.time(), 0.0
        while True:
            snapshot = self.read_replicas()
            if all(_same(snapshot, table, regions) for table, regions in self.tables().items()):
                return time.time() - start
            if waited >= timeout:
                return None
            self.sleep(2.0)
            waited += 2.0


def _same(snapshot: Snapshot, table: str, regions: list[str]) -> bool:
    def canon(items: list[dict[str, Any]]) -> list[str]:
        return sorted(json.dumps(i, sort_keys=True, default=str) for i in items)

    first = canon(snapshot.get((table, regions[0]), []))
    return all(canon(snapshot.get((table, r), [])) == first for r in regions[1:])


def _boto3(service: str, region: str) -> Any:
    import boto3

    return boto3.client(service, region_name=region)
