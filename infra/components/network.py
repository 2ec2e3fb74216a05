"""One region's network: a VPC over three availability zones, public subnets for the load balancer,
private subnets for tasks, NAT for region-to-region calls, and VPC endpoints so that AWS traffic
(DynamoDB, S3 image layers, ECR, CloudWatch Logs, Secrets Manager) never leaves AWS's network.

Two layouts (``meridian:networkMode``):

- ``ha`` (default): one NAT gateway per AZ, and the interface endpoints (ECR api and dkr, CloudWatch
  Logs, Secrets Manager) with an ENI in every AZ. An AZ's outage cuts no other AZ off.
- ``lean``: one NAT gateway per region (in the first AZ), every private route table's default route
  through it, and no interface endpoints: what a Fargate task needs to start (ECR api and dkr, Logs,
  Secrets Manager) goes through the NAT. The DynamoDB and S3 gateway endpoints stay in both layouts:
  they cost nothing, and S3 carries the image layers. The price: if the NAT's AZ fails, tasks in the
  other AZs cannot start (no image, no secret), ship logs or call peer regions until it is back.

Logical names never depend on the mode: ``lean`` declares a subset of ``ha``'s resources under the same
names (its NAT is ``-nat-0``), so switching modes deletes or adds resources but renames none.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from infra.layout import subnet_layout
from meridian.topology import NETWORK_MODES, NetworkMode

INTERFACE_ENDPOINTS = ("ecr.api", "ecr.dkr", "logs", "secretsmanager")
GATEWAY_ENDPOINTS = ("dynamodb", "s3")


@dataclass(frozen=True, kw_only=True)
class NetworkArgs:
    region: str
    cidr: str
    az_names: tuple[str, ...]
    #: ``meridian:networkMode`` (the Region component passes the topology's)
    mode: NetworkMode = "ha"

    def __post_init__(self) -> None:
        if len(self.az_names) < 2:
            raise ValueError(f"{self.region}: a highly available network needs at least 2 availability zones")
        if self.mode not in NETWORK_MODES:
            raise ValueError(f"{self.region}: network mode {self.mode!r} is not one of {NETWORK_MODES}")

    @property
    def nat_azs(self) -> tuple[int, ...]:
        """Indexes of the AZs that get a NAT gateway: every AZ (ha), or the first one (lean)."""
        return tuple(range(len(self.az_names))) if self.mode == "ha" else (0,)

    @property
    def interface_endpoints(self) -> tuple[str, ...]:
        return INTERFACE_ENDPOINTS if self.mode == "ha" else ()


class Network(pulumi.ComponentResource):
    vpc: aws.ec2.Vpc
    internet_gateway: aws.ec2.InternetGateway
    public_subnet_ids: list[pulumi.Output[str]]
    private_subnet_ids: list[pulumi.Output[str]]
    #: What makes the public subnets reach the internet: the attached gateway, the default route through
    #: it and the public subnets' route table associations. An internet-facing load balancer must be
    #: created after these (its inputs name only the subnets, which exist before the gateway is attached).
    internet_ready: list[pulumi.Resource]

    def __init__(self, name: str, args: NetworkArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("meridian:network:Network", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        public_cidrs, private_cidrs = subnet_layout(args.cidr, len(args.az_names))

        self.vpc = aws.ec2.Vpc(
            f"{name}-vpc",
            cidr_block=args.cidr,
            enable_dns_hostnames=True,  # interface endpoints with private DNS need both
            enable_dns_support=True,
            tags={"Name": f"{name}-vpc"},
            opts=child,
        )
        igw = aws.ec2.InternetGateway(f"{name}-igw", vpc_id=self.vpc.id, tags={"Name": f"{name}-igw"}, opts=child)
        self.internet_gateway = igw
        public_rt = aws.ec2.RouteTable(f"{name}-public-rt", vpc_id=self.vpc.id, tags={"Name": f"{name}-public"}, opts=child)
        public_default = aws.ec2.Route(
            f"{name}-public-default", route_table_id=public_rt.id, destination_cidr_block="0.0.0.0/0",
            gateway_id=igw.id, opts=child,
        )
        self.internet_ready = [igw, public_default]

        self.public_subnet_ids, self.private_subnet_ids = [], []
        private_rts: list[aws.ec2.RouteTable] = []
        #: NAT gateway per AZ index; in lean mode only the first AZ has one and every AZ routes through it
        self.nat_gateways: dict[int, aws.ec2.NatGateway] = {}
        for i, az in enumerate(args.az_names):
            public = aws.ec2.Subnet(
                f"{name}-public-{i}", vpc_id=self.vpc.id, cidr_block=public_cidrs[i], availability_zone=az,
                map_public_ip_on_launch=False, tags={"Name": f"{name}-public-{az}", "tier": "public"}, opts=child,
            )
            self.internet_ready.append(
                aws.ec2.RouteTableAssociation(f"{name}-public-{i}", subnet_id=public.id, route_table_id=public_rt.id, opts=child)
            )
            private = aws.ec2.Subnet(
                f"{name}-private-{i}", vpc_id=self.vpc.id, cidr_block=private_cidrs[i], availability_zone=az,
                map_public_ip_on_launch=False, tags={"Name": f"{name}-private-{az}", "tier": "private"}, opts=child,
            )
            if i in args.nat_azs:
                # ha: one NAT per zone, so a zone's outage cannot cut the other zones' tasks off from peer
                # regions and AWS APIs. lean: one NAT (this, the first zone's) serves every zone.
                eip = aws.ec2.Eip(f"{name}-nat-{i}", domain="vpc", tags={"Name": f"{name}-nat-{az}"}, opts=child)
                self.nat_gateways[i] = aws.ec2.NatGateway(
                    f"{name}-nat-{i}", allocation_id=eip.id, subnet_id=public.id, tags={"Name": f"{name}-nat-{az}"},
                    opts=pulumi.ResourceOptions(parent=self, depends_on=[igw]),
                )
            nat = self.nat_gateways.get(i) or self.nat_gateways[args.nat_azs[0]]
            rt = aws.ec2.RouteTable(f"{name}-private-rt-{i}", vpc_id=self.vpc.id, tags={"Name": f"{name}-private-{az}"}, opts=child)
            aws.ec2.Route(
                f"{name}-private-default-{i}", route_table_id=rt.id, destination_cidr_block="0.0.0.0/0",
                nat_gateway_id=nat.id, opts=child,
            )
            aws.ec2.RouteTableAssociation(f"{name}-private-{i}", subnet_id=private.id, route_table_id=rt.id, opts=child)
            self.public_subnet_ids.append(public.id)
            self.private_subnet_ids.append(private.id)
            private_rts.append(rt)

        for service in GATEWAY_ENDPOINTS:
            aws.ec2.VpcEndpoint(
                f"{name}-{service}",
                vpc_id=self.vpc.id,
                service_name=f"com.amazonaws.{args.region}.{service}",
                vpc_endpoint_type="Gateway",
                route_table_ids=[rt.id for rt in private_rts],
                tags={"Name": f"{name}-{service}"},
                opts=child,
            )
        if not args.interface_endpoints:
            # lean: ECR, Logs and Secrets Manager are reached through the NAT gateway.
            self.register_outputs({"vpc_id": self.vpc.id, "private_subnet_ids": self.private_subnet_ids})
            return
        endpoint_sg = aws.ec2.SecurityGroup(
            f"{name}-endpoints",
            vpc_id=self.vpc.id,
            description="HTTPS from inside the VPC to interface endpoints",
            ingress=[aws.ec2.SecurityGroupIngressArgs(protocol="tcp", from_port=443, to_port=443, cidr_blocks=[args.cidr])],
            tags={"Name": f"{name}-endpoints"},
            opts=child,
        )
        for service in args.interface_endpoints:
            aws.ec2.VpcEndpoint(
                f"{name}-{service.replace('.', '-')}",
                vpc_id=self.vpc.id,
                service_name=f"com.amazonaws.{args.region}.{service}",
                vpc_endpoint_type="Interface",
                private_dns_enabled=True,
                subnet_ids=self.private_subnet_ids,
                security_group_ids=[endpoint_sg.id],
                tags={"Name": f"{name}-{service}"},
                opts=child,
            )
        self.register_outputs({"vpc_id": self.vpc.id, "private_subnet_ids": self.private_subnet_ids})
