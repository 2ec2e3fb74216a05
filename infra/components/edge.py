"""The global edge: Route 53 latency records with health checks, and Global Accelerator with a traffic
dial per region. It reads only the regional components' outputs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from infra.layout import HEALTH_CHECKER_REGIONS
from meridian.topology import Topology

HEALTH_PATH = "/health/ready"


@dataclass(frozen=True, kw_only=True)
class RegionEndpoint:
    alb_arn: pulumi.Input[str]
    alb_dns_name: pulumi.Input[str]
    alb_zone_id: pulumi.Input[str]


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


class GlobalEdge(pulumi.ComponentResource):
    health_check_ids: dict[str, pulumi.Output[str]]
    accelerator_dns_name: pulumi.Output[str] | None
    accelerator_ips: pulumi.Output[list[str]] | None

    def __init__(self, name: str, args: GlobalEdgeArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("meridian:edge:GlobalEdge", name, None, opts)
        topology, routing = args.topology, args.topology.routing
        dns = pulumi.ResourceOptions(parent=self, provider=args.dns_provider)
        self.health_check_ids = {}
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
            aws.route53.Record(
                f"{name}-{region}-latency",
                zone_id=args.hosted_zone_id,
                name=topology.domain,
                type="A",
                set_identifier=region,
                latency_routing_policies=[aws.route53.RecordLatencyRoutingPolicyArgs(region=region)],
                health_check_id=check.id,
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
                    opts=ga,
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
