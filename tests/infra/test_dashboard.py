"""The stack's dashboard: one, in the DNS region, a body PutDashboard takes, and widgets for every region and
every replicating pair, on the very series the alarms watch."""

from __future__ import annotations

import json
import re
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from infra.components.dashboard import WIDTH, dashboard_body, pair_title, replication_pairs, title
from infra.render import Plan
from meridian.evacuation import metric_dimensions

DASHBOARD = "aws:cloudwatch/dashboard:Dashboard"
PLANS = ["dev_plan", "prod_plan"]
KINDS = ("Requests", "5xx", "p99 latency", "Heartbeat staleness", "Conflicts per minute", "Evacuation and dial", "Alarms")


def body(plan: Plan) -> dict[str, Any]:
    (board,) = plan.of_type(DASHBOARD)
    parsed: dict[str, Any] = json.loads(board.inputs["dashboardBody"])
    return parsed


def widgets(plan: Plan) -> dict[str, dict[str, Any]]:
    return {w["properties"]["title"]: w for w in body(plan)["widgets"] if "title" in w["properties"]}


def series(widget: dict[str, Any]) -> list[tuple[str, str, dict[str, str]]]:
    """(namespace, metric, dimensions) of each row of a metric widget."""
    out = []
    for row in widget["properties"]["metrics"]:
        plain = [x for x in row if not isinstance(x, dict)]
        out.append((plain[0], plain[1], dict(zip(plain[2::2], plain[3::2], strict=True))))
    return out


