"""Each rule of AWS's documented limits catches a resource AWS would refuse and passes one it accepts."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from infra.render import Plan
from policy.rules import AWS_LIMIT_RULES, NAME_SPECS, UNKNOWN_SENTINELS, Res, Violation, check, environment_size

UNKNOWN = "04da6b54-80e4-46f7-96ec-b56ff0331ba9"  # Pulumi's unknown string during a real preview


def violations(rule: str, *resources: Res) -> list[Violation]:
    return [v for v in check(list(resources)) if v.rule == rule]


def query(qid: str, *, expression: str | None = None, return_data: bool | None = None, period: int = 60) -> dict[str, Any]:
    q: dict[str, Any] = {"id": qid}
    if expression is not None:
        q["expression"] = expression
    else:
        q["metric"] = {"namespace": "AWS/DynamoDB", "metricName": "ReadThrottleEvents", "dimensions": {"TableName": qid},
                       "period": period, "stat": "Sum"}
    if return_data is not None:
        q["returnData"] = return_data
    return q


def math_alarm(queries: list[dict[str, Any]], **over: Any) -> Res:
    inputs = {"name": "a", "comparisonOperator": "GreaterThanThreshold", "threshold": 0, "evaluationPeriods": 3,
              "metricQueries": queries, **over}
    return Res("aws:cloudwatch/metricAlarm:MetricAlarm", "alarm", "eu-west-1", inputs)


def good_math_alarm(metrics: int = 2) -> Res:
    ids = [f"m{i}" for i in range(metrics)]
    return math_alarm([*(query(i) for i in ids), query("total", expression=f"SUM([{', '.join(ids)}])", return_data=True)])


class TestEveryRule:
    def test_every_limit_rule_cites_an_aws_page(self) -> None:
        """Each limit rule names the AWS documentation page it comes from, in its source and description."""
        for rule in AWS_LIMIT_RULES:
            assert rule.source.startswith("https://docs.aws.amazon.com/"), rule.name
            assert rule.source in rule.description, rule.name

    def test_descriptions_survive_the_plan_output(self) -> None:
        """`meridian plan` prints descriptions with rich, whose markup would eat a "[https://...]" or "[a-z]"."""
        from rich.text import Text

        for rule in AWS_LIMIT_RULES:
            assert Text.from_markup(rule.description).plain == rule.description, rule.name

    def test_every_limit_rule_has_a_breaking_test(self) -> None:
        """Every limit rule is caught by at least one test below (the names are listed here)."""
        tested = {
            "alarm-metric-math", "alarm-evaluation", *(s.rule for s in NAME_SPECS), "lambda-environment-size",
            "lambda-environment-keys", "lambda-settings", "stream-event-source", "accelerator-endpoint-group",
            "route53-health-check", "fargate-task-size", "target-group-health-check", "alb-idle-timeout", "log-retention",
            "secret-recovery-window", "schedule-expression", "ecs-deployment",
        }
        assert {r.name for r in AWS_LIMIT_RULES} == tested

    def test_unknown_values_are_skipped(self) -> None:
        """Values computed during a real preview are never guessed at."""
        assert UNKNOWN in UNKNOWN_SENTINELS
        assert violations("alarm-metric-math", math_alarm(UNKNOWN)) == []  # type: ignore[arg-type]
        assert violations("lambda-function-name", Res("aws:lambda/function:Function", "f", "eu-west-1", {"name": UNKNOWN})) == []


class TestMetricMathAlarms:
    def test_good_alarm_passes(self) -> None:
        """Ten metrics, one expression returning data, lowercase ids: PutMetricAlarm accepts it."""
        assert violations("alarm-metric-math", good_math_alarm(10)) == []

    def test_more_than_ten_metrics(self) -> None:
        """Eleven metric queries are one too many (moto accepts 22)."""
        (v,) = violations("alarm-metric-math", good_math_alarm(11))
        assert "11 metric queries" in v.message

    def test_uppercase_id(self) -> None:
        """`R0` starts with an uppercase letter; CloudWatch wants `r0`."""
        alarm = math_alarm([query("R0"), query("total", expression="SUM([R0])", return_data=True)])
        (v,) = violations("alarm-metric-math", alarm)
        assert "'R0'" in v.message and "must start with a lowercase letter" in v.message

    def test_id_with_a_hyphen(self) -> None:
        alarm = math_alarm([query("r-0"), query("total", expression="SUM([r0])", return_data=True)])
        assert "'r-0'" in violations("alarm-metric-math", alarm)[0].message

    @pytest.mark.parametrize("flags", [(None, None), (True, True)], ids=["none", "two"])
    def test_exactly_one_returns_data(self, flags: tuple[bool | None, bool | None]) -> None:
        """Neither or both queries returning data is refused; exactly one must."""
        alarm = math_alarm([query("m0", return_data=flags[0]), query("total", expression="m0 * 2", return_data=flags[1])])
        (v,) = violations("alarm-metric-math", alarm)
        assert "exactly one must" in v.message

    def test_duplicate_ids_and_mixed_inputs(self) -> None:
        alarm = math_alarm([query("m0"), query("m0"), query("t", expression="m0", return_data=True)], namespace="AWS/ELB")
        messages = " | ".join(v.message for v in violations("alarm-metric-math", alarm))
        assert "m0 used more than once" in messages and "cannot be combined with namespace" in messages

    def test_single_metric_alarm_is_not_math(self) -> None:
        alarm = Res("aws:cloudwatch/metricAlarm:MetricAlarm", "a", "eu-west-1",
                    {"name": "a", "namespace": "AWS/ELB", "metricName": "X", "period": 60, "evaluationPeriods": 3})
        assert violations("alarm-metric-math", alarm) == []


class TestAlarmEvaluation:
    def test_good_alarm_passes(self) -> None:
        assert violations("alarm-evaluation", good_math_alarm()) == []

    def test_period_not_a_multiple_of_sixty(self) -> None:
        alarm = math_alarm([query("m0", period=45), query("t", expression="m0", return_data=True)])
        assert "period 45 s" in violations("alarm-evaluation", alarm)[0].message

    def test_evaluation_longer_than_a_day(self) -> None:
        alarm = math_alarm([query("m0", period=3600), query("t", expression="m0", return_data=True)], evaluationPeriods=25)
        assert "one day" in violations("alarm-evaluation", alarm)[0].message

    def test_datapoints_over_periods_and_too_many_actions(self) -> None:
        alarm = math_alarm([query("m0"), query("t", expression="m0", return_data=True)], datapointsToAlarm=4,
                           alarmActions=[f"arn:aws:sns:eu-west-1:1:t{i}" for i in range(6)])
        messages = " | ".join(v.message for v in violations("alarm-evaluation", alarm))
        assert "datapointsToAlarm 4 exceeds evaluationPeriods 3" in messages and "6 actions" in messages


# -- names -----------------------------------------------------------------------------------------------
#: rule -> (type, explicit name field, a good name, a bad name and what the message says)
NAME_CASES: dict[str, tuple[str, str, str, str, str]] = {
    "alb-name": ("aws:lb/loadBalancer:LoadBalancer", "name", "eu-west-1-alb", "internal-api", "internal-"),
    "target-group-name": ("aws:lb/targetGroup:TargetGroup", "name", "eu-west-1-tg", "tg_1", "alphanumerics and hyphens"),
    "lambda-function-name": ("aws:lambda/function:Function", "name", "meridian-prod-evacuator", "a" * 65, "limit is 64"),
    "iam-role-name": ("aws:iam/role:Role", "name", "svc+role=x,y.z@w-_", "role with space", "alphanumerics and +=,.@_-"),
    "metric-alarm-name": ("aws:cloudwatch/metricAlarm:MetricAlarm", "name", "meridian prod: 5xx (eu)", "x" * 256, "limit is 255"),
    "composite-alarm-name": ("aws:cloudwatch/compositeAlarm:CompositeAlarm", "alarmName", "evacuate", "bad\nname", "control"),
    "log-group-name": ("aws:cloudwatch/logGroup:LogGroup", "name", "/aws/lambda/meridian-prod-canary#1", "/meridian/prod:svc", "._-/#"),
    "dynamodb-table-name": ("aws:dynamodb/table:Table", "name", "meridian-prod.users_v2", "ab", "minimum is 3"),
    "ecs-cluster-name": ("aws:ecs/cluster:Cluster", "name", "meridian_prod-1", "meridian.prod", "hyphens and underscores"),
    "ecs-service-name": ("aws:ecs/service:Service", "name", "meridian-prod-service", "svc/1", "hyphens and underscores"),
    "ecs-task-family": ("aws:ecs/taskDefinition:TaskDefinition", "family", "meridian-prod-eu-west-1", "f" * 256, "limit is 255"),
    "security-group-name": ("aws:ec2/securityGroup:SecurityGroup", "name", "alb (public) #1", "sg-alb", "'sg-'"),
    "secret-name": ("aws:secretsmanager/secret:Secret", "name", "meridian-prod/session-keys", "keys with space", "/_+=.@-"),
}


class TestNames:
    def test_every_name_rule_has_a_case(self) -> None:
        assert set(NAME_CASES) == {s.rule for s in NAME_SPECS}

    @pytest.mark.parametrize("rule", sorted(NAME_CASES))
    def test_explicit_name(self, rule: str) -> None:
        """A documented-good explicit name passes; a bad one is caught and the message says why."""
        typ, field, good, bad, why = NAME_CASES[rule]
        assert violations(rule, Res(typ, "logical", "eu-west-1", {field: good})) == []
        found = violations(rule, Res(typ, "logical", "eu-west-1", {field: bad}))
        assert found and any(why in v.message for v in found), found

    @pytest.mark.parametrize(
        ("rule", "typ", "longest_ok"),
        [
            # ALB: pulumi-aws auto-names up to 255, the provider then refuses a name over 32.
            ("alb-name", "aws:lb/loadBalancer:LoadBalancer", 24),
            # target group: AutoName("name", 32): "name 'x-' plus 7 random chars is longer than maximum length 32".
            ("target-group-name", "aws:lb/targetGroup:TargetGroup", 24),
            ("iam-role-name", "aws:iam/role:Role", 56),
            ("lambda-function-name", "aws:lambda/function:Function", 56),
            ("ecs-cluster-name", "aws:ecs/cluster:Cluster", 247),
            # Log groups and secrets allow 512 characters, but the auto-namer stops at 255.
            ("log-group-name", "aws:cloudwatch/logGroup:LogGroup", 247),
            ("secret-name", "aws:secretsmanager/secret:Secret", 247),
        ],
    )
    def test_auto_name_is_logical_name_plus_eight(self, rule: str, typ: str, longest_ok: int) -> None:
        """Without a name input, the logical name plus '-' and 7 random characters must fit: Pulumi does not truncate."""
        assert violations(rule, Res(typ, "n" * longest_ok, "eu-west-1", {})) == []
        (v,) = violations(rule, Res(typ, "n" * (longest_ok + 1), "eu-west-1", {}))
        assert "auto-name" in v.message and "does not truncate" in v.message

    def test_required_name_is_not_auto_named(self) -> None:
        """A composite alarm's alarmName is a required input: no auto-name is assumed."""
        assert violations("composite-alarm-name", Res("aws:cloudwatch/compositeAlarm:CompositeAlarm", "x" * 300, None, {})) == []

    def test_security_group_description(self) -> None:
        sg = Res("aws:ec2/securityGroup:SecurityGroup", "alb", "eu-west-1", {"description": "ALB – clients"})  # en dash
        assert "description" in violations("security-group-name", sg)[0].message


