"""Meridian's policy rules, written once as pure functions over resources (type token, name, provider
region, inputs in Pulumi's camelCase wire names).

They run two ways: ``meridian plan`` calls :func:`check` on the mock-rendered resources, and the
CrossGuard pack in ``policy/__main__.py`` (``pulumi preview --policy-pack policy/``) adapts Pulumi's
policy arguments to the same :class:`Res` and calls the same rules. Unknown values (computed during a
real preview) are skipped, never guessed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
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


def _known(value: Any) -> bool:
    return value is not None and not (isinstance(value, str) and value.startswith("04da6b54-"))  # Pulumi's unknown


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
    for r in resources:
        if r.region is None and not r.type.startswith("pulumi:") and not r.type.startswith("meridian:"):
            yield Violation("explicit-provider", r.name, f"{r.type} has no explicit provider and would land in the default region")


RULES: tuple[Rule, ...] = (
    Rule("zone-table-replicas-in-zone", "Every zone table's replicas lie inside its residency zone.", replicas_inside_zone),
    Rule("latency-record-health-check", "Every latency record has a health check.", latency_records_health_checked),
    Rule("region-complete", "Every region has an ALB, a Fargate service, a latency record and an endpoint group.", every_region_complete),
    Rule("tables-protected", "Tables have PITR, deletion protection and encryption at rest.", tables_protected),
    Rule("no-public-task-ip", "No Fargate task gets a public IP.", no_public_task_ip),
    Rule("task-role-zone-scope", "No IAM statement reaches a table outside its region or zone.", task_role_zone_scope),
    Rule("explicit-provider", "Every AWS resource has an explicit per-region provider.", explicit_providers),
)


def check(resources: Sequence[Res], regions: Sequence[str] | None = None) -> list[Violation]:
    """Run every rule; ``regions`` (the stack's meridian:regions) makes region-completeness exact."""
    return [v for rule in RULES for v in rule.check(resources, regions)]
