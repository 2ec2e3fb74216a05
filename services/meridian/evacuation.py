"""Regional evacuation on both entry points, with Route 53 ARC's safety rule.

A region is evacuated when its **evacuation record** says so. Two paths carry the record to the clients:

1. **The data plane (primary).** The metric ``Meridian/Evacuation`` ``Evacuated`` {Region, service} is 1
   while the region is evacuated, published in that region (the evacuator's EMF every minute, and
   ``meridian evacuate`` at once). It drives the region's ``<prefix>-<region>-evacuated`` alarm; a Route 53
   health check of type CLOUDWATCH_METRIC watches that alarm, and the CALCULATED check the latency record
   uses (the endpoint check AND that one) turns unhealthy: the latency name (``apiUrl``) stops answering
   with the region. Nothing here calls a control plane: no Route 53 record change (us-east-1), no Global
   Accelerator update (us-west-2).
2. **The Global Accelerator traffic dial (second path)**, through GA's API, which is served from us-west-2
   only. It is best effort: when the call fails, the record and the metric still hold, and the evacuator's
   minute reconcile sets the dial of an evacuated region to 0 once the API answers again.

The safety rule holds on both paths: never take the last serving region of a residency zone out of either
entry point. Pure decisions (:func:`plan_evacuation`, :func:`should_restore`) are separate from the
adapters (:class:`Records` over DynamoDB, :class:`Dials` over Global Accelerator) whose boto3 clients are
passed in, so moto or a ``botocore.stub.Stubber`` (checking every request against the real service model)
stands in for AWS in tests.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, replace
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from meridian.topology import Topology

#: Global Accelerator's control plane answers only in us-west-2.
ACCELERATOR_API_REGION = "us-west-2"

#: The evacuation metrics: ``Evacuated`` (1 evacuated, 0 serving; the Route 53 path), ``TrafficDial`` (the
#: dial the reconcile read, for the dashboard) and ``EvacuationRefused`` (a count).
EVACUATION_NAMESPACE = "Meridian/Evacuation"
EVACUATED_METRIC = "Evacuated"
DIAL_METRIC = "TrafficDial"
REFUSED_METRIC = "EvacuationRefused"
#: Powertools adds ``service`` (POWERTOOLS_SERVICE_NAME) to every metric the Lambdas emit, so the alarm and
#: every other publisher (``meridian evacuate``) use exactly these dimensions, or the alarm sees no data.
SERVICE_DIMENSION = "meridian"

#: ``by`` of the evacuations the evacuator Lambda makes; the reconcile restores only these.
AUTOMATIC = "evacuator"
#: Hash key prefix of the evacuation records in the directory table (like the canary's heartbeats).
RECORD_PREFIX = "__meridian_evacuation__#"


def metric_dimensions(region: str) -> dict[str, str]:
    """The dimensions of a region's evacuation metrics, as every publisher and the alarm name them."""
    return {"Region": region, "service": SERVICE_DIMENSION}


def alarm_name(topology: Topology, region: str) -> str:
    """The alarm on ``Evacuated`` that Route 53's CLOUDWATCH_METRIC health check watches (ALARM = evacuated)."""
    return f"{topology.project}-{topology.stack}-{region}-evacuated"


def composite_alarm_name(topology: Topology, region: str) -> str:
    """The alarm that invokes the evacuator (5xx rate high AND healthy tasks low)."""
    return f"{topology.project}-{topology.stack}-{region}-evacuate"


# -- pure decisions -------------------------------------------------------------------------------------
def expected_dials(topology: Topology, evacuated: Collection[str]) -> dict[str, float]:
    """The dials the records imply: 0 where evacuated, else the configured dial (when GA cannot be read)."""
    return {r: 0.0 if r in evacuated else float(topology.routing.dial(r)) for r in topology.regions}