# -- Lambda --------------------------------------------------------------------------------------------
def function(variables: dict[str, str] | None = None, **over: Any) -> Res:
    inputs = {"name": "meridian-prod-canary", "timeout": 30, "memorySize": 256,
              "environment": {"variables": variables if variables is not None else {"MERIDIAN_REGION": "eu-west-1"}}, **over}
    return Res("aws:lambda/function:Function", "fn", "eu-west-1", inputs)


class TestLambda:
    def test_environment_size_is_measured_as_lambda_does(self) -> None:
        """Lambda measures the JSON object: quotes, separators and escaping count, not just keys and values."""
        raw, measured = environment_size({"A": 'x"y'})
        assert raw == 4 and measured == len('{"A":"x\\"y"}')

    def test_environment_under_4kb_passes(self) -> None:
        assert violations("lambda-environment-size", function({"BIG": "x" * 4000})) == []

    def test_environment_over_4kb(self) -> None:
        """4,100 bytes of values is over 4 KB however it is measured."""
        (v,) = violations("lambda-environment-size", function({"BIG": "x" * 4000, "MORE": "y" * 100}))
        assert "4096" in v.message and "BIG" in v.message

    def test_json_in_json_counts_its_escapes(self) -> None:
        """Keys and values of 3,600 bytes pass the plain sum but not Lambda's JSON measure (1,198 quotes, each escaped)."""
        value = json.dumps(["ab"] * 599)  # 3,593 bytes, 1,198 of them quotes
        raw, measured = environment_size({"TOPOLOGY": value})
        assert raw < 4096 < measured
        assert violations("lambda-environment-size", function({"TOPOLOGY": value}))

    @pytest.mark.parametrize(("key", "why"), [("AWS_REGION", "reserved"), ("_HANDLER", "reserved"), ("1ST", "must start with a letter")])
    def test_reserved_or_malformed_keys(self, key: str, why: str) -> None:
        (v,) = violations("lambda-environment-keys", function({key: "x"}))
        assert why in v.message

    def test_ordinary_keys_pass(self) -> None:
        assert violations("lambda-environment-keys", function({"MERIDIAN_REGION": "x", "POWERTOOLS_SERVICE_NAME": "m"})) == []

    @pytest.mark.parametrize(("over", "why"), [({"timeout": 901}, "timeout 901"), ({"timeout": 0}, "timeout 0"),
                                               ({"memorySize": 64}, "memorySize 64"), ({"memorySize": 10_241}, "10241")])
    def test_timeout_and_memory(self, over: dict[str, int], why: str) -> None:
        assert violations("lambda-settings", function(**{"timeout": 900, "memorySize": 10_240})) == []
        (v,) = violations("lambda-settings", function(**over))
        assert why in v.message

    def test_stream_mapping(self) -> None:
        arn = "arn:aws:dynamodb:eu-west-1:1:table/t/stream/2026"
        good = Res("aws:lambda/eventSourceMapping:EventSourceMapping", "m", "eu-west-1",
                   {"eventSourceArn": arn, "batchSize": 100, "maximumRetryAttempts": 10})
        bad = Res("aws:lambda/eventSourceMapping:EventSourceMapping", "m", "eu-west-1",
                  {"eventSourceArn": arn, "batchSize": 20_000, "maximumRetryAttempts": -2, "maximumRecordAgeInSeconds": 30})
        assert violations("stream-event-source", good) == []
        assert len(violations("stream-event-source", bad)) == 3


