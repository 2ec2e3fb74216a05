"""Render the Pulumi program under Pulumi's mocks: no CLI, no credentials, no network.

The mocks answer like AWS would in shape (ARNs, DNS names, canonical zone ids, validation records,
stream ARNs) so that every Output the program reads resolves. Each registered resource is recorded
with its type token, logical name, provider region and inputs as the program set them (Pulumi's
camelCase wire names). ``meridian plan``, the infra tests, the policy checks and the local applier
all read this one record.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pulumi
from pulumi.runtime import mocks as pulumi_mocks

from meridian.topology import Topology

ACCOUNT_ID = "123456789012"
ACCELERATOR_ZONE_ID = "Z2BJ6XQ5FK7U4H"  # Global Accelerator's fixed alias zone
SECRET_KEYS = ("secretString",)


@dataclass(frozen=True)
class PlannedResource:
    type: str
    name: str
    region: str | None  # None: a component, or a custom resource on the default provider
    inputs: dict[str, Any]
    outputs: dict[str, Any]
    custom: bool

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "name": self.name, "region": self.region, "inputs": redact(self.inputs)}


@dataclass
class Plan:
    topology: Topology
    resources: list[PlannedResource] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)

    @property
    def custom(self) -> list[PlannedResource]:
        return [r for r in self.resources if r.custom and not r.type.startswith("pulumi:providers:")]

    @property
    def providers(self) -> list[PlannedResource]:
        return [r for r in self.resources if r.type.startswith("pulumi:providers:")]

    def of_type(self, type_token: str) -> list[PlannedResource]:
        return [r for r in self.resources if r.type == type_token]

    def in_region(self, region: str) -> list[PlannedResource]:
        return [r for r in self.custom if r.region == region]


def redact(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: ("[secret]" if k in SECRET_KEYS else redact(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def _h(*parts: str, n: int = 8) -> str:
    return hashlib.sha256("/".join(parts).encode()).hexdigest()[:n]


class RecordingMocks(pulumi.runtime.Mocks):
    """Answers resource registrations and invokes in AWS's shapes, and records every registration."""

    def __init__(self) -> None:
        self.resources: list[PlannedResource] = []
        self._provider_regions: dict[str, str] = {}
        self._lock = threading.Lock()

    def _region_of(self, provider_ref: str | None) -> str | None:
        if not provider_ref:
            return None
        return self._provider_regions.get(provider_ref.rsplit("::", 1)[-1])

    def new_resource(self, args: pulumi_mocks.MockResourceArgs) -> tuple[str | None, dict[str, Any]]:
        inputs = dict(args.inputs)
        if args.typ.startswith("pulumi:providers:"):
            rid = f"{args.name}-id"
            with self._lock:
                self._provider_regions[rid] = inputs.get("region", "")
                self.resources.append(PlannedResource(args.typ, args.name, inputs.get("region"), inputs, {}, True))
            return rid, inputs
        region = self._region_of(args.provider) if args.custom else None
        rid, extra = computed(args.typ, args.name, inputs, region or "us-east-1")
        outputs = {**inputs, **extra}
        with self._lock:
            self.resources.append(PlannedResource(args.typ, args.name, region, inputs, outputs, bool(args.custom)))
        return (rid if args.custom else None), outputs

    def call(self, args: pulumi_mocks.MockCallArgs) -> tuple[dict[str, Any], list[tuple[str, str]] | None]:
        region = self._region_of(args.provider) or "us-east-1"
        token = args.token
        if token == "aws:index/getAvailabilityZones:getAvailabilityZones":
            names = [f"{region}{s}" for s in "abc"]
            return {"names": names, "zoneIds": [f"{region[:3]}{region[-1]}-az{i + 1}" for i in range(3)], "id": region}, []
        if token == "aws:index/getCallerIdentity:getCallerIdentity":
            return {"accountId": ACCOUNT_ID, "arn": f"arn:aws:iam::{ACCOUNT_ID}:user/plan", "userId": "PLAN", "id": ACCOUNT_ID}, []
        if token == "aws:index/getPartition:getPartition":
            return {"partition": "aws", "dnsSuffix": "amazonaws.com", "reverseDnsPrefix": "com.amazonaws", "id": "aws"}, []
        if token == "aws:secretsmanager/getRandomPassword:getRandomPassword":
            return {"randomPassword": secrets.token_urlsafe(48)[:64], "id": "random"}, []
        raise NotImplementedError(f"the plan mocks do not answer invoke {token}; add it to infra.render")


