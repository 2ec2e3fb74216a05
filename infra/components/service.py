"""One region's Fargate service: cluster, roles, task definition, service behind the ALB, autoscaling.

Releases inside a region are ECS's own (docs/decisions/0001): the service names the region's release
alarms (5xx rate, p99 latency) with ``rollback`` and keeps the deployment circuit breaker on, so ECS
rolls a deployment back by itself; ``meridian:deploymentStrategy`` picks ROLLING (default) or a
traffic-shifting strategy, which adds the load balancer pieces and the role ECS needs to move traffic.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pulumi
import pulumi_aws as aws

from infra import layout
from infra.components.iam import SECRET_READ_ACTIONS, role_with_policies, secret_policy
from infra.components.load_balancer import HEALTH_PATH, LoadBalancer
from infra.components.network import Network
from infra.components.scope import Scope
from meridian.releases import TRAFFIC_SHIFTING
from meridian.topology import Release, Topology

CONTAINER_NAME = "meridian"
#: The task's only writable path: the root filesystem is read-only. A Fargate bind mount with no host is
#: ephemeral task storage; the image must declare ``VOLUME ["/tmp"]`` for the mount to keep /tmp's
#: world-writable mode (ECS copies a VOLUME path's contents and mode; otherwise the mount is root 0755).
SCRATCH_VOLUME = "tmp"
SCRATCH_PATH = "/tmp"
#: Container health check (ECS ranges: interval 5-300 s, timeout 2-60 s, retries 1-10, startPeriod 0-300 s).
HEALTH_CHECK_TIMING = {"interval": 15, "timeout": 5, "retries": 3, "startPeriod": 30}


def service_environment(topology: Topology, region: str) -> dict[str, str]:
    """The environment of the service container, read by meridian.settings (and the local run)."""
    return {
        "AWS_REGION": region,
        "MERIDIAN_REGION": region,
        "MERIDIAN_TOPOLOGY": topology.to_json(),
        "MERIDIAN_TABLES": json.dumps(topology.tables_in_region(region), sort_keys=True, separators=(",", ":")),
        "MERIDIAN_PORT": str(topology.sizing.container_port),
        "MERIDIAN_PEER_URL_TEMPLATE": f"https://{{region}}.{topology.domain}",
    }


def health_check_command(port: int) -> list[str]:
    """Exit 0 only when the service answers 2xx on its readiness path (urlopen raises on anything else).

    Python's standard library only: the image has no curl or wget.
    """
    url = f"http://127.0.0.1:{port}{HEALTH_PATH}"
    return ["CMD", "python", "-c", f"import urllib.request; urllib.request.urlopen({url!r}, timeout=3)"]


def container_definition(*, topology: Topology, region: str, image: str, log_group: str, secret_arn: str) -> dict[str, Any]:
    """The service container. No ``command``: the image's CMD starts uvicorn on ``MERIDIAN_PORT``."""
    port = topology.sizing.container_port
    # The secret's replica in this region, re-read while the task runs (meridian.keysource): a rotation
    # reaches running tasks without a redeploy.
    environment = {**service_environment(topology, region), "MERIDIAN_KEYS_SECRET_ARN": secret_arn}
    return {
        "name": CONTAINER_NAME,
        "image": image,
        "essential": True,
        "portMappings": [{"containerPort": port, "protocol": "tcp"}],
        "environment": [{"name": k, "value": environment[k]} for k in sorted(environment)],
        "secrets": [
            {"name": "MERIDIAN_SESSION_KEY", "valueFrom": f"{secret_arn}:session::"},
            {"name": "MERIDIAN_PEER_KEY", "valueFrom": f"{secret_arn}:peer::"},
            {"name": "MERIDIAN_USER_KEY", "valueFrom": f"{secret_arn}:users::"},
            {"name": "MERIDIAN_OPERATOR_KEY", "valueFrom": f"{secret_arn}:operator::"},
            {"name": "MERIDIAN_CLAIM_KEY", "valueFrom": f"{secret_arn}:claims::"},
        ],
        "healthCheck": {"command": health_check_command(port), **HEALTH_CHECK_TIMING},
        "readonlyRootFilesystem": True,
        "mountPoints": [{"sourceVolume": SCRATCH_VOLUME, "containerPath": SCRATCH_PATH, "readOnly": False}],
        "user": "10001",
        "logConfiguration": {
            "logDriver": "awslogs",
            "options": {"awslogs-group": log_group, "awslogs-region": region, "awslogs-stream-prefix": "meridian"},
        },
    }


#: Share of production traffic a CANARY deployment sends to the new revision first (ECS: 0.1-100).
CANARY_PERCENT = 10.0
#: Share of production traffic each LINEAR step moves (ECS: 3-100).
LINEAR_STEP_PERCENT = 25.0
#: AWS's managed policy for the role ECS assumes to move traffic between target groups.
ECS_LOAD_BALANCER_POLICY = "AmazonECSInfrastructureRolePolicyForLoadBalancers"