# -- routing --------------------------------------------------------------------------------------------
def endpoint_group(**over: Any) -> Res:
    inputs = {"endpointGroupRegion": "eu-west-1", "trafficDialPercentage": 100, "healthCheckIntervalSeconds": 10,
              "thresholdCount": 3, "healthCheckPort": 443, "healthCheckPath": "/health/ready",
              "endpointConfigurations": [{"endpointId": "arn:alb", "weight": 128}], **over}
    return Res("aws:globalaccelerator/endpointGroup:EndpointGroup", "edge-eu-west-1", "us-west-2", inputs)


def health_check(**over: Any) -> Res:
    inputs = {"type": "HTTPS", "fqdn": "eu-west-1.api.example.com", "port": 443, "resourcePath": "/health/ready",
              "requestInterval": 10, "failureThreshold": 3, "enableSni": True,
              "regions": ["us-east-1", "eu-west-1", "ap-southeast-1"], **over}
    return Res("aws:route53/healthCheck:HealthCheck", "edge-eu-west-1-ready", "us-east-1", inputs)


class TestRouting:
    def test_good_endpoint_group_passes(self) -> None:
        assert violations("accelerator-endpoint-group", endpoint_group(trafficDialPercentage=0)) == []

    @pytest.mark.parametrize(
        ("over", "why"),
        [
            ({"trafficDialPercentage": 101}, "trafficDialPercentage 101"),
            ({"healthCheckIntervalSeconds": 20}, "10 or 30"),
            ({"thresholdCount": 11}, "thresholdCount 11"),
            ({"thresholdCount": 0}, "thresholdCount 0"),
            ({"endpointConfigurations": [{"endpointId": "arn:alb", "weight": 256}]}, "weight 256"),
            ({"healthCheckPath": "health"}, "must start with /"),
        ],
    )
    def test_endpoint_group_out_of_range(self, over: dict[str, Any], why: str) -> None:
        (v,) = violations("accelerator-endpoint-group", endpoint_group(**over))
        assert why in v.message

    def test_good_health_check_passes(self) -> None:
        assert violations("route53-health-check", health_check()) == []
        assert violations("route53-health-check", health_check(regions=None, requestInterval=30, failureThreshold=10)) == []

    @pytest.mark.parametrize(
        ("over", "why"),
        [
            ({"regions": ["us-east-1", "eu-west-1"]}, "at least 3"),
            ({"regions": ["us-east-1", "eu-west-1", "eu-central-1"]}, "no Route 53 health checkers in eu-central-1"),
            ({"enableSni": False}, "enableSni false"),
            ({"type": "HTTPS_STR_MATCH", "enableSni": False}, "SNI"),
            ({"requestInterval": 20}, "10 or 30"),
            ({"failureThreshold": 11}, "failureThreshold 11"),
        ],
    )
    def test_health_check_out_of_range(self, over: dict[str, Any], why: str) -> None:
        (v,) = violations("route53-health-check", health_check(**over))
        assert why in v.message

    def test_http_check_may_leave_sni_off(self) -> None:
        assert violations("route53-health-check", health_check(type="HTTP", port=80, enableSni=False)) == []