class TestBody:
    @pytest.mark.parametrize("plan_name", PLANS)
    def test_one_dashboard_in_the_dns_region_put_dashboard_accepts(self, plan_name: str, request: pytest.FixtureRequest) -> None:
        """Name within PutDashboard's rules (255 of A-Za-z0-9-_), the request valid for CloudWatch's real model."""
        plan: Plan = request.getfixturevalue(plan_name)
        (board,) = plan.of_type(DASHBOARD)
        assert board.region == "us-east-1"
        name = board.inputs["dashboardName"]
        assert name == f"meridian-{plan.topology.stack}" and re.fullmatch(r"[A-Za-z0-9_-]{1,255}", name)
        client = boto3.client("cloudwatch", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
        stub = Stubber(client)
        params = {"DashboardName": name, "DashboardBody": board.inputs["dashboardBody"]}
        stub.add_response("put_dashboard", {"DashboardValidationMessages": []}, params)
        with stub:
            client.put_dashboard(**params)
        assert plan.outputs["dashboardUrl"].endswith(f"#dashboards/dashboard/{name}")

    @pytest.mark.parametrize("plan_name", PLANS)
    def test_widgets_have_the_structure_cloudwatch_reads(self, plan_name: str, request: pytest.FixtureRequest) -> None:
        """Every metric widget names its region and holds metrics arrays [namespace, name, (dimension, value)*,
        {options}?] of that region only; sizes fit the 24-column grid."""
        plan: Plan = request.getfixturevalue(plan_name)
        allowed = {*plan.topology.regions, "us-east-1"}
        for widget in body(plan)["widgets"]:
            assert widget["type"] in ("metric", "alarm", "text")
            assert 1 <= widget["width"] <= 24 and widget["height"] >= 1
            props = widget["properties"]
            if widget["type"] != "metric":
                continue
            assert props["region"] in allowed and props["stat"] and props["period"] == 60
            assert props["metrics"]
            for row in props["metrics"]:
                options = row[-1] if isinstance(row[-1], dict) else {}
                plain = row[:-1] if options else row
                assert all(isinstance(x, str) and x for x in plain), row
                assert len(plain) >= 2 and len(plain) % 2 == 0, row
                assert "region" not in options, "one region per widget"

    @pytest.mark.parametrize("plan_name", PLANS)
    def test_every_region_has_its_widgets_on_the_alarmed_series(self, plan_name: str, request: pytest.FixtureRequest) -> None:
        plan: Plan = request.getfixturevalue(plan_name)
        found = widgets(plan)
        albs = {lb.region: lb.outputs["arnSuffix"] for lb in plan.of_type("aws:lb/loadBalancer:LoadBalancer")}
        alarms = {(a.region, a.name): a for a in plan.of_type("aws:cloudwatch/metricAlarm:MetricAlarm")}
        for region in plan.topology.regions:
            for kind in KINDS:
                assert title(kind, region) in found, (region, kind)
            for kind in ("Requests", "5xx", "p99 latency"):
                w = found[title(kind, region)]
                assert w["properties"]["region"] == region
                assert all(d == {"LoadBalancer": albs[region]} for _, _, d in series(w))
            assert found[title("p99 latency", region)]["properties"]["stat"] == "p99"
            assert {m for _, m, _ in series(found[title("5xx", region)])} == {"HTTPCode_Target_5XX_Count", "HTTPCode_ELB_5XX_Count"}
            evacuation = series(found[title("Evacuation and dial", region)])
            assert {(m, tuple(sorted(d.items()))) for _, m, d in evacuation} == {
                (m, tuple(sorted(metric_dimensions(region).items()))) for m in ("Evacuated", "TrafficDial")}
            (conflicts,) = series(found[title("Conflicts per minute", region)])
            assert conflicts[2] == alarms[(region, f"{region}-conflict-rate")].inputs["dimensions"]
            (stale,) = series(found[title("Heartbeat staleness", region)])
            assert stale[2] == alarms[(region, f"{region}-heartbeat-stale")].inputs["dimensions"]
            alarm_widget = found[title("Alarms", region)]["properties"]["alarms"]
            assert f"arn:aws:cloudwatch:{region}:123456789012:alarm:meridian-{plan.topology.stack}-{region}-evacuated" in alarm_widget

    @pytest.mark.parametrize("plan_name", PLANS)
    def test_every_replicating_pair_has_its_widget(self, plan_name: str, request: pytest.FixtureRequest) -> None:
        """Each ordered pair that shares a zone, in the sending region (where DynamoDB publishes ReplicationLatency),
        with exactly the (table, receiver) series the region's replication alarms watch."""
        plan: Plan = request.getfixturevalue(plan_name)
        topology, found = plan.topology, widgets(plan)
        pairs = replication_pairs(topology)
        n = len(topology.regions)
        assert len(pairs) == n * (n - 1), "every pair shares at least the all-regions zone"
        watched: dict[str, set[tuple[str, str]]] = {}
        for alarm in plan.of_type("aws:cloudwatch/metricAlarm:MetricAlarm"):
            for q in alarm.inputs.get("metricQueries") or []:
                if (q.get("metric") or {}).get("metricName") == "ReplicationLatency":
                    d = q["metric"]["dimensions"]
                    watched.setdefault(alarm.region or "", set()).add((d["TableName"], d["ReceivingRegion"]))
        for (source, receiver), tables in pairs.items():
            w = found[pair_title(source, receiver)]
            assert w["properties"]["region"] == source
            got = {(d["TableName"], d["ReceivingRegion"]) for _, m, d in series(w) if m == "ReplicationLatency"}
            assert got == {(t, receiver) for t in tables} == {x for x in watched[source] if x[1] == receiver}

    def test_route53_view_of_every_latency_record(self, prod_plan: Plan) -> None:
        (w,) = [w for t, w in widgets(prod_plan).items() if t.startswith("Latency record health")]
        assert w["properties"]["region"] == "us-east-1"
        checks = {c.outputs["id"] for c in prod_plan.of_type("aws:route53/healthCheck:HealthCheck") if c.inputs["type"] == "CALCULATED"}
        assert {d["HealthCheckId"] for _, _, d in series(w)} == checks

    def test_body_is_pure(self, prod_plan: Plan) -> None:
        """The body is a function of the topology and plain values (tested without Pulumi)."""
        from infra.components.dashboard import RegionView

        views = {r: RegionView(alb_arn_suffix=f"app/x/{r}") for r in prod_plan.topology.regions}
        first = dashboard_body(prod_plan.topology, views, {})
        assert first == dashboard_body(prod_plan.topology, views, {})
        assert all(w["width"] <= 24 for w in first["widgets"]) and WIDTH * 3 == 24
