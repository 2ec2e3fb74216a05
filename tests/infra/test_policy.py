"""Each policy rule catches a resource that breaks it, and passes the real program."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from infra.components import tables as tables_module
from infra.render import Plan, render_stack
from meridian.topology import Topology
from policy.__main__ import parse_regions, plain, policy, stack_regions, to_res
from policy.rules import AWS_LIMIT_RULES, RULES, Res, check

ROOT = Path(__file__).resolve().parents[2]


def rules_hit(resources: list[Res], regions: list[str] | None = None) -> set[str]:
    return {v.rule for v in check(resources, regions)}


def table(name: str = "tbl", region: str = "eu-west-1", replicas: tuple[str, ...] = ("eu-central-1",), **over: Any) -> Res:
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
    @pytest.mark.parametrize("stack", ["prod", "dev"])
    def test_real_program_passes(self, stack: str, request: pytest.FixtureRequest) -> None:
        """Every rule, AWS's documented limits included, passes the rendered program of each example stack."""
        plan: Plan = request.getfixturevalue(f"{stack}_plan")
        resources = [Res(r.type, r.name, r.region, r.inputs) for r in plan.resources if r.custom]
        assert [f"{v.rule} {v.resource}: {v.message}" for v in check(resources, plan.topology.regions)] == []

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
        doc = {"Statement": [{"Effect": "Allow", "Action": ["dynamodb:GetItem"], "Resource": ["arn:aws:dynamodb:us-east-1:1:table/tbl"]}]}
        pol = Res("aws:iam/rolePolicy:RolePolicy", "p", "us-east-1", {"policy": json.dumps(doc)})
        (v,) = check([table(), pol])
        assert v.rule == "task-role-zone-scope" and "outside the zone" in v.message

    def test_task_role_reaching_other_region(self) -> None:
        doc = {"Statement": [{"Resource": "arn:aws:dynamodb:eu-central-1:1:table/tbl"}]}
        pol = Res("aws:iam/rolePolicy:RolePolicy", "p", "eu-west-1", {"policy": json.dumps(doc)})
        assert "task-role-zone-scope" in rules_hit([table(), pol])

    def test_wildcard_table(self) -> None:
        doc = {"Statement": [{"Resource": "arn:aws:dynamodb:*:1:table/*"}]}
        pol = Res("aws:iam/rolePolicy:RolePolicy", "p", "eu-west-1", {"policy": json.dumps(doc)})
        assert "task-role-zone-scope" in rules_hit([pol])

    def test_default_provider(self) -> None:
        assert "explicit-provider" in rules_hit([Res("aws:s3/bucket:Bucket", "b", None, {})])

    def test_non_aws_resource_has_no_region_to_check(self) -> None:
        """Another package's resource (the image build) has no AWS region, and is not reported."""
        assert rules_hit([Res("docker-build:index:Image", "image", None, {}), Res("meridian:regional:Region", "r", None, {})]) == set()

    def test_every_rule_has_a_breaking_test(self) -> None:
        """The design rules are tested here; AWS's documented limits in test_aws_limits.py (which checks its own list)."""
        names = {r.name for r in RULES}
        tested = {"zone-table-replicas-in-zone", "latency-record-health-check", "region-complete", "tables-protected",
                  "no-public-task-ip", "task-role-zone-scope", "explicit-provider"}
        assert names == tested | {r.name for r in AWS_LIMIT_RULES}


class TestBrokenProgram:
    def test_eu_replica_in_us_east_1_is_caught(self, prod: Topology, monkeypatch: pytest.MonkeyPatch) -> None:
        """A code change that puts an eu table replica in us-east-1 is caught by the residency rule."""
        real_table = tables_module.aws.dynamodb.Table

        def leaky_table(resource_name: str, **kw: Any) -> Any:
            if kw["tags"]["meridian:zone"] == "eu":
                kw["replicas"] = [*kw["replicas"], tables_module.aws.dynamodb.TableReplicaArgs(region_name="us-east-1")]
            return real_table(resource_name, **kw)

        monkeypatch.setattr(tables_module.aws.dynamodb, "Table", leaky_table)
        plan = render_stack(ROOT / "Pulumi.prod.yaml")
        violations = check([Res(r.type, r.name, r.region, r.inputs) for r in plan.custom], prod.regions)
        eu = [v for v in violations if v.rule == "zone-table-replicas-in-zone" and "'eu'" in v.message]
        assert len(eu) == 5 and all("us-east-1" in v.message for v in eu)


