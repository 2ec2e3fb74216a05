"""One region's Lambdas: the replication canary (every minute), the conflict auditor (on every zone
table's stream in the region) and the evacuator (on the region's evacuate alarm, and the same schedule's
reconcile). The code is one reproducible zip of exactly what the handlers import (lambda_archive).

Once per stack, in the primary region: the key rotator (:class:`KeyRotation`), on a schedule of
``meridian:keyRotationDays``, from the same zip."""

from __future__ import annotations

import functools
import json
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pulumi
import pulumi_aws as aws

from infra import layout
from infra.components import lambda_archive
from infra.components.iam import SECRET_ROTATE_ACTIONS, role_with_policies, secret_policy
from infra.components.scope import Scope
from meridian.topology import Topology

LAMBDA_RUNTIME = "python3.12"
#: Powertools' service name. Powertools adds it to every metric as the dimension ``service``, so an alarm
#: on a metric the Lambdas emit names it among its dimensions.
POWERTOOLS_SERVICE = "meridian"
METRICS_NAMESPACE = "Meridian/Replication"

#: Lambda function -> handler. The code lives in lambdas/ and uses the library.
LAMBDAS = {
    "replication-canary": "lambdas.replication_canary.handler.lambda_handler",
    "conflict-auditor": "lambdas.conflict_auditor.handler.lambda_handler",
    "evacuator": "lambdas.evacuator.handler.lambda_handler",
}
#: The once-per-stack key rotator (primary region only; see KeyRotation).
KEY_ROTATOR = "key-rotator"
KEY_ROTATOR_HANDLER = "lambdas.key_rotator.handler.lambda_handler"
#: Every function runs the same zip: what all these handlers import.
ARCHIVE_HANDLERS: tuple[str, ...] = (*LAMBDAS.values(), KEY_ROTATOR_HANDLER)


def lambda_environment(topology: Topology, region: str) -> dict[str, str]:
    return {
        "MERIDIAN_REGION": region,
        "MERIDIAN_TOPOLOGY": topology.to_json(),
        "MERIDIAN_ACCELERATOR_NAME": layout.resource_prefix(topology),
        "POWERTOOLS_SERVICE_NAME": POWERTOOLS_SERVICE,
        "POWERTOOLS_METRICS_NAMESPACE": METRICS_NAMESPACE,
    }


def _logs_policy(partition: str, account: str, *, region: str, log_group: str) -> dict[str, Any]:
    return layout.logs_policy(partition, region, account, log_group)


def code_archive() -> pulumi.FileArchive:
    """The zip every function runs (written under build/; Pulumi hashes its bytes, not its path)."""
    try:
        path = lambda_archive.write_archive(ARCHIVE_HANDLERS)
    except OSError:  # a read-only checkout: the same bytes elsewhere are the same archive to Pulumi
        path = lambda_archive.write_archive(ARCHIVE_HANDLERS, Path(tempfile.gettempdir()) / "meridian-build" / "lambda")
    return pulumi.FileArchive(str(path))


def powertools_layer(region: str) -> str:
    return (f"arn:aws:lambda:{region}:{layout.POWERTOOLS_LAYER_ACCOUNT}:layer:AWSLambdaPowertoolsPythonV3-python312-x86_64:"
            f"{layout.POWERTOOLS_LAYER_VERSION}")


