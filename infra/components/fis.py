"""Fault injection for the game day on AWS: per region, an IAM role for AWS Fault Injection Service and two
experiment templates, the multi-region faults FIS offers.

- ``pause_replication``: ``aws:dynamodb:global-table-pause-replication`` on this region's replicas of the
  stack's eventually consistent (MREC) global tables. FIS adds a deny statement for DynamoDB's replication
  role to each replica's resource policy, so nothing replicates to or from this region until the experiment
  ends. A template lives in the region of the replicas it pauses: FIS resolves targets in its own region,
  so each region has its own. MRSC tables are left out on purpose: pausing one of their replicas makes that
  region refuse strong operations, a different fault than the lag this template rehearses.
- ``disrupt_connectivity``: ``aws:network:route-table-disrupt-cross-region-connectivity`` on this region's
  private subnets (where the tasks run) toward one peer region: FIS swaps each subnet's route table for a
  copy of its own (tagged ``managedByFIS``) that drops traffic to the peer's address ranges, and puts the
  originals back at the end. Region-to-region calls fail; DynamoDB's own replication does not use the VPC.

Both stop when the region's evacuation composite alarm or its ALB 5xx-rate alarm fires (stop conditions
must be alarms of the experiment's region). Each template's action runs at most :data:`MAX_DURATION`; the
game day stops the experiment once it has seen what it asked for (``meridian gameday --target aws``).

The role may do only what these two actions need, on this stack's replicas, subnets and VPC in this region
(the route-table statements of AWS's ``AWSFaultInjectionSimulatorNetworkAccess`` policy, narrowed to them).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_aws as aws

from infra import layout
from meridian.topology import Topology

PAUSE_REPLICATION = "aws:dynamodb:global-table-pause-replication"
DISRUPT_CROSS_REGION = "aws:network:route-table-disrupt-cross-region-connectivity"
GLOBAL_TABLE_TARGET = "aws:dynamodb:global-table"
SUBNET_TARGET = "aws:ec2:subnet"
ALARM_SOURCE = "aws:cloudwatch:alarm"
FIS_PRINCIPAL = "fis.amazonaws.com"
#: The longest a fault may last (ISO 8601, as FIS takes it; 1 minute to 12 hours): a ceiling, since the
#: game day stops the experiment when its phase ends, and an abandoned run heals itself after this.
MAX_DURATION = "PT10M"
#: FIS quota "Target tables for aws:dynamodb:global-table-pause-replication action" (L-9FC608C5): tables
#: are split over several actions of one template so that none targets more than this.
TABLES_PER_ACTION = 5
#: FIS quota "Target Subnets for aws:network:route-table-disrupt-cross-region-connectivity" (L-100E963F).
MAX_SUBNETS = 6
#: The region's alarms that stop an experiment (names from infra/components/alarms.py, after the prefix).
STOP_ALARMS = ("evacuate", "alb-5xx-rate")
#: The tag FIS puts on what it creates; the role may change only resources carrying it.
FIS_TAG = "managedByFIS"

DYNAMODB_ACTIONS = ("dynamodb:DescribeTable", "dynamodb:GetResourcePolicy", "dynamodb:PutResourcePolicy",
                    "dynamodb:DeleteResourcePolicy")
DESCRIBE_ACTIONS = ("ec2:DescribeManagedPrefixLists", "ec2:DescribeNetworkInterfaces", "ec2:DescribeRouteTables",
                    "ec2:DescribeSubnets", "ec2:DescribeTransitGatewayAttachments", "ec2:DescribeTransitGatewayPeeringAttachments",
                    "ec2:DescribeTransitGateways", "ec2:DescribeVpcEndpoints", "ec2:DescribeVpcPeeringConnections",
                    "ec2:DescribeVpcs", "tag:GetResources")
SWAP_ACTIONS = ("ec2:AssociateRouteTable", "ec2:DisassociateRouteTable", "ec2:ReplaceRouteTableAssociation")
FIS_MANAGED_ACTIONS = ("ec2:CreateRoute", "ec2:DeleteManagedPrefixList", "ec2:DeleteNetworkInterface", "ec2:DeleteRouteTable",
                       "ec2:GetManagedPrefixListEntries", "ec2:ModifyManagedPrefixList")


def fault_peer(topology: Topology, region: str) -> str:
    """The region ``region`` is cut off from: its partner in the smallest residency zone it shares with
    another region (the alphabetically first, never from list order), so the cut splits a zone."""
    zones = sorted((z for z in topology.zones_of(region) if len(z.regions) >= 2), key=lambda z: (len(z.regions), z.name))
    if not zones:
        raise ValueError(f"{region} shares no residency zone with another region: nothing to disconnect it from")
    return sorted(r for r in zones[0].regions if r != region)[0]


def replicated_tables(topology: Topology, region: str) -> list[tuple[str, str]]:
    """(zone, table) of every eventually consistent (MREC) global table with a replica in ``region``."""
    return sorted((z.name, spec.name) for spec in topology.tables for z in topology.table_zones(spec)
                  if region in z.regions and len(z.regions) >= 2 and topology.mechanism(spec, z) != "mrsc")


def stop_alarm_arns(arns: Sequence[str], *, prefix: str, region: str) -> list[str]:
    """The ARNs of the region's stop-condition alarms among ``arns``; a missing one is a program error."""
    wanted = {f"{prefix}-{region}-{suffix}" for suffix in STOP_ALARMS}
    found = sorted(a for a in arns if a.rsplit(":alarm:", 1)[-1] in wanted)
    if len(found) != len(wanted) or any(f":cloudwatch:{region}:" not in a for a in found):
        raise ValueError(f"{region}: stop-condition alarms {sorted(wanted)} not all among the region's alarms {list(arns)}")
    return found