def deployment_configuration(release: Release) -> aws.ecs.ServiceDeploymentConfigurationArgs:
    """The strategy ECS deploys with. ROLLING computes its own bake time from the alarms; the
    traffic-shifting strategies bake ``meridian:bakeMinutes`` after the shift (and at each step)."""
    if release.strategy not in TRAFFIC_SHIFTING:
        return aws.ecs.ServiceDeploymentConfigurationArgs(strategy=release.strategy)
    bake = str(release.bake_minutes)
    return aws.ecs.ServiceDeploymentConfigurationArgs(
        strategy=release.strategy,
        bake_time_in_minutes=bake,
        canary_configuration=aws.ecs.ServiceDeploymentConfigurationCanaryConfigurationArgs(
            canary_percent=CANARY_PERCENT, canary_bake_time_in_minutes=bake
        ) if release.strategy == "CANARY" else None,
        linear_configuration=aws.ecs.ServiceDeploymentConfigurationLinearConfigurationArgs(
            step_percent=LINEAR_STEP_PERCENT, step_bake_time_in_minutes=bake
        ) if release.strategy == "LINEAR" else None,
    )


def fargate_service(
    scope: Scope,
    *,
    network: Network,
    load_balancer: LoadBalancer,
    secret_arn: pulumi.Input[str],
    image: pulumi.Input[str],
    rollback_alarms: Sequence[aws.cloudwatch.MetricAlarm],
) -> aws.ecs.Service:
    """``rollback_alarms``: the region's alarms whose ALARM fails a deployment (ECS then rolls it back)."""
    if not rollback_alarms:
        raise ValueError(f"{scope.region}: the service needs at least one alarm to roll a bad deployment back on")
    name, topology, region, sizing = scope.name, scope.topology, scope.region, scope.topology.sizing
    log_group = aws.cloudwatch.LogGroup(
        f"{name}-service-logs",
        name=f"/meridian/{topology.stack}/{region}/service",
        retention_in_days=sizing.log_retention_days,
        opts=scope.opts(),
    )
    cluster = aws.ecs.Cluster(
        f"{name}-cluster",
        settings=[aws.ecs.ClusterSettingArgs(name="containerInsights", value="enabled")],
        opts=scope.opts(),
    )
    execution = role_with_policies(scope, f"{name}-execution", "ecs-tasks.amazonaws.com", {
        f"{name}-execution-secret": pulumi.Output.from_input(secret_arn).apply(
            lambda arn: json.dumps(layout.policy(layout.allow("ReadSessionSecret", ["secretsmanager:GetSecretValue"], [arn])))
        ),
    })
    execution.grants.append(
        aws.iam.RolePolicyAttachment(
            f"{name}-execution",
            role=execution.role.name,
            policy_arn=scope.partition.apply(lambda p: f"arn:{p}:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy"),
            opts=scope.opts(),
        )
    )
    task = role_with_policies(scope, f"{name}-task", "ecs-tasks.amazonaws.com", {
        f"{name}-task-tables": scope.account_policy(lambda p, a: layout.task_role_policy(topology, region, partition=p, account=a)),
        f"{name}-task-keys": secret_policy("RefreshKeyRings", SECRET_READ_ACTIONS, secret_arn),
    })
    container_definitions = pulumi.Output.all(log_group.name, secret_arn, image).apply(
        lambda v: json.dumps(
            [container_definition(topology=topology, region=region, image=v[2], log_group=v[0], secret_arn=v[1])]
        )
    )
    task_definition = aws.ecs.TaskDefinition(
        f"{name}-task",
        family=f"{scope.prefix}-{region}",
        cpu=str(sizing.cpu),
        memory=str(sizing.memory),
        network_mode="awsvpc",
        requires_compatibilities=["FARGATE"],
        runtime_platform=aws.ecs.TaskDefinitionRuntimePlatformArgs(operating_system_family="LINUX", cpu_architecture="X86_64"),
        execution_role_arn=execution.role.arn,
        task_role_arn=task.role.arn,
        container_definitions=container_definitions,
        volumes=[aws.ecs.TaskDefinitionVolumeArgs(name=SCRATCH_VOLUME)],
        # Tasks start with these roles: their permissions must exist first, not only the roles.
        opts=scope.opts(depends_on=[*execution.grants, *task.grants]),
    )
    advanced: aws.ecs.ServiceLoadBalancerAdvancedConfigurationArgs | None = None
    waits_for: list[pulumi.Resource] = [load_balancer.https]
    if topology.release.strategy in TRAFFIC_SHIFTING:
        if load_balancer.alternate_target_group is None or load_balancer.production_rule is None:
            raise ValueError(f"{region}: {topology.release.strategy} needs an alternate target group and a production listener rule")
        pulumi.log.warn(
            f"{region}: meridian:deploymentStrategy {topology.release.strategy} shifts traffic between two target groups; the "
            "healthy-host alarms (and so the evacuation) and the request-count scaling watch the first group only. "
            "See docs/decisions/0001-ecs-rolling-with-alarm-rollback.md",
        )
        ecs_role = role_with_policies(scope, f"{name}-ecs-infrastructure", "ecs.amazonaws.com", {})
        ecs_role.grants.append(
            aws.iam.RolePolicyAttachment(
                f"{name}-ecs-infrastructure",
                role=ecs_role.role.name,
                policy_arn=scope.partition.apply(lambda p: f"arn:{p}:iam::aws:policy/{ECS_LOAD_BALANCER_POLICY}"),
                opts=scope.opts(),
            )
        )
        advanced = aws.ecs.ServiceLoadBalancerAdvancedConfigurationArgs(
            alternate_target_group_arn=load_balancer.alternate_target_group.arn,
            production_listener_rule=load_balancer.production_rule.arn,
            role_arn=ecs_role.role.arn,
        )
        waits_for += [load_balancer.production_rule, *ecs_role.grants]
    service = aws.ecs.Service(
        f"{name}-service",
        name=f"{scope.prefix}-service",
        cluster=cluster.arn,
        task_definition=task_definition.arn,
        desired_count=sizing.desired_count,
        launch_type="FARGATE",
        network_configuration=aws.ecs.ServiceNetworkConfigurationArgs(
            subnets=network.private_subnet_ids, security_groups=[load_balancer.task_security_group.id], assign_public_ip=False
        ),
        load_balancers=[
            aws.ecs.ServiceLoadBalancerArgs(
                target_group_arn=load_balancer.target_group.arn, container_name=CONTAINER_NAME, container_port=sizing.container_port,
                advanced_configuration=advanced,
            )
        ],
        deployment_configuration=deployment_configuration(topology.release),
        # Either fails a deployment and rolls it back: tasks that never get healthy (circuit breaker), or
        # healthy-looking tasks that answer 5xx or slowly (the region's alarms).
        deployment_circuit_breaker=aws.ecs.ServiceDeploymentCircuitBreakerArgs(enable=True, rollback=True),
        alarms=aws.ecs.ServiceAlarmsArgs(alarm_names=[a.name for a in rollback_alarms], enable=True, rollback=True),
        deployment_minimum_healthy_percent=100,
        deployment_maximum_percent=200,
        health_check_grace_period_seconds=30,
        propagate_tags="SERVICE",
        enable_execute_command=False,
        # The target group is attached through the listener; without this, creation races it. The alarms
        # are named by their outputs, so the service also waits for them.
        opts=scope.opts(depends_on=waits_for, ignore_changes=["desiredCount"]),
    )
    autoscaling(scope, service=service, load_balancer=load_balancer)
    return service


