"""Evacuates a region (Global Accelerator dial to 0) when its composite alarm fires, restores it after
the alarm has been OK for a cooling period, and refuses to leave any residency zone unserved.

Events: a CloudWatch alarm action (``source: aws.cloudwatch``), the scheduled reconcile
(``{"action": "reconcile"}``), or a manual ``{"action": "evacuate"|"restore", "region": ..., "dry_run": ...}``.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict
from datetime import datetime
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit, single_metric

from lambdas import runtime
from meridian.evacuation import ACCELERATOR_API_REGION, Dials, evacuate, restore, should_restore

COOLING_SECONDS = float(os.environ.get("MERIDIAN_EVACUATION_COOLING_SECONDS", "600"))


def _dials() -> Dials:
    return Dials(runtime.client("globalaccelerator", ACCELERATOR_API_REGION), os.environ["MERIDIAN_ACCELERATOR_NAME"])


def _alarm_name(region: str) -> str:
    t = runtime.topology()
    return f"{t.project}-{t.stack}-{region}-evacuate"


def _alarm_state(region: str) -> tuple[str, float | None]:
    resp = runtime.client("cloudwatch").describe_alarms(AlarmNames=[_alarm_name(region)], AlarmTypes=["CompositeAlarm"])
    alarms = resp.get("CompositeAlarms", [])
    if not alarms:
        return "INSUFFICIENT_DATA", None
    updated = alarms[0]["StateUpdatedTimestamp"]
    return str(alarms[0]["StateValue"]), updated.timestamp() if isinstance(updated, datetime) else float(updated)


def handle(event: dict[str, Any], *, dials: Dials | None = None, now: float | None = None) -> dict[str, Any]:
    topology, here = runtime.topology(), runtime.region()
    dials = dials or _dials()
    now = time.time() if now is None else now
    if event.get("source") == "aws.cloudwatch":
        state = event["alarmData"]["state"]["value"]
        if state != "ALARM":
            return {"action": "none", "reason": f"alarm went {state}; restore waits for the cooling period (reconcile)"}
        change = evacuate(dials, topology, here, dry_run=False)
        action = "evacuate"
    elif event.get("action") == "reconcile":
        groups = dials.groups()
        if groups.get(here, ("", 1))[1] != 0 or topology.routing.dial(here) == 0:
            return {"action": "none", "reason": "not evacuated"}
        state, since = _alarm_state(here)
        ok, why = should_restore(alarm_state=state, ok_since_s=since, now_s=now, cooling_s=COOLING_SECONDS)
        if not ok:
            return {"action": "none", "reason": why}
        change, action = restore(dials, topology, here), "restore"
    elif event.get("action") in ("evacuate", "restore"):
        region, dry = str(event.get("region", here)), bool(event.get("dry_run", False))
        action = str(event["action"])
        change = evacuate(dials, topology, region, dry_run=dry) if action == "evacuate" else restore(dials, topology, region, dry_run=dry)
    else:
        raise ValueError("unknown event: expected a CloudWatch alarm action or {'action': evacuate|restore|reconcile}")
    result = {"action": action, **asdict(change)}
    if not change.allowed:
        runtime.logger.warning("evacuation refused", extra=result)
    else:
        runtime.logger.info(action, extra=result)
    with single_metric(name="EvacuationRefused" if not change.allowed else f"{action.capitalize()}d", unit=MetricUnit.Count, value=1,
                       namespace="Meridian/Replication") as m:
        m.add_dimension(name="Region", value=change.region)
    return result


@runtime.logger.inject_lambda_context
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return handle(event)