def functions(
    scope: Scope,
    *,
    stream_arns: Mapping[str, pulumi.Input[str]],
    depends_on: Sequence[pulumi.Resource] = (),
) -> dict[str, aws.lambda_.Function]:
    name, topology, region = scope.name, scope.topology, scope.region
    code = code_archive()
    layer = powertools_layer(region)
    env = lambda_environment(topology, region)
    policies: dict[str, Callable[[str, str], dict[str, Any]]] = {
        "replication-canary": lambda p, a: layout.canary_policy(topology, region, partition=p, account=a),
        "conflict-auditor": lambda p, a: layout.auditor_policy(topology, region, partition=p, account=a),
        "evacuator": lambda p, a: layout.evacuator_policy(topology, region, partition=p, account=a),
    }
    functions: dict[str, aws.lambda_.Function] = {}
    grants: dict[str, list[pulumi.Resource]] = {}
    for fn, handler in LAMBDAS.items():
        fn_name = f"{scope.prefix}-{fn}"
        log_name = f"/aws/lambda/{fn_name}"
        log_group = aws.cloudwatch.LogGroup(
            f"{name}-{fn}-logs", name=log_name, retention_in_days=topology.sizing.log_retention_days, opts=scope.opts()
        )
        role = role_with_policies(scope, f"{name}-{fn}", "lambda.amazonaws.com", {
            f"{name}-{fn}": scope.account_policy(policies[fn]),
            f"{name}-{fn}-logs": scope.account_policy(functools.partial(_logs_policy, region=region, log_group=log_name)),
        })
        grants[fn] = role.grants
        functions[fn] = aws.lambda_.Function(
            f"{name}-{fn}",
            name=fn_name,
            runtime=LAMBDA_RUNTIME,
            handler=handler,
            role=role.role.arn,
            code=code,
            layers=[layer],
            timeout=30 if fn != "conflict-auditor" else 60,
            memory_size=256,
            environment=aws.lambda_.FunctionEnvironmentArgs(variables={**env, "MERIDIAN_FUNCTION": fn}),
            logging_config=aws.lambda_.FunctionLoggingConfigArgs(log_format="JSON", log_group=log_group.name),
            # The first invocation may come before IAM has the role's policies unless they exist first.
            opts=scope.opts(depends_on=[log_group, *role.grants]),
        )

    canary = functions["replication-canary"]
    rule = aws.cloudwatch.EventRule(f"{name}-canary-schedule", schedule_expression="rate(1 minute)", opts=scope.opts())
    aws.cloudwatch.EventTarget(f"{name}-canary-schedule", rule=rule.name, arn=canary.arn, opts=scope.opts())
    aws.lambda_.Permission(
        f"{name}-canary-schedule", action="lambda:InvokeFunction", function=canary.name,
        principal="events.amazonaws.com", source_arn=rule.arn, opts=scope.opts(),
    )
    # The same schedule drives the evacuator's reconcile: restore after the cooling period.
    evacuator = functions["evacuator"]
    aws.cloudwatch.EventTarget(
        f"{name}-evacuator-reconcile", rule=rule.name, arn=evacuator.arn, input=json.dumps({"action": "reconcile"}), opts=scope.opts()
    )
    aws.lambda_.Permission(
        f"{name}-evacuator-reconcile", action="lambda:InvokeFunction", function=evacuator.name,
        principal="events.amazonaws.com", source_arn=rule.arn, opts=scope.opts(),
    )
    auditor = functions["conflict-auditor"]
    for table, stream_arn in sorted(stream_arns.items()):
        aws.lambda_.EventSourceMapping(
            f"{name}-audit-{table}",
            event_source_arn=stream_arn,
            function_name=auditor.arn,
            starting_position="LATEST",
            batch_size=100,
            maximum_retry_attempts=10,
            bisect_batch_on_function_error=True,
            function_response_types=["ReportBatchItemFailures"],
            # Creating a mapping checks that the function's role may read the stream: the policy first.
            opts=scope.opts(depends_on=[*depends_on, *grants["conflict-auditor"]]),
        )
    return functions


# -- the key rotator: once per stack, in the primary region ---------------------------------------------
def key_rotator_environment(topology: Topology, secret_arn: str) -> dict[str, str]:
    return {
        "MERIDIAN_REGION": topology.secret_region,
        "MERIDIAN_KEYS_SECRET_ARN": secret_arn,
        "POWERTOOLS_SERVICE_NAME": POWERTOOLS_SERVICE,
    }


@dataclass(frozen=True, kw_only=True)
class KeyRotationArgs:
    topology: Topology
    #: the secret in the primary region (the one the replicas copy; a replica cannot be written)
    secret_arn: pulumi.Input[str]
    #: the primary region's provider
    provider: aws.Provider
    #: the primary region's alarm topic: a failed rotation notifies it
    alarm_topic_arn: pulumi.Input[str]

    def __post_init__(self) -> None:
        days = self.topology.operations.key_rotation_days
        if days <= 0:
            raise ValueError("meridian:keyRotationDays is 0: declare no KeyRotation")


