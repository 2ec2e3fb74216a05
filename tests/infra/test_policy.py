"""Each policy rule catches a resource that breaks it, and passes the real program."""

from __future__ import annotations

import json
from typing import Any

import pytest

from infra.components import tables as tables_module
from infra.render import Plan, render
from meridian.topology import Topology
from policy.rules import RULES, Res, check


def rules_hit(resources: list[Res], regions: list[str] | None = None) -> set[str]:
    return {v.rule for v in check(resources, regions)}


def table(name: str = "t", region: str = "eu-west-1", replicas: tuple[str, ...] = ("eu-central-1",), **over: Any) -> Res:
    inputs = {
        "name": name,
        "tags": {"meridian:zone": "eu", "meridian:zone-regions": "eu-west-1+eu-central-1"},
        "replicas": [{"regionName": r, "pointInTimeRecovery": True} for r in replicas],
        "pointInTimeRecovery": {"enabled": True},
        "deletionProtectionEnabled": True,
        "serverSideEncryption": {"enabled": True},
        **over,
    }
    return Res("aws:dynamodb/table:Table", name, region, inputs)


class TestRules:
    def test_real_program_passes(self, prod_plan: Plan) -> None:
        resources = [Res(r.type, r.name, r.region, r.inputs) for r in prod_plan.resources if r.custom]
        assert check(resources, prod_plan.topology.regions) == []

    def test_replica_outside_zone(self) -> None:
        (v,) = check([table(replicas=("eu-central-1", "us-east-1"))])
        assert v.rule == "zone-table-replicas-in-zone" and "us-east-1" in v.message

    def test_table_without_zone_tag(self) -> None:
        assert "zone-table-replicas-in-zone" in rules_hit([table(tags={})])

    def test_latency_record_without_health_check(self) -> None:
        rec = Res("aws:route53/record:Record", "r", "us-east-1", {"latencyRoutingPolicies": [{"region": "eu-west-1"}]})
        assert "latency-record-health-check" in rules_hit([rec])

    def test_region_missing_pieces(self) -> None:
        alb = Res("aws:lb/loadBalancer:LoadBalancer", "alb", "eu-west-1", {})
        violations = check([alb], ["eu-west-1"])
        assert {v.message for v in violations} == {"region eu-west-1 lacks a Fargate service", "region eu-west-1 lacks a latency record"}

    def test_unprotected_table(self) -> None:
        (v,) = check([table(pointInTimeRecovery={"enabled": False}, deletionProtectionEnabled=False)])
        assert v.rule == "tables-protected" and "deletion protection" in v.message and "point-in-time" in v.message

    def test_public_task_ip(self) -> None:
        svc = Res("aws:ecs/service:Service", "svc", "us-east-1", {"networkConfiguration": {"assignPublicIp": True}})
        assert "no-public-task-ip" in rules_hit([svc])

    def test_task_role_reaching_other_zone(self) -> None:
        """A us-east-1 role naming the eu table in us-east-1 is outside that table's zone."""
        doc = {"Statement": [{"Effect": "Allow", "Action": ["dynamodb:GetItem"], "Resource": ["arn:aws:dynamodb:us-east-1:1:table/t"]}]}
        pol = Res("aws:iam/rolePolicy:RolePolicy", "p", "us-east-1", {"policy": json.dumps(doc)})
        (v,) = check([table(), pol])
        assert v.rule == "task-role-zone-scope" and "outside the zone" in v.message

    def test_task_role_reaching_other_region(self) -> None:
        doc = {"Statement": [{"Resource": "arn:aws:dynamodb:eu-central-1:1:table/t"}]}
        pol = Res("aws:iam/rolePolicy:RolePolicy", "p", "eu-west-1", {"policy": json.dumps(doc)})
        assert "task-role-zone-scope" in rules_hit([table(), pol])

    def test_wildcard_table(self) -> None:
        doc = {"Statement": [{"Resource": "arn:aws:dynamodb:*:1:table/*"}]}
        pol = Res("aws:iam/rolePolicy:RolePolicy", "p", "eu-west-1", {"policy": json.dumps(doc)})
        assert "task-role-zone-scope" in rules_hit([pol])

    def test_default_provider(self) -> None:
        assert "explicit-provider" in rules_hit([Res("aws:s3/bucket:Bucket", "b", None, {})])

    def test_every_rule_has_a_breaking_test(self) -> None:
        names = {r.name for r in RULES}
        tested = {"zone-table-replicas-in-zone", "latency-record-health-check", "region-complete", "tables-protected",
                  "no-public-task-ip", "task-role-zone-scope", "explicit-provider"}
        assert names == tested


class TestBrokenProgram:
    def test_eu_replica_in_us_east_1_is_caught(self, prod: Topology, monkeypatch: pytest.MonkeyPatch) -> None:
        """A code change that puts an eu table replica in us-east-1 is caught by the residency rule."""
        real_table = tables_module.aws.dynamodb.Table

        def leaky_table(resource_name: str, **kw: Any) -> Any:
            if kw["tags"]["meridian:zone"] == "eu":
                kw["replicas"] = [*kw["replicas"], tables_module.aws.dynamodb.TableReplicaArgs(region_name="us-east-1")]
            return real_table(resource_name, **kw)

        monkeypatch.setattr(tables_module.aws.dynamodb, "Table", leaky_table)
        plan = render(prod)
        violations = check([Res(r.type, r.name, r.region, r.inputs) for r in plan.custom], prod.regions)
        eu = [v for v in violations if v.rule == "zone-table-replicas-in-zone" and "'eu'" in v.message]
        assert len(eu) == 5 and all("us-east-1" in v.message for v in eu)