def _arn(partition: str, region: str, account: str, resource: str) -> str:
    return f"arn:{partition}:ec2:{region}:{account}:{resource}"


def role_policy(*, partition: str, region: str, account: str, table_arns: Sequence[str], subnet_ids: Sequence[str],
                vpc_id: str) -> dict[str, Any]:
    """What the two actions need, on this region's replicas, subnets and VPC only.

    Describe calls and ``tag:GetResources`` support no resource-level permission (hence ``*``); everything
    FIS creates must carry its ``managedByFIS`` tag at creation, and only resources carrying it may be
    changed or deleted; route tables may be swapped only on the target subnets."""
    if not table_arns or any(f":dynamodb:{region}:{account}:table/" not in a or "*" in a for a in table_arns):
        raise ValueError(f"{region}: every table ARN must name one table of this region: {list(table_arns)}")
    subnets = [_arn(partition, region, account, f"subnet/{s}") for s in subnet_ids]
    def own(kind: str) -> str:
        return _arn(partition, region, account, f"{kind}/*")
    created = [own("route-table"), own("network-interface"), own("prefix-list")]
    tag = {f"aws:RequestTag/{FIS_TAG}": "true"}
    return layout.policy(
        layout.allow("PauseReplicationOfThisRegionsReplicas", DYNAMODB_ACTIONS, list(table_arns)),
        layout.allow("ResolveTargets", DESCRIBE_ACTIONS, ["*"]),
        {**layout.allow("CreateFisRouteTablesInThisVpc", ("ec2:CreateRouteTable",),
                        [_arn(partition, region, account, f"vpc/{vpc_id}"), own("route-table")]),
         "Condition": {"StringEquals": tag}},
        {**layout.allow("CreateFisPrefixListsAndInterfaces", ("ec2:CreateManagedPrefixList", "ec2:CreateNetworkInterface"),
                        [own("prefix-list"), own("network-interface")]), "Condition": {"StringEquals": tag}},
        layout.allow("InterfacesInTheTargetSubnets", ("ec2:CreateNetworkInterface",), subnets),
        {**layout.allow("TagWhatFisCreates", ("ec2:CreateTags",), created),
         "Condition": {"StringEquals": {**tag, "ec2:CreateAction": ["CreateRouteTable", "CreateNetworkInterface",
                                                                    "CreateManagedPrefixList"]}}},
        {**layout.allow("ChangeOnlyWhatFisCreated", FIS_MANAGED_ACTIONS, created),
         "Condition": {"StringEquals": {f"ec2:ResourceTag/{FIS_TAG}": "true"}}},
        layout.allow("SwapRouteTablesOfTheTargetSubnets", SWAP_ACTIONS, [*subnets, own("route-table")]),
        # The VPC's gateway endpoints (DynamoDB, S3) are added to FIS's route tables: tasks keep their tables.
        layout.allow("KeepGatewayEndpointsOnFisRouteTables", ("ec2:ModifyVpcEndpoint",), [own("vpc-endpoint"), own("route-table")]),
    )


