"""Regional evacuation by Global Accelerator traffic dial, with Route 53 ARC's safety rule.

Pure decisions (:func:`plan_evacuation`, :func:`should_restore`) and a thin adapter over the Global
Accelerator API (:class:`Dials`; its client is passed in, so a ``botocore.stub.Stubber`` checks every
request against the real service model in tests).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from meridian.topology import Topology

#: Global Accelerator's control plane answers only in us-west-2.
ACCELERATOR_API_REGION = "us-west-2"


@dataclass(frozen=True)
class Change:
    region: str
    endpoint_group_arn: str
    dial_from: float
    dial_to: float
    allowed: bool
    reason: str


def plan_evacuation(topology: Topology, region: str, dials: Mapping[str, float], healthy: Mapping[str, bool] | None = None) -> tuple[bool, str]:
    """Whether setting ``region``'s dial to 0 keeps every residency zone served, and why."""
    if region not in topology.regions:
        return False, f"{region} is not a region of this stack ({', '.join(topology.regions)})"
    healthy = healthy or {}
    for zone in topology.zones_of(region):
        serving = [r for r in zone.regions if r != region and dials.get(r, 0) > 0 and healthy.get(r, True)]
        if not serving:
            return False, f"refused: zone {zone.name!r} would have no serving region left (never evacuate the last one)"
    return True, "every residency zone keeps a serving region"


def should_restore(*, alarm_state: str, ok_since_s: float | None, now_s: float, cooling_s: float) -> tuple[bool, str]:
    """Hysteresis: restore only after the alarm has been OK for the whole cooling period."""
    if alarm_state != "OK" or ok_since_s is None:
        return False, f"alarm is {alarm_state}; stay evacuated"
    held = now_s - ok_since_s
    if held < cooling_s:
        return False, f"OK for {held:.0f} s of the {cooling_s:.0f} s cooling period; stay evacuated"
    return True, f"OK for {held:.0f} s (cooling period {cooling_s:.0f} s)"


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


def evacuate(dials: Dials, topology: Topology, region: str, *, dry_run: bool = False,
             healthy: Mapping[str, bool] | None = None) -> Change:
    groups = dials.groups()
    if region not in groups:
        raise LookupError(f"the accelerator has no endpoint group in {region}")
    allowed, reason = plan_evacuation(topology, region, {r: d for r, (_, d) in groups.items()}, healthy)
    arn, current = groups[region]
    if allowed and not dry_run and current != 0:
        dials.set(arn, 0)
    return Change(region, arn, current, 0 if allowed else current, allowed, reason)


def restore(dials: Dials, topology: Topology, region: str, *, dry_run: bool = False) -> Change:
    groups = dials.groups()
    if region not in groups:
        raise LookupError(f"the accelerator has no endpoint group in {region}")
    arn, current = groups[region]
    target = float(topology.routing.dial(region))
    if not dry_run and current != target:
        dials.set(arn, target)
    return Change(region, arn, current, target, True, f"restored to the configured dial {target:.0f}")
