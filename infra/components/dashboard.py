"""One CloudWatch dashboard per stack, in the DNS region: where an operator looks first.

Per region: requests, 5xx (the targets' and the ALB's own), p99 latency, replication heartbeat staleness,
conflicts per minute, the evacuation flag with the traffic dial, and the region's key alarms; per ordered
pair of regions that replicate to each other: DynamoDB's ``ReplicationLatency`` of every table they share
(published by the sending region); and Route 53's view of each latency record (1 = in DNS answers).

Every metric widget carries its ``region`` and only metrics of that region (a dashboard is global and its
widgets read each region's CloudWatch). The body is built by :func:`dashboard_body`, a pure function, so a
test checks it against PutDashboard's structure without Pulumi.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_aws as aws

from infra import layout
from infra.components.functions import METRICS_NAMESPACE, POWERTOOLS_SERVICE
from meridian.evacuation import DIAL_METRIC, EVACUATED_METRIC, EVACUATION_NAMESPACE, metric_dimensions
from meridian.topology import Topology

WIDTH, HEIGHT = 8, 6
#: Route 53 publishes its health-check metrics in us-east-1 only.
ROUTE53_METRICS_REGION = "us-east-1"


@dataclass(frozen=True, kw_only=True)
class RegionView:
    """What the dashboard reads of one region (plain values; :class:`Dashboard` resolves the Outputs)."""

    alb_arn_suffix: str
    alarm_arns: Sequence[str] = ()


def dashboard_name(topology: Topology) -> str:
    """PutDashboard: at most 255 of A-Z, a-z, 0-9, "-" and "_"."""
    return layout.resource_prefix(topology)


def title(kind: str, region: str) -> str:
    return f"{kind} - {region}"


def pair_title(source: str, receiver: str) -> str:
    return f"Replication latency {source} -> {receiver}"


def replication_pairs(topology: Topology) -> dict[tuple[str, str], list[str]]:
    """(sending region, receiving region) -> the tables the sender replicates to the receiver (zones both are in)."""
    out: dict[tuple[str, str], list[str]] = {}
    for source in topology.regions:
        in_source = topology.tables_in_region(source)
        for receiver in topology.regions:
            if receiver == source:
                continue
            tables = sorted(t for z in topology.zones_of(source) if receiver in z.regions for t in in_source[z.name].values())
            if tables:
                out[(source, receiver)] = tables
    return out


def _metric(namespace: str, name: str, dimensions: Mapping[str, str], **options: Any) -> list[Any]:
    row: list[Any] = [namespace, name]
    for key, value in dimensions.items():
        row += [key, value]
    return [*row, options] if options else row


def _widget(kind: str, region: str, metrics: list[list[Any]], *, stat: str, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    return {
        "type": "metric",
        "width": WIDTH,
        "height": HEIGHT,
        "properties": {"title": kind, "region": region, "view": "timeSeries", "stacked": False, "period": 60, "stat": stat,
                       "metrics": metrics, **(extra or {})},
    }


def dashboard_body(topology: Topology, regions: Mapping[str, RegionView], serving_checks: Mapping[str, str]) -> dict[str, Any]:
    """The PutDashboard body (as a dict; ``json.dumps`` it)."""
    widgets: list[dict[str, Any]] = [{
        "type": "text", "width": 24, "height": 2,
        "properties": {"markdown": (
            f"## {topology.project}/{topology.stack}\nDeclared by the Pulumi program (infra/components/dashboard.py): "
            "edits here are lost at the next `pulumi up`. Runbooks: docs/runbooks/ (evacuate-and-restore, failback, "
            "replication-lag, conflict-spike, teardown).")},
    }]
    for region in topology.regions:
        view = regions[region]
        lb = {"LoadBalancer": view.alb_arn_suffix}
        widgets += [
            _widget(title("Requests", region), region,
                    [_metric("AWS/ApplicationELB", "RequestCount", lb, label="requests")], stat="Sum"),
            _widget(title("5xx", region), region, [
                _metric("AWS/ApplicationELB", "HTTPCode_Target_5XX_Count", lb, label="targets' 5xx"),
                _metric("AWS/ApplicationELB", "HTTPCode_ELB_5XX_Count", lb, label="ALB's own 5xx"),
            ], stat="Sum"),
            _widget(title("p99 latency", region), region,
                    [_metric("AWS/ApplicationELB", "TargetResponseTime", lb, label="p99 (s)")], stat="p99"),
            _widget(title("Heartbeat staleness", region), region, [
                _metric(METRICS_NAMESPACE, "HeartbeatStalenessSeconds", {"ReceivingRegion": region, "service": POWERTOOLS_SERVICE},
                        label="worst peer (s)"),
            ], stat="Maximum"),
            _widget(title("Conflicts per minute", region), region, [
                _metric(METRICS_NAMESPACE, "Conflicts", {"Region": region, "service": POWERTOOLS_SERVICE}, label="conflicts"),
            ], stat="Sum"),
            _widget(title("Evacuation and dial", region), region, [
                _metric(EVACUATION_NAMESPACE, EVACUATED_METRIC, metric_dimensions(region), label="evacuated (1 = out)"),
                _metric(EVACUATION_NAMESPACE, DIAL_METRIC, metric_dimensions(region), label="accelerator dial (%)", yAxis="right"),
            ], stat="Maximum"),
        ]
        if view.alarm_arns:
            widgets.append({"type": "alarm", "width": WIDTH, "height": HEIGHT,
                            "properties": {"title": title("Alarms", region), "alarms": list(view.alarm_arns)}})
    for (source, receiver), tables in replication_pairs(topology).items():
        widgets.append(_widget(pair_title(source, receiver), source, [
            _metric("AWS/DynamoDB", "ReplicationLatency", {"TableName": t, "ReceivingRegion": receiver}, label=t) for t in tables
        ], stat="Average", extra={"yAxis": {"left": {"label": "ms", "min": 0}}}))
    if serving_checks:
        widgets.append(_widget("Latency record health (1 = in DNS answers)", ROUTE53_METRICS_REGION, [
            _metric("AWS/Route53", "HealthCheckStatus", {"HealthCheckId": serving_checks[r]}, label=r) for r in topology.regions
        ], stat="Minimum"))
    return {"widgets": widgets}


@dataclass(frozen=True, kw_only=True)
class RegionInputs:
    alb_arn_suffix: pulumi.Input[str]
    alarm_arns: Sequence[pulumi.Input[str]] = ()


@dataclass(frozen=True, kw_only=True)
class DashboardArgs:
    topology: Topology
    #: the DNS region's provider (us-east-1): the dashboard lives there
    provider: aws.Provider
    regions: Mapping[str, RegionInputs]
    serving_check_ids: Mapping[str, pulumi.Input[str]]

    def __post_init__(self) -> None:
        if set(self.regions) != set(self.topology.regions):
            raise ValueError(f"the dashboard needs every region's outputs: {self.topology.regions}")


class Dashboard(pulumi.ComponentResource):
    url: str

    def __init__(self, name: str, args: DashboardArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("meridian:dashboard:Dashboard", name, None, opts)
        topology = args.topology
        inputs = pulumi.Output.from_input({
            "regions": {r: {"alb": v.alb_arn_suffix, "alarms": list(v.alarm_arns)} for r, v in args.regions.items()},
            "checks": dict(args.serving_check_ids),
        })

        def render(values: dict[str, Any]) -> str:
            views = {r: RegionView(alb_arn_suffix=x["alb"], alarm_arns=x["alarms"]) for r, x in values["regions"].items()}
            return json.dumps(dashboard_body(topology, views, values["checks"]), separators=(",", ":"))

        body = inputs.apply(render)
        board = dashboard_name(topology)
        aws.cloudwatch.Dashboard(name, dashboard_name=board, dashboard_body=body,
                                 opts=pulumi.ResourceOptions(parent=self, provider=args.provider))
        region = layout.DNS_REGION
        self.url = f"https://{region}.console.aws.amazon.com/cloudwatch/home?region={region}#dashboards/dashboard/{board}"
        self.register_outputs({"url": self.url})
