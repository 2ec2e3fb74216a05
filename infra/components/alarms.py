"""One region's alarms: ALB 5xx rate and healthy hosts (together: evacuate the region), DynamoDB
replication latency to each peer and throttles, the replication heartbeat, the conflict rate, the
composite alarm that invokes the evacuator, and the evacuation flag that Route 53 watches. Every alarm
notifies the region's alarm topic on ALARM and OK (``alarm_actions`` and ``ok_actions``), besides its own actions.

CloudWatch refuses a metric-math alarm with more than 10 metrics (PutMetricAlarm: up to 20 queries, at
most 10 with a MetricStat and 10 expressions, one returning data) and any query id that does not start
with a lowercase letter. So alarms over many tables are split into groups (see :func:`table_groups`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from infra.components.functions import METRICS_NAMESPACE, POWERTOOLS_SERVICE
from infra.components.load_balancer import LoadBalancer
from infra.components.scope import Scope
from meridian.evacuation import EVACUATED_METRIC, EVACUATION_NAMESPACE, alarm_name, metric_dimensions
from meridian.topology import Topology

#: CloudWatch's hard limit of metrics (MetricStat queries) in one metric-math alarm.
MAX_METRICS_PER_ALARM = 10
#: Throttles take two metrics per table (read and write).
THROTTLE_TABLES_PER_ALARM = MAX_METRICS_PER_ALARM // 2
REPLICATION_TABLES_PER_ALARM = MAX_METRICS_PER_ALARM


@dataclass(frozen=True)
class TableGroup:
    """Tables one alarm watches. ``suffix`` is "" when one alarm covers them all (the name it always had),
    else ``-<zone>`` or ``-<zone>-<n>`` (n from 1) when a zone needs several."""

    suffix: str
    zone: str
    tables: tuple[str, ...]


def chunks(items: Sequence[str], size: int) -> list[tuple[str, ...]]:
    """Consecutive groups of at most ``size`` items, as even as possible (7 by 5 -> 4 + 3)."""
    if not items:
        return []
    count = math.ceil(len(items) / size)
    base, extra = divmod(len(items), count)
    out, start = [], 0
    for i in range(count):
        end = start + base + (1 if i < extra else 0)
        out.append(tuple(items[start:end]))
        start = end
    return out


def table_groups(tables_by_zone: Mapping[str, Sequence[str]], size: int) -> list[TableGroup]:
    """One group per zone, split into chunks of at most ``size`` tables; named as :class:`TableGroup` says."""
    per_zone = {zone: chunks(sorted(tables), size) for zone, tables in sorted(tables_by_zone.items()) if tables}
    if sum(len(c) for c in per_zone.values()) == 1:
        ((zone, (only,)),) = per_zone.items()
        return [TableGroup("", zone, only)]
    return [
        TableGroup(f"-{zone}" if len(groups) == 1 else f"-{zone}-{n}", zone, group)
        for zone, groups in per_zone.items()
        for n, group in enumerate(groups, start=1)
    ]


def throttle_groups(topology: Topology, region: str) -> list[TableGroup]:
    """Every zone table with a replica in ``region``."""
    by_zone = {zone: list(tables.values()) for zone, tables in topology.tables_in_region(region).items()}
    return table_groups(by_zone, THROTTLE_TABLES_PER_ALARM)


def replication_groups(topology: Topology, region: str) -> dict[str, list[TableGroup]]:
    """Peer region -> groups of the tables ``region`` replicates to it (those of the zones both are in)."""
    in_region = topology.tables_in_region(region)
    out: dict[str, list[TableGroup]] = {}
    for peer in topology.regions:
        if peer == region:
            continue
        shared = {z.name: list(in_region[z.name].values()) for z in topology.zones_of(region) if peer in z.regions}
        groups = table_groups(shared, REPLICATION_TABLES_PER_ALARM)
        if groups:
            out[peer] = groups
    return out


def heartbeat_dimensions(region: str) -> dict[str, str]:
    """The dimensions of the worst-staleness series the canary emits in ``region`` (Powertools adds ``service``)."""
    return {"ReceivingRegion": region, "service": POWERTOOLS_SERVICE}


def conflict_dimensions(region: str) -> dict[str, str]:
    """The dimensions of the conflict count the auditor emits in ``region`` (Powertools adds ``service``)."""
    return {"Region": region, "service": POWERTOOLS_SERVICE}


def _metric(
    query_id: str, namespace: str, metric: str, dimensions: Mapping[str, pulumi.Input[str]], *, stat: str = "Sum"
) -> aws.cloudwatch.MetricAlarmMetricQueryArgs:
    return aws.cloudwatch.MetricAlarmMetricQueryArgs(
        id=query_id,
        metric=aws.cloudwatch.MetricAlarmMetricQueryMetricArgs(
            namespace=namespace, metric_name=metric, dimensions=dict(dimensions), period=60, stat=stat
        ),
        return_data=False,
    )


def _expression(query_id: str, expression: str, label: str, *, result: bool = False) -> aws.cloudwatch.MetricAlarmMetricQueryArgs:
    return aws.cloudwatch.MetricAlarmMetricQueryArgs(id=query_id, expression=expression, label=label, return_data=result)


#: p99 of the targets' response time above which a region's release is judged too slow (seconds).
LATENCY_P99_SECONDS = 1.0


@dataclass(frozen=True)
class RegionAlarms:
    evacuate: aws.cloudwatch.CompositeAlarm
    #: what a bad release trips first (5xx rate, p99 latency): ECS rolls a deployment back on these
    release: tuple[aws.cloudwatch.MetricAlarm, ...]
    #: ALARM while the region is evacuated: Route 53's CLOUDWATCH_METRIC health check watches it
    evacuated: aws.cloudwatch.MetricAlarm
    conflicts: aws.cloudwatch.MetricAlarm


def alarms(scope: Scope, *, load_balancer: LoadBalancer, evacuator: aws.lambda_.Function, topic: aws.sns.Topic) -> RegionAlarms:
    name, topology, region, prefix = scope.name, scope.topology, scope.region, scope.prefix
    # Every alarm below notifies the region's topic on ALARM and OK (a test checks each one in both plans).
    notify = [topic.arn]
    alb, target_group = load_balancer.alb, load_balancer.target_group
    lb_dims = {"LoadBalancer": alb.arn_suffix}
    five_xx = aws.cloudwatch.MetricAlarm(
        f"{name}-alb-5xx-rate",
        name=f"{prefix}-{region}-alb-5xx-rate",
        alarm_description="More than 5% of requests in this region end in a 5xx (the targets' or the ALB's own)",
        comparison_operator="GreaterThanThreshold",
        threshold=5,
        evaluation_periods=3,
        datapoints_to_alarm=3,
        treat_missing_data="notBreaching",
        metric_queries=[
            _metric("target5xx", "AWS/ApplicationELB", "HTTPCode_Target_5XX_Count", lb_dims),
            # With no healthy target the ALB answers 502/503/504 itself: only this metric counts those.
            _metric("elb5xx", "AWS/ApplicationELB", "HTTPCode_ELB_5XX_Count", lb_dims),
            _metric("requests", "AWS/ApplicationELB", "RequestCount", lb_dims),
            # A count metric has no data point in a minute without such responses: fill it with 0, and sum
            # as an array (which adds the values present) so that one absent series cannot blank the other.
            _expression("errors", "SUM([FILL(target5xx, 0), FILL(elb5xx, 0)])", "5xx responses"),
            # RequestCount leaves out requests the ALB refused before choosing a target (some 503s), so the
            # base is at least the errors: the rate stays within 0-100 when no target is healthy.
            _expression("served", "MAX([FILL(requests, 0), errors])", "responses"),
            _expression("rate", "IF(served > 0, 100 * errors / served, 0)", "5xx %", result=True),
        ],
        alarm_actions=notify,
        ok_actions=notify,
        opts=scope.opts(),
    )
    latency = aws.cloudwatch.MetricAlarm(
        f"{name}-alb-latency-p99",
        name=f"{prefix}-{region}-alb-latency-p99",
        alarm_description=f"p99 target response time in this region above {LATENCY_P99_SECONDS:g} s for 3 minutes",
        comparison_operator="GreaterThanThreshold",
        threshold=LATENCY_P99_SECONDS,
        evaluation_periods=3,
        datapoints_to_alarm=3,
        # No requests, no data: quiet is not slow.
        treat_missing_data="notBreaching",
        # A metric query with the p99 statistic (MetricStat takes percentiles), in the same form as the 5xx
        # alarm: the local applier and the alarm checks read alarms as single-statistic or metric queries.
        metric_queries=[
            _metric("p99", "AWS/ApplicationELB", "TargetResponseTime", lb_dims, stat="p99"),
            _expression("latency", "p99", "p99 response time (s)", result=True),
        ],
        alarm_actions=notify,
        ok_actions=notify,
        opts=scope.opts(),
    )
    tg_dims = {"LoadBalancer": alb.arn_suffix, "TargetGroup": target_group.arn_suffix}
    unhealthy = aws.cloudwatch.MetricAlarm(
        f"{name}-healthy-hosts-low",
        name=f"{prefix}-{region}-healthy-hosts-low",
        alarm_description="Fewer healthy tasks than the autoscaling floor",
        namespace="AWS/ApplicationELB",
        metric_name="HealthyHostCount",
        dimensions=tg_dims,
        statistic="Minimum",
        period=60,
        evaluation_periods=3,
        comparison_operator="LessThanThreshold",
        threshold=topology.sizing.min_count,
        treat_missing_data="breaching",
        alarm_actions=notify,
        ok_actions=notify,
        opts=scope.opts(),
    )
    aws.cloudwatch.MetricAlarm(
        f"{name}-unhealthy-hosts",
        name=f"{prefix}-{region}-unhealthy-hosts",
        alarm_description="Tasks failing the /health/ready check",
        namespace="AWS/ApplicationELB",
        metric_name="UnHealthyHostCount",
        dimensions=tg_dims,
        statistic="Maximum",
        period=60,
        evaluation_periods=3,
        comparison_operator="GreaterThanThreshold",
        threshold=0,
        alarm_actions=notify,
        ok_actions=notify,
        opts=scope.opts(),
    )
    # DynamoDB publishes ReplicationLatency in the region that sends, one series per receiving region.
    for peer, groups in replication_groups(topology, region).items():
        for group in groups:
            ids = [f"t{i}" for i in range(len(group.tables))]
            queries = [
                _metric(qid, "AWS/DynamoDB", "ReplicationLatency", {"TableName": t, "ReceivingRegion": peer}, stat="Average")
                for qid, t in zip(ids, group.tables, strict=True)
            ]
            queries.append(_expression("worst", f"MAX([{', '.join(ids)}])", "worst table", result=True))
            zone_note = f" ({group.zone} tables)" if group.suffix else ""
            aws.cloudwatch.MetricAlarm(
                f"{name}-replication-to-{peer}{group.suffix}",
                name=f"{prefix}-replication-{region}-to-{peer}{group.suffix}",
                alarm_description=f"Replication from {region} to {peer}{zone_note} slower than 10 s (AWS states no SLA; typical is ~1 s)",
                comparison_operator="GreaterThanThreshold",
                threshold=10_000,
                evaluation_periods=5,
                treat_missing_data="notBreaching",
                metric_queries=queries,
                alarm_actions=notify,
                ok_actions=notify,
                opts=scope.opts(),
            )
    for group in throttle_groups(topology, region):
        # r<i> / w<i>: read and write throttles of the group's i-th table (ids start with a lowercase letter).
        series = [(f"{kind[0].lower()}{i}", kind, t) for i, t in enumerate(group.tables) for kind in ("Read", "Write")]
        throttle_queries = [
            _metric(qid, "AWS/DynamoDB", f"{kind}ThrottleEvents", {"TableName": t}, stat="Sum") for qid, kind, t in series
        ]
        throttle_queries.append(
            _expression("throttles", f"SUM([{', '.join(qid for qid, _, _ in series)}])", "throttles", result=True)
        )
        zone_note = f" ({group.zone} tables)" if group.suffix else ""
        aws.cloudwatch.MetricAlarm(
            f"{name}-throttles{group.suffix}",
            name=f"{prefix}-{region}-dynamodb-throttles{group.suffix}",
            alarm_description=f"DynamoDB throttled requests on this region's replicas{zone_note}",
            comparison_operator="GreaterThanThreshold",
            threshold=0,
            evaluation_periods=3,
            treat_missing_data="notBreaching",
            metric_queries=throttle_queries,
            alarm_actions=notify,
            ok_actions=notify,
            opts=scope.opts(),
        )
    aws.cloudwatch.MetricAlarm(
        f"{name}-heartbeat-stale",
        name=f"{prefix}-{region}-heartbeat-stale",
        alarm_description="A peer's replication heartbeat has not advanced here for 3 minutes",
        namespace=METRICS_NAMESPACE,
        metric_name="HeartbeatStalenessSeconds",
        # Exactly the canary's dimensions: with one missing or extra, the alarm sees no data and, since
        # missing data breaches, stays in ALARM.
        dimensions=heartbeat_dimensions(region),
        statistic="Maximum",
        period=60,
        evaluation_periods=3,
        comparison_operator="GreaterThanThreshold",
        threshold=180,
        treat_missing_data="breaching",
        alarm_actions=notify,
        ok_actions=notify,
        opts=scope.opts(),
    )
    composite = aws.cloudwatch.CompositeAlarm(
        f"{name}-evacuate",
        alarm_name=f"{prefix}-{region}-evacuate",
        alarm_description="5xx rate high and healthy tasks low: evacuate this region (both entry points)",
        alarm_rule=pulumi.Output.concat("ALARM(\"", five_xx.name, "\") AND ALARM(\"", unhealthy.name, "\")"),
        alarm_actions=[evacuator.arn, topic.arn],
        ok_actions=[evacuator.arn, topic.arn],
        opts=scope.opts(),
    )
    aws.lambda_.Permission(
        f"{name}-evacuate-alarm", action="lambda:InvokeFunction", function=evacuator.name,
        principal="lambda.alarms.cloudwatch.amazonaws.com", source_arn=composite.arn, opts=scope.opts(),
    )
    # The evacuation flag: ALARM while the region's evacuation record says evacuated (the evacuator publishes
    # the record as this metric every minute; `meridian evacuate` at once). Route 53 reads it through a
    # CLOUDWATCH_METRIC health check (edge.py), so it stays within what Route 53 documents as supported
    # (AlarmIdentifier): a standard-resolution metric and a plain statistic (Maximum), no extended statistic.
    # Beyond that, the simplest alarm there is: one metric, no metric math, one datapoint of one period.
    # Missing data keeps the state (ignore): an evacuator that stops publishing does not end an evacuation.
    evacuated = aws.cloudwatch.MetricAlarm(
        f"{name}-evacuated",
        name=alarm_name(topology, region),
        alarm_description="ALARM: this region is evacuated (its record in the directory table says so); Route 53 "
        "withdraws it from the latency name. Ends only with its record: the evacuator's own restore or `meridian restore`.",
        namespace=EVACUATION_NAMESPACE,
        metric_name=EVACUATED_METRIC,
        dimensions=metric_dimensions(region),
        statistic="Maximum",
        period=60,
        evaluation_periods=1,
        datapoints_to_alarm=1,
        comparison_operator="GreaterThanOrEqualToThreshold",
        threshold=1,
        treat_missing_data="ignore",
        alarm_actions=notify,
        ok_actions=notify,
        opts=scope.opts(),
    )
    conflicts = aws.cloudwatch.MetricAlarm(
        f"{name}-conflict-rate",
        name=f"{prefix}-{region}-conflict-rate",
        alarm_description=f"More than {topology.operations.conflicts_per_minute} replication conflicts recorded per "
        "minute in this region, 5 minutes in a row (docs/runbooks/conflict-spike.md)",
        namespace=METRICS_NAMESPACE,
        metric_name="Conflicts",
        # Exactly the auditor's dimensions (Powertools adds `service`); checked against its output in tests/lambdas.
        dimensions=conflict_dimensions(region),
        statistic="Sum",
        period=60,
        evaluation_periods=5,
        datapoints_to_alarm=5,
        comparison_operator="GreaterThanThreshold",
        threshold=topology.operations.conflicts_per_minute,
        # The auditor publishes only when it records conflicts: a quiet minute is a good one.
        treat_missing_data="notBreaching",
        alarm_actions=notify,
        ok_actions=notify,
        opts=scope.opts(),
    )
    return RegionAlarms(composite, (five_xx, latency), evacuated, conflicts)
