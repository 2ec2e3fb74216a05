"""Every minute in each region: write heartbeats, read the others', publish lag and staleness (EMF)."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.metrics import MetricUnit, single_metric

from lambdas import runtime
from meridian.canary import beat

#: Last heartbeat write time seen per (table, source), kept while the container lives.
SEEN: dict[tuple[str, str], int] = {}


@runtime.logger.inject_lambda_context
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    here = runtime.region()
    observations = beat(runtime.client("dynamodb"), runtime.topology(), here, seen=SEEN)
    worst: dict[str, float] = {}
    for o in observations:
        worst[o.source] = max(worst.get(o.source, 0.0), o.staleness_s)
        with single_metric(name="HeartbeatStalenessSeconds", unit=MetricUnit.Seconds, value=o.staleness_s,
                           namespace="Meridian/Replication") as m:
            m.add_dimension(name="ReceivingRegion", value=here)
            m.add_dimension(name="SourceRegion", value=o.source)
        if o.lag_s is not None:
            with single_metric(name="ReplicationLagSeconds", unit=MetricUnit.Seconds, value=o.lag_s,
                               namespace="Meridian/Replication") as m:
                m.add_dimension(name="ReceivingRegion", value=here)
                m.add_dimension(name="SourceRegion", value=o.source)
    # The alarm watches the worst staleness seen here, whatever the source (dimension ReceivingRegion only).
    with single_metric(name="HeartbeatStalenessSeconds", unit=MetricUnit.Seconds, value=max(worst.values(), default=0.0),
                       namespace="Meridian/Replication") as m:
        m.add_dimension(name="ReceivingRegion", value=here)
    runtime.logger.info("heartbeats", extra={"observations": len(observations), "worst_staleness_s": worst})
    return {"region": here, "observations": len(observations), "worst_staleness_s": worst}
