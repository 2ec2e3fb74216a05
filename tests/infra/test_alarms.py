"""Each region's alarms, as AWS accepts them (PutMetricAlarm's limits) and as they mean to be."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from infra import layout
from infra.components.alarms import MAX_METRICS_PER_ALARM, chunks, conflict_dimensions, heartbeat_dimensions, table_groups
from infra.render import Plan, PlannedResource

METRIC_ALARM = "aws:cloudwatch/metricAlarm:MetricAlarm"
QUERY_ID = re.compile(r"^[a-z][a-zA-Z0-9_]*$")
PLANS = ["dev_plan", "prod_plan"]


def metric_alarms(plan: Plan, region: str | None = None) -> list[PlannedResource]:
    return [r for r in plan.of_type(METRIC_ALARM) if region is None or r.region == region]


def watched(alarm: PlannedResource, metric_name: str) -> list[dict[str, str]]:
    """Dimensions of each query of ``alarm`` on ``metric_name``."""
    return [q["metric"]["dimensions"] for q in alarm.inputs.get("metricQueries") or [] if (q.get("metric") or {}).get("metricName") == metric_name]


def referenced(queries: list[dict[str, Any]], query_id: str) -> set[str]:
    """Ids a query uses, transitively through the expressions it names (itself included)."""
    by_id = {q["id"]: q for q in queries}
    seen, pending = set(), [query_id]
    while pending:
        qid = pending.pop()
        if qid in seen:
            continue
        seen.add(qid)
        expression = by_id[qid].get("expression") or ""
        pending.extend(i for i in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", expression) if i in by_id)
    return seen


class TestLimits:
    @pytest.mark.parametrize("plan_name", PLANS)
    def test_metric_math_alarms_are_accepted_by_cloudwatch(self, plan_name: str, request: pytest.FixtureRequest) -> None:
        """At most 10 metrics (and 10 expressions), ids that start with a lowercase letter, one query returning data."""
        plan: Plan = request.getfixturevalue(plan_name)
        math = [a for a in metric_alarms(plan) if a.inputs.get("metricQueries")]
        assert math
        for alarm in math:
            queries = alarm.inputs["metricQueries"]
            metrics = [q for q in queries if q.get("metric")]
            expressions = [q for q in queries if q.get("expression")]
            assert len(metrics) <= MAX_METRICS_PER_ALARM, (alarm.name, len(metrics))
            assert len(expressions) <= 10 and len(metrics) + len(expressions) == len(queries), alarm.name
            assert all(QUERY_ID.match(q["id"]) for q in queries), (alarm.name, [q["id"] for q in queries])
            assert len({q["id"] for q in queries}) == len(queries), alarm.name
            assert sum(1 for q in queries if q.get("returnData")) == 1, alarm.name
            assert all(q.get("returnData") is False for q in metrics), alarm.name

    @pytest.mark.parametrize("plan_name", PLANS)
    def test_alarm_names_unique(self, plan_name: str, request: pytest.FixtureRequest) -> None:
        plan: Plan = request.getfixturevalue(plan_name)
        names = [a.inputs["name"] for a in metric_alarms(plan)]
        assert len(names) == len(set(names))


class TestCoverage:
    @pytest.mark.parametrize("plan_name", PLANS)
    def test_every_table_of_the_region_has_its_throttles_watched(self, plan_name: str, request: pytest.FixtureRequest) -> None:
        """Read and write throttles of every zone table with a replica in the region, each exactly once."""
        plan: Plan = request.getfixturevalue(plan_name)
        for region in plan.topology.regions:
            for kind in ("Read", "Write"):
                tables = [d["TableName"] for a in metric_alarms(plan, region) for d in watched(a, f"{kind}ThrottleEvents")]
                assert sorted(tables) == layout.service_table_names(plan.topology, region), (region, kind)

    @pytest.mark.parametrize("plan_name", PLANS)
    def test_every_table_and_peer_has_its_replication_watched(self, plan_name: str, request: pytest.FixtureRequest) -> None:
        """Each (table, peer) pair the region replicates to, exactly once, in an alarm that sums it up as its worst."""
        plan: Plan = request.getfixturevalue(plan_name)
        topology = plan.topology
        for region in topology.regions:
            expected = sorted(
                (table, peer)
                for zone in topology.zones_of(region)
                for table in topology.tables_in_region(region)[zone.name].values()
                for peer in zone.regions
                if peer != region
            )
            got = sorted((d["TableName"], d["ReceivingRegion"]) for a in metric_alarms(plan, region) for d in watched(a, "ReplicationLatency"))
            assert got == expected, region
            for alarm in metric_alarms(plan, region):
                queries = alarm.inputs.get("metricQueries") or []
                if watched(alarm, "ReplicationLatency"):
                    (result,) = [q for q in queries if q.get("returnData")]
                    assert referenced(queries, result["id"]) >= {q["id"] for q in queries}, "the result uses every table"
                    assert len({q["metric"]["dimensions"]["ReceivingRegion"] for q in queries if q.get("metric")}) == 1

    def test_eu_west_1_alarms_split_by_zone(self, prod_plan: Plan) -> None:
        """11 tables to eu-central-1 (5 eu, 6 global): one alarm per zone; us-east-1 shares only global tables."""
        names = {a.name for a in metric_alarms(prod_plan, "eu-west-1")}
        assert {"eu-west-1-replication-to-eu-central-1-eu", "eu-west-1-replication-to-eu-central-1-global"} <= names
        assert "eu-west-1-replication-to-us-east-1" in names, "a pair that fits one alarm keeps its name"
        assert {"eu-west-1-throttles-eu", "eu-west-1-throttles-global-1", "eu-west-1-throttles-global-2"} <= names


class TestFiveXxRate:
    @pytest.mark.parametrize("plan_name", PLANS)
    def test_rate_counts_target_and_load_balancer_5xx(self, plan_name: str, request: pytest.FixtureRequest) -> None:
        """With no healthy target only the ALB's own 502/503/504 exist: the rate must count them."""
        plan: Plan = request.getfixturevalue(plan_name)
        for region in plan.topology.regions:
            (alarm,) = [a for a in metric_alarms(plan, region) if a.name == f"{region}-alb-5xx-rate"]
            queries = alarm.inputs["metricQueries"]
            (result,) = [q for q in queries if q.get("returnData")]
            used = referenced(queries, result["id"])
            metrics = {q["metric"]["metricName"] for q in queries if q["id"] in used and q.get("metric")}
            assert {"HTTPCode_Target_5XX_Count", "HTTPCode_ELB_5XX_Count", "RequestCount"} <= metrics
            by_id = {q["id"]: q for q in queries}
            for q in queries:
                if q.get("metric", {}).get("metricName", "").endswith("5XX_Count"):
                    # A 5xx count has no data point in a minute without errors: missing must read as 0.
                    assert any(f"FILL({q['id']}, 0)" in (by_id[u].get("expression") or "") for u in used), q["id"]
                    assert q["metric"]["dimensions"] == {"LoadBalancer": q["metric"]["dimensions"]["LoadBalancer"]}
                    assert q["metric"]["stat"] == "Sum"


