"""One region's entry: the internet-facing ALB (HTTPS, HTTP redirected), its target group and the two
security groups that say who reaches what (anyone -> ALB on 443/80, ALB -> tasks on the service port).

With a traffic-shifting ECS strategy (``meridian:deploymentStrategy`` BLUE_GREEN, CANARY or LINEAR) it
also declares what ECS needs to move traffic: an alternate target group and a production listener rule
forwarding to both groups, whose weights ECS then owns (docs/decisions/0001).
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from infra.components.network import Network
from infra.components.scope import Scope
from meridian.releases import TRAFFIC_SHIFTING

HEALTH_PATH = "/health/ready"


@dataclass(frozen=True)
class LoadBalancer:
    alb: aws.lb.LoadBalancer
    target_group: aws.lb.TargetGroup
    https: aws.lb.Listener
    #: the tasks' security group: only the ALB reaches them
    task_security_group: aws.ec2.SecurityGroup
    #: traffic-shifting strategies only: the group ECS registers the new revision's tasks in
    alternate_target_group: aws.lb.TargetGroup | None = None
    #: traffic-shifting strategies only: the HTTPS rule whose forward weights ECS moves between the groups
    production_rule: aws.lb.ListenerRule | None = None


def security_groups(scope: Scope, *, network: Network, cidr: str) -> tuple[aws.ec2.SecurityGroup, aws.ec2.SecurityGroup]:
    name, port = scope.name, scope.topology.sizing.container_port
    # The API is public and Global Accelerator preserves client addresses, so clients, Route 53 health
    # checkers and Global Accelerator all arrive from anywhere: the ALB admits 443 (and 80, redirected).
    alb_sg = aws.ec2.SecurityGroup(
        f"{name}-alb",
        vpc_id=network.vpc.id,
        description="Meridian ALB: HTTPS from clients, Route 53 health checkers and Global Accelerator",
        ingress=[
            aws.ec2.SecurityGroupIngressArgs(protocol="tcp", from_port=p, to_port=p, cidr_blocks=["0.0.0.0/0"], ipv6_cidr_blocks=["::/0"])
            for p in (443, 80)
        ],
        egress=[aws.ec2.SecurityGroupEgressArgs(protocol="tcp", from_port=port, to_port=port, cidr_blocks=[cidr])],
        tags={"Name": f"{name}-alb"},
        opts=scope.opts(),
    )
    task_sg = aws.ec2.SecurityGroup(
        f"{name}-tasks",
        vpc_id=network.vpc.id,
        description="Meridian tasks: only the ALB reaches them",
        ingress=[aws.ec2.SecurityGroupIngressArgs(protocol="tcp", from_port=port, to_port=port, security_groups=[alb_sg.id])],
        egress=[aws.ec2.SecurityGroupEgressArgs(protocol="tcp", from_port=443, to_port=443, cidr_blocks=["0.0.0.0/0"])],
        tags={"Name": f"{name}-tasks"},
        opts=scope.opts(),
    )
    return alb_sg, task_sg


#: Seconds the ALB keeps an idle connection (to clients and to targets). The service must keep its side open
#: longer (uvicorn --timeout-keep-alive in services/Dockerfile): a target that closes first races the ALB
#: reusing the connection, and the client gets a 502 (AWS: "configure the idle timeout of your application
#: to be larger than the idle timeout configured for the load balancer").
ALB_IDLE_TIMEOUT = 30


def load_balancer(scope: Scope, *, network: Network, cidr: str, certificate_arn: pulumi.Input[str]) -> LoadBalancer:
    name, topology = scope.name, scope.topology
    alb_sg, task_sg = security_groups(scope, network=network, cidr=cidr)
    alb = aws.lb.LoadBalancer(
        f"{name}-alb",
        load_balancer_type="application",
        internal=False,
        security_groups=[alb_sg.id],
        subnets=network.public_subnet_ids,
        drop_invalid_header_fields=True,
        idle_timeout=ALB_IDLE_TIMEOUT,
        # An internet-facing ALB in a VPC whose internet gateway is not attached yet fails to create
        # ("VPC ... has no internet gateway"): nothing in its inputs refers to the gateway, so say it.
        opts=scope.opts(depends_on=network.internet_ready),
    )
    def group(resource_name: str) -> aws.lb.TargetGroup:
        return aws.lb.TargetGroup(
            resource_name,
            port=topology.sizing.container_port,
            protocol="HTTP",
            target_type="ip",
            vpc_id=network.vpc.id,
            deregistration_delay=30,
            health_check=aws.lb.TargetGroupHealthCheckArgs(
                path=HEALTH_PATH, matcher="200", interval=10, healthy_threshold=2, unhealthy_threshold=2, timeout=5
            ),
            opts=scope.opts(),
        )

    target_group = group(f"{name}-tg")
    https = aws.lb.Listener(
        f"{name}-https",
        load_balancer_arn=alb.arn,
        port=443,
        protocol="HTTPS",
        ssl_policy="ELBSecurityPolicy-TLS13-1-2-2021-06",
        certificate_arn=certificate_arn,
        default_actions=[aws.lb.ListenerDefaultActionArgs(type="forward", target_group_arn=target_group.arn)],
        opts=scope.opts(),
    )
    aws.lb.Listener(
        f"{name}-http",
        load_balancer_arn=alb.arn,
        port=80,
        protocol="HTTP",
        default_actions=[
            aws.lb.ListenerDefaultActionArgs(
                type="redirect",
                redirect=aws.lb.ListenerDefaultActionRedirectArgs(port="443", protocol="HTTPS", status_code="HTTP_301"),
            )
        ],
        opts=scope.opts(),
    )
    if topology.release.strategy not in TRAFFIC_SHIFTING:
        return LoadBalancer(alb, target_group, https, task_sg)
    # ECS registers the new revision in the group that takes no production traffic and shifts the rule's
    # weights (all at once, canary, or linear steps); identical settings, so either group can be live.
    alternate = group(f"{name}-tg-alt")
    production = aws.lb.ListenerRule(
        f"{name}-production",
        listener_arn=https.arn,
        priority=1,
        conditions=[aws.lb.ListenerRuleConditionArgs(path_pattern=aws.lb.ListenerRuleConditionPathPatternArgs(values=["/*"]))],
        actions=[
            aws.lb.ListenerRuleActionArgs(
                type="forward",
                forward=aws.lb.ListenerRuleActionForwardArgs(
                    target_groups=[
                        aws.lb.ListenerRuleActionForwardTargetGroupArgs(arn=target_group.arn, weight=100),
                        aws.lb.ListenerRuleActionForwardTargetGroupArgs(arn=alternate.arn, weight=0),
                    ]
                ),
            )
        ],
        # ECS owns the weights after the first deployment; an `up` that reset them could send production
        # traffic to the group with no tasks.
        opts=scope.opts(ignore_changes=["actions"]),
    )
    return LoadBalancer(alb, target_group, https, task_sg, alternate, production)
