"""Everything one region serves with: network, TLS, load balancer, Fargate service, IAM, alarms, Lambdas.

The global edge reads only this component's outputs (ALB ARN, DNS name, canonical zone id); it never
reaches into the children.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
import pulumi_aws as aws

from infra import layout
from infra.components.network import Network, NetworkArgs
from meridian.topology import Topology

REPO_ROOT = Path(__file__).resolve().parents[2]
HEALTH_PATH = "/health/ready"
LAMBDA_RUNTIME = "python3.12"

#: Lambda function -> (handler, schedule or None). The code lives in lambdas/ and uses the library.
LAMBDAS = {
    "replication-canary": "lambdas.replication_canary.handler.lambda_handler",
    "conflict-auditor": "lambdas.conflict_auditor.handler.lambda_handler",
    "evacuator": "lambdas.evacuator.handler.lambda_handler",
}


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
    depends_on: Sequence[pulumi.Resource] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.region not in self.topology.regions:
            raise ValueError(f"region {self.region} is not one of the stack's regions {self.topology.regions}")


class Region(pulumi.ComponentResource):
    alb_arn: pulumi.Output[str]
    alb_dns_name: pulumi.Output[str]
    alb_zone_id: pulumi.Output[str]
    service_name: pulumi.Output[str]
    shared_validation_fqdns: list[pulumi.Output[str]]

    def __init__(self, name: str, args: RegionArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("meridian:regional:Region", name, None, opts)
        self._args = args
        self._name = name
        self._child = pulumi.ResourceOptions(parent=self)
        topology, region = args.topology, args.region
        identity = aws.get_caller_identity_output(opts=pulumi.InvokeOutputOptions(parent=self))
        partition = aws.get_partition_output(opts=pulumi.InvokeOutputOptions(parent=self))
        self._account, self._partition = identity.account_id, partition.partition
        azs = aws.get_availability_zones(state="available", opts=pulumi.InvokeOptions(parent=self))

        self.network = Network(
            f"{name}-net",
            NetworkArgs(region=region, cidr=args.cidr, az_names=tuple(sorted(azs.names)[:3])),
            opts=self._child,
        )
        certificate = self._certificate()
        alb_sg, task_sg = self._security_groups()
        alb, target_group, https = self._load_balancer(alb_sg, certificate)
        log_group = aws.cloudwatch.LogGroup(
            f"{name}-service-logs",
            name=f"/meridian/{topology.stack}/{region}/service",
            retention_in_days=topology.sizing.log_retention_days,
            opts=self._child,
        )
        service = self._service(task_sg, target_group, https, log_group)
        self._autoscaling(service, alb, target_group)
        functions = self._lambdas()
        self._alarms(alb, target_group, functions["evacuator"])

        self.alb_arn, self.alb_dns_name, self.alb_zone_id = alb.arn, alb.dns_name, alb.zone_id
        self.service_name = service.name
        self.register_outputs(
            {"alb_arn": alb.arn, "alb_dns_name": alb.dns_name, "alb_zone_id": alb.zone_id, "service_name": service.name}
        )

    # -- IAM -----------------------------------------------------------------------------------------
    def _account_policy(self, build: Callable[[str, str], dict[str, Any]]) -> pulumi.Output[str]:
        """A policy document built from this account's partition and id."""
        return pulumi.Output.all(self._partition, self._account).apply(lambda pa: json.dumps(build(pa[0], pa[1])))

    def _role(self, resource_name: str, principal: str, policies: Mapping[str, pulumi.Input[str]]) -> aws.iam.Role:
        """A role ``principal`` may assume, with one inline policy per ``resource name -> document``."""
        role = aws.iam.Role(resource_name, assume_role_policy=json.dumps(layout.assume_role(principal)), opts=self._child)
        for policy_name, document in policies.items():
            aws.iam.RolePolicy(policy_name, role=role.id, policy=document, opts=self._child)
        return role

    # -- TLS ------------------------------------------------------------------------------------------
    def _certificate(self) -> aws.acm.CertificateValidation:
        args, name = self._args, self._name
        names = layout.certificate_names(args.topology, args.region)
        cert = aws.acm.Certificate(
            f"{name}-cert",
            domain_name=names[0],
            subject_alternative_names=names[1:],
            validation_method="DNS",
            opts=pulumi.ResourceOptions(parent=self, delete_before_replace=False),
        )

        def record_for(domain: str, suffix: str) -> pulumi.Output[str]:
            def pick(opts: list[Any], attr: str) -> str:
                return str(next(getattr(o, attr) for o in opts if o.domain_name == domain))

            opts_out = cert.domain_validation_options
            record = aws.route53.Record(
                f"{name}-cert-validation-{suffix}",
                zone_id=args.hosted_zone_id,
                name=opts_out.apply(lambda o: pick(o, "resource_record_name")),
                type=opts_out.apply(lambda o: pick(o, "resource_record_type")),
                records=[opts_out.apply(lambda o: pick(o, "resource_record_value"))],
                ttl=300,
                opts=pulumi.ResourceOptions(parent=self, provider=args.dns_provider),
            )
            return record.fqdn

        own = [record_for(names[2], "region")]
        if args.shared_validation_fqdns is None:
            shared = [record_for(n, ["apex", "global"][i]) for i, n in enumerate(layout.shared_certificate_names(args.topology))]
        else:
            shared = list(args.shared_validation_fqdns)
        self.shared_validation_fqdns = shared  # type: ignore[assignment]
        return aws.acm.CertificateValidation(
            f"{name}-cert", certificate_arn=cert.arn, validation_record_fqdns=[*shared, *own], opts=self._child
        )

    # -- load balancer --------------------------------------------------------------------------------
    def _security_groups(self) -> tuple[aws.ec2.SecurityGroup, aws.ec2.SecurityGroup]:
        name, port = self._name, self._args.topology.sizing.container_port
        # The API is public and Global Accelerator preserves client addresses, so clients, Route 53 health
        # checkers and Global Accelerator all arrive from anywhere: the ALB admits 443 (and 80, redirected).
        alb_sg = aws.ec2.SecurityGroup(
            f"{name}-alb",
            vpc_id=self.network.vpc.id,
            description="Meridian ALB: HTTPS from clients, Route 53 health checkers and Global Accelerator",
            ingress=[
                aws.ec2.SecurityGroupIngressArgs(protocol="tcp", from_port=p, to_port=p, cidr_blocks=["0.0.0.0/0"],
                                                 ipv6_cidr_blocks=["::/0"])
                for p in (443, 80)
            ],
            egress=[aws.ec2.SecurityGroupEgressArgs(protocol="tcp", from_port=port, to_port=port,
                                                    cidr_blocks=[self._args.cidr])],
            tags={"Name": f"{name}-alb"},
            opts=self._child,
        )
        task_sg = aws.ec2.SecurityGroup(
            f"{name}-tasks",
            vpc_id=self.network.vpc.id,
            description="Meridian tasks: only the ALB reaches them",
            ingress=[aws.ec2.SecurityGroupIngressArgs(protocol="tcp", from_port=port, to_port=port,
                                                      security_groups=[alb_sg.id])],
            egress=[aws.ec2.SecurityGroupEgressArgs(protocol="tcp", from_port=443, to_port=443, cidr_blocks=["0.0.0.0/0"])],
            tags={"Name": f"{name}-tasks"},
            opts=self._child,
        )
        return alb_sg, task_sg

    def _load_balancer(
        self, alb_sg: aws.ec2.SecurityGroup, certificate: aws.acm.CertificateValidation
    ) -> tuple[aws.lb.LoadBalancer, aws.lb.TargetGroup, aws.lb.Listener]:
        name, topology = self._name, self._args.topology
        alb = aws.lb.LoadBalancer(
            f"{name}-alb",
            load_balancer_type="application",
            internal=False,
            security_groups=[alb_sg.id],
            subnets=self.network.public_subnet_ids,
            drop_invalid_header_fields=True,
            idle_timeout=30,
            opts=self._child,
        )
        target_group = aws.lb.TargetGroup(
            f"{name}-tg",
            port=topology.sizing.container_port,
            protocol="HTTP",
            target_type="ip",
            vpc_id=self.network.vpc.id,
            deregistration_delay=30,
            health_check=aws.lb.TargetGroupHealthCheckArgs(
                path=HEALTH_PATH, matcher="200", interval=10, healthy_threshold=2, unhealthy_threshold=2, timeout=5
            ),
            opts=self._child,
        )
        https = aws.lb.Listener(
            f"{name}-https",
            load_balancer_arn=alb.arn,
            port=443,
            protocol="HTTPS",
            ssl_policy="ELBSecurityPolicy-TLS13-1-2-2021-06",
            certificate_arn=certificate.certificate_arn,
            default_actions=[aws.lb.ListenerDefaultActionArgs(type="forward", target_group_arn=target_group.arn)],
            opts=self._child,
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
            opts=self._child,
        )
        return alb, target_group, https

    # -- ECS ------------------------------------------------------------------------------------------
    def _service(
        self,
        task_sg: aws.ec2.SecurityGroup,
        target_group: aws.lb.TargetGroup,
        https: aws.lb.Listener,
        log_group: aws.cloudwatch.LogGroup,
    ) -> aws.ecs.Service:
        args, name = self._args, self._name
        topology, region, sizing = args.topology, args.region, args.topology.sizing
        cluster = aws.ecs.Cluster(
            f"{name}-cluster",
            settings=[aws.ecs.ClusterSettingArgs(name="containerInsights", value="enabled")],
            opts=self._child,
        )
        execution_role = self._role(f"{name}-execution", "ecs-tasks.amazonaws.com", {
            f"{name}-execution-secret": pulumi.Output.from_input(args.secret_arn).apply(
                lambda arn: json.dumps(layout.policy(layout.allow("ReadSessionSecret", ["secretsmanager:GetSecretValue"], [arn])))
            ),
        })
        aws.iam.RolePolicyAttachment(
            f"{name}-execution",
            role=execution_role.name,
            policy_arn=self._partition.apply(lambda p: f"arn:{p}:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy"),
            opts=self._child,
        )
        task_role = self._role(f"{name}-task", "ecs-tasks.amazonaws.com", {
            f"{name}-task-tables": self._account_policy(lambda p, a: layout.task_role_policy(topology, region, partition=p, account=a)),
        })
        environment = service_environment(topology, region)
        container_definitions = pulumi.Output.all(log_group.name, args.secret_arn).apply(
            lambda v: json.dumps(
                [
                    {
                        "name": "meridian",
                        "image": sizing.image,
                        "essential": True,
                        "portMappings": [{"containerPort": sizing.container_port, "protocol": "tcp"}],
                        "environment": [{"name": k, "value": environment[k]} for k in sorted(environment)],
                        "secrets": [
                            {"name": "MERIDIAN_SESSION_KEY", "valueFrom": f"{v[1]}:session::"},
                            {"name": "MERIDIAN_PEER_KEY", "valueFrom": f"{v[1]}:peer::"},
                        ],
                        "readonlyRootFilesystem": True,
                        "user": "10001",
                        "logConfiguration": {
                            "logDriver": "awslogs",
                            "options": {"awslogs-group": v[0], "awslogs-region": region, "awslogs-stream-prefix": "meridian"},
                        },
                    }
                ]
            )
        )
        task_definition = aws.ecs.TaskDefinition(
            f"{name}-task",
            family=f"{layout.resource_prefix(topology)}-{region}",
            cpu=str(sizing.cpu),
            memory=str(sizing.memory),
            network_mode="awsvpc",
            requires_compatibilities=["FARGATE"],
            runtime_platform=aws.ecs.TaskDefinitionRuntimePlatformArgs(operating_system_family="LINUX", cpu_architecture="X86_64"),
            execution_role_arn=execution_role.arn,
            task_role_arn=task_role.arn,
            container_definitions=container_definitions,
            opts=self._child,
        )
        return aws.ecs.Service(
            f"{name}-service",
            name=f"{layout.resource_prefix(topology)}-service",
            cluster=cluster.arn,
            task_definition=task_definition.arn,
            desired_count=sizing.desired_count,
            launch_type="FARGATE",
            network_configuration=aws.ecs.ServiceNetworkConfigurationArgs(
                subnets=self.network.private_subnet_ids, security_groups=[task_sg.id], assign_public_ip=False
            ),
            load_balancers=[
                aws.ecs.ServiceLoadBalancerArgs(
                    target_group_arn=target_group.arn, container_name="meridian", container_port=sizing.container_port
                )
            ],
            deployment_circuit_breaker=aws.ecs.ServiceDeploymentCircuitBreakerArgs(enable=True, rollback=True),
            deployment_minimum_healthy_percent=100,
            deployment_maximum_percent=200,
            health_check_grace_period_seconds=30,
            propagate_tags="SERVICE",
            enable_execute_command=False,
            # The target group is attached through the listener; without this, creation races it.
            opts=pulumi.ResourceOptions(parent=self, depends_on=[https], ignore_changes=["desiredCount"]),
        )

    def _autoscaling(self, service: aws.ecs.Service, alb: aws.lb.LoadBalancer, target_group: aws.lb.TargetGroup) -> None:
        name, sizing = self._name, self._args.topology.sizing
        target = aws.appautoscaling.Target(
            f"{name}-scaling",
            service_namespace="ecs",
            scalable_dimension="ecs:service:DesiredCount",
            resource_id=pulumi.Output.concat("service/", service.cluster.apply(lambda c: c.split("/")[-1]), "/", service.name),
            min_capacity=sizing.min_count,
            max_capacity=sizing.max_count,
            opts=self._child,
        )
        Spec = aws.appautoscaling.PolicyTargetTrackingScalingPolicyConfigurationPredefinedMetricSpecificationArgs
        for suffix, target_value, metric in (
            ("cpu", 60, Spec(predefined_metric_type="ECSServiceAverageCPUUtilization")),
            ("requests", 1000, Spec(predefined_metric_type="ALBRequestCountPerTarget",
                                    resource_label=pulumi.Output.concat(alb.arn_suffix, "/", target_group.arn_suffix))),
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
                opts=self._child,
            )

    # -- Lambdas --------------------------------------------------------------------------------------
    def _lambdas(self) -> dict[str, aws.lambda_.Function]:
        args, name = self._args, self._name
        topology, region = args.topology, args.region
        code = pulumi.AssetArchive(
            {
                "meridian": pulumi.FileArchive(str(REPO_ROOT / "services" / "meridian")),
                "lambdas": pulumi.FileArchive(str(REPO_ROOT / "lambdas")),
            }
        )
        layer = f"arn:aws:lambda:{region}:{layout.POWERTOOLS_LAYER_ACCOUNT}:layer:AWSLambdaPowertoolsPythonV3-python312-x86_64:{layout.POWERTOOLS_LAYER_VERSION}"
        env = lambda_environment(topology, region)
        policies = {
            "replication-canary": lambda p, a: layout.canary_policy(topology, region, partition=p, account=a),
            "conflict-auditor": lambda p, a: layout.auditor_policy(topology, region, partition=p, account=a),
            "evacuator": lambda p, a: layout.evacuator_policy(partition=p, account=a),
        }
        functions: dict[str, aws.lambda_.Function] = {}
        for fn, handler in LAMBDAS.items():
            fn_name = f"{layout.resource_prefix(topology)}-{fn}"
            log_name = f"/aws/lambda/{fn_name}"
            log_group = aws.cloudwatch.LogGroup(
                f"{name}-{fn}-logs", name=log_name, retention_in_days=topology.sizing.log_retention_days, opts=self._child
            )
            role = self._role(f"{name}-{fn}", "lambda.amazonaws.com", {
                f"{name}-{fn}": self._account_policy(policies[fn]),
                f"{name}-{fn}-logs": self._account_policy(lambda p, a, ln=log_name: layout.logs_policy(p, region, a, ln)),
            })
            functions[fn] = aws.lambda_.Function(
                f"{name}-{fn}",
                name=fn_name,
                runtime=LAMBDA_RUNTIME,
                handler=handler,
                role=role.arn,
                code=code,
                layers=[layer],
                timeout=30 if fn != "conflict-auditor" else 60,
                memory_size=256,
                environment=aws.lambda_.FunctionEnvironmentArgs(variables={**env, "MERIDIAN_FUNCTION": fn}),
                logging_config=aws.lambda_.FunctionLoggingConfigArgs(log_format="JSON", log_group=log_group.name),
                opts=pulumi.ResourceOptions(parent=self, depends_on=[log_group]),
            )

        canary = functions["replication-canary"]
        rule = aws.cloudwatch.EventRule(f"{name}-canary-schedule", schedule_expression="rate(1 minute)", opts=self._child)
        aws.cloudwatch.EventTarget(f"{name}-canary-schedule", rule=rule.name, arn=canary.arn, opts=self._child)
        aws.lambda_.Permission(
            f"{name}-canary-schedule", action="lambda:InvokeFunction", function=canary.name,
            principal="events.amazonaws.com", source_arn=rule.arn, opts=self._child,
        )
        # The same schedule drives the evacuator's reconcile: restore after the cooling period.
        evacuator = functions["evacuator"]
        aws.cloudwatch.EventTarget(
            f"{name}-evacuator-reconcile", rule=rule.name, arn=evacuator.arn, input=json.dumps({"action": "reconcile"}), opts=self._child
        )
        aws.lambda_.Permission(
            f"{name}-evacuator-reconcile", action="lambda:InvokeFunction", function=evacuator.name,
            principal="events.amazonaws.com", source_arn=rule.arn, opts=self._child,
        )
        auditor = functions["conflict-auditor"]
        for table, stream_arn in sorted(args.stream_arns.items()):
            aws.lambda_.EventSourceMapping(
                f"{name}-audit-{table}",
                event_source_arn=stream_arn,
                function_name=auditor.arn,
                starting_position="LATEST",
                batch_size=100,
                maximum_retry_attempts=10,
                bisect_batch_on_function_error=True,
                function_response_types=["ReportBatchItemFailures"],
                opts=pulumi.ResourceOptions(parent=self, depends_on=list(args.depends_on)),
            )
        return functions

    # -- alarms ---------------------------------------------------------------------------------------
    def _alarms(self, alb: aws.lb.LoadBalancer, target_group: aws.lb.TargetGroup, evacuator: aws.lambda_.Function) -> None:
        args, name = self._args, self._name
        topology, region = args.topology, args.region
        lb_dims = {"LoadBalancer": alb.arn_suffix}
        five_xx = aws.cloudwatch.MetricAlarm(
            f"{name}-alb-5xx-rate",
            name=f"{layout.resource_prefix(topology)}-{region}-alb-5xx-rate",
            alarm_description="More than 5% of requests in this region end in a 5xx",
            comparison_operator="GreaterThanThreshold",
            threshold=5,
            evaluation_periods=3,
            datapoints_to_alarm=3,
            treat_missing_data="notBreaching",
            metric_queries=[
                _metric("errors", "AWS/ApplicationELB", "HTTPCode_Target_5XX_Count", lb_dims),
                _metric("requests", "AWS/ApplicationELB", "RequestCount", lb_dims),
                aws.cloudwatch.MetricAlarmMetricQueryArgs(
                    id="rate", expression="100 * errors / MAX([requests, 1])", label="5xx %", return_data=True
                ),
            ],
            opts=self._child,
        )
        tg_dims = {"LoadBalancer": alb.arn_suffix, "TargetGroup": target_group.arn_suffix}
        unhealthy = aws.cloudwatch.MetricAlarm(
            f"{name}-healthy-hosts-low",
            name=f"{layout.resource_prefix(topology)}-{region}-healthy-hosts-low",
            alarm_description="Fewer healthy tasks than the autoscaling floor",
            namespace="AWS/ApplicationELB",
            metric_name="HealthyHostCount",
            dimensions=tg_dims,
            statistic="Minimum",
            period=60,
            evaluation_periods=3,
            comparison_operator="LessThanThreshold",
            threshold=topology.sizing.min_count,
            treat_missing_data="breaching",
            opts=self._child,
        )
        aws.cloudwatch.MetricAlarm(
            f"{name}-unhealthy-hosts",
            name=f"{layout.resource_prefix(topology)}-{region}-unhealthy-hosts",
            alarm_description="Tasks failing the /health/ready check",
            namespace="AWS/ApplicationELB",
            metric_name="UnHealthyHostCount",
            dimensions=tg_dims,
            statistic="Maximum",
            period=60,
            evaluation_periods=3,
            comparison_operator="GreaterThanThreshold",
            threshold=0,
            opts=self._child,
        )
        # DynamoDB publishes ReplicationLatency in the region that sends, one series per receiving region.
        for peer in topology.regions:
            if peer == region:
                continue
            shared = [
                table
                for zone in topology.zones_of(region)
                if peer in zone.regions
                for table in topology.tables_in_region(region)[zone.name].values()
            ]
            if not shared:
                continue
            queries = [
                _metric(f"t{i}", "AWS/DynamoDB", "ReplicationLatency", {"TableName": t, "ReceivingRegion": peer}, stat="Average")
                for i, t in enumerate(sorted(shared))
            ]
            queries.append(
                aws.cloudwatch.MetricAlarmMetricQueryArgs(
                    id="worst", expression=f"MAX([{', '.join(q.id for q in queries)}])", label="worst table", return_data=True
                )
            )
            aws.cloudwatch.MetricAlarm(
                f"{name}-replication-to-{peer}",
                name=f"{layout.resource_prefix(topology)}-replication-{region}-to-{peer}",
                alarm_description=f"Replication from {region} to {peer} slower than 10 s (AWS states no SLA; typical is ~1 s)",
                comparison_operator="GreaterThanThreshold",
                threshold=10_000,
                evaluation_periods=5,
                treat_missing_data="notBreaching",
                metric_queries=queries,
                opts=self._child,
            )
        tables = layout.service_table_names(topology, region)
        throttle_queries = [
            _metric(f"{kind[0]}{i}", "AWS/DynamoDB", f"{kind}ThrottleEvents", {"TableName": t}, stat="Sum")
            for i, t in enumerate(tables)
            for kind in ("Read", "Write")
        ]
        throttle_queries.append(
            aws.cloudwatch.MetricAlarmMetricQueryArgs(
                id="throttles", expression=f"SUM([{', '.join(q.id for q in throttle_queries)}])", label="throttles", return_data=True
            )
        )
        aws.cloudwatch.MetricAlarm(
            f"{name}-throttles",
            name=f"{layout.resource_prefix(topology)}-{region}-dynamodb-throttles",
            alarm_description="DynamoDB throttled requests on this region's replicas",
            comparison_operator="GreaterThanThreshold",
            threshold=0,
            evaluation_periods=3,
            treat_missing_data="notBreaching",
            metric_queries=throttle_queries,
            opts=self._child,
        )
        aws.cloudwatch.MetricAlarm(
            f"{name}-heartbeat-stale",
            name=f"{layout.resource_prefix(topology)}-{region}-heartbeat-stale",
            alarm_description="A peer's replication heartbeat has not advanced here for 3 minutes",
            namespace="Meridian/Replication",
            metric_name="HeartbeatStalenessSeconds",
            dimensions={"ReceivingRegion": region},
            statistic="Maximum",
            period=60,
            evaluation_periods=3,
            comparison_operator="GreaterThanThreshold",
            threshold=180,
            treat_missing_data="breaching",
            opts=self._child,
        )
        composite = aws.cloudwatch.CompositeAlarm(
            f"{name}-evacuate",
            alarm_name=f"{layout.resource_prefix(topology)}-{region}-evacuate",
            alarm_description="5xx rate high and healthy tasks low: evacuate this region (dial to 0)",
            alarm_rule=pulumi.Output.concat("ALARM(\"", five_xx.name, "\") AND ALARM(\"", unhealthy.name, "\")"),
            alarm_actions=[evacuator.arn],
            ok_actions=[evacuator.arn],
            opts=self._child,
        )
        aws.lambda_.Permission(
            f"{name}-evacuate-alarm", action="lambda:InvokeFunction", function=evacuator.name,
            principal="lambda.alarms.cloudwatch.amazonaws.com", source_arn=composite.arn, opts=self._child,
        )


def _metric(
    query_id: str, namespace: str, metric: str, dimensions: Mapping[str, pulumi.Input[str]], *, stat: str = "Sum"
) -> aws.cloudwatch.MetricAlarmMetricQueryArgs:
    return aws.cloudwatch.MetricAlarmMetricQueryArgs(
        id=query_id,
        metric=aws.cloudwatch.MetricAlarmMetricQueryMetricArgs(
            namespace=namespace, metric_name=metric, dimensions=dict(dimensions), period=60, stat=stat
        ),
    )


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


def lambda_environment(topology: Topology, region: str) -> dict[str, str]:
    return {
        "MERIDIAN_REGION": region,
        "MERIDIAN_TOPOLOGY": topology.to_json(),
        "MERIDIAN_ACCELERATOR_NAME": layout.resource_prefix(topology),
        "POWERTOOLS_SERVICE_NAME": "meridian",
        "POWERTOOLS_METRICS_NAMESPACE": "Meridian/Replication",
    }
