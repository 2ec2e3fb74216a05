"""The global edge: Route 53 latency records with health checks, and Global Accelerator with a traffic
dial per region. It reads only the regional components' outputs.

Each region's latency record is health-checked by a CALCULATED check, healthy only while both its
children are: the HTTPS check of ``/health/ready`` and a CLOUDWATCH_METRIC check on the region's
evacuation alarm (ALARM while the region is evacuated). So an evacuation takes the region out of the
latency name on Route 53's data plane, with no call to Route 53's API (``meridian.evacuation``). The
accelerator's dials are the second path: ``pulumi up`` sets them once, then leaves them to the
evacuator and ``meridian evacuate`` (``ignore_changes``), so a deploy never undoes an evacuation.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache

import pulumi
import pulumi_aws as aws

from infra.layout import HEALTH_CHECKER_REGIONS
from meridian.topology import Topology

HEALTH_PATH = "/health/ready"

#: Route 53's status for a CLOUDWATCH_METRIC check whose alarm has insufficient data. Healthy, because the
#: evacuation check may only ever remove a region on a positive signal: a stack (or region) that has never
#: published the metric, or a CloudWatch that cannot evaluate the alarm, must leave a region that passes its
#: endpoint check in the latency name (the same fail-open rule Route 53 and the accelerator apply when every
#: endpoint is unhealthy). A held evacuation does not depend on it: the alarm treats missing data as
#: "ignore" (keeps ALARM), and the accelerator's dial stays at 0.
INSUFFICIENT_DATA_STATUS = "Healthy"
#: The CALCULATED check is healthy when both children are (endpoint healthy AND not evacuated).
SERVING_CHILDREN = 2


@cache
def route53_alarm_regions() -> frozenset[str]:
    """The regions whose CloudWatch alarms Route 53 health checks can watch (AlarmIdentifier.Region, from
    botocore's Route 53 model: the API refuses any other)."""
    import botocore.session

    shape = botocore.session.get_session().get_service_model("route53").shape_for("CloudWatchRegion")
    return frozenset(shape.enum)


@dataclass(frozen=True, kw_only=True)
class RegionEndpoint:
    alb_arn: pulumi.Input[str]
    alb_dns_name: pulumi.Input[str]
    alb_zone_id: pulumi.Input[str]
    #: the region's evacuation alarm (in the region itself); an Output, so the health check waits for it
    evacuation_alarm_name: pulumi.Input[str]


@dataclass(frozen=True, kw_only=True)
class GlobalEdgeArgs:
    topology: Topology
    hosted_zone_id: pulumi.Input[str]
    endpoints: Mapping[str, RegionEndpoint]
    dns_provider: aws.Provider
    accelerator_provider: aws.Provider

    def __post_init__(self) -> None:
        if set(self.endpoints) != set(self.topology.regions):
            raise ValueError(f"the edge needs an endpoint for exactly the regions {self.topology.regions}")
        unsupported = [r for r in self.topology.regions if r not in route53_alarm_regions()]
        if unsupported:
            raise ValueError(
                f"Route 53 health checks cannot watch CloudWatch alarms in {', '.join(unsupported)}: the evacuation "
                "path needs every region among AlarmIdentifier's regions"
            )


class GlobalEdge(pulumi.ComponentResource):
    #: region -> the HTTPS check of /health/ready
    health_check_ids: dict[str, pulumi.Output[str]]
    #: region -> the CALCULATED check the latency record uses (endpoint healthy AND not evacuated)
    serving_check_ids: dict[str, pulumi.Output[str]]
    accelerator_dns_name: pulumi.Output[str] | None
    accelerator_ips: pulumi.Output[list[str]] | None

    def __init__(self, name: str, args: GlobalEdgeArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("meridian:edge:GlobalEdge", name, None, opts)
        topology, routing = args.topology, args.topology.routing
        dns = pulumi.ResourceOptions(parent=self, provider=args.dns_provider)
        self.health_check_ids = {}
        self.serving_check_ids = {}
        for region in topology.regions:
            endpoint = args.endpoints[region]
            regional_name = f"{region}.{topology.domain}"
            # The regional name is what the certificate covers for this region alone: health checks use it
            # (SNI stays on) so that the TLS handshake succeeds against this region's ALB.
            aws.route53.Record(
                f"{name}-{region}-regional",
                zone_id=args.hosted_zone_id,
                name=regional_name,
                type="A",
                aliases=[aws.route53.RecordAliasArgs(name=endpoint.alb_dns_name, zone_id=endpoint.alb_zone_id, evaluate_target_health=True)],
                opts=dns,
            )
            check = aws.route53.HealthCheck(
                f"{name}-{region}-ready",
                type="HTTPS",
                fqdn=regional_name,
                port=443,
                resource_path=HEALTH_PATH,
                request_interval=routing.health_check_interval,
                failure_threshold=routing.failure_threshold,
                enable_sni=True,
                measure_latency=True,
                regions=list(HEALTH_CHECKER_REGIONS),
                tags={"Name": f"{topology.project}-{topology.stack}-{region}-ready"},
                opts=dns,
            )
            self.health_check_ids[region] = check.id
            # Healthy while the region's evacuation alarm is OK. Route 53 reads the alarm itself (data plane):
            # its name and region, and what to assume without data, are all the check needs.
            evacuated = aws.route53.HealthCheck(
                f"{name}-{region}-evacuated",
                type="CLOUDWATCH_METRIC",
                cloudwatch_alarm_name=endpoint.evacuation_alarm_name,
                cloudwatch_alarm_region=region,
                insufficient_data_health_status=INSUFFICIENT_DATA_STATUS,
                tags={"Name": f"{topology.project}-{topology.stack}-{region}-not-evacuated"},
                opts=dns,
            )
            serving = aws.route53.HealthCheck(
                f"{name}-{region}-serving",
                type="CALCULATED",
                child_healthchecks=[check.id, evacuated.id],
                child_health_threshold=SERVING_CHILDREN,
                tags={"Name": f"{topology.project}-{topology.stack}-{region}-serving"},
                opts=dns,
            )
            self.serving_check_ids[region] = serving.id
            aws.route53.Record(
                f"{name}-{region}-latency",
                zone_id=args.hosted_zone_id,
                name=topology.domain,
                type="A",
                set_identifier=region,
                latency_routing_policies=[aws.route53.RecordLatencyRoutingPolicyArgs(region=region)],
                # Endpoint healthy AND not evacuated.
                health_check_id=serving.id,
                # The ALB's own canonical hosted zone, not the domain's zone.
                aliases=[aws.route53.RecordAliasArgs(name=endpoint.alb_dns_name, zone_id=endpoint.alb_zone_id, evaluate_target_health=True)],
                opts=dns,
            )

        self.accelerator_dns_name = None
        self.accelerator_ips = None
        if routing.global_accelerator:
            ga = pulumi.ResourceOptions(parent=self, provider=args.accelerator_provider)
            accelerator = aws.globalaccelerator.Accelerator(
                f"{name}-accelerator",
                name=f"{topology.project}-{topology.stack}",
                ip_address_type="IPV4",
                enabled=True,
                opts=ga,
            )
            listener = aws.globalaccelerator.Listener(
                f"{name}-https",
                accelerator_arn=accelerator.arn,
                protocol="TCP",
                client_affinity="NONE",
                port_ranges=[aws.globalaccelerator.ListenerPortRangeArgs(from_port=443, to_port=443)],
                opts=ga,
            )
            for region in topology.regions:
                aws.globalaccelerator.EndpointGroup(
                    f"{name}-{region}",
                    listener_arn=listener.arn,
                    endpoint_group_region=region,
                    traffic_dial_percentage=routing.dial(region),
                    health_check_protocol="HTTPS",
                    health_check_port=443,
                    health_check_path=HEALTH_PATH,
                    health_check_interval_seconds=routing.health_check_interval,
                    threshold_count=routing.failure_threshold,
                    endpoint_configurations=[
                        aws.globalaccelerator.EndpointGroupEndpointConfigurationArgs(
                            endpoint_id=args.endpoints[region].alb_arn, weight=128, client_ip_preservation_enabled=True
                        )
                    ],
                    # The configured dial is the initial value only: the evacuator and `meridian evacuate` move it
                    # at run time, and the next `pulumi up` must not put an evacuated region back mid-incident.
                    opts=pulumi.ResourceOptions.merge(ga, pulumi.ResourceOptions(ignore_changes=["traffic_dial_percentage"])),
                )
            aws.route53.Record(
                f"{name}-accelerator",
                zone_id=args.hosted_zone_id,
                name=f"global.{topology.domain}",
                type="A",
                aliases=[aws.route53.RecordAliasArgs(name=accelerator.dns_name, zone_id=accelerator.hosted_zone_id, evaluate_target_health=True)],
                opts=dns,
            )
            self.accelerator_dns_name = accelerator.dns_name
            self.accelerator_ips = accelerator.ip_sets.apply(lambda sets: [ip for s in sets or [] for ip in (s.ip_addresses or [])])
        self.register_outputs({"accelerator_dns_name": self.accelerator_dns_name})