# -- ECS, load balancing, logs, secrets, schedules ---------------------------------------------------------
def task(cpu: Any, memory: Any, os_family: str = "LINUX") -> Res:
    inputs = {"family": "f", "cpu": cpu, "memory": memory, "requiresCompatibilities": ["FARGATE"],
              "runtimePlatform": {"operatingSystemFamily": os_family}}
    return Res("aws:ecs/taskDefinition:TaskDefinition", "task", "eu-west-1", inputs)


class TestServiceLimits:
    @pytest.mark.parametrize(("cpu", "memory"), [("256", "512"), ("512", "1024"), ("512", "4096"), ("2048", "16384"),
                                                 ("8192", "20480"), ("16384", "122880"), ("1 vCPU", "2 GB")])
    def test_fargate_sizes_accepted(self, cpu: str, memory: str) -> None:
        assert violations("fargate-task-size", task(cpu, memory)) == []

    @pytest.mark.parametrize(("cpu", "memory", "why"), [("256", "4096", "512, 1024, 2048"), ("512", "512", "1024, 2048, 3072, 4096"),
                                                        ("8192", "18432", "steps of 4096"), ("384", "1024", "cpu 384"),
                                                        ("512", None, "needs task-level")])
    def test_fargate_sizes_refused(self, cpu: str, memory: str | None, why: str) -> None:
        (v,) = violations("fargate-task-size", task(cpu, memory))
        assert why in v.message

    def test_windows_needs_one_vcpu(self) -> None:
        assert "Windows" in violations("fargate-task-size", task("512", "1024", "WINDOWS_SERVER_2022_CORE"))[0].message

    def test_target_group_health_check(self) -> None:
        hc = {"interval": 10, "timeout": 5, "healthyThreshold": 2, "unhealthyThreshold": 2}
        good = Res("aws:lb/targetGroup:TargetGroup", "tg", "eu-west-1", {"healthCheck": hc, "deregistrationDelay": 30})
        bad = Res("aws:lb/targetGroup:TargetGroup", "tg", "eu-west-1",
                  {"healthCheck": {**hc, "timeout": 10, "healthyThreshold": 1}, "deregistrationDelay": 3601})
        assert violations("target-group-health-check", good) == []
        messages = " | ".join(v.message for v in violations("target-group-health-check", bad))
        assert "less than the interval" in messages and "healthyThreshold 1" in messages and "deregistrationDelay 3601" in messages

    def test_alb_idle_timeout(self) -> None:
        alb = "aws:lb/loadBalancer:LoadBalancer"
        assert violations("alb-idle-timeout", Res(alb, "alb", "eu-west-1", {"idleTimeout": 4000})) == []
        assert violations("alb-idle-timeout", Res(alb, "alb", "eu-west-1", {"idleTimeout": 4001}))

    @pytest.mark.parametrize(("days", "ok"), [(30, True), (0, True), (3653, True), (31, False), (10, False)])
    def test_log_retention(self, days: int, ok: bool) -> None:
        group = Res("aws:cloudwatch/logGroup:LogGroup", "g", "eu-west-1", {"name": "/g", "retentionInDays": days})
        assert (violations("log-retention", group) == []) is ok

    @pytest.mark.parametrize(("days", "ok"), [(7, True), (30, True), (0, True), (6, False), (31, False)])
    def test_secret_recovery_window(self, days: int, ok: bool) -> None:
        secret = Res("aws:secretsmanager/secret:Secret", "s", "eu-west-1", {"name": "s", "recoveryWindowInDays": days})
        assert (violations("secret-recovery-window", secret) == []) is ok

    @pytest.mark.parametrize(("expr", "ok"), [("rate(1 minute)", True), ("rate(5 minutes)", True), ("cron(0 12 * * ? *)", True),
                                              ("rate(1 minutes)", False), ("rate(5 minute)", False), ("rate(0 minutes)", False),
                                              ("rate(1 second)", False)])
    def test_schedule_expression(self, expr: str, ok: bool) -> None:
        rule = Res("aws:cloudwatch/eventRule:EventRule", "r", "eu-west-1", {"scheduleExpression": expr})
        assert (violations("schedule-expression", rule) == []) is ok


