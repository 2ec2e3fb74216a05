"""One region's network: a VPC over three availability zones, public subnets for the load balancer,
private subnets for tasks, NAT for region-to-region calls, and VPC endpoints so that AWS traffic
(DynamoDB, S3 image layers, ECR, CloudWatch Logs, Secrets Manager) never leaves AWS's network."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from infra.layout import subnet_layout

INTERFACE_ENDPOINTS = ("ecr.api", "ecr.dkr", "logs", "secretsmanager")
GATEWAY_ENDPOINTS = ("dynamodb", "s3")


@dataclass(frozen=True, kw_only=True)
class NetworkArgs:
    region: str
    cidr: str
    az_names: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.az_names) < 2:
            raise ValueError(f"{self.region}: a highly available network needs at least 2 availability zones")


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
            # One NAT per zone: a zone's outage must not cut the other zones' tasks off from peer regions.
            eip = aws.ec2.Eip(f"{name}-nat-{i}", domain="vpc", tags={"Name": f"{name}-nat-{az}"}, opts=child)
            nat = aws.ec2.NatGateway(
                f"{name}-nat-{i}", allocation_id=eip.id, subnet_id=public.id, tags={"Name": f"{name}-nat-{az}"},
                opts=pulumi.ResourceOptions(parent=self, depends_on=[igw]),
            )
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
        endpoint_sg = aws.ec2.SecurityGroup(
            f"{name}-endpoints",
            vpc_id=self.vpc.id,
            description="HTTPS from inside the VPC to interface endpoints",
            ingress=[aws.ec2.SecurityGroupIngressArgs(protocol="tcp", from_port=443, to_port=443, cidr_blocks=[args.cidr])],
            tags={"Name": f"{name}-endpoints"},
            opts=child,
        )
        for service in INTERFACE_ENDPOINTS:
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