def trust_policy(*, partition: str, region: str, account: str) -> dict[str, Any]:
    """FIS may assume the role only for experiments of this account in this region (confused deputy)."""
    doc = layout.assume_role(FIS_PRINCIPAL)
    doc["Statement"][0]["Condition"] = {
        "StringEquals": {"aws:SourceAccount": account},
        "ArnLike": {"aws:SourceArn": f"arn:{partition}:fis:{region}:{account}:experiment/*"},
    }
    return doc


@dataclass(frozen=True, kw_only=True)
class FaultInjectionArgs:
    topology: Topology
    region: str
    #: physical table name -> the ARN of its replica in ``region`` (MREC tables only)
    replica_arns: Mapping[str, pulumi.Input[str]]
    #: the subnets the disruption targets (the region's private subnets, where the tasks run)
    subnet_ids: Sequence[pulumi.Input[str]]
    vpc_id: pulumi.Input[str]
    #: every alarm ARN of the region the program exports; the stop conditions are picked from these
    alarm_arns: Sequence[pulumi.Input[str]]

    def __post_init__(self) -> None:
        if self.region not in self.topology.regions:
            raise ValueError(f"region {self.region} is not one of the stack's regions {self.topology.regions}")
        if not self.replica_arns:
            raise ValueError(f"{self.region}: no replicated table to pause")
        if not 1 <= len(self.subnet_ids) <= MAX_SUBNETS:
            raise ValueError(f"{self.region}: {len(self.subnet_ids)} subnets; FIS disrupts 1 to {MAX_SUBNETS} per experiment")
        fault_peer(self.topology, self.region)