def ecs_service(config: dict[str, Any], *, advanced: dict[str, str] | None = None) -> Res:
    lb: dict[str, Any] = {"targetGroupArn": "arn:tg", "containerName": "meridian", "containerPort": 8080}
    if advanced is not None:
        lb["advancedConfiguration"] = advanced
    return Res("aws:ecs/service:Service", "eu-west-1-service", "eu-west-1", {"deploymentConfiguration": config, "loadBalancers": [lb]})


class TestEcsDeployments:
    ADVANCED = {"alternateTargetGroupArn": "arn:tg-alt", "productionListenerRule": "arn:rule", "roleArn": "arn:role"}

    def test_good_configurations_pass(self) -> None:
        """ROLLING alone, and each traffic-shifting strategy with its companions and values in range."""
        assert violations("ecs-deployment", ecs_service({"strategy": "ROLLING"})) == []
        for config in ({"strategy": "BLUE_GREEN", "bakeTimeInMinutes": "1440"},
                       {"strategy": "CANARY", "bakeTimeInMinutes": "0", "canaryConfiguration": {"canaryPercent": 0.1, "canaryBakeTimeInMinutes": "10"}},
                       {"strategy": "LINEAR", "linearConfiguration": {"stepPercent": 3.0, "stepBakeTimeInMinutes": "5"}}):
            assert violations("ecs-deployment", ecs_service(config, advanced=self.ADVANCED)) == [], config

    @pytest.mark.parametrize(("config", "why"), [
        ({"strategy": "BLUE_GREEN", "bakeTimeInMinutes": "1441"}, "bakeTimeInMinutes 1441"),
        ({"strategy": "CANARY", "canaryConfiguration": {"canaryPercent": 0.05}}, "canaryPercent 0.05"),
        ({"strategy": "CANARY", "canaryConfiguration": {"canaryPercent": 10.05}}, "multiple of 0.1"),
        ({"strategy": "CANARY", "canaryConfiguration": {"canaryBakeTimeInMinutes": "-1"}}, "canaryBakeTimeInMinutes -1"),
        ({"strategy": "LINEAR", "linearConfiguration": {"stepPercent": 2.5}}, "stepPercent 2.5"),
        ({"strategy": "LINEAR", "linearConfiguration": {"stepBakeTimeInMinutes": "2000"}}, "stepBakeTimeInMinutes 2000"),
        ({"strategy": "RECREATE"}, "'RECREATE'"),
    ])
    def test_out_of_range(self, config: dict[str, Any], why: str) -> None:
        """Each of ECS's documented ranges (API_DeploymentConfiguration, CanaryConfiguration, LinearConfiguration)."""
        found = violations("ecs-deployment", ecs_service(config, advanced=self.ADVANCED))
        assert found and any(why in v.message for v in found), found

    @pytest.mark.parametrize("strategy", ["BLUE_GREEN", "CANARY", "LINEAR"])
    def test_traffic_shifting_needs_its_companions(self, strategy: str) -> None:
        """Without an alternate target group, a production listener rule and a role, ECS cannot shift traffic."""
        (v,) = violations("ecs-deployment", ecs_service({"strategy": strategy}))
        assert "alternateTargetGroupArn, productionListenerRule, roleArn" in v.message
        (v,) = violations("ecs-deployment", ecs_service({"strategy": strategy}, advanced={**self.ADVANCED, "roleArn": ""}))
        assert v.message.endswith("advancedConfiguration roleArn on its load balancer")