def plan_evacuation(
    topology: Topology,
    region: str,
    dials: Mapping[str, float] | None,
    healthy: Mapping[str, bool] | None = None,
    evacuated: Collection[str] = (),
) -> tuple[bool, str]:
    """Whether taking ``region`` out keeps every residency zone served on both entry points, and why.

    A zone's other region serves the latency name (Route 53) when it is healthy and not evacuated; it
    serves the accelerator when, in addition, its dial is above 0. ``dials`` None: no accelerator (or none
    to check), only the Route 53 path counts.
    """
    if region not in topology.regions:
        return False, f"{region} is not a region of this stack ({', '.join(topology.regions)})"
    healthy = healthy or {}
    for zone in topology.zones_of(region):
        behind_dns = [r for r in zone.regions if r != region and healthy.get(r, True) and r not in evacuated]
        if not behind_dns:
            return False, (f"refused: zone {zone.name!r} would have no serving region left behind the latency name "
                           "(never evacuate the last one)")
        if dials is not None and not [r for r in behind_dns if dials.get(r, 0) > 0]:
            return False, (f"refused: zone {zone.name!r} would have no serving region left on Global Accelerator "
                           "(never evacuate the last one)")
    return True, "every residency zone keeps a serving region on both entry points"


def should_restore(*, alarm_state: str, ok_since_s: float | None, now_s: float, cooling_s: float) -> tuple[bool, str]:
    """Hysteresis: restore only after the alarm has been OK for the whole cooling period."""
    if alarm_state != "OK" or ok_since_s is None:
        return False, f"alarm is {alarm_state}; stay evacuated"
    held = now_s - ok_since_s
    if held < cooling_s:
        return False, f"OK for {held:.0f} s of the {cooling_s:.0f} s cooling period; stay evacuated"
    return True, f"OK for {held:.0f} s (cooling period {cooling_s:.0f} s)"


# -- the record ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EvacuationRecord:
    """Who evacuated a region, why and when; after a restore, who restored it and when (the rest is kept)."""

    region: str
    evacuated: bool
    by: str
    reason: str
    at: float
    restored_by: str = ""
    restored_at: float | None = None

    @property
    def automatic(self) -> bool:
        """Made by the evacuator Lambda (which alone may end it on its own)."""
        return self.by == AUTOMATIC

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(self.at))
        if self.evacuated:
            return f"evacuated by {self.by} at {when}: {self.reason}"
        restored = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(self.restored_at or 0))
        return f"serving (restored by {self.restored_by or '?'} at {restored}; last evacuated by {self.by} at {when})"