class FaultInjection(pulumi.ComponentResource):
    role: aws.iam.Role
    pause_replication: aws.fis.ExperimentTemplate
    disrupt_connectivity: aws.fis.ExperimentTemplate
    peer: str

    def __init__(self, name: str, args: FaultInjectionArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("meridian:fis:FaultInjection", name, None, opts)
        topology, region = args.topology, args.region
        prefix = layout.resource_prefix(topology)
        self.peer = fault_peer(topology, region)
        child = pulumi.ResourceOptions(parent=self)
        invoke = pulumi.InvokeOutputOptions(parent=self)
        account = aws.get_caller_identity_output(opts=invoke).account_id
        partition = aws.get_partition_output(opts=invoke).partition
        tables = sorted(args.replica_arns)
        self.role = aws.iam.Role(
            f"{name}-role",
            description=f"AWS FIS experiments of {prefix} in {region}: pause its replicas' replication, cut it off from {self.peer}",
            assume_role_policy=pulumi.Output.all(partition, account).apply(
                lambda pa: json.dumps(trust_policy(partition=pa[0], region=region, account=pa[1]))),
            tags={"meridian:region": region},
            opts=child,
        )
        policy = aws.iam.RolePolicy(
            f"{name}-role",
            role=self.role.id,
            policy=pulumi.Output.all(partition, account, args.vpc_id, list(args.subnet_ids), *(args.replica_arns[t] for t in tables)).apply(
                lambda v: json.dumps(role_policy(partition=v[0], region=region, account=v[1], vpc_id=v[2], subnet_ids=v[3],
                                                 table_arns=v[4:]))),
            opts=child,
        )
        stops = pulumi.Output.all(*args.alarm_arns).apply(
            lambda arns: [aws.fis.ExperimentTemplateStopConditionArgs(source=ALARM_SOURCE, value=a)
                          for a in stop_alarm_arns(arns, prefix=prefix, region=region)])
        options = aws.fis.ExperimentTemplateExperimentOptionsArgs(account_targeting="single-account", empty_target_resolution_mode="fail")
        # Experiments are created after the role can act (its inline policy), or the first start is refused.
        after_policy = pulumi.ResourceOptions(parent=self, depends_on=[policy])
        groups = [tables[i:i + TABLES_PER_ACTION] for i in range(0, len(tables), TABLES_PER_ACTION)]
        self.pause_replication = aws.fis.ExperimentTemplate(
            f"{name}-pause-replication",
            description=f"{prefix}: pause global-table replication of {region}'s replicas (at most {MAX_DURATION})",
            role_arn=self.role.arn,
            stop_conditions=stops,
            targets=[aws.fis.ExperimentTemplateTargetArgs(name=f"Tables{i}", resource_type=GLOBAL_TABLE_TARGET, selection_mode="ALL",
                                                          resource_arns=[args.replica_arns[t] for t in group])
                     for i, group in enumerate(groups)],
            actions=[aws.fis.ExperimentTemplateActionArgs(
                name=f"pause{i}", action_id=PAUSE_REPLICATION,
                parameters=[aws.fis.ExperimentTemplateActionParameterArgs(key="duration", value=MAX_DURATION)],
                target=aws.fis.ExperimentTemplateActionTargetArgs(key="Tables", value=f"Tables{i}"))
                for i in range(len(groups))],
            experiment_options=options,
            tags=_tags(prefix, region, "pause-replication"),
            opts=after_policy,
        )
        subnet_arns = [pulumi.Output.all(partition, account, s).apply(lambda v: _arn(v[0], region, v[1], f"subnet/{v[2]}"))
                       for s in args.subnet_ids]
        self.disrupt_connectivity = aws.fis.ExperimentTemplate(
            f"{name}-disrupt-connectivity",
            description=f"{prefix}: cut {region}'s private subnets off from {self.peer} (at most {MAX_DURATION})",
            role_arn=self.role.arn,
            stop_conditions=stops,
            targets=[aws.fis.ExperimentTemplateTargetArgs(name="Subnets", resource_type=SUBNET_TARGET, selection_mode="ALL",
                                                          resource_arns=subnet_arns)],
            actions=[aws.fis.ExperimentTemplateActionArgs(
                name="disrupt", action_id=DISRUPT_CROSS_REGION,
                parameters=[aws.fis.ExperimentTemplateActionParameterArgs(key="region", value=self.peer),
                            aws.fis.ExperimentTemplateActionParameterArgs(key="duration", value=MAX_DURATION)],
                target=aws.fis.ExperimentTemplateActionTargetArgs(key="Subnets", value="Subnets"))],
            experiment_options=options,
            tags=_tags(prefix, region, "disrupt-connectivity", peer=self.peer),
            opts=after_policy,
        )
        self.register_outputs({"pause_replication": self.pause_replication.id, "disrupt_connectivity": self.disrupt_connectivity.id})

    @property
    def template_ids(self) -> dict[str, pulumi.Input[str]]:
        """What the game day reads from the stack's ``fisTemplates`` output for this region."""
        return {"pause_replication": self.pause_replication.id, "disrupt_connectivity": self.disrupt_connectivity.id,
                "disrupt_peer": self.peer}


def _tags(prefix: str, region: str, fault: str, **extra: str) -> dict[str, str]:
    return {"Name": f"{prefix}-{region}-{fault}", "meridian:stack": prefix, "meridian:region": region, "meridian:fault": fault,
            **{f"meridian:{k}": v for k, v in extra.items()}}


def replica_arn(table: aws.dynamodb.Table, *, home: str, region: str) -> pulumi.Output[str]:
    """The ARN of ``table``'s replica in ``region`` (the table itself in its home region)."""
    if home == region:
        return table.arn
    return table.replicas.apply(lambda replicas: next((r.arn for r in replicas or [] if r.region_name == region), None) or "")


def fault_injection(topology: Topology, *, providers: Mapping[str, aws.Provider], regions: Mapping[str, Any],
                    tables: Any, enabled: bool) -> dict[str, dict[str, pulumi.Input[str]]]:
    """One :class:`FaultInjection` per region (on that region's provider); region -> its template ids.

    ``regions``: the Region components (their network and alarms); ``tables``: the GlobalTables component."""
    if not enabled:
        pulumi.log.warn("fault injection templates left out: this stack's providers point at an emulator (aws:endpoints), "
                        "which offers no AWS FIS")
        return {}
    out: dict[str, dict[str, pulumi.Input[str]]] = {}
    for region, component in regions.items():
        replicas = {topology.table_name(table, zone): replica_arn(tables.tables[(zone, table)], home=topology.home_region(topology.zone(zone)),
                                                                  region=region)
                    for zone, table in replicated_tables(topology, region)}
        fis = FaultInjection(
            f"{region}-fis",
            FaultInjectionArgs(topology=topology, region=region, replica_arns=replicas, subnet_ids=component.network.private_subnet_ids,
                               vpc_id=component.network.vpc.id, alarm_arns=component.key_alarm_arns),
            opts=pulumi.ResourceOptions(providers={"aws": providers[region]}),
        )
        out[region] = fis.template_ids
    return out