class TestRealPlans:
    @pytest.mark.parametrize("stack", ["prod", "dev"])
    def test_lambda_environments_fit_4kb(self, stack: str, request: pytest.FixtureRequest) -> None:
        """Every function's environment fits Lambda's 4 KB as Lambda measures it (the topology JSON dominates)."""
        plan: Plan = request.getfixturevalue(f"{stack}_plan")
        functions = [r for r in plan.custom if r.type == "aws:lambda/function:Function"]
        assert functions
        sizes = {r.name: environment_size(r.inputs["environment"]["variables"]) for r in functions}
        assert all(measured <= 4096 for _, measured in sizes.values()), sizes

    @pytest.mark.parametrize("stack", ["prod", "dev"])
    def test_no_aws_limit_is_broken(self, stack: str, request: pytest.FixtureRequest) -> None:
        """The rendered program breaks none of AWS's documented limits (the alarms' 10-metric rule included)."""
        plan: Plan = request.getfixturevalue(f"{stack}_plan")
        resources = [Res(r.type, r.name, r.region, r.inputs) for r in plan.custom]
        names = {r.name for r in AWS_LIMIT_RULES}
        found = [f"{v.rule} {v.resource}: {v.message}" for v in check(resources, plan.topology.regions) if v.rule in names]
        assert found == []

    def test_auto_named_resources_fit(self, prod_plan: Plan) -> None:
        """The logical names the program gives auto-named resources leave room for Pulumi's 8 characters."""
        auto_named = [r for r in prod_plan.custom if r.type in {s.type for s in NAME_SPECS if s.auto_max} and "name" not in r.inputs]
        assert {r.type for r in auto_named} >= {"aws:lb/loadBalancer:LoadBalancer", "aws:lb/targetGroup:TargetGroup", "aws:iam/role:Role"}
        assert not [r.name for r in auto_named if r.type.startswith("aws:lb/") and not re.fullmatch(r"[a-z0-9-]{1,24}", r.name)]