def computed(typ: str, name: str, inputs: dict[str, Any], region: str) -> tuple[str, dict[str, Any]]:
    """The id and the outputs AWS computes for a resource, in AWS's shapes."""
    acct = ACCOUNT_ID
    rid = f"{name}-{_h(typ, name)}"
    service = typ.split(":")[1].split("/")[0] if ":" in typ else "meridian"
    out: dict[str, Any] = {"arn": f"arn:aws:{service}:{region}:{acct}:{name}"}
    given = inputs.get("name")
    if typ == "aws:lb/loadBalancer:LoadBalancer":
        suffix = f"app/{name[:20]}/{_h(name, n=16)}"
        out |= {
            "arn": f"arn:aws:elasticloadbalancing:{region}:{acct}:loadbalancer/{suffix}",
            "arnSuffix": suffix,
            "dnsName": f"{name[:20]}-{_h(name, n=10)}.{region}.elb.amazonaws.com",
            "zoneId": f"Z{_h('alb-zone', region, n=12).upper()}",
        }
    elif typ == "aws:lb/targetGroup:TargetGroup":
        suffix = f"targetgroup/{name[:20]}/{_h(name, n=16)}"
        out |= {"arn": f"arn:aws:elasticloadbalancing:{region}:{acct}:{suffix}", "arnSuffix": suffix}
    elif typ == "aws:acm/certificate:Certificate":
        domains = [inputs["domainName"], *inputs.get("subjectAlternativeNames", [])]
        # ACM gives one validation record per name, the same in every region of an account.
        out |= {
            "arn": f"arn:aws:acm:{region}:{acct}:certificate/{_h(name, n=32)}",
            "domainValidationOptions": [
                {
                    "domainName": d,
                    "resourceRecordName": f"_{_h('acm', d, n=32)}.{d}.",
                    "resourceRecordType": "CNAME",
                    "resourceRecordValue": f"_{_h('acm-value', d, n=32)}.acm-validations.aws.",
                }
                for d in domains
            ],
        }
    elif typ == "aws:acm/certificateValidation:CertificateValidation":
        out |= {"certificateArn": inputs["certificateArn"]}
    elif typ == "aws:route53/record:Record":
        out |= {"fqdn": str(inputs.get("name", "")).rstrip(".")}
        rid = f"{inputs.get('zoneId')}_{inputs.get('name')}_{inputs.get('type')}_{inputs.get('setIdentifier', '')}"
    elif typ == "aws:route53/zone:Zone":
        zone_id = f"Z{_h('zone', str(given), n=12).upper()}"
        out |= {"zoneId": zone_id, "nameServers": [f"ns-{i}.awsdns-{i}.org" for i in range(4)]}
        rid = zone_id
    elif typ == "aws:route53/healthCheck:HealthCheck":
        rid = f"{_h(name, n=8)}-{_h(name, 'b', n=4)}-{_h(name, 'c', n=4)}-{_h(name, 'd', n=4)}-{_h(name, 'e', n=12)}"
    elif typ == "aws:dynamodb/table:Table":
        table = inputs["name"]
        out |= {
            "arn": f"arn:aws:dynamodb:{region}:{acct}:table/{table}",
            "streamArn": f"arn:aws:dynamodb:{region}:{acct}:table/{table}/stream/2026-01-01T00:00:00.000",
            "streamLabel": "2026-01-01T00:00:00.000",
            "replicas": [
                {**r, "arn": f"arn:aws:dynamodb:{r['regionName']}:{acct}:table/{table}",
                 "streamArn": f"arn:aws:dynamodb:{r['regionName']}:{acct}:table/{table}/stream/2026-01-01T00:00:00.000"}
                for r in inputs.get("replicas", [])
            ],
        }
        rid = table
    elif typ == "aws:secretsmanager/secret:Secret":
        out |= {"arn": f"arn:aws:secretsmanager:{region}:{acct}:secret:{given}-{_h(str(given), n=6)}"}
    elif typ == "aws:iam/role:Role":
        role = f"{name}-{_h(name, n=7)}"
        out |= {"arn": f"arn:aws:iam::{acct}:role/{role}", "name": role}
        rid = role
    elif typ == "aws:ecs/cluster:Cluster":
        out |= {"arn": f"arn:aws:ecs:{region}:{acct}:cluster/{name}", "name": name}
    elif typ == "aws:ecs/service:Service":
        rid = f"arn:aws:ecs:{region}:{acct}:service/{given}"
    elif typ == "aws:lambda/function:Function":
        out |= {"arn": f"arn:aws:lambda:{region}:{acct}:function:{given}",
                "invokeArn": f"arn:aws:apigateway:{region}:lambda:path/functions/{given}/invocations"}
        rid = str(given)
    elif typ == "aws:cloudwatch/eventRule:EventRule":
        out |= {"arn": f"arn:aws:events:{region}:{acct}:rule/{name}", "name": name}
    elif typ in ("aws:cloudwatch/metricAlarm:MetricAlarm", "aws:cloudwatch/compositeAlarm:CompositeAlarm"):
        alarm = inputs.get("name") or inputs.get("alarmName")
        out |= {"arn": f"arn:aws:cloudwatch:{region}:{acct}:alarm:{alarm}"}
    elif typ == "aws:cloudwatch/logGroup:LogGroup":
        out |= {"arn": f"arn:aws:logs:{region}:{acct}:log-group:{given}"}
    elif typ == "aws:globalaccelerator/accelerator:Accelerator":
        out |= {
            "arn": f"arn:aws:globalaccelerator::{acct}:accelerator/{_h(name, n=36)}",
            "dnsName": f"a{_h(name, n=16)}.awsglobalaccelerator.com",
            "hostedZoneId": ACCELERATOR_ZONE_ID,
            "ipSets": [{"ipFamily": "IPv4", "ipAddresses": ["75.2.0.10", "99.83.0.10"]}],
        }
    elif typ == "aws:globalaccelerator/listener:Listener":
        out |= {"arn": f"{inputs['acceleratorArn']}/listener/{_h(name, n=8)}"}
    elif typ == "aws:globalaccelerator/endpointGroup:EndpointGroup":
        out |= {"arn": f"{inputs['listenerArn']}/endpoint-group/{_h(name, n=12)}"}
    out.setdefault("id", rid)
    return rid, out


def render(topology: Topology, define: Callable[[Topology], dict[str, Any]] | None = None) -> Plan:
    """Run the program for ``topology`` under mocks and return every resource and the stack outputs."""
    if define is None:
        from infra.program import define_stack as define

    # Pulumi's runtime uses the thread's current event loop; asyncio.run() elsewhere may have unset it.
    try:
        asyncio.get_event_loop_policy().get_event_loop()
    except RuntimeError:
        asyncio.set_event_loop(asyncio.new_event_loop())
    mocks = RecordingMocks()
    pulumi.runtime.set_mocks(mocks, project=topology.project, stack=topology.stack, preview=False)
    plan = Plan(topology=topology)

    @pulumi.runtime.test
    def run() -> pulumi.Output[Any]:
        outputs = define(topology)
        return pulumi.Output.from_input(outputs).apply(plan.outputs.update)

    run()
    plan.resources = mocks.resources
    return plan