class Records:
    """Evacuation records: one item per region in the stack's ``directory`` global table.

    Why there: the record must outlive any one region and be readable (and writable) from every region,
    with no control plane in the way. The directory is a global table in the all-regions zone, so every
    region has a replica of it: the evacuator reads its own region's replica, ``meridian evacuate`` writes
    through any surviving region, and DynamoDB replicates the item everywhere in about a second. It is
    already durable (point-in-time recovery, deletion protection) and costs nothing new: no table, key or
    replica set to declare, protect and tear down. The alternatives fall short: an SSM parameter lives in
    one region (or needs replicating by hand); the Global Accelerator dial holds a number, not who or why,
    and is readable only through us-west-2. The item's hash key is ``__meridian_evacuation__#<region>``
    (the canary's heartbeats live in the same tables the same way); it carries no ``version`` or
    ``origin_region``, so the conflict auditor skips it. Concurrent writers are last-writer-wins across
    regions; within a region the evacuator's writes are conditional (it never overwrites a manual
    evacuation, and restores only the record it read).
    """

    def __init__(self, client: Any, topology: Topology) -> None:
        spec = topology.table("directory")
        if spec.range_key is not None:
            raise ValueError("evacuation records need the directory table to have a hash key only")
        self.client, self.topology = client, topology
        self.table = topology.table_name("directory", topology.global_zone.name)
        self.hash_key = spec.hash_key.name

    def _key(self, region: str) -> dict[str, Any]:
        return {self.hash_key: {"S": f"{RECORD_PREFIX}{region}"}}

    def get(self, region: str, *, consistent: bool = False) -> EvacuationRecord | None:
        item = self.client.get_item(TableName=self.table, Key=self._key(region), ConsistentRead=consistent).get("Item")
        if not item:
            return None
        return EvacuationRecord(
            region=region,
            evacuated=bool(item["evacuated"]["BOOL"]),
            by=item["evacuated_by"]["S"],
            reason=item.get("reason", {}).get("S", ""),
            at=int(item["evacuated_at"]["N"]) / 1000,
            restored_by=item.get("restored_by", {}).get("S", ""),
            restored_at=int(item["restored_at"]["N"]) / 1000 if "restored_at" in item else None,
        )

    def all(self, *, consistent: bool = False) -> dict[str, EvacuationRecord]:
        """Region -> its record, for every region of the stack that has one."""
        out = {}
        for region in self.topology.regions:
            record = self.get(region, consistent=consistent)
            if record is not None:
                out[region] = record
        return out

    def put(self, record: EvacuationRecord, *, unless_evacuated: bool = False, only_if: EvacuationRecord | None = None) -> bool:
        """Write ``record``; False when its condition failed. ``unless_evacuated``: only if the region is not
        evacuated now (the evacuator never takes over a manual evacuation). ``only_if``: only if the stored
        record is still that one (the reconcile restores the evacuation it read, nothing newer)."""
        item: dict[str, Any] = {
            **self._key(record.region),
            "region": {"S": record.region},
            "evacuated": {"BOOL": record.evacuated},
            "evacuated_by": {"S": record.by},
            "reason": {"S": record.reason or "-"},
            "evacuated_at": {"N": str(int(record.at * 1000))},
        }
        if record.restored_by:
            item["restored_by"] = {"S": record.restored_by}
        if record.restored_at is not None:
            item["restored_at"] = {"N": str(int(record.restored_at * 1000))}
        args: dict[str, Any] = {"TableName": self.table, "Item": item}
        if unless_evacuated:
            args |= {"ConditionExpression": "attribute_not_exists(#k) OR evacuated = :no",
                     "ExpressionAttributeNames": {"#k": self.hash_key}, "ExpressionAttributeValues": {":no": {"BOOL": False}}}
        elif only_if is not None:
            args |= {"ConditionExpression": "evacuated = :yes AND evacuated_by = :by AND evacuated_at = :at",
                     "ExpressionAttributeValues": {":yes": {"BOOL": True}, ":by": {"S": only_if.by},
                                                   ":at": {"N": str(int(only_if.at * 1000))}}}
        try:
            self.client.put_item(**args)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                return False
            raise
        return True


# -- Global Accelerator --------------------------------------------------------------------------------------
class Dials:
    """The endpoint groups of one accelerator, by region."""

    def __init__(self, client: Any, accelerator_name: str) -> None:
        self.client, self.name = client, accelerator_name

    def groups(self) -> dict[str, tuple[str, float]]:
        """region -> (endpoint group ARN, traffic dial)."""
        accelerators = [a for a in self.client.list_accelerators()["Accelerators"] if a["Name"] == self.name]
        if not accelerators:
            raise LookupError(f"no Global Accelerator named {self.name!r}")
        out: dict[str, tuple[str, float]] = {}
        for listener in self.client.list_listeners(AcceleratorArn=accelerators[0]["AcceleratorArn"])["Listeners"]:
            for group in self.client.list_endpoint_groups(ListenerArn=listener["ListenerArn"])["EndpointGroups"]:
                out[group["EndpointGroupRegion"]] = (group["EndpointGroupArn"], float(group["TrafficDialPercentage"]))
        return out

    def set(self, endpoint_group_arn: str, dial: float) -> None:
        self.client.update_endpoint_group(EndpointGroupArn=endpoint_group_arn, TrafficDialPercentage=dial)


