"""Pure layout decisions of the blueprint: names, tags, address plans, IAM documents.

Nothing here imports Pulumi, so each rule is tested on its own (and reused by the policy pack).
"""

from __future__ import annotations

import ipaddress
import zlib
from collections.abc import Iterable, Sequence
from typing import Any

from meridian.topology import Topology

#: Route 53's control plane answers in us-east-1 and Global Accelerator's in us-west-2, whatever
#: regions a stack serves: their resources use providers pinned there.
DNS_REGION = "us-east-1"
ACCELERATOR_REGION = "us-west-2"

#: Route 53 health checkers probe from at least three regions; these are spread over three continents.
HEALTH_CHECKER_REGIONS = ("us-east-1", "eu-west-1", "ap-southeast-1")

#: The DynamoDB actions the service issues (see meridian.store); the task role allows these and no more.
SERVICE_TABLE_ACTIONS = (
    "dynamodb:ConditionCheckItem",
    "dynamodb:DescribeTable",
    "dynamodb:GetItem",
    "dynamodb:PutItem",
    "dynamodb:Query",
    "dynamodb:UpdateItem",
)
CANARY_TABLE_ACTIONS = ("dynamodb:GetItem", "dynamodb:PutItem")
#: What Lambda's event source mapping needs on the streams it reads (the function's role is used).
STREAM_READ_ACTIONS = (
    "dynamodb:DescribeStream",
    "dynamodb:GetRecords",
    "dynamodb:GetShardIterator",
)
#: ListStreams supports no resource-level permission: a statement of its own, on "*".
STREAM_LIST_ACTIONS = ("dynamodb:ListStreams",)
AUDITOR_TABLE_ACTIONS = ("dynamodb:PutItem",)
EVACUATOR_ACCELERATOR_ACTIONS = ("globalaccelerator:UpdateEndpointGroup",)
#: The evacuation records live in the directory global table (meridian.evacuation.Records).
EVACUATOR_RECORD_ACTIONS = ("dynamodb:GetItem", "dynamodb:PutItem")
EVACUATOR_DISCOVERY_ACTIONS = (
    "globalaccelerator:ListAccelerators",
    "globalaccelerator:ListEndpointGroups",
    "globalaccelerator:ListListeners",
    "cloudwatch:DescribeAlarms",
)

POWERTOOLS_LAYER_ACCOUNT = "017000801446"  # AWS's public account for the Powertools layers
POWERTOOLS_LAYER_VERSION = 18


def resource_prefix(topology: Topology) -> str:
    return f"{topology.project}-{topology.stack}"


def tags(topology: Topology, **extra: str) -> dict[str, str]:
    """Default tags every provider stamps on every resource."""
    return {"meridian:project": topology.project, "meridian:stack": topology.stack, "managed-by": "pulumi", **extra}


def vpc_cidrs(regions: Sequence[str]) -> dict[str, str]:
    """A distinct /16 per region, derived from the region's name so that reordering regions keeps them.

    Distinct ranges keep inter-region peering or Transit Gateway possible later. The second octet is
    crc32(region) mod 256; a collision moves the later region to the next free octet.
    """
    taken: set[int] = set()
    out: dict[str, str] = {}
    for region in regions:
        octet = zlib.crc32(region.encode()) % 256
        while octet in taken:
            octet = (octet + 1) % 256
        taken.add(octet)
        out[region] = f"10.{octet}.0.0/16"
    return out


def subnet_layout(cidr: str, az_count: int = 3) -> tuple[list[str], list[str]]:
    """Public /20s for the ALB (small: load balancer nodes only), private /19s for tasks."""
    network = ipaddress.ip_network(cidr)
    if network.prefixlen > 16:
        raise ValueError(f"{cidr}: the layout needs a /16")
    public = [str(s) for s in list(network.subnets(new_prefix=20))[:az_count]]
    private = [str(s) for s in list(network.subnets(new_prefix=19))[2 : 2 + az_count]]
    return public, private


def certificate_names(topology: Topology, region: str) -> list[str]:
    """The names one region's certificate covers: the latency name, the accelerator name, its own name."""
    return [topology.domain, f"global.{topology.domain}", f"{region}.{topology.domain}"]


