"""Meridian's policy rules, written once as pure functions over resources (type token, name, provider
region, inputs in Pulumi's camelCase wire names).

They run two ways: ``meridian plan`` calls :func:`check` on the mock-rendered resources, and the
CrossGuard pack in ``policy/__main__.py`` (``pulumi preview --policy-pack policy/``) adapts Pulumi's
policy arguments to the same :class:`Res` and calls the same rules. Unknown values (computed during a
real preview) are skipped, never guessed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

TABLE = "aws:dynamodb/table:Table"
RECORD = "aws:route53/record:Record"
ALB = "aws:lb/loadBalancer:LoadBalancer"
SERVICE = "aws:ecs/service:Service"
ENDPOINT_GROUP = "aws:globalaccelerator/endpointGroup:EndpointGroup"
ROLE_POLICY = "aws:iam/rolePolicy:RolePolicy"
ZONE_TAG = "meridian:zone"
ZONE_REGIONS_TAG = "meridian:zone-regions"
GLOBAL_SERVICES = ("aws:route53/", "aws:globalaccelerator/")
AWS_PACKAGES = ("aws", "aws-native")


@dataclass(frozen=True)
class Res:
    type: str
    name: str
    region: str | None
    inputs: dict[str, Any]


@dataclass(frozen=True)
class Violation:
    rule: str
    resource: str
    message: str

    def to_json(self) -> dict[str, str]:
        return {"rule": self.rule, "resource": self.resource, "message": self.message}


@dataclass(frozen=True)
class Rule:
    name: str
    description: str
    check: Callable[[Sequence[Res], Sequence[str] | None], Iterable[Violation]]
    #: the AWS documentation page a limit comes from (also at the end of ``description``)
    source: str = ""


def _known(value: Any) -> bool:
    """Not None and not one of Pulumi's unknown-value sentinels (a real preview's computed values)."""
    return value is not None and not (isinstance(value, str) and value in UNKNOWN_SENTINELS)


def zone_regions(table: Res) -> list[str] | None:
    """The regions a zone table may live in, as the program stamped them on the table."""
    tag = (table.inputs.get("tags") or {}).get(ZONE_REGIONS_TAG)
    return tag.split("+") if isinstance(tag, str) and tag else None


def table_regions(table: Res) -> list[str]:
    replicas = [r.get("regionName") for r in table.inputs.get("replicas") or []]
    return [r for r in [table.region, *replicas] if isinstance(r, str)]


# -- rules -------------------------------------------------------------------------------------------
def replicas_inside_zone(resources: Sequence[Res], regions: Sequence[str] | None) -> Iterable[Violation]:
    for t in resources:
        if t.type != TABLE:
            continue
        allowed = zone_regions(t)
        if allowed is None:
            yield Violation("zone-table-replicas-in-zone", t.name, f"table has no {ZONE_REGIONS_TAG} tag naming its zone's regions")
            continue
        outside = [r for r in table_regions(t) if r not in allowed]
        if outside:
            zone = (t.inputs.get("tags") or {}).get(ZONE_TAG, "?")
            yield Violation(
                "zone-table-replicas-in-zone", t.name,
                f"zone {zone!r} table has a replica in {', '.join(outside)}, outside its regions {', '.join(allowed)}",
            )


def latency_records_health_checked(resources: Sequence[Res], regions: Sequence[str] | None) -> Iterable[Violation]:
    for r in resources:
        if r.type == RECORD and r.inputs.get("latencyRoutingPolicies") and not r.inputs.get("healthCheckId"):
            yield Violation("latency-record-health-check", r.name, "latency record has no health check: a dead region keeps its traffic")


def every_region_complete(resources: Sequence[Res], regions: Sequence[str] | None) -> Iterable[Violation]:
    latency = {
        p.get("region") for r in resources if r.type == RECORD for p in r.inputs.get("latencyRoutingPolicies") or []
    }
    groups = {r.inputs.get("endpointGroupRegion") for r in resources if r.type == ENDPOINT_GROUP}
    has = {
        "an ALB": {r.region for r in resources if r.type == ALB},
        "a Fargate service": {r.region for r in resources if r.type == SERVICE},
        "a latency record": latency,
    }
    if groups or any(r.type.startswith("aws:globalaccelerator/accelerator") for r in resources):
        has["a Global Accelerator endpoint group"] = groups
    expected = set(regions) if regions is not None else set().union(*has.values()) - {None}
    for region in sorted(r for r in expected if r):
        for what, present in has.items():
            if region not in present:
                yield Violation("region-complete", region, f"region {region} lacks {what}")


def tables_protected(resources: Sequence[Res], regions: Sequence[str] | None) -> Iterable[Violation]:
    for t in resources:
        if t.type != TABLE:
            continue
        missing = []
        if not (t.inputs.get("pointInTimeRecovery") or {}).get("enabled"):
            missing.append("point-in-time recovery")
        if not t.inputs.get("deletionProtectionEnabled"):
            missing.append("deletion protection")
        if not (t.inputs.get("serverSideEncryption") or {}).get("enabled"):
            missing.append("server-side encryption")
        for replica in t.inputs.get("replicas") or []:
            if not replica.get("pointInTimeRecovery"):
                missing.append(f"point-in-time recovery on replica {replica.get('regionName')}")
        if missing:
            yield Violation("tables-protected", t.name, f"table lacks {', '.join(missing)}")


def no_public_task_ip(resources: Sequence[Res], regions: Sequence[str] | None) -> Iterable[Violation]:
    for s in resources:
        if s.type == SERVICE and (s.inputs.get("networkConfiguration") or {}).get("assignPublicIp") is True:
            yield Violation("no-public-task-ip", s.name, "Fargate tasks get a public IP; keep them in private subnets")


def task_role_zone_scope(resources: Sequence[Res], regions: Sequence[str] | None) -> Iterable[Violation]:
    allowed = {t.inputs.get("name"): zone_regions(t) or [] for t in resources if t.type == TABLE}
    for p in resources:
        if p.type != ROLE_POLICY or not _known(p.inputs.get("policy")):
            continue
        try:
            doc = json.loads(p.inputs["policy"])
        except (TypeError, json.JSONDecodeError):
            continue
        for statement in doc.get("Statement", []):
            resources_ = statement.get("Resource", [])
            for arn in [resources_] if isinstance(resources_, str) else resources_:
                if not isinstance(arn, str) or ":dynamodb:" not in arn:
                    continue
                parts = arn.split(":")
                arn_region, table = parts[3], arn.partition(":table/")[2].split("/", 1)[0]
                if arn_region in ("", "*") or table in ("", "*"):
                    yield Violation("task-role-zone-scope", p.name, f"statement reaches any region or table: {arn}")
                elif p.region and arn_region != p.region:
                    yield Violation("task-role-zone-scope", p.name, f"role in {p.region} reaches a table in {arn_region}: {arn}")
                elif table in allowed and arn_region not in allowed[table]:
                    yield Violation("task-role-zone-scope", p.name, f"{arn_region} is outside the zone of table {table}")


def explicit_providers(resources: Sequence[Res], regions: Sequence[str] | None) -> Iterable[Violation]:
    # Only AWS resources have a region; another package's resource (docker-build's image) has none to check.
    for r in resources:
        if r.region is None and r.type.split(":", 1)[0] in AWS_PACKAGES:
            yield Violation("explicit-provider", r.name, f"{r.type} has no explicit provider and would land in the default region")


# -- AWS's documented limits ---------------------------------------------------------------------------
# moto accepts almost anything; AWS refuses what its API reference says it refuses. Each rule below checks
# one documented constraint and names the page it comes from (`Rule.source`, also shown in the
# description that `meridian plan` and CrossGuard print). Limits that botocore's service model carries
# are also checked on every local request (meridian_local.validation); the ones the model does not
# carry (metric-math query counts and ids, auto-naming, environment size, Fargate sizes...) live only here.
METRIC_ALARM = "aws:cloudwatch/metricAlarm:MetricAlarm"
COMPOSITE_ALARM = "aws:cloudwatch/compositeAlarm:CompositeAlarm"
HEALTH_CHECK = "aws:route53/healthCheck:HealthCheck"
FUNCTION = "aws:lambda/function:Function"
EVENT_SOURCE_MAPPING = "aws:lambda/eventSourceMapping:EventSourceMapping"
TASK_DEFINITION = "aws:ecs/taskDefinition:TaskDefinition"
TARGET_GROUP = "aws:lb/targetGroup:TargetGroup"
LOG_GROUP = "aws:cloudwatch/logGroup:LogGroup"
SECRET = "aws:secretsmanager/secret:Secret"
EVENT_RULE = "aws:cloudwatch/eventRule:EventRule"

#: Pulumi's auto-name: the logical name, "-", then 7 random hex characters (pulumi-aws `AutoName`).
AUTO_SUFFIX = "-xxxxxxx"

PUT_METRIC_ALARM = "https://docs.aws.amazon.com/AmazonCloudWatch/latest/APIReference/API_PutMetricAlarm.html"
METRIC_DATA_QUERY = "https://docs.aws.amazon.com/AmazonCloudWatch/latest/APIReference/API_MetricDataQuery.html"
PUT_COMPOSITE_ALARM = "https://docs.aws.amazon.com/AmazonCloudWatch/latest/APIReference/API_PutCompositeAlarm.html"
LAMBDA_QUOTAS = "https://docs.aws.amazon.com/lambda/latest/dg/gettingstarted-limits.html"
LAMBDA_ENV_VARS = "https://docs.aws.amazon.com/lambda/latest/dg/configuration-envvars.html"
CREATE_ESM = "https://docs.aws.amazon.com/lambda/latest/api/API_CreateEventSourceMapping.html"
GA_ENDPOINT_GROUP = "https://docs.aws.amazon.com/global-accelerator/latest/api/API_CreateEndpointGroup.html"
HEALTH_CHECK_CONFIG = "https://docs.aws.amazon.com/Route53/latest/APIReference/API_HealthCheckConfig.html"
FARGATE_SIZES = "https://docs.aws.amazon.com/AmazonECS/latest/developerguide/fargate-tasks-services.html#fargate-tasks-size"
PUT_RETENTION = "https://docs.aws.amazon.com/AmazonCloudWatchLogs/latest/APIReference/API_PutRetentionPolicy.html"
CREATE_TARGET_GROUP = "https://docs.aws.amazon.com/elasticloadbalancing/latest/APIReference/API_CreateTargetGroup.html"
LB_ATTRIBUTES = "https://docs.aws.amazon.com/elasticloadbalancing/latest/APIReference/API_LoadBalancerAttribute.html"
DELETE_SECRET = "https://docs.aws.amazon.com/secretsmanager/latest/apireference/API_DeleteSecret.html"
SCHEDULE_EXPRESSIONS = "https://docs.aws.amazon.com/eventbridge/latest/userguide/eb-scheduled-rule-pattern.html"
ECS_DEPLOYMENT = "https://docs.aws.amazon.com/AmazonECS/latest/APIReference/API_DeploymentConfiguration.html"

#: Pulumi's sentinels for values unknown during a real preview (pulumi_policy.proxy).
UNKNOWN_SENTINELS = frozenset({
    "1c4a061d-8072-4f0a-a4cb-0ff528b18fe7",  # boolean
    "3eeb2bf0-c639-47a8-9e75-3b44932eb421",  # number
    "04da6b54-80e4-46f7-96ec-b56ff0331ba9",  # string
    "6a19a0b0-7e62-4c92-b797-7f8e31da9cc2",  # array
    "030794c1-ac77-496b-92df-f27374a8bd58",  # asset
    "e48ece36-62e2-4504-bad9-02848725956a",  # archive
    "dd056dcd-154b-4c76-9bd3-c8f88648b5ff",  # object
})


def _number(value: Any) -> float | None:
    """A known number (Pulumi sends numbers as floats; some inputs are numeric strings), else None."""
    if isinstance(value, bool) or not _known(value):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _fmt(n: float) -> str:
    return str(int(n)) if float(n).is_integer() else str(n)


def _limit(name: str, text: str, source: str, check: Callable[[Sequence[Res], Sequence[str] | None], Iterable[Violation]]) -> Rule:
    # Parentheses, not brackets: `meridian plan` prints descriptions with rich, which eats "[lowercase...]".
    return Rule(name, f"{text} ({source})", check, source)


# -- CloudWatch alarms -----------------------------------------------------------------------------------
QUERY_ID = re.compile(r"[a-z][a-zA-Z0-9_]*")
#: PutMetricAlarm refuses these next to a Metrics array.
SINGLE_METRIC_INPUTS = ("namespace", "metricName", "dimensions", "period", "unit", "statistic", "extendedStatistic")


def metric_math_alarms(resources: Sequence[Res], regions: Sequence[str] | None) -> Iterable[Violation]:
    """PutMetricAlarm: up to 20 queries, at most 10 with a metric and 10 with an expression; ids start with a
    lowercase letter and hold letters, digits and underscores; exactly one query returns data. None of this is
    in botocore's model, and moto accepts all of it."""
    for a in resources:
        queries = a.inputs.get("metricQueries") if a.type == METRIC_ALARM else None
        if not queries or not _known(queries) or not isinstance(queries, list):
            continue
        rule = "alarm-metric-math"
        metrics = [q for q in queries if isinstance(q, Mapping) and q.get("metric")]
        expressions = [q for q in queries if isinstance(q, Mapping) and q.get("expression")]
        if len(metrics) > 10:
            yield Violation(rule, a.name, f"{len(metrics)} metric queries; an alarm takes at most 10 (and 10 expressions, 20 queries in all)")
        if len(expressions) > 10:
            yield Violation(rule, a.name, f"{len(expressions)} expression queries; an alarm takes at most 10")
        if len(queries) > 20:
            yield Violation(rule, a.name, f"{len(queries)} queries; an alarm takes at most 20")
        ids = [q.get("id") for q in queries if isinstance(q, Mapping)]
        bad = [i for i in ids if _known(i) and not (isinstance(i, str) and QUERY_ID.fullmatch(i))]
        if bad:
            shown = ", ".join(repr(i) for i in bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
            yield Violation(rule, a.name, f"query id(s) {shown} must start with a lowercase letter and hold only letters, digits and underscores")
        duplicated = sorted({i for i in ids if isinstance(i, str) and ids.count(i) > 1})
        if duplicated:
            yield Violation(rule, a.name, f"query id(s) {', '.join(duplicated)} used more than once")
        for q in queries:
            if isinstance(q, Mapping) and bool(q.get("metric")) == bool(q.get("expression")):
                yield Violation(rule, a.name, f"query {q.get('id')!r} must have exactly one of metric and expression")
        returning = [q for q in queries if isinstance(q, Mapping) and q.get("returnData") is True]
        pending = [q.get("returnData") for q in queries if isinstance(q, Mapping) and q.get("returnData") is not None]
        if len(returning) != 1 and all(_known(flag) for flag in pending):
            yield Violation(rule, a.name, f"{len(returning)} queries have returnData true; exactly one must")
        mixed = [k for k in SINGLE_METRIC_INPUTS if a.inputs.get(k) is not None]
        if mixed:
            yield Violation(rule, a.name, f"metricQueries cannot be combined with {', '.join(mixed)}")


def alarm_evaluation(resources: Sequence[Res], regions: Sequence[str] | None) -> Iterable[Violation]:
    """PutMetricAlarm: a period is 10, 20, 30 or a multiple of 60 s; evaluationPeriods x period is at most one
    day; datapointsToAlarm is at most evaluationPeriods; at most 5 actions per state (composite alarms too)."""
    rule = "alarm-evaluation"
    for a in resources:
        if a.type not in (METRIC_ALARM, COMPOSITE_ALARM):
            continue
        for key in ("alarmActions", "okActions", "insufficientDataActions"):
            actions = a.inputs.get(key)
            if isinstance(actions, list) and len(actions) > 5:
                yield Violation(rule, a.name, f"{key} has {len(actions)} actions; at most 5")
        if a.type != METRIC_ALARM:
            continue
        candidates = [a.inputs.get("period")]
        queries = a.inputs.get("metricQueries")
        for q in queries if isinstance(queries, list) else []:
            if isinstance(q, Mapping):
                candidates += [q.get("period"), (q.get("metric") or {}).get("period")]
        periods = [p for p in map(_number, candidates) if p is not None]
        for p in sorted(set(periods)):
            if not (p in (10, 20, 30) or (p >= 60 and p % 60 == 0)):
                yield Violation(rule, a.name, f"period {_fmt(p)} s; valid periods are 10, 20, 30 or a multiple of 60")
        evaluations = _number(a.inputs.get("evaluationPeriods"))
        if evaluations is not None and periods and evaluations * max(periods) > 86_400:
            yield Violation(rule, a.name, f"evaluationPeriods {_fmt(evaluations)} x period {_fmt(max(periods))} s exceeds one day (86,400 s)")
        datapoints = _number(a.inputs.get("datapointsToAlarm"))
        if datapoints is not None and evaluations is not None and datapoints > evaluations:
            yield Violation(rule, a.name, f"datapointsToAlarm {_fmt(datapoints)} exceeds evaluationPeriods {_fmt(evaluations)}")


# -- names ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NameSpec:
    """How AWS limits one resource type's name, and how pulumi-aws fills it in when the program does not.

    ``auto_max`` is the maximum pulumi-aws gives its auto-namer for ``field`` (provider resource_overrides.go
    and autonaming.go: ``AutoName(field, n, "-")``, default 255), or None when the field has no auto-name
    (a required input). The auto-namer never truncates: a logical name that is too long fails
    (`name 'x-' plus 7 random chars is longer than maximum length N`), and an auto-name within the
    auto-namer's maximum but over AWS's (an ALB's 255 vs 32) fails at the provider's or AWS's check. So
    the effective name checked is the explicit ``field`` if set, else ``<logical name>-xxxxxxx``.
    """

    rule: str
    type: str
    field: str
    max_len: int
    pattern: re.Pattern[str]
    allowed: str
    source: str
    auto_max: int | None = 255
    min_len: int = 1
    extra: Callable[[str], str | None] | None = None


def _no_edge_hyphen(name: str) -> str | None:
    return "must not begin or end with a hyphen" if name.startswith("-") or name.endswith("-") else None


def _alb_extra(name: str) -> str | None:
    if name.startswith("internal-"):
        return "must not begin with 'internal-'"
    return _no_edge_hyphen(name)


def _security_group_extra(name: str) -> str | None:
    return "must not begin with 'sg-'" if name.startswith("sg-") else None


ALNUM_HYPHEN = re.compile(r"[A-Za-z0-9-]+")
ECS_NAME = re.compile(r"[A-Za-z0-9_-]+")
#: EC2-VPC security group names and descriptions: a-z, A-Z, 0-9, spaces, and ._-:/()#,@[]+=&;{}!$*
VPC_SG_TEXT = re.compile(r"[A-Za-z0-9 ._\-:/()#,@\[\]+=&;{}!$*]+")

NAME_SPECS: tuple[NameSpec, ...] = (
    NameSpec("alb-name", ALB, "name", 32, ALNUM_HYPHEN, "alphanumerics and hyphens",
             "https://docs.aws.amazon.com/elasticloadbalancing/latest/APIReference/API_CreateLoadBalancer.html",
             extra=_alb_extra),
    NameSpec("target-group-name", TARGET_GROUP, "name", 32, ALNUM_HYPHEN, "alphanumerics and hyphens", CREATE_TARGET_GROUP,
             auto_max=32, extra=_no_edge_hyphen),
    NameSpec("lambda-function-name", FUNCTION, "name", 64, re.compile(r"[A-Za-z0-9_-]+"), "letters, digits, hyphens and underscores",
             "https://docs.aws.amazon.com/lambda/latest/api/API_CreateFunction.html", auto_max=64),
    NameSpec("iam-role-name", "aws:iam/role:Role", "name", 64, re.compile(r"[\w+=,.@-]+", re.ASCII),
             "alphanumerics and +=,.@_-", "https://docs.aws.amazon.com/IAM/latest/APIReference/API_CreateRole.html", auto_max=64),
    NameSpec("metric-alarm-name", METRIC_ALARM, "name", 255, re.compile(r"[^\x00-\x1f\x7f]+"),
             "UTF-8 characters other than ASCII control characters", PUT_METRIC_ALARM),
    NameSpec("composite-alarm-name", COMPOSITE_ALARM, "alarmName", 255, re.compile(r"[^\x00-\x1f\x7f]+"),
             "UTF-8 characters other than ASCII control characters", PUT_COMPOSITE_ALARM, auto_max=None),
    NameSpec("log-group-name", LOG_GROUP, "name", 512, re.compile(r"[.\-_/#A-Za-z0-9]+"), "letters, digits and ._-/#",
             "https://docs.aws.amazon.com/AmazonCloudWatchLogs/latest/APIReference/API_CreateLogGroup.html"),
    NameSpec("dynamodb-table-name", TABLE, "name", 255, re.compile(r"[A-Za-z0-9_.-]+"), "letters, digits and _.-",
             "https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/HowItWorks.NamingRulesDataTypes.html", min_len=3),
    NameSpec("ecs-cluster-name", "aws:ecs/cluster:Cluster", "name", 255, ECS_NAME, "letters, digits, hyphens and underscores",
             "https://docs.aws.amazon.com/AmazonECS/latest/APIReference/API_CreateCluster.html"),
    NameSpec("ecs-service-name", SERVICE, "name", 255, ECS_NAME, "letters, digits, hyphens and underscores",
             "https://docs.aws.amazon.com/AmazonECS/latest/APIReference/API_CreateService.html"),
    NameSpec("ecs-task-family", TASK_DEFINITION, "family", 255, ECS_NAME, "letters, digits, hyphens and underscores",
             "https://docs.aws.amazon.com/AmazonECS/latest/APIReference/API_RegisterTaskDefinition.html", auto_max=None),
    NameSpec("security-group-name", "aws:ec2/securityGroup:SecurityGroup", "name", 255, VPC_SG_TEXT,
             "letters, digits, spaces and ._-:/()#,@[]+=&;{}!$*",
             "https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_CreateSecurityGroup.html", extra=_security_group_extra),
    NameSpec("secret-name", SECRET, "name", 512, re.compile(r"[A-Za-z0-9/_+=.@-]+"), "letters, digits and /_+=.@-",
             "https://docs.aws.amazon.com/secretsmanager/latest/apireference/API_CreateSecret.html"),
)


def _name_rule(spec: NameSpec) -> Callable[[Sequence[Res], Sequence[str] | None], Iterable[Violation]]:
    def check(resources: Sequence[Res], regions: Sequence[str] | None) -> Iterable[Violation]:
        for r in resources:
            if r.type != spec.type:
                continue
            explicit = r.inputs.get(spec.field)
            if explicit is not None and not _known(explicit):
                continue
            if isinstance(explicit, str):
                name, what, limit = explicit, f"{spec.field} {explicit!r}", spec.max_len
            elif explicit is None and spec.auto_max is not None:
                # Auto-named: the logical name decides; the random suffix is hex and always fits the charset.
                name, what = f"{r.name}{AUTO_SUFFIX}", f"auto-name {r.name!r} + '-' + 7 random characters"
                limit = min(spec.max_len, spec.auto_max)
            else:
                continue
            if len(name) > limit:
                yield Violation(spec.rule, r.name, f"{what} is {len(name)} characters; the limit is {limit} (pulumi-aws does not truncate: `pulumi up` fails)")
            if len(name) < spec.min_len:
                yield Violation(spec.rule, r.name, f"{what} is {len(name)} characters; the minimum is {spec.min_len}")
            if not spec.pattern.fullmatch(name):
                yield Violation(spec.rule, r.name, f"{what} may hold only {spec.allowed}")
            problem = spec.extra(name) if spec.extra else None
            if problem:
                yield Violation(spec.rule, r.name, f"{what} {problem}")
            if spec.rule == "security-group-name":
                description = r.inputs.get("description")
                if isinstance(description, str) and _known(description) and (len(description) > 255 or not VPC_SG_TEXT.fullmatch(description)):
                    yield Violation(spec.rule, r.name, f"description may hold at most 255 of {spec.allowed}")

    return check


# -- Lambda ----------------------------------------------------------------------------------------------
ENV_LIMIT = 4096
ENV_KEY = re.compile(r"[a-zA-Z][a-zA-Z0-9_]+")
#: Keys the Lambda runtime sets and a function configuration cannot (configuration-envvars, "reserved").
RESERVED_ENV_KEYS = frozenset({
    "_HANDLER", "_X_AMZN_TRACE_ID", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_EXECUTION_ENV", "AWS_LAMBDA_FUNCTION_NAME",
    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "AWS_LAMBDA_FUNCTION_VERSION", "AWS_LAMBDA_INITIALIZATION_TYPE",
    "AWS_LAMBDA_LOG_GROUP_NAME", "AWS_LAMBDA_LOG_STREAM_NAME", "AWS_ACCESS_KEY", "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_LAMBDA_RUNTIME_API", "LAMBDA_TASK_ROOT", "LAMBDA_RUNTIME_DIR", "TZ",
})


def environment_size(variables: Mapping[str, Any]) -> tuple[int, int]:
    """(bytes of keys + values, bytes of the compact JSON object) of a function's environment.

    Lambda measures the JSON serialization: its refusal reads "...exceeded the 4KB limit. String measured:
    {"KEY":"value",...}", so quotes, separators and the escaping of JSON-in-JSON values count too."""
    plain = {str(k): str(v) for k, v in variables.items()}
    raw = sum(len(k.encode()) + len(v.encode()) for k, v in plain.items())
    return raw, len(json.dumps(plain, separators=(",", ":")).encode())


def lambda_environment_size(resources: Sequence[Res], regions: Sequence[str] | None) -> Iterable[Violation]:
    for f in resources:
        variables = (f.inputs.get("environment") or {}).get("variables") if f.type == FUNCTION else None
        if not isinstance(variables, Mapping) or not all(_known(v) for v in variables.values()):
            continue
        raw, measured = environment_size(variables)
        if raw > ENV_LIMIT or measured > ENV_LIMIT:
            largest = max(variables, key=lambda k: len(str(variables[k])))
            yield Violation(
                "lambda-environment-size", f.name,
                f"environment is {measured} bytes as Lambda measures it (JSON; {raw} bytes of keys and values); the limit is "
                f"{ENV_LIMIT} bytes in aggregate (largest: {largest}, {len(str(variables[largest]))} bytes)",
            )


def lambda_environment_keys(resources: Sequence[Res], regions: Sequence[str] | None) -> Iterable[Violation]:
    for f in resources:
        variables = (f.inputs.get("environment") or {}).get("variables") if f.type == FUNCTION else None
        if not isinstance(variables, Mapping):
            continue
        for key in variables:
            if key in RESERVED_ENV_KEYS:
                yield Violation("lambda-environment-keys", f.name, f"{key} is reserved by the Lambda runtime and cannot be set")
            elif not ENV_KEY.fullmatch(key):
                yield Violation("lambda-environment-keys", f.name, f"{key!r} must start with a letter and hold at least 2 letters, digits or underscores")


def lambda_settings(resources: Sequence[Res], regions: Sequence[str] | None) -> Iterable[Violation]:
    """Timeout 1-900 s (15 minutes), memory 128-10,240 MB (botocore's model allows more: its ranges include
    Lambda Managed Instances, which this program does not use)."""
    for f in resources:
        if f.type != FUNCTION:
            continue
        timeout, memory = _number(f.inputs.get("timeout")), _number(f.inputs.get("memorySize"))
        if timeout is not None and not 1 <= timeout <= 900:
            yield Violation("lambda-settings", f.name, f"timeout {_fmt(timeout)} s; a function runs 1 to 900 s")
        if memory is not None and not 128 <= memory <= 10_240:
            yield Violation("lambda-settings", f.name, f"memorySize {_fmt(memory)} MB; a function has 128 to 10,240 MB")


def stream_mappings(resources: Sequence[Res], regions: Sequence[str] | None) -> Iterable[Violation]:
    """DynamoDB/Kinesis stream sources: batchSize 1-10,000, maximumRetryAttempts -1 to 10,000,
    maximumRecordAgeInSeconds -1 or 60-604,800, parallelizationFactor 1-10."""
    ranges = {"batchSize": (1, 10_000), "maximumRetryAttempts": (-1, 10_000), "parallelizationFactor": (1, 10),
              "maximumBatchingWindowInSeconds": (0, 300)}
    for m in resources:
        source_arn = str(m.inputs.get("eventSourceArn", "")) if m.type == EVENT_SOURCE_MAPPING else ""
        if ":dynamodb:" not in source_arn and ":kinesis:" not in source_arn:
            continue
        for key, (lo, hi) in ranges.items():
            value = _number(m.inputs.get(key))
            if value is not None and not lo <= value <= hi:
                yield Violation("stream-event-source", m.name, f"{key} {_fmt(value)} outside {lo}..{hi}")
        age = _number(m.inputs.get("maximumRecordAgeInSeconds"))
        if age is not None and age != -1 and not 60 <= age <= 604_800:
            yield Violation("stream-event-source", m.name, f"maximumRecordAgeInSeconds {_fmt(age)}: -1 or 60..604800")


# -- routing: Global Accelerator and Route 53 --------------------------------------------------------------
def accelerator_endpoint_groups(resources: Sequence[Res], regions: Sequence[str] | None) -> Iterable[Violation]:
    rule = "accelerator-endpoint-group"
    for g in resources:
        if g.type != ENDPOINT_GROUP:
            continue
        dial = _number(g.inputs.get("trafficDialPercentage"))
        if dial is not None and not 0 <= dial <= 100:
            yield Violation(rule, g.name, f"trafficDialPercentage {_fmt(dial)}; 0 to 100")
        interval = _number(g.inputs.get("healthCheckIntervalSeconds"))
        if interval is not None and interval not in (10, 30):
            yield Violation(rule, g.name, f"healthCheckIntervalSeconds {_fmt(interval)}; 10 or 30")
        threshold = _number(g.inputs.get("thresholdCount"))
        if threshold is not None and not 1 <= threshold <= 10:
            yield Violation(rule, g.name, f"thresholdCount {_fmt(threshold)}; 1 to 10")
        port = _number(g.inputs.get("healthCheckPort"))
        if port is not None and not 1 <= port <= 65_535:
            yield Violation(rule, g.name, f"healthCheckPort {_fmt(port)}; 1 to 65535")
        path = g.inputs.get("healthCheckPath")
        if isinstance(path, str) and _known(path) and (len(path) > 255 or not re.fullmatch(r"/[-a-zA-Z0-9@:%_\\+.~#?&/=]*", path)):
            yield Violation(rule, g.name, f"healthCheckPath {path!r} must start with / and use URL path characters (at most 255)")
        for endpoint in g.inputs.get("endpointConfigurations") or []:
            weight = _number(endpoint.get("weight")) if isinstance(endpoint, Mapping) else None
            if weight is not None and not 0 <= weight <= 255:
                yield Violation(rule, g.name, f"endpoint weight {_fmt(weight)}; 0 to 255")


#: HealthCheckConfig.Regions: the regions Route 53 runs checkers in.
HEALTH_CHECKER_REGIONS = frozenset({"us-east-1", "us-west-1", "us-west-2", "eu-west-1", "ap-southeast-1", "ap-southeast-2",
                                    "ap-northeast-1", "sa-east-1"})


def route53_health_checks(resources: Sequence[Res], regions: Sequence[str] | None) -> Iterable[Violation]:
    rule = "route53-health-check"
    for c in resources:
        if c.type != HEALTH_CHECK:
            continue
        checker_regions = c.inputs.get("regions")
        if isinstance(checker_regions, list) and checker_regions and _known(checker_regions):
            if len(checker_regions) < 3:
                yield Violation(rule, c.name, f"{len(checker_regions)} checker region(s); Route 53 needs at least 3 when regions are given")
            unknown = [r for r in checker_regions if r not in HEALTH_CHECKER_REGIONS]
            if unknown:
                yield Violation(rule, c.name, f"no Route 53 health checkers in {', '.join(map(str, unknown))}")
        # SNI defaults to true for HTTPS checks; only an explicit false turns it off (and an ALB's TLS
        # handshake then fails, so every check fails and Route 53 fails open).
        if c.inputs.get("type") in ("HTTPS", "HTTPS_STR_MATCH") and c.inputs.get("enableSni") is False:
            yield Violation(rule, c.name, f"{c.inputs['type']} check with enableSni false; an ALB needs SNI to complete the TLS handshake")
        interval = _number(c.inputs.get("requestInterval"))
        if interval is not None and interval not in (10, 30):
            yield Violation(rule, c.name, f"requestInterval {_fmt(interval)}; 10 or 30 (cannot change after creation)")
        threshold = _number(c.inputs.get("failureThreshold"))
        if threshold is not None and not 1 <= threshold <= 10:
            yield Violation(rule, c.name, f"failureThreshold {_fmt(threshold)}; 1 to 10")
        path = c.inputs.get("resourcePath")
        if isinstance(path, str) and len(path) > 255:
            yield Violation(rule, c.name, f"resourcePath is {len(path)} characters; at most 255")


# -- ECS, load balancing, logs, secrets, schedules ---------------------------------------------------------
#: Fargate task sizes: cpu units -> valid memory (MiB).
FARGATE_MEMORY: dict[int, frozenset[int]] = {
    256: frozenset({512, 1024, 2048}),
    512: frozenset(range(1024, 4097, 1024)),
    1024: frozenset(range(2048, 8193, 1024)),
    2048: frozenset(range(4096, 16385, 1024)),
    4096: frozenset(range(8192, 30721, 1024)),
    8192: frozenset(range(16384, 61441, 4096)),
    16384: frozenset(range(32768, 122881, 8192)),
}


def _task_units(value: Any, unit: str, per: int) -> int | None:
    """cpu ("512", "0.5 vCPU") or memory ("1024", "1GB", "1 GB") as integer units, else None."""
    number = _number(value)
    if number is not None:
        return int(number)
    if isinstance(value, str) and _known(value):
        m = re.fullmatch(rf"\s*([\d.]+)\s*{unit}\s*", value, re.IGNORECASE)
        if m:
            return int(float(m.group(1)) * per)
    return None


def fargate_task_size(resources: Sequence[Res], regions: Sequence[str] | None) -> Iterable[Violation]:
    for t in resources:
        if t.type != TASK_DEFINITION or "FARGATE" not in (t.inputs.get("requiresCompatibilities") or []):
            continue
        cpu = _task_units(t.inputs.get("cpu"), "vcpu", 1024)
        memory = _task_units(t.inputs.get("memory"), "gb", 1024)
        if t.inputs.get("cpu") is None or t.inputs.get("memory") is None:
            yield Violation("fargate-task-size", t.name, "a Fargate task definition needs task-level cpu and memory")
            continue
        if cpu is None or memory is None:
            continue
        if cpu not in FARGATE_MEMORY:
            yield Violation("fargate-task-size", t.name, f"cpu {cpu}; Fargate takes {', '.join(map(str, FARGATE_MEMORY))}")
        elif memory not in FARGATE_MEMORY[cpu]:
            valid = sorted(FARGATE_MEMORY[cpu])
            steps = ", ".join(map(str, valid)) if len(valid) <= 4 else f"{valid[0]} to {valid[-1]} in steps of {valid[1] - valid[0]}"
            yield Violation("fargate-task-size", t.name, f"memory {memory} MiB with cpu {cpu}; Fargate takes {steps}")
        family = str((t.inputs.get("runtimePlatform") or {}).get("operatingSystemFamily", "LINUX"))
        if family.startswith("WINDOWS") and cpu in FARGATE_MEMORY and not 1024 <= cpu <= 4096:
            yield Violation("fargate-task-size", t.name, f"cpu {cpu} on {family}; Windows on Fargate takes 1024 to 4096")


def target_group_health(resources: Sequence[Res], regions: Sequence[str] | None) -> Iterable[Violation]:
    rule = "target-group-health-check"
    for g in resources:
        if g.type != TARGET_GROUP:
            continue
        hc = g.inputs.get("healthCheck") or {}
        ranges = {"interval": (5, 300), "timeout": (2, 120), "healthyThreshold": (2, 10), "unhealthyThreshold": (2, 10)}
        for key, (lo, hi) in ranges.items():
            value = _number(hc.get(key))
            if value is not None and not lo <= value <= hi:
                yield Violation(rule, g.name, f"healthCheck.{key} {_fmt(value)} outside {lo}..{hi}")
        interval, timeout = _number(hc.get("interval")), _number(hc.get("timeout"))
        if interval is not None and timeout is not None and timeout >= interval:
            yield Violation(rule, g.name, f"healthCheck.timeout {_fmt(timeout)} s must be less than the interval {_fmt(interval)} s")
        delay = _number(g.inputs.get("deregistrationDelay"))
        if delay is not None and not 0 <= delay <= 3600:
            yield Violation(rule, g.name, f"deregistrationDelay {_fmt(delay)} outside 0..3600 s")


def alb_idle_timeout(resources: Sequence[Res], regions: Sequence[str] | None) -> Iterable[Violation]:
    for lb in resources:
        idle = _number(lb.inputs.get("idleTimeout")) if lb.type == ALB else None
        if idle is not None and not 1 <= idle <= 4000:
            yield Violation("alb-idle-timeout", lb.name, f"idleTimeout {_fmt(idle)} s outside 1..4000")


#: PutRetentionPolicy's retentionInDays; 0 is the provider's "never expire" (no policy is put).
RETENTION_DAYS = frozenset({0, 1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653})


def log_retention(resources: Sequence[Res], regions: Sequence[str] | None) -> Iterable[Violation]:
    for g in resources:
        days = _number(g.inputs.get("retentionInDays")) if g.type == LOG_GROUP else None
        if days is not None and days not in RETENTION_DAYS:
            yield Violation("log-retention", g.name, f"retentionInDays {_fmt(days)} is not one of {', '.join(map(str, sorted(RETENTION_DAYS - {0})))}")


def secret_recovery_window(resources: Sequence[Res], regions: Sequence[str] | None) -> Iterable[Violation]:
    for s in resources:
        days = _number(s.inputs.get("recoveryWindowInDays")) if s.type == SECRET else None
        # 0 is the provider's "delete without recovery" (ForceDeleteWithoutRecovery); AWS takes 7 to 30.
        if days is not None and days != 0 and not 7 <= days <= 30:
            yield Violation("secret-recovery-window", s.name, f"recoveryWindowInDays {_fmt(days)}; 7 to 30")


RATE = re.compile(r"rate\((\d+) (minute|minutes|hour|hours|day|days)\)")


def schedule_expressions(resources: Sequence[Res], regions: Sequence[str] | None) -> Iterable[Violation]:
    for r in resources:
        expr = r.inputs.get("scheduleExpression") if r.type == EVENT_RULE else None
        if not isinstance(expr, str) or not expr.startswith("rate(") or not _known(expr):
            continue
        m = RATE.fullmatch(expr)
        if not m:
            yield Violation("schedule-expression", r.name, f"{expr!r} is not rate(<positive integer> <unit>)")
        elif int(m.group(1)) == 0:
            yield Violation("schedule-expression", r.name, f"{expr!r}: the value must be positive")
        elif (int(m.group(1)) == 1) != (not m.group(2).endswith("s")):
            yield Violation("schedule-expression", r.name, f"{expr!r}: the unit is singular for 1 and plural otherwise")


def ecs_deployments(resources: Sequence[Res], regions: Sequence[str] | None) -> Iterable[Violation]:
    """ECS DeploymentConfiguration, CanaryConfiguration, LinearConfiguration and AdvancedConfiguration: bake
    times 0-1440 min, canary 0.1-100 %, linear steps 3-100 %; traffic-shifting strategies need, on every
    load balancer, an alternate target group, a production listener rule and a role."""
    rule = "ecs-deployment"
    for svc in resources:
        if svc.type != SERVICE:
            continue
        config = svc.inputs.get("deploymentConfiguration") or {}
        strategy = config.get("strategy") or "ROLLING"
        if _known(strategy) and strategy not in ("ROLLING", "BLUE_GREEN", "CANARY", "LINEAR"):
            yield Violation(rule, svc.name, f"strategy {strategy!r}; ECS takes ROLLING, BLUE_GREEN, CANARY or LINEAR")
        canary, linear = config.get("canaryConfiguration") or {}, config.get("linearConfiguration") or {}
        for where, value in (("bakeTimeInMinutes", config.get("bakeTimeInMinutes")),
                             ("canaryConfiguration.canaryBakeTimeInMinutes", canary.get("canaryBakeTimeInMinutes")),
                             ("linearConfiguration.stepBakeTimeInMinutes", linear.get("stepBakeTimeInMinutes"))):
            minutes = _number(value)
            if minutes is not None and not 0 <= minutes <= 1440:
                yield Violation(rule, svc.name, f"{where} {_fmt(minutes)} outside 0..1440 minutes")
        percent = _number(canary.get("canaryPercent"))
        if percent is not None and not (0.1 <= percent <= 100 and abs(percent * 10 - round(percent * 10)) < 1e-9):
            yield Violation(rule, svc.name, f"canaryPercent {_fmt(percent)}; a multiple of 0.1 from 0.1 to 100")
        step = _number(linear.get("stepPercent"))
        if step is not None and not 3 <= step <= 100:
            yield Violation(rule, svc.name, f"stepPercent {_fmt(step)} outside 3..100")
        if strategy in ("BLUE_GREEN", "CANARY", "LINEAR"):
            for lb in svc.inputs.get("loadBalancers") or []:
                advanced = (lb.get("advancedConfiguration") or {}) if isinstance(lb, Mapping) else {}
                lacking = [k for k in ("alternateTargetGroupArn", "productionListenerRule", "roleArn") if not advanced.get(k)]
                if lacking:
                    yield Violation(rule, svc.name, f"{strategy} needs advancedConfiguration {', '.join(lacking)} on its load balancer")


AWS_LIMIT_RULES: tuple[Rule, ...] = (
    _limit("alarm-metric-math", "Metric-math alarms: at most 10 metrics and 10 expressions, query ids starting with a lowercase "
           "letter, exactly one returnData.", METRIC_DATA_QUERY, metric_math_alarms),
    _limit("alarm-evaluation", "Alarm periods 10/20/30/60n s, evaluation at most one day, M <= N, at most 5 actions.",
           PUT_METRIC_ALARM, alarm_evaluation),
    *(_limit(s.rule, f"{s.type.rsplit(':', 1)[-1]} {s.field}: {s.min_len}-{s.max_len} characters, {s.allowed}"
             + (f" (auto-named: logical name + 8 characters, at most {min(s.auto_max, s.max_len)})." if s.auto_max else "."),
             s.source, _name_rule(s)) for s in NAME_SPECS),
    _limit("lambda-environment-size", "Lambda environment variables: 4 KB per function, in aggregate.", LAMBDA_QUOTAS,
           lambda_environment_size),
    _limit("lambda-environment-keys", "Lambda environment keys are letters, digits and underscores, and not reserved.",
           LAMBDA_ENV_VARS, lambda_environment_keys),
    _limit("lambda-settings", "Lambda timeout 1-900 s, memory 128-10,240 MB.", LAMBDA_QUOTAS, lambda_settings),
    _limit("stream-event-source", "Stream event source mappings: batch size, retries and record age in range.", CREATE_ESM,
           stream_mappings),
    _limit("accelerator-endpoint-group", "Global Accelerator endpoint groups: dial 0-100, weight 0-255, health check "
           "interval 10 or 30 s, threshold 1-10.", GA_ENDPOINT_GROUP, accelerator_endpoint_groups),
    _limit("route53-health-check", "Route 53 health checks: 3+ checker regions, SNI on HTTPS, interval 10 or 30 s, "
           "threshold 1-10.", HEALTH_CHECK_CONFIG, route53_health_checks),
    _limit("fargate-task-size", "Fargate task cpu and memory form a supported combination.", FARGATE_SIZES, fargate_task_size),
    _limit("target-group-health-check", "Target group health checks: interval 5-300, timeout 2-120 and below the interval, "
           "thresholds 2-10, deregistration delay 0-3600.", CREATE_TARGET_GROUP, target_group_health),
    _limit("alb-idle-timeout", "ALB idle timeout 1-4000 s.", LB_ATTRIBUTES, alb_idle_timeout),
    _limit("log-retention", "Log retention is one of the values CloudWatch Logs accepts.", PUT_RETENTION, log_retention),
    _limit("secret-recovery-window", "Secret recovery window 7-30 days.", DELETE_SECRET, secret_recovery_window),
    _limit("schedule-expression", "rate() schedules: a positive integer, singular unit for 1, plural otherwise.",
           SCHEDULE_EXPRESSIONS, schedule_expressions),
    _limit("ecs-deployment", "ECS deployments: bake times 0-1440 min, canary 0.1-100 %, linear steps 3-100 %; "
           "traffic-shifting strategies have an alternate target group, a production listener rule and a role.",
           ECS_DEPLOYMENT, ecs_deployments),
)


RULES: tuple[Rule, ...] = (
    Rule("zone-table-replicas-in-zone", "Every zone table's replicas lie inside its residency zone.", replicas_inside_zone),
    Rule("latency-record-health-check", "Every latency record has a health check.", latency_records_health_checked),
    Rule("region-complete", "Every region has an ALB, a Fargate service, a latency record and an endpoint group.", every_region_complete),
    Rule("tables-protected", "Tables have PITR, deletion protection and encryption at rest.", tables_protected),
    Rule("no-public-task-ip", "No Fargate task gets a public IP.", no_public_task_ip),
    Rule("task-role-zone-scope", "No IAM statement reaches a table outside its region or zone.", task_role_zone_scope),
    Rule("explicit-provider", "Every AWS resource has an explicit per-region provider.", explicit_providers),
    *AWS_LIMIT_RULES,
)


def check(resources: Sequence[Res], regions: Sequence[str] | None = None) -> list[Violation]:
    """Run every rule; ``regions`` (the stack's meridian:regions) makes region-completeness exact."""
    return [v for rule in RULES for v in rule.check(resources, regions)]
