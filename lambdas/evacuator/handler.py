"""Evacuates its region from both entry points when the region's composite alarm fires, and reconciles
every minute: republishes the region's evacuation record as the ``Evacuated`` metric (the Route 53 path),
converges the Global Accelerator dial of an evacuated region to 0, and restores only the evacuations it
made itself once the alarm has been OK for the cooling period. A manual evacuation (``meridian evacuate``)
lasts until ``meridian restore``. Never leaves a residency zone unserved (``meridian.evacuation``).

Events: a CloudWatch alarm action (``source: aws.cloudwatch``), the scheduled reconcile
(``{"action": "reconcile"}``), or a manual ``{"action": "evacuate"|"restore", "region": ..., "dry_run": ...,
"reason": ...}``. The metric is published here (EMF, this region's CloudWatch) only for this region; a
record written here for another region reaches that region's alarm through its own reconcile, within a
minute.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict
from datetime import datetime
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit, single_metric

from lambdas import runtime
from meridian.evacuation import (
    ACCELERATOR_API_REGION,
    AUTOMATIC,
    DIAL_METRIC,
    EVACUATION_NAMESPACE,
    REFUSED_METRIC,
    Dials,
    Evacuations,
    Records,
    composite_alarm_name,
)

COOLING_SECONDS = float(os.environ.get("MERIDIAN_EVACUATION_COOLING_SECONDS", "600"))


def _dials() -> Dials | None:
    if not runtime.topology().routing.global_accelerator:
        return None
    return Dials(runtime.client("globalaccelerator", ACCELERATOR_API_REGION), os.environ["MERIDIAN_ACCELERATOR_NAME"])


def _records() -> Records:
    return Records(runtime.client("dynamodb"), runtime.topology())


def _alarm_state(region: str) -> tuple[str, float | None]:
    resp = runtime.client("cloudwatch").describe_alarms(
        AlarmNames=[composite_alarm_name(runtime.topology(), region)], AlarmTypes=["CompositeAlarm"]
    )
    alarms = resp.get("CompositeAlarms", [])
    if not alarms:
        return "INSUFFICIENT_DATA", None
    updated = alarms[0]["StateUpdatedTimestamp"]
    return str(alarms[0]["StateValue"]), updated.timestamp() if isinstance(updated, datetime) else float(updated)


def _publisher(here: str) -> Any:
    def publish(metric: str, region: str, value: float) -> None:
        if region != here:
            return  # EMF lands in this region's CloudWatch; the other region's reconcile publishes its own
        unit = MetricUnit.Percent if metric == DIAL_METRIC else MetricUnit.NoUnit
        # Standard resolution (60 s): Route 53 refuses alarms on high-resolution metrics.
        with single_metric(name=metric, unit=unit, value=value, namespace=EVACUATION_NAMESPACE) as m:
            m.add_dimension(name="Region", value=region)

    return publish


def handle(event: dict[str, Any], *, dials: Dials | None = None, records: Records | None = None, now: float | None = None) -> dict[str, Any]:
    topology, here = runtime.topology(), runtime.region()
    now = time.time() if now is None else now
    evacuations = Evacuations(topology, records=records or _records(), dials=dials if dials is not None else _dials(),
                              publish=_publisher(here))
    if event.get("source") == "aws.cloudwatch":
        alarm = event["alarmData"]
        state = alarm["state"]["value"]
        if state != "ALARM":
            return {"action": "none", "reason": f"alarm went {state}; restore waits for the cooling period (reconcile)"}
        reason = f"alarm {alarm.get('alarmName', '?')}: {alarm['state'].get('reason', '')}".strip()
        change = evacuations.evacuate(here, by=AUTOMATIC, reason=reason, now=now)
    elif event.get("action") == "reconcile":
        change = evacuations.reconcile(here, alarm_state=_alarm_state, now=now, cooling_s=COOLING_SECONDS)
    elif event.get("action") in ("evacuate", "restore"):
        region, dry = str(event.get("region", here)), bool(event.get("dry_run", False))
        who = f"manual:lambda-event:{event.get('by', 'unknown')}"
        if event["action"] == "evacuate":
            change = evacuations.evacuate(region, by=who, reason=str(event.get("reason", "manual event")), now=now, dry_run=dry)
        else:
            change = evacuations.restore(region, by=who, now=now, dry_run=dry)
    else:
        raise ValueError("unknown event: expected a CloudWatch alarm action or {'action': evacuate|restore|reconcile}")
    result = asdict(change)
    if not change.allowed:
        runtime.logger.warning("evacuation refused", extra=result)
        with single_metric(name=REFUSED_METRIC, unit=MetricUnit.Count, value=1, namespace=EVACUATION_NAMESPACE) as m:
            m.add_dimension(name="Region", value=change.region)
    elif change.action != "none" or change.dial_note:
        runtime.logger.info(change.action, extra=result)
    return result


@runtime.logger.inject_lambda_context
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return handle(event)