class TestHeartbeat:
    def test_alarm_dimensions(self, prod_plan: Plan) -> None:
        """The dimensions the canary emits (checked against its real output in tests/lambdas)."""
        for region in prod_plan.topology.regions:
            (alarm,) = [a for a in metric_alarms(prod_plan, region) if a.name == f"{region}-heartbeat-stale"]
            assert alarm.inputs["dimensions"] == heartbeat_dimensions(region) == {"ReceivingRegion": region, "service": "meridian"}


class TestGrouping:
    @given(st.lists(st.text("abc", min_size=1, max_size=3), unique=True, max_size=40), st.integers(1, 10))
    def test_chunks_cover_in_order_within_size(self, items: list[str], size: int) -> None:
        groups = chunks(items, size)
        assert [x for g in groups for x in g] == items
        assert all(1 <= len(g) <= size for g in groups)
        if groups:
            assert max(map(len, groups)) - min(map(len, groups)) <= 1

    def test_one_group_keeps_the_plain_name(self) -> None:
        assert [(g.suffix, g.tables) for g in table_groups({"global": ["b", "a"]}, 5)] == [("", ("a", "b"))]

    def test_zones_and_chunks_are_named(self) -> None:
        groups = table_groups({"global": list("abcdef"), "eu": list("xy"), "empty": []}, 5)
        assert [(g.suffix, g.tables) for g in groups] == [
            ("-eu", ("x", "y")), ("-global-1", ("a", "b", "c")), ("-global-2", ("d", "e", "f")),
        ]