class KeyRotation(pulumi.ComponentResource):
    """The key-rotator Lambda (meridian.rotation, the code path of `meridian keys rotate`) on an EventBridge
    schedule of ``meridian:keyRotationDays``, allowed to read and write the stack's secret and nothing else,
    and an alarm on its errors."""

    function: aws.lambda_.Function
    schedule: aws.cloudwatch.EventRule

    def __init__(self, name: str, args: KeyRotationArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("meridian:functions:KeyRotation", name, None,
                         pulumi.ResourceOptions.merge(pulumi.ResourceOptions(providers={"aws": args.provider}), opts))
        topology, region = args.topology, args.topology.secret_region
        identity = aws.get_caller_identity_output(opts=pulumi.InvokeOutputOptions(parent=self))
        partition = aws.get_partition_output(opts=pulumi.InvokeOutputOptions(parent=self))
        scope = Scope(name=name, parent=self, topology=topology, region=region, account=identity.account_id,
                      partition=partition.partition)
        fn_name = f"{scope.prefix}-{KEY_ROTATOR}"
        log_name = f"/aws/lambda/{fn_name}"
        log_group = aws.cloudwatch.LogGroup(f"{name}-logs", name=log_name, retention_in_days=topology.sizing.log_retention_days,
                                            opts=scope.opts())
        role = role_with_policies(scope, name, "lambda.amazonaws.com", {
            f"{name}-secret": secret_policy("RotateKeyRings", SECRET_ROTATE_ACTIONS, args.secret_arn),
            f"{name}-logs": scope.account_policy(functools.partial(_logs_policy, region=region, log_group=log_name)),
        })
        self.function = aws.lambda_.Function(
            name,
            name=fn_name,
            description="Rotates the session, peer and user-token keys of the stack's secret (meridian keys rotate)",
            runtime=LAMBDA_RUNTIME,
            handler=KEY_ROTATOR_HANDLER,
            role=role.role.arn,
            code=code_archive(),
            layers=[powertools_layer(region)],
            timeout=30,
            memory_size=256,
            environment=aws.lambda_.FunctionEnvironmentArgs(
                variables=pulumi.Output.from_input(args.secret_arn).apply(lambda arn: key_rotator_environment(topology, arn))
            ),
            logging_config=aws.lambda_.FunctionLoggingConfigArgs(log_format="JSON", log_group=log_group.name),
            opts=scope.opts(depends_on=[log_group, *role.grants]),
        )
        days = topology.operations.key_rotation_days
        self.schedule = aws.cloudwatch.EventRule(
            f"{name}-schedule",
            description=f"Rotate the stack's signing keys every {days} days (meridian:keyRotationDays)",
            schedule_expression=f"rate({days} days)",
            opts=scope.opts(),
        )
        aws.cloudwatch.EventTarget(f"{name}-schedule", rule=self.schedule.name, arn=self.function.arn, opts=scope.opts())
        aws.lambda_.Permission(
            f"{name}-schedule", action="lambda:InvokeFunction", function=self.function.name,
            principal="events.amazonaws.com", source_arn=self.schedule.arn, opts=scope.opts(),
        )
        notify = [args.alarm_topic_arn]
        self.failed = aws.cloudwatch.MetricAlarm(
            f"{name}-failed",
            name=f"{scope.prefix}-key-rotation-failed",
            alarm_description="The key rotator failed: the secret was not rotated (see docs/runbooks/key-rotation.md)",
            namespace="AWS/Lambda",
            metric_name="Errors",
            dimensions={"FunctionName": self.function.name},
            statistic="Sum",
            period=3600,
            evaluation_periods=1,
            comparison_operator="GreaterThanOrEqualToThreshold",
            threshold=1,
            treat_missing_data="notBreaching",
            alarm_actions=notify,
            ok_actions=notify,
            opts=scope.opts(),
        )
        self.register_outputs({"function_name": self.function.name, "schedule": self.schedule.schedule_expression})