# -- CrossGuard ----------------------------------------------------------------------------------------------
UNKNOWN = "04da6b54-80e4-46f7-96ec-b56ff0331ba9"


def policy_resource(typ: str, name: str, props: dict[str, Any], region: str | None = "eu-west-1") -> Any:
    """A resource as pulumi_policy hands it to a stack policy: props behind the unknown-checking proxy."""
    from pulumi_policy.policy import PolicyProviderResource, PolicyResource, PolicyResourceOptions
    from pulumi_policy.proxy import unknown_checking_proxy

    provider = None
    if region is not None:
        provider = PolicyProviderResource("pulumi:providers:aws", unknown_checking_proxy({"region": region}), "urn:p", f"aws-{region}")
    opts = PolicyResourceOptions(False, [], None, [], None, [], None)  # type: ignore[arg-type]
    return PolicyResource(typ, unknown_checking_proxy(props), f"urn:{name}", name, opts, provider, None, [], {})


class TestCrossGuard:
    def test_proxied_props_become_plain_values(self) -> None:
        """Unknown values stay sentinels (rules skip them) instead of raising and disabling the policy."""
        r = policy_resource("aws:lambda/function:Function", "fn", {"arn": UNKNOWN, "environment": {"variables": {"A": "b"}},
                                                                    "layers": [UNKNOWN, "arn:layer"]})
        res = to_res(r)
        assert res == Res("aws:lambda/function:Function", "fn", "eu-west-1",
                          {"arn": UNKNOWN, "environment": {"variables": {"A": "b"}}, "layers": [UNKNOWN, "arn:layer"]})
        assert type(res.inputs["environment"]) is dict and plain(7) == 7

    def test_policy_reports_through_the_proxy(self) -> None:
        """The pack's policy runs the same rule over proxied resources and reports each violation."""
        from pulumi_policy import StackValidationArgs

        queries = [{"id": "R0", "metric": {"namespace": "AWS/DynamoDB", "metricName": "X", "period": 60, "stat": "Sum"}},
                   {"id": "total", "expression": "SUM([R0])", "returnData": True}]
        alarm = policy_resource("aws:cloudwatch/metricAlarm:MetricAlarm", "throttles", {"arn": UNKNOWN, "metricQueries": queries})
        rule = next(r for r in RULES if r.name == "alarm-metric-math")
        reported: list[str] = []
        pack_policy = policy(rule)
        pack_policy.validate(StackValidationArgs([alarm]), lambda message, urn=None: reported.append(message))  # type: ignore[misc]
        assert len(reported) == 1 and reported[0].startswith("throttles: ") and "'R0'" in reported[0]
        assert rule.source in pack_policy.description

    def test_regions_from_config(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """The stack's regions come from the pack's config, else from the stack config the CLI hands over."""
        import pulumi.runtime

        assert parse_regions('["us-east-1", "eu-west-1"]') == ["us-east-1", "eu-west-1"]
        assert parse_regions("not json") is None and parse_regions([]) is None
        assert stack_regions({"regions": ["eu-west-1"]}) == ["eu-west-1"]
        monkeypatch.setattr(pulumi.runtime, "get_config", lambda key: '["us-east-1"]' if key == "meridian:regions" else None)
        assert stack_regions({}) == ["us-east-1"]
        monkeypatch.setattr(pulumi.runtime, "get_config", lambda key: None)
        assert stack_regions(None) is None

    def test_region_complete_uses_the_stack_regions(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """With the stack's regions known, a region with nothing deployed yet is reported."""
        from pulumi_policy import StackValidationArgs

        alb = policy_resource("aws:lb/loadBalancer:LoadBalancer", "alb", {"arn": UNKNOWN})
        rule = next(r for r in RULES if r.name == "region-complete")
        reported: list[str] = []
        policy(rule).validate(StackValidationArgs([alb], {"regions": ["eu-west-1", "us-east-1"]}),
                              lambda message, urn=None: reported.append(message))  # type: ignore[misc]
        assert any(m.startswith("us-east-1: region us-east-1 lacks an ALB") for m in reported)