def autoscaling(scope: Scope, *, service: aws.ecs.Service, load_balancer: LoadBalancer) -> None:
    name, sizing = scope.name, scope.topology.sizing
    target = aws.appautoscaling.Target(
        f"{name}-scaling",
        service_namespace="ecs",
        scalable_dimension="ecs:service:DesiredCount",
        resource_id=pulumi.Output.concat("service/", service.cluster.apply(lambda c: c.split("/")[-1]), "/", service.name),
        min_capacity=sizing.min_count,
        max_capacity=sizing.max_count,
        opts=scope.opts(),
    )
    spec = aws.appautoscaling.PolicyTargetTrackingScalingPolicyConfigurationPredefinedMetricSpecificationArgs
    for suffix, target_value, metric in (
        ("cpu", 60, spec(predefined_metric_type="ECSServiceAverageCPUUtilization")),
        ("requests", 1000, spec(predefined_metric_type="ALBRequestCountPerTarget",
                                resource_label=pulumi.Output.concat(load_balancer.alb.arn_suffix, "/", load_balancer.target_group.arn_suffix))),
    ):
        aws.appautoscaling.Policy(
            f"{name}-scale-{suffix}",
            policy_type="TargetTrackingScaling",
            service_namespace=target.service_namespace,
            scalable_dimension=target.scalable_dimension,
            resource_id=target.resource_id,
            target_tracking_scaling_policy_configuration=aws.appautoscaling.PolicyTargetTrackingScalingPolicyConfigurationArgs(
                target_value=target_value, predefined_metric_specification=metric, scale_in_cooldown=120, scale_out_cooldown=30,
            ),
            opts=scope.opts(),
        )