def shared_certificate_names(topology: Topology) -> list[str]:
    """Names every region's certificate covers: ACM asks for one identical validation record for each."""
    return [topology.domain, f"global.{topology.domain}"]


# -- IAM ---------------------------------------------------------------------------------------------
def table_arn(partition: str, region: str, account: str, name: str) -> str:
    return f"arn:{partition}:dynamodb:{region}:{account}:table/{name}"


def table_resources(partition: str, region: str, account: str, names: Iterable[str]) -> list[str]:
    """The tables and their indexes, in this region only."""
    out: list[str] = []
    for name in sorted(names):
        arn = table_arn(partition, region, account, name)
        out += [arn, f"{arn}/index/*"]
    return out


def stream_resources(partition: str, region: str, account: str, names: Iterable[str]) -> list[str]:
    return [f"{table_arn(partition, region, account, n)}/stream/*" for n in sorted(names)]


def policy(*statements: dict[str, Any]) -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": list(statements)}


def allow(sid: str, actions: Sequence[str], resources: Sequence[str], **extra: Any) -> dict[str, Any]:
    return {"Sid": sid, "Effect": "Allow", "Action": sorted(actions), "Resource": list(resources), **extra}


def assume_role(service: str) -> dict[str, Any]:
    return policy({"Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole"})


def service_table_names(topology: Topology, region: str) -> list[str]:
    """Physical names of every table of every zone that includes ``region``."""
    return sorted(n for tables in topology.tables_in_region(region).values() for n in tables.values())


def task_role_policy(topology: Topology, region: str, *, partition: str, account: str) -> dict[str, Any]:
    return policy(
        allow(
            "ZoneTablesInThisRegion",
            SERVICE_TABLE_ACTIONS,
            table_resources(partition, region, account, service_table_names(topology, region)),
        )
    )


def canary_policy(topology: Topology, region: str, *, partition: str, account: str) -> dict[str, Any]:
    return policy(
        allow(
            "HeartbeatsInZoneTables",
            CANARY_TABLE_ACTIONS,
            [table_arn(partition, region, account, n) for n in service_table_names(topology, region)],
        )
    )


def auditor_policy(topology: Topology, region: str, *, partition: str, account: str) -> dict[str, Any]:
    names = service_table_names(topology, region)
    conflicts = sorted(t["conflicts"] for t in topology.tables_in_region(region).values() if "conflicts" in t)
    return policy(
        allow("ReadZoneTableStreams", STREAM_READ_ACTIONS, stream_resources(partition, region, account, names)),
        allow("ListStreams", STREAM_LIST_ACTIONS, ["*"]),
        allow(
            "RecordConflictsInZone",
            AUDITOR_TABLE_ACTIONS,
            [table_arn(partition, region, account, n) for n in conflicts],
        ),
    )


def evacuator_policy(topology: Topology, region: str, *, partition: str, account: str) -> dict[str, Any]:
    directory = topology.table_name("directory", topology.global_zone.name)
    return policy(
        allow(
            "DialThisStacksEndpointGroups",
            EVACUATOR_ACCELERATOR_ACTIONS,
            [f"arn:{partition}:globalaccelerator::{account}:accelerator/*"],
        ),
        # List and Describe calls of Global Accelerator and CloudWatch alarms support no resource scoping.
        allow("DiscoverAcceleratorAndAlarms", EVACUATOR_DISCOVERY_ACTIONS, ["*"]),
        # The evacuation records: this region's replica of the directory table only. The Evacuated metric
        # goes out as EMF through the function's own log group (no cloudwatch:PutMetricData).
        allow("EvacuationRecords", EVACUATOR_RECORD_ACTIONS, [table_arn(partition, region, account, directory)]),
    )


def logs_policy(partition: str, region: str, account: str, log_group: str) -> dict[str, Any]:
    arn = f"arn:{partition}:logs:{region}:{account}:log-group:{log_group}"
    return policy(allow("WriteOwnLogGroup", ("logs:CreateLogStream", "logs:PutLogEvents"), [arn, f"{arn}:*"]))
