"""Everything one region serves with, wired: network, certificate, load balancer, Fargate service,
Lambdas, alarms. Each concern lives in its own module (certificate, load_balancer, service, functions,
alarms); this component only connects them.

The global edge reads only this component's outputs (ALB ARN, DNS name, canonical zone id); it never
reaches into the children. Every child keeps this component as its parent (see ``scope``), so the split
into modules changed no URN.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws

from infra.components.alarms import alarms
from infra.components.certificate import certificate
from infra.components.functions import LAMBDA_RUNTIME, LAMBDAS, functions, lambda_environment
from infra.components.load_balancer import HEALTH_PATH, load_balancer
from infra.components.network import Network, NetworkArgs
from infra.components.notifications import notifications
from infra.components.scope import Scope
from infra.components.service import fargate_service, service_environment
from meridian.topology import Topology

__all__ = [
    "HEALTH_PATH",
    "LAMBDAS",
    "LAMBDA_RUNTIME",
    "AZ_FILTERS",
    "Region",
    "RegionArgs",
    "lambda_environment",
    "service_environment",
]

#: Regular availability zones only: `state=available` alone also lists the Local Zones an account opted
#: in to (us-east-1-bos-1a sorts before us-east-1a), which lack most services the region needs.
AZ_FILTERS = [aws.GetAvailabilityZonesFilterArgs(name="opt-in-status", values=["opt-in-not-required"])]
AZ_COUNT = 3


@dataclass(frozen=True, kw_only=True)
class RegionArgs:
    topology: Topology
    region: str
    cidr: str
    dns_provider: aws.Provider
    hosted_zone_id: pulumi.Input[str]
    secret_arn: pulumi.Input[str]
    #: table physical name -> that table's stream ARN in this region (from the global tables component)
    stream_arns: Mapping[str, pulumi.Input[str]]
    #: FQDNs of the validation records of the names every region's certificate shares; None means this
    #: region creates them (the first region), since ACM asks every region for the same records.
    shared_validation_fqdns: Sequence[pulumi.Input[str]] | None = None
    #: The service's container image in this region; None means ``topology.sizing.image``.
    image: pulumi.Input[str] | None = None
    depends_on: Sequence[pulumi.Resource] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.region not in self.topology.regions:
            raise ValueError(f"region {self.region} is not one of the stack's regions {self.topology.regions}")
        if self.image is None and not self.topology.sizing.image:
            raise ValueError(f"{self.region}: no service image: pass image= (the pushed image) or set meridian:image")

    @property
    def container_image(self) -> pulumi.Input[str]:
        return self.image if self.image is not None else self.topology.sizing.image


class Region(pulumi.ComponentResource):
    alb_arn: pulumi.Output[str]
    alb_dns_name: pulumi.Output[str]
    alb_zone_id: pulumi.Output[str]
    service_name: pulumi.Output[str]
    cluster_arn: pulumi.Output[str]
    shared_validation_fqdns: list[pulumi.Output[str]]
    #: the ALB's CloudWatch dimension value (app/<name>/<id>), for the dashboard
    alb_arn_suffix: pulumi.Output[str]
    #: the alarm that is ALARM while the region is evacuated (Route 53's evacuation check watches it)
    evacuation_alarm_name: pulumi.Output[str]
    #: the alarms an operator looks at first (evacuate, evacuated, conflict rate, release), for the dashboard
    key_alarm_arns: list[pulumi.Output[str]]
    alarm_topic_arn: pulumi.Output[str]

    def __init__(self, name: str, args: RegionArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("meridian:regional:Region", name, None, opts)
        topology, region = args.topology, args.region
        identity = aws.get_caller_identity_output(opts=pulumi.InvokeOutputOptions(parent=self))
        partition = aws.get_partition_output(opts=pulumi.InvokeOutputOptions(parent=self))
        scope = Scope(
            name=name, parent=self, topology=topology, region=region, account=identity.account_id, partition=partition.partition
        )
        azs = aws.get_availability_zones(state="available", filters=AZ_FILTERS, opts=pulumi.InvokeOptions(parent=self))

        self.network = Network(
            f"{name}-net",
            NetworkArgs(region=region, cidr=args.cidr, az_names=tuple(sorted(azs.names)[:AZ_COUNT]),
                        mode=args.topology.network_mode),
            opts=pulumi.ResourceOptions(parent=self),
        )
        cert = certificate(
            scope, dns_provider=args.dns_provider, hosted_zone_id=args.hosted_zone_id, shared_validation_fqdns=args.shared_validation_fqdns
        )
        self.shared_validation_fqdns = cert.shared_validation_fqdns
        lb = load_balancer(scope, network=self.network, cidr=args.cidr, certificate_arn=cert.validation.certificate_arn)
        fns = functions(scope, stream_arns=args.stream_arns, depends_on=args.depends_on)
        # Alarms before the service: ECS rolls a deployment back on the region's release alarms. Each notifies
        # the region's alarm topic.
        alerts = notifications(scope)
        region_alarms = alarms(scope, load_balancer=lb, evacuator=fns["evacuator"], topic=alerts.topic)
        service = fargate_service(
            scope, network=self.network, load_balancer=lb, secret_arn=args.secret_arn, image=args.container_image,
            rollback_alarms=region_alarms.release,
        )

        alb = lb.alb
        self.alb_arn, self.alb_dns_name, self.alb_zone_id = alb.arn, alb.dns_name, alb.zone_id
        self.service_name = service.name
        self.cluster_arn = service.cluster
        self.alb_arn_suffix = alb.arn_suffix
        self.evacuation_alarm_name = region_alarms.evacuated.name
        self.key_alarm_arns = [region_alarms.evacuate.arn, region_alarms.evacuated.arn, region_alarms.conflicts.arn,
                               *(a.arn for a in region_alarms.release)]
        self.alarm_topic_arn = alerts.topic.arn
        self.register_outputs(
            {"alb_arn": alb.arn, "alb_dns_name": alb.dns_name, "alb_zone_id": alb.zone_id, "service_name": service.name,
             "cluster_arn": service.cluster, "evacuation_alarm_name": region_alarms.evacuated.name,
             "alarm_topic_arn": alerts.topic.arn}
        )
