"""Key rotation in the program (Pulumi mocks): every region's task reads its own replica of the secret and
nothing else; the key rotator runs in the primary region on the configured schedule, may read and write
that secret only, and its failures notify the primary region's alarm topic."""

from __future__ import annotations

import json
from typing import Any

import pytest

from infra.components.functions import ARCHIVE_HANDLERS, KEY_ROTATOR_HANDLER
from infra.render import Plan, PlannedResource, RenderError, render_values
from policy.rules import check

FUNCTION = "aws:lambda/function:Function"
ROLE = "aws:iam/role:Role"
ROLE_POLICY = "aws:iam/rolePolicy:RolePolicy"
TASK_DEFINITION = "aws:ecs/taskDefinition:TaskDefinition"


def secret_arn(plan: Plan) -> str:
    (secret,) = plan.of_type("aws:secretsmanager/secret:Secret")
    return str(secret.outputs["arn"])


def policies_of(plan: Plan, role_arn: str) -> list[dict[str, Any]]:
    """The statements of every inline policy of the role with this ARN."""
    (role,) = [r for r in plan.of_type(ROLE) if r.outputs.get("arn") == role_arn]
    return [s for p in plan.of_type(ROLE_POLICY) if p.inputs["role"] == role.outputs["id"]
            for s in json.loads(p.inputs["policy"])["Statement"]]


def secret_statements(statements: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [s for s in statements if any(str(a).startswith("secretsmanager:") for a in s["Action"])]


def rotator(plan: Plan) -> PlannedResource:
    (fn,) = [f for f in plan.of_type(FUNCTION) if f.inputs["handler"] == KEY_ROTATOR_HANDLER]
    return fn


@pytest.mark.parametrize("plan_name", ["dev_plan", "prod_plan"])
class TestTasks:
    def test_each_region_reads_its_own_replica(self, plan_name: str, request: pytest.FixtureRequest) -> None:
        """(d) MERIDIAN_KEYS_SECRET_ARN is the region's replica, and the task role may GetSecretValue on that
        ARN only (no wildcard, no other region's replica, no write)."""
        plan: Plan = request.getfixturevalue(plan_name)
        primary_arn = secret_arn(plan)
        primary = plan.topology.secret_region
        seen = set()
        for td in plan.of_type(TASK_DEFINITION):
            region = td.region
            assert region is not None
            (container,) = json.loads(td.inputs["containerDefinitions"])
            env = {e["name"]: e["value"] for e in container["environment"]}
            replica = primary_arn.replace(f":{primary}:", f":{region}:")
            assert env["MERIDIAN_KEYS_SECRET_ARN"] == replica
            assert f":secretsmanager:{region}:" in replica
            statements = secret_statements(policies_of(plan, td.inputs["taskRoleArn"]))
            assert statements == [{"Sid": "RefreshKeyRings", "Effect": "Allow", "Action": ["secretsmanager:GetSecretValue"],
                                   "Resource": [replica]}]
            assert not [s for s in policies_of(plan, td.inputs["taskRoleArn"]) if s["Resource"] == ["*"] or "kms:Decrypt" in s["Action"]]
            seen.add(region)
        assert seen == set(plan.topology.regions)

    def test_the_rotator_runs_in_the_primary_region_on_the_schedule(self, plan_name: str, request: pytest.FixtureRequest) -> None:
        plan: Plan = request.getfixturevalue(plan_name)
        primary, arn = plan.topology.secret_region, secret_arn(plan)
        fn = rotator(plan)
        prefix = f"meridian-{plan.topology.stack}"
        assert fn.region == primary and fn.inputs["name"] == f"{prefix}-key-rotator"
        assert fn.inputs["environment"]["variables"]["MERIDIAN_KEYS_SECRET_ARN"] == arn
        assert fn.inputs["environment"]["variables"]["MERIDIAN_REGION"] == primary
        assert KEY_ROTATOR_HANDLER in ARCHIVE_HANDLERS
        statements = policies_of(plan, fn.inputs["role"])
        assert secret_statements(statements) == [{"Sid": "RotateKeyRings", "Effect": "Allow",
                                                  "Action": ["secretsmanager:GetSecretValue", "secretsmanager:PutSecretValue"],
                                                  "Resource": [arn]}]
        assert {a for s in statements for a in s["Action"]} == {"secretsmanager:GetSecretValue", "secretsmanager:PutSecretValue",
                                                               "logs:CreateLogStream", "logs:PutLogEvents"}
        rules = [r for r in plan.of_type("aws:cloudwatch/eventRule:EventRule") if r.name == "key-rotation-schedule"]
        assert [(r.region, r.inputs["scheduleExpression"]) for r in rules] == [(primary, "rate(30 days)")]
        (target,) = [t for t in plan.of_type("aws:cloudwatch/eventTarget:EventTarget") if t.name == "key-rotation-schedule"]
        assert target.inputs["arn"] == fn.outputs["arn"] and target.region == primary
        (alarm,) = [a for a in plan.of_type("aws:cloudwatch/metricAlarm:MetricAlarm") if a.inputs["name"] == f"{prefix}-key-rotation-failed"]
        assert alarm.region == primary and alarm.inputs["dimensions"] == {"FunctionName": f"{prefix}-key-rotator"}
        assert alarm.inputs["alarmActions"] == [f"arn:aws:sns:{primary}:123456789012:{prefix}-{primary}-alarms"]


class TestConfig:
    def test_rotation_days_set_the_schedule_and_zero_turns_it_off(self) -> None:
        plan = render_values({"regions": ["us-east-1", "eu-west-1"], "keyRotationDays": 7}, stack="rot")
        (rule,) = [r for r in plan.of_type("aws:cloudwatch/eventRule:EventRule") if r.name == "key-rotation-schedule"]
        assert rule.inputs["scheduleExpression"] == "rate(7 days)"
        assert not [v for v in check(plan.custom, plan.topology.regions) if v.rule == "schedule-expression"]
        off = render_values({"regions": ["us-east-1", "eu-west-1"], "keyRotationDays": 0}, stack="rot")
        assert not [r for r in off.custom if r.name.startswith("key-rotation")]
        # The tasks still refresh: a manual `meridian keys rotate` reaches them.
        (container,) = json.loads(off.of_type(TASK_DEFINITION)[0].inputs["containerDefinitions"])
        assert "MERIDIAN_KEYS_SECRET_ARN" in {e["name"] for e in container["environment"]}

    def test_an_interval_shorter_than_two_token_lifetimes_is_refused(self) -> None:
        with pytest.raises(RenderError, match=r"meridian:keyRotationDays is 1; use 0 \(no scheduled rotation\) or 2 to 365"):
            render_values({"regions": ["us-east-1", "eu-west-1"], "keyRotationDays": 1}, stack="rot")


def test_the_local_run_deploys_the_same_archive_as_the_program() -> None:
    """The embedded AWS gets the zip the program ships, key-rotator handler included."""
    import io
    import zipfile

    from meridian_local.applier import _lambda_zip

    names = set(zipfile.ZipFile(io.BytesIO(_lambda_zip())).namelist())
    assert "lambdas/key_rotator/handler.py" in names and "meridian/rotation.py" in names
