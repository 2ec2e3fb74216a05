"""Apply the rendered Pulumi program to the local run's AWS (the embedded moto server, or a LocalStack;
meridian_local.backend), with boto3.

Everything the local run uses is created here from the program's own resources: DynamoDB tables in
their provider region, their ``replicas`` asked for as AWS takes them (UpdateTable ReplicaUpdates; a
backend that creates none, like moto, gets a table per replica region), with the declared key schema,
indexes, streams and TTL; the session-key secret in
every region; Route 53 zone, health checks and records; VPC, subnets, security groups, ALB, target
group and listeners; ECS cluster, task definition and service; IAM roles; log groups; CloudWatch
alarms; Lambda functions (created, not run: moto needs Docker to invoke). A table or index the service
needs and the program lacks is therefore missing locally too.

Resources with no local meaning (NAT gateways, route tables, VPC endpoints, autoscaling, schedules,
event source mappings, certificate validation) are listed as skipped. Global Accelerator is absent
from moto: its endpoint groups become the emulated edge's dials.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from infra.render import Plan, PlannedResource
from meridian_local.backend import BackendError, create_global_table, existing_tables
from meridian_local.validation import validate_requests

SECRET_SIG = "4dabf18193072939515e22adb298388d"  # Pulumi's signature key for secret values
NO_RETRIES = Config(retries={"max_attempts": 1, "mode": "standard"}, connect_timeout=5, read_timeout=30)


@dataclass
class RegionRuntime:
    region: str
    environment: dict[str, str]  # exactly what the ECS task definition declares, secrets resolved
    container_port: int


@dataclass
class Applied:
    endpoint: str
    regions: dict[str, RegionRuntime] = field(default_factory=dict)
    #: physical table -> regions holding a replica (provider region first)
    tables: dict[str, list[str]] = field(default_factory=dict)
    #: physical table -> (hash key, range key or None)
    keys: dict[str, tuple[str, str | None]] = field(default_factory=dict)
    dials: dict[str, int] = field(default_factory=dict)
    health: dict[str, dict[str, Any]] = field(default_factory=dict)  # region -> path, interval, threshold
    created: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    unsupported: list[str] = field(default_factory=list)  # calls the embedded AWS does not implement


class Applier:
    def __init__(self, plan: Plan, endpoint: str, *, make_client: Callable[[str, str], Any] | None = None) -> None:
        self.plan, self.endpoint = plan, endpoint
        #: the backend's client factory (service, region); default: boto3 against ``endpoint``
        self.make_client = make_client
        self.result = Applied(endpoint=endpoint)
        self._ids: dict[str, str] = {}  # mock id or ARN -> moto's
        self._clients: dict[tuple[str, str], Any] = {}
        self._secret_values: dict[str, str] = {}  # mock secret id -> JSON value
        self._secret_arns: dict[str, str] = {}  # mock ARN (any region) -> secret name

    def client(self, service: str, region: str) -> Any:
        key = (service, region)
        if key not in self._clients:
            # Every request is checked against AWS's service model first: moto accepts what AWS refuses.
            raw = self.make_client(service, region) if self.make_client else boto3.client(
                service, region_name=region, endpoint_url=self.endpoint, config=NO_RETRIES,
                aws_access_key_id="meridian-local", aws_secret_access_key="meridian-local",
            )
            self._clients[key] = validate_requests(raw)
        return self._clients[key]

    def real(self, value: Any) -> Any:
        """Replace mock ids and ARNs with the ones moto gave, recursively."""
        if isinstance(value, str):
            return self._ids.get(value, value)
        if isinstance(value, float) and value.is_integer():
            return int(value)  # numbers travel as protobuf doubles
        if isinstance(value, list):
            return [self.real(v) for v in value]
        if isinstance(value, dict):
            if SECRET_SIG in value:  # a Pulumi secret as the mocks record it
                return self.real(value.get("value"))
            return {k: self.real(v) for k, v in value.items()}
        return value

    def apply(self) -> Applied:
        handlers: dict[str, Callable[[PlannedResource], None]] = {
            "aws:dynamodb/table:Table": self.table,
            "aws:secretsmanager/secret:Secret": self.secret,
            "aws:secretsmanager/secretVersion:SecretVersion": self.secret_version,
            "aws:route53/zone:Zone": self.zone,
            "aws:route53/healthCheck:HealthCheck": self.health_check,
            "aws:route53/record:Record": self.record,
            "aws:ec2/vpc:Vpc": self.vpc,
            "aws:ec2/subnet:Subnet": self.subnet,
            "aws:ec2/securityGroup:SecurityGroup": self.security_group,
            "aws:acm/certificate:Certificate": self.certificate,
            "aws:lb/loadBalancer:LoadBalancer": self.load_balancer,
            "aws:lb/targetGroup:TargetGroup": self.target_group,
            "aws:lb/listener:Listener": self.listener,
            "aws:ecs/cluster:Cluster": self.cluster,
            "aws:ecs/taskDefinition:TaskDefinition": self.task_definition,
            "aws:ecs/service:Service": self.service,
            "aws:iam/role:Role": self.role,
            "aws:cloudwatch/logGroup:LogGroup": self.log_group,
            "aws:cloudwatch/metricAlarm:MetricAlarm": self.metric_alarm,
            "aws:cloudwatch/compositeAlarm:CompositeAlarm": self.composite_alarm,
            "aws:lambda/function:Function": self.function,
            "aws:globalaccelerator/endpointGroup:EndpointGroup": self.endpoint_group,
        }
        tables = {str(t.inputs["name"]): t.region or "" for t in self.plan.of_type("aws:dynamodb/table:Table")}
        if left := existing_tables(lambda region: self.client("dynamodb", region), tables):
            raise BackendError(
                f"the AWS at {self.endpoint} already holds {len(left)} table(s) of stack {self.plan.topology.stack} from an earlier run "
                f"(e.g. {left[0]}), kept because Meridian never deletes a backend's data; delete them "
                f"(awslocal dynamodb delete-table --table-name ...) or restart LocalStack, then run `meridian up` again"
            )
        self.delegated_zone()
        for resource in self.plan.custom:
            handler = handlers.get(resource.type)
            kind = resource.type.split(":")[1]
            if handler is None:
                self.result.skipped[kind] = self.result.skipped.get(kind, 0) + 1
                continue
            handler(PlannedResource(resource.type, resource.name, resource.region, self.real(resource.inputs), resource.outputs, resource.custom))
            self.result.created[kind] = self.result.created.get(kind, 0) + 1
        return self.result

    def _map(self, resource: PlannedResource, real_id: str | None = None, real_arn: str | None = None) -> None:
        if real_id is not None and resource.outputs.get("id"):
            self._ids[str(resource.outputs["id"])] = real_id
        if real_arn is not None and resource.outputs.get("arn"):
            self._ids[str(resource.outputs["arn"])] = real_arn

    # -- data ------------------------------------------------------------------------------------------
    def table(self, r: PlannedResource) -> None:
        i = r.inputs
        name = i["name"]
        keys = [{"AttributeName": i["hashKey"], "KeyType": "HASH"}]
        if i.get("rangeKey"):
            keys.append({"AttributeName": i["rangeKey"], "KeyType": "RANGE"})
        args: dict[str, Any] = {
            "TableName": name,
            "KeySchema": keys,
            "AttributeDefinitions": [{"AttributeName": a["name"], "AttributeType": a["type"]} for a in i["attributes"]],
            "BillingMode": i.get("billingMode", "PAY_PER_REQUEST"),
            "StreamSpecification": {"StreamEnabled": bool(i.get("streamEnabled")), "StreamViewType": i.get("streamViewType")},
            "SSESpecification": {"Enabled": bool((i.get("serverSideEncryption") or {}).get("enabled"))},
            "DeletionProtectionEnabled": bool(i.get("deletionProtectionEnabled")),
            "Tags": [{"Key": k, "Value": v} for k, v in (i.get("tags") or {}).items()],
        }
        indexes = [
            {
                "IndexName": g["name"],
                "KeySchema": [{"AttributeName": k["attributeName"], "KeyType": k["keyType"]} for k in g["keySchemas"]],
                "Projection": {"ProjectionType": g.get("projectionType", "ALL")},
            }
            for g in i.get("globalSecondaryIndexes") or []
        ]
        if indexes:
            args["GlobalSecondaryIndexes"] = indexes
        regions = [r.region or "", *[rep["regionName"] for rep in i.get("replicas") or []]]
        # Replicas are asked for as AWS takes them; a backend that creates none (moto) gets a table per region.
        created = create_global_table(lambda region: self.client("dynamodb", region), args, regions[0], regions[1:])
        for region in created:
            if i.get("ttl"):
                self.client("dynamodb", region).update_time_to_live(
                    TableName=name, TimeToLiveSpecification={"Enabled": True, "AttributeName": i["ttl"]["attributeName"]})
        self.result.tables[name] = regions
        self.result.keys[name] = (i["hashKey"], i.get("rangeKey"))

    def secret(self, r: PlannedResource) -> None:
        i = r.inputs
        regions = [r.region or "", *[rep["region"] for rep in i.get("replicas") or []]]
        self._secret_arns[str(r.outputs["arn"])] = i["name"]
        for region in regions:
            # Secrets Manager replicas keep the primary's ARN apart from the region.
            self._secret_arns[str(r.outputs["arn"]).replace(f":{r.region}:", f":{region}:")] = i["name"]
            self.client("secretsmanager", region).create_secret(Name=i["name"], Description=i.get("description", ""))
        self._secret_regions = regions

    def secret_version(self, r: PlannedResource) -> None:
        name = next(iter(set(self._secret_arns.values())))
        for region in self._secret_regions:
            self.client("secretsmanager", region).put_secret_value(SecretId=name, SecretString=r.inputs["secretString"])

    def resolve_secret(self, value_from: str, region: str) -> str:
        """ECS ``valueFrom`` of the form ``<secret arn>:<json key>::`` read from moto, as ECS would."""
        arn, _, rest = value_from.partition(":secret:")
        name_and_key = rest.split(":")
        mock_arn = f"{arn}:secret:{name_and_key[0]}"
        name = self._secret_arns[mock_arn]
        secret = self.client("secretsmanager", region).get_secret_value(SecretId=name)["SecretString"]
        json_key = name_and_key[1] if len(name_and_key) > 1 else ""
        return str(json.loads(secret)[json_key]) if json_key else secret

    # -- DNS and edge -------------------------------------------------------------------------------------
    def delegated_zone(self) -> None:
        """The stack's records go to a zone the program does not own (``meridian:hostedZoneId``, or the
        preview's placeholder): locally that zone is created here, as the user creates it on AWS."""
        zone_id = self.plan.outputs.get("hostedZoneId")
        if not zone_id or self.plan.of_type("aws:route53/zone:Zone"):
            return
        resp = self.client("route53", "us-east-1").create_hosted_zone(
            Name=self.plan.topology.domain, CallerReference=f"meridian-{self.plan.topology.stack}"
        )
        self._ids[str(zone_id)] = resp["HostedZone"]["Id"].split("/")[-1]

    def zone(self, r: PlannedResource) -> None:
        resp = self.client("route53", "us-east-1").create_hosted_zone(Name=r.inputs["name"], CallerReference=r.name)
        self._map(r, real_id=resp["HostedZone"]["Id"].split("/")[-1])
        self._ids[str(r.outputs["zoneId"])] = resp["HostedZone"]["Id"].split("/")[-1]

    def health_check(self, r: PlannedResource) -> None:
        i = self.real(r.inputs)
        config: dict[str, Any]
        if i["type"] == "CLOUDWATCH_METRIC":
            config = {"Type": "CLOUDWATCH_METRIC", "InsufficientDataHealthStatus": i["insufficientDataHealthStatus"],
                      "AlarmIdentifier": {"Region": i["cloudwatchAlarmRegion"], "Name": i["cloudwatchAlarmName"]}}
        elif i["type"] == "CALCULATED":
            config = {"Type": "CALCULATED", "ChildHealthChecks": i["childHealthchecks"], "HealthThreshold": i["childHealthThreshold"]}
        else:
            config = {
                "Type": i["type"], "FullyQualifiedDomainName": i["fqdn"], "Port": i["port"], "ResourcePath": i["resourcePath"],
                "RequestInterval": i["requestInterval"], "FailureThreshold": i["failureThreshold"], "EnableSNI": i.get("enableSni", True),
            }
        resp = self.client("route53", "us-east-1").create_health_check(CallerReference=r.name, HealthCheckConfig=config)
        self._map(r, real_id=resp["HealthCheck"]["Id"])
        if "fqdn" in i:
            region = i["fqdn"].split(".", 1)[0]
            self.result.health[region] = {"path": i["resourcePath"], "interval": i["requestInterval"], "threshold": i["failureThreshold"]}

    def record(self, r: PlannedResource) -> None:
        i = self.real(r.inputs)
        rrset: dict[str, Any] = {"Name": i["name"], "Type": i["type"]}
        if i.get("aliases"):
            a = i["aliases"][0]
            rrset["AliasTarget"] = {"HostedZoneId": a["zoneId"], "DNSName": a["name"], "EvaluateTargetHealth": a["evaluateTargetHealth"]}
        else:
            rrset |= {"TTL": i.get("ttl", 300), "ResourceRecords": [{"Value": v} for v in i.get("records", [])]}
        if i.get("setIdentifier"):
            rrset["SetIdentifier"] = i["setIdentifier"]
            rrset["Region"] = i["latencyRoutingPolicies"][0]["region"]
        if i.get("healthCheckId"):
            rrset["HealthCheckId"] = i["healthCheckId"]
        self.client("route53", "us-east-1").change_resource_record_sets(
            HostedZoneId=i["zoneId"], ChangeBatch={"Changes": [{"Action": "UPSERT", "ResourceRecordSet": rrset}]}
        )

    def endpoint_group(self, r: PlannedResource) -> None:
        self.result.dials[r.inputs["endpointGroupRegion"]] = int(r.inputs.get("trafficDialPercentage", 100))

    # -- network and load balancing --------------------------------------------------------------------
    def vpc(self, r: PlannedResource) -> None:
        vpc = self.client("ec2", r.region or "").create_vpc(CidrBlock=r.inputs["cidrBlock"])["Vpc"]
        self._map(r, real_id=vpc["VpcId"])

    def subnet(self, r: PlannedResource) -> None:
        i = self.real(r.inputs)
        subnet = self.client("ec2", r.region or "").create_subnet(VpcId=i["vpcId"], CidrBlock=i["cidrBlock"], AvailabilityZone=i["availabilityZone"])
        self._map(r, real_id=subnet["Subnet"]["SubnetId"])

    def security_group(self, r: PlannedResource) -> None:
        i = self.real(r.inputs)
        sg = self.client("ec2", r.region or "").create_security_group(GroupName=r.name, Description=i["description"], VpcId=i["vpcId"])
        self._map(r, real_id=sg["GroupId"])

    def certificate(self, r: PlannedResource) -> None:
        i = r.inputs
        arn = self.client("acm", r.region or "").request_certificate(
            DomainName=i["domainName"], SubjectAlternativeNames=i.get("subjectAlternativeNames", []), ValidationMethod="DNS"
        )["CertificateArn"]
        self._map(r, real_arn=arn)

    def load_balancer(self, r: PlannedResource) -> None:
        i = self.real(r.inputs)
        lb = self.client("elbv2", r.region or "").create_load_balancer(
            Name=f"{r.name}"[:32], Subnets=i["subnets"], SecurityGroups=i["securityGroups"], Type="application", Scheme="internet-facing"
        )["LoadBalancers"][0]
        self._map(r, real_arn=lb["LoadBalancerArn"])
        self._ids[str(r.outputs["dnsName"])] = lb["DNSName"]
        self._ids[str(r.outputs["zoneId"])] = lb["CanonicalHostedZoneId"]

    def target_group(self, r: PlannedResource) -> None:
        i = self.real(r.inputs)
        hc = i.get("healthCheck") or {}
        tg = self.client("elbv2", r.region or "").create_target_group(
            Name=r.name[:32], Protocol=i["protocol"], Port=i["port"], VpcId=i["vpcId"], TargetType=i["targetType"],
            HealthCheckPath=hc.get("path", "/"),
        )["TargetGroups"][0]
        self._map(r, real_arn=tg["TargetGroupArn"])

    def listener(self, r: PlannedResource) -> None:
        i = self.real(r.inputs)
        actions = []
        for a in i["defaultActions"]:
            if a["type"] == "forward":
                actions.append({"Type": "forward", "TargetGroupArn": a["targetGroupArn"]})
            else:
                red = a["redirect"]
                actions.append({"Type": "redirect", "RedirectConfig": {"Protocol": red["protocol"], "Port": red["port"], "StatusCode": red["statusCode"]}})
        args: dict[str, Any] = {"LoadBalancerArn": i["loadBalancerArn"], "Protocol": i["protocol"], "Port": i["port"], "DefaultActions": actions}
        if i.get("certificateArn"):
            args |= {"Certificates": [{"CertificateArn": i["certificateArn"]}], "SslPolicy": i["sslPolicy"]}
        listener = self.client("elbv2", r.region or "").create_listener(**args)["Listeners"][0]
        self._map(r, real_arn=listener["ListenerArn"])

    # -- compute ---------------------------------------------------------------------------------------------
    def cluster(self, r: PlannedResource) -> None:
        c = self.client("ecs", r.region or "").create_cluster(clusterName=r.name, settings=[{"name": "containerInsights", "value": "enabled"}])
        self._map(r, real_arn=c["cluster"]["clusterArn"])

    def task_definition(self, r: PlannedResource) -> None:
        i = self.real(r.inputs)
        region = r.region or ""
        containers = json.loads(i["containerDefinitions"])
        td = self.client("ecs", region).register_task_definition(
            family=i["family"], containerDefinitions=containers, networkMode=i["networkMode"], cpu=i["cpu"], memory=i["memory"],
            requiresCompatibilities=i["requiresCompatibilities"], executionRoleArn=i["executionRoleArn"], taskRoleArn=i["taskRoleArn"],
        )["taskDefinition"]
        self._map(r, real_arn=td["taskDefinitionArn"])
        (container,) = containers
        env = {e["name"]: e["value"] for e in container["environment"]}
        for secret in container.get("secrets", []):
            env[secret["name"]] = self.resolve_secret(secret["valueFrom"], region)
        port = int(container["portMappings"][0]["containerPort"])
        self.result.regions[region] = RegionRuntime(region=region, environment=env, container_port=port)

    def service(self, r: PlannedResource) -> None:
        i = self.real(r.inputs)
        net = i["networkConfiguration"]
        self.client("ecs", r.region or "").create_service(
            cluster=i["cluster"], serviceName=i["name"], taskDefinition=i["taskDefinition"], desiredCount=i["desiredCount"],
            launchType="FARGATE",
            networkConfiguration={"awsvpcConfiguration": {"subnets": net["subnets"], "securityGroups": net["securityGroups"],
                                                          "assignPublicIp": "ENABLED" if net.get("assignPublicIp") else "DISABLED"}},
            loadBalancers=[{"targetGroupArn": lb["targetGroupArn"], "containerName": lb["containerName"], "containerPort": lb["containerPort"]}
                           for lb in i["loadBalancers"]],
        )

    def role(self, r: PlannedResource) -> None:
        role = self.client("iam", "us-east-1").create_role(RoleName=str(r.outputs["name"]), AssumeRolePolicyDocument=r.inputs["assumeRolePolicy"])
        self._map(r, real_arn=role["Role"]["Arn"])

    def log_group(self, r: PlannedResource) -> None:
        logs = self.client("logs", r.region or "")
        logs.create_log_group(logGroupName=r.inputs["name"])
        logs.put_retention_policy(logGroupName=r.inputs["name"], retentionInDays=r.inputs["retentionInDays"])

    def metric_alarm(self, r: PlannedResource) -> None:
        i = self.real(r.inputs)
        args: dict[str, Any] = {
            "AlarmName": i["name"], "AlarmDescription": i.get("alarmDescription", ""), "ComparisonOperator": i["comparisonOperator"],
            "Threshold": float(i["threshold"]), "EvaluationPeriods": i["evaluationPeriods"],
        }
        if i.get("metricQueries"):
            args["Metrics"] = [
                {"Id": q["id"], "ReturnData": bool(q.get("returnData", False)),
                 **({"Expression": q["expression"], "Label": q.get("label", q["id"])} if q.get("expression") else {
                     "MetricStat": {"Metric": {"Namespace": q["metric"]["namespace"], "MetricName": q["metric"]["metricName"],
                                               "Dimensions": [{"Name": k, "Value": v} for k, v in q["metric"]["dimensions"].items()]},
                                    "Period": q["metric"]["period"], "Stat": q["metric"]["stat"]}})}
                for q in i["metricQueries"]
            ]
        else:
            args |= {"Namespace": i["namespace"], "MetricName": i["metricName"], "Statistic": i["statistic"], "Period": i["period"],
                     "Dimensions": [{"Name": k, "Value": v} for k, v in (i.get("dimensions") or {}).items()]}
        self.client("cloudwatch", r.region or "").put_metric_alarm(**args)

    def composite_alarm(self, r: PlannedResource) -> None:
        i = self.real(r.inputs)
        try:
            self.client("cloudwatch", r.region or "").put_composite_alarm(
                AlarmName=i["alarmName"], AlarmRule=i["alarmRule"], AlarmDescription=i.get("alarmDescription", "")
            )
        except ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") != 500:
                raise
            self.result.unsupported.append(f"PutCompositeAlarm {i['alarmName']} (the backend answered {exc.response['ResponseMetadata']['HTTPStatusCode']})")

    def function(self, r: PlannedResource) -> None:
        i = self.real(r.inputs)
        self.client("lambda", r.region or "").create_function(
            FunctionName=i["name"], Runtime=i["runtime"], Role=i["role"], Handler=i["handler"], Code={"ZipFile": _lambda_zip()},
            Environment={"Variables": i["environment"]["variables"]}, Timeout=i.get("timeout", 30), MemorySize=i.get("memorySize", 256),
        )


_ZIP: bytes | None = None


def _lambda_zip() -> bytes:
    """The archive the program deploys: exactly the modules the handlers import, byte-for-byte."""
    global _ZIP
    if _ZIP is None:
        from infra.components.functions import ARCHIVE_HANDLERS
        from infra.components.lambda_archive import build_zip, package_files

        _ZIP = build_zip(package_files(ARCHIVE_HANDLERS))
    return _ZIP


def apply(plan: Plan, endpoint: str, *, make_client: Callable[[str, str], Any] | None = None) -> Applied:
    return Applier(plan, endpoint, make_client=make_client).apply()