COMPOSITE_ALARM = "aws:cloudwatch/compositeAlarm:CompositeAlarm"


class TestNotifications:
    @pytest.mark.parametrize("plan_name", PLANS)
    def test_every_alarm_notifies_its_regions_topic(self, plan_name: str, request: pytest.FixtureRequest) -> None:
        """Every alarm, metric and composite, has its own region's topic among its ALARM and OK actions (an alarm
        added without them fails here)."""
        plan: Plan = request.getfixturevalue(plan_name)
        topics = {t.region: t.outputs["arn"] for t in plan.of_type("aws:sns/topic:Topic")}
        assert sorted(topics) == sorted(plan.topology.regions)
        alarms = plan.of_type(METRIC_ALARM) + plan.of_type(COMPOSITE_ALARM)
        assert len(alarms) > 10 * len(topics)
        for alarm in alarms:
            assert alarm.region in topics, alarm.name
            assert topics[alarm.region] in alarm.inputs.get("alarmActions", []), f"{alarm.name}: no ALARM notification"
            assert topics[alarm.region] in alarm.inputs.get("okActions", []), f"{alarm.name}: no OK notification"
            assert all(f":{alarm.region}:" in a for a in alarm.inputs["alarmActions"]), "actions stay in the alarm's region"

    def test_composite_keeps_invoking_the_evacuator(self, prod_plan: Plan) -> None:
        for c in prod_plan.of_type(COMPOSITE_ALARM):
            assert "function:meridian-prod-evacuator" in c.inputs["alarmActions"][0]
            assert len(c.inputs["alarmActions"]) == 2


class TestConflictRate:
    @pytest.mark.parametrize("plan_name", PLANS)
    def test_sustained_rise_on_the_auditors_series(self, plan_name: str, request: pytest.FixtureRequest) -> None:
        """Sum of Conflicts per minute above the threshold 5 minutes in a row, on exactly the auditor's dimensions
        (Powertools' `service` included; checked against its real output in tests/lambdas)."""
        plan: Plan = request.getfixturevalue(plan_name)
        for region in plan.topology.regions:
            (alarm,) = [a for a in metric_alarms(plan, region) if a.name == f"{region}-conflict-rate"]
            i = alarm.inputs
            assert i["name"] == f"meridian-{plan.topology.stack}-{region}-conflict-rate"
            assert (i["namespace"], i["metricName"], i["statistic"], i["period"]) == ("Meridian/Replication", "Conflicts", "Sum", 60)
            assert i["dimensions"] == conflict_dimensions(region) == {"Region": region, "service": "meridian"}
            assert i["evaluationPeriods"] == i["datapointsToAlarm"] == 5
            assert i["threshold"] == plan.topology.operations.conflicts_per_minute == 10
            assert i["treatMissingData"] == "notBreaching"

    def test_threshold_from_config(self) -> None:
        from infra.render import render_values

        plan = render_values({"regions": ["us-east-1", "eu-west-1"], "conflictsPerMinute": 25}, stack="conf")
        assert {a.inputs["threshold"] for a in plan.of_type(METRIC_ALARM) if a.name.endswith("-conflict-rate")} == {25}