#: What an unreachable AWS API raises through boto3 (and what a ``Stubber`` client error is).
API_ERRORS = (BotoCoreError, ClientError, LookupError)


# -- the two paths together -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Change:
    """What an evacuation, a restore or a reconcile did (or, in a dry run, would do) to one region."""

    region: str
    action: str  # evacuate | restore | none
    allowed: bool
    reason: str
    evacuated: bool  # the record after the change
    by: str = ""
    dial_from: float | None = None
    dial_to: float | None = None
    #: why the dial was not changed (no accelerator, GA's API unreachable...), "" when it was or needed no change
    dial_note: str = ""
    endpoint_group_arn: str = ""


#: publish(metric, region, value): puts one data point of a ``Meridian/Evacuation`` metric of ``region``
#: in ``region``'s CloudWatch, with :func:`metric_dimensions`.
Publish = Callable[[str, str, float], None]


class Evacuations:
    """Evacuate, restore and reconcile one region on both entry points.

    The order is the same everywhere: the record first (the durable truth every region reads), then the
    metric (the Route 53 path, primary), then the dial (the accelerator path, best effort).
    """

    def __init__(self, topology: Topology, *, records: Records, dials: Dials | None, publish: Publish) -> None:
        self.topology, self.records, self.dials, self.publish = topology, records, dials, publish

    def _groups(self) -> tuple[dict[str, tuple[str, float]] | None, str]:
        if not self.topology.routing.global_accelerator:
            return None, ""  # nothing to dial: the latency name is the only entry point
        if self.dials is None:
            return None, "no Global Accelerator client"
        try:
            return self.dials.groups(), ""
        except API_ERRORS as exc:
            return None, f"Global Accelerator's API ({ACCELERATOR_API_REGION}) did not answer: {exc}"

    def _set_dial(self, groups: dict[str, tuple[str, float]] | None, note: str, region: str, target: float) -> tuple[
            float | None, float | None, str, str]:
        """(from, to, note, arn) of setting ``region``'s dial to ``target``; never raises for GA's API."""
        if groups is None:
            return None, None, note, ""
        if region not in groups:
            return None, None, f"the accelerator has no endpoint group in {region}", ""
        arn, current = groups[region]
        if current == target:
            return current, target, "", arn
        assert self.dials is not None
        try:
            self.dials.set(arn, target)
        except API_ERRORS as exc:
            return current, current, f"Global Accelerator's API ({ACCELERATOR_API_REGION}) refused the dial: {exc}", arn
        return current, target, "", arn

    def _dials_for_safety(self, groups: dict[str, tuple[str, float]] | None, evacuated: Collection[str]) -> dict[str, float] | None:
        if not self.topology.routing.global_accelerator:
            return None
        if groups is not None:
            return {r: d for r, (_, d) in groups.items()}
        return expected_dials(self.topology, evacuated)

    def evacuate(self, region: str, *, by: str, reason: str, now: float | None = None, dry_run: bool = False,
                 healthy: Mapping[str, bool] | None = None) -> Change:
        if region not in self.topology.regions:
            raise LookupError(f"{region} is not a region of this stack ({', '.join(self.topology.regions)})")
        now = time.time() if now is None else now
        records = self.records.all(consistent=True)
        current = records.get(region)
        evacuated = {r for r, rec in records.items() if rec.evacuated and r != region}
        groups, note = self._groups()
        if current is not None and current.evacuated:
            # Already out. An operator takes an automatic evacuation over (the reconcile then leaves it alone);
            # the evacuator never takes over an operator's.
            record = current if by == AUTOMATIC or not current.automatic else replace(current, by=by, reason=reason, at=now)
            allowed, why = True, f"already {current.describe()}" + ("; now held by " + by if record is not current else "")
        else:
            allowed, why = plan_evacuation(self.topology, region, self._dials_for_safety(groups, evacuated), healthy, evacuated)
            record = EvacuationRecord(region, True, by, reason, now)
        dial_now = groups[region][1] if groups and region in groups else None
        if not allowed:
            return Change(region, "evacuate", False, why, bool(current and current.evacuated), by, dial_now, dial_now, note)
        if dry_run:
            return Change(region, "evacuate", True, why, True, record.by, dial_now, 0.0 if dial_now is not None else None, note)
        if record is not current and not self.records.put(record, unless_evacuated=by == AUTOMATIC):
            # An operator's evacuation landed first: keep it, only make sure both paths hold.
            record = self.records.get(region, consistent=True) or record
            why = f"already {record.describe()}"
        self.publish(EVACUATED_METRIC, region, 1)
        dial_from, dial_to, dial_note, arn = self._set_dial(groups, note, region, 0.0)
        return Change(region, "evacuate", True, why, True, record.by, dial_from, dial_to, dial_note, arn)

    def restore(self, region: str, *, by: str, now: float | None = None, dry_run: bool = False,
                only_if: EvacuationRecord | None = None) -> Change:
        """Back on both entry points (no safety rule: restoring adds capacity). ``only_if``: the reconcile's
        guard, restore only while the stored record is still the evacuation it read."""
        if region not in self.topology.regions:
            raise LookupError(f"{region} is not a region of this stack ({', '.join(self.topology.regions)})")
        now = time.time() if now is None else now
        current = self.records.get(region, consistent=True)
        target = float(self.topology.routing.dial(region))
        groups, note = self._groups()
        dial_now = groups[region][1] if groups and region in groups else None
        why = f"restored to the configured dial {target:.0f}" + (f" (was {current.describe()})" if current else "")
        if dry_run:
            return Change(region, "restore", True, why, False, by, dial_now, target if dial_now is not None else None, note)
        restored = EvacuationRecord(region, False, current.by if current else by, current.reason if current else "-",
                                    current.at if current else now, restored_by=by, restored_at=now)
        if not self.records.put(restored, only_if=only_if):
            latest = self.records.get(region, consistent=True)
            return Change(region, "none", True, f"not restored: the record changed ({latest.describe() if latest else 'gone'})",
                          bool(latest and latest.evacuated), latest.by if latest else by)
        self.publish(EVACUATED_METRIC, region, 0)
        dial_from, dial_to, dial_note, arn = self._set_dial(groups, note, region, target)
        return Change(region, "restore", True, why, False, by, dial_from, dial_to, dial_note, arn)

    def reconcile(self, region: str, *, alarm_state: Callable[[str], tuple[str, float | None]], now: float | None = None,
                  cooling_s: float) -> Change:
        """Every minute in each region: republish the region's record as the metric (so the Route 53 path
        holds and heals by itself), converge the dial of an evacuated region to 0, and restore an evacuation
        only if the evacuator made it and its alarm has been OK for the cooling period."""
        now = time.time() if now is None else now
        record = self.records.get(region)
        groups, note = self._groups()
        if groups is not None and region in groups:
            self.publish(DIAL_METRIC, region, groups[region][1])
        if record is None or not record.evacuated:
            self.publish(EVACUATED_METRIC, region, 0)
            return Change(region, "none", True, "not evacuated", False)
        if record.automatic:
            state, since = alarm_state(region)
            ok, why = should_restore(alarm_state=state, ok_since_s=since, now_s=now, cooling_s=cooling_s)
            if ok:
                return self.restore(region, by=AUTOMATIC, now=now, only_if=record)
        else:
            why = f"{record.describe()}: only `meridian restore {region}` ends it"
        self.publish(EVACUATED_METRIC, region, 1)
        dial_from, dial_to, dial_note, arn = self._set_dial(groups, note, region, 0.0)
        return Change(region, "none", True, why, True, record.by, dial_from, dial_to, dial_note, arn)
