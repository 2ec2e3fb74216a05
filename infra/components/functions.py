"""One region's Lambdas: the replication canary (every minute), the conflict auditor (on every zone
table's stream in the region) and the evacuator (on the region's evacuate alarm, and the same schedule's
reconcile). The code is one reproducible zip of exactly what the handlers import (lambda_archive)."""

from __future__ import annotations

import functools
import json
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pulumi
import pulumi_aws as aws

from infra import layout
from infra.components import lambda_archive
from infra.components.iam import role_with_policies
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
        path = lambda_archive.write_archive(LAMBDAS.values())
    except OSError:  # a read-only checkout: the same bytes elsewhere are the same archive to Pulumi
        path = lambda_archive.write_archive(LAMBDAS.values(), Path(tempfile.gettempdir()) / "meridian-build" / "lambda")
    return pulumi.FileArchive(str(path))


def functions(
    scope: Scope,
    *,
    stream_arns: Mapping[str, pulumi.Input[str]],
    depends_on: Sequence[pulumi.Resource] = (),
) -> dict[str, aws.lambda_.Function]:
    name, topology, region = scope.name, scope.topology, scope.region
    code = code_archive()
    layer = (
        f"arn:aws:lambda:{region}:{layout.POWERTOOLS_LAYER_ACCOUNT}:layer:AWSLambdaPowertoolsPythonV3-python312-x86_64:"
        f"{layout.POWERTOOLS_LAYER_VERSION}"
    )
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
