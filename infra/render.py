"""Render the Pulumi program under Pulumi's mocks: no CLI, no credentials, no network.

The mocks answer like AWS would in shape (ARNs, DNS names, canonical zone ids, validation records,
stream ARNs) so that every Output the program reads resolves. Each registered resource is recorded
with its type token, logical name, provider region and inputs as the program set them (Pulumi's
camelCase wire names). ``meridian plan``, the infra tests, the policy checks and the local applier
all read this one record.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import json
import logging
import runpy
import secrets
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
from pulumi.runtime import mocks as pulumi_mocks

from meridian.stackfile import StackConfig, StackConfigError, read_stack, stack_config
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
    #: every data-source invoke as (token, provider region, arguments)
    invokes: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    #: what the program logged (pulumi.log), e.g. "warning: ..."
    messages: list[str] = field(default_factory=list)

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
        #: every invoke as (token, provider region, arguments), for tests of data-source inputs
        self.invokes: list[tuple[str, str, dict[str, Any]]] = []
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
        with self._lock:
            self.invokes.append((token, region, dict(args.args)))
        if token == "aws:index/getAvailabilityZones:getAvailabilityZones":
            # As AWS answers an account that opted in to a Local Zone: `state=available` alone lists it
            # (and it sorts first); only the `opt-in-status = opt-in-not-required` filter leaves it out.
            names = [f"{region}{s}" for s in "abc"]
            filters = {f.get("name"): f.get("values") for f in args.args.get("filters") or []}
            if filters.get("opt-in-status") != ["opt-in-not-required"]:
                names = [f"{region}-lz-1a", *names]
            return {"names": names, "zoneIds": [f"{region[:3]}{region[-1]}-az{i + 1}" for i in range(len(names))], "id": region}, []
        if token == "aws:index/getCallerIdentity:getCallerIdentity":
            return {"accountId": ACCOUNT_ID, "arn": f"arn:aws:iam::{ACCOUNT_ID}:user/plan", "userId": "PLAN", "id": ACCOUNT_ID}, []
        if token == "aws:index/getPartition:getPartition":
            return {"partition": "aws", "dnsSuffix": "amazonaws.com", "reverseDnsPrefix": "com.amazonaws", "id": "aws"}, []
        if token == "aws:ecr/getAuthorizationToken:getAuthorizationToken":
            registry = args.args.get("registryId") or ACCOUNT_ID
            return {"userName": "AWS", "password": "plan-token", "authorizationToken": "QVdTOnBsYW4tdG9rZW4=",
                    "proxyEndpoint": f"https://{registry}.dkr.ecr.{region}.amazonaws.com", "expiresAt": "2099-01-01T00:00:00Z",
                    "id": region}, []
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
    elif typ == "aws:lb/listenerRule:ListenerRule":
        out |= {"arn": f"arn:aws:elasticloadbalancing:{region}:{acct}:listener-rule/app/{name[:20]}/{_h(name, n=16)}/"
                       f"{_h(name, 'listener', n=16)}/{_h(name, 'rule', n=16)}"}
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
    elif typ == "aws:sns/topic:Topic":
        out |= {"arn": f"arn:aws:sns:{region}:{acct}:{given}"}
    elif typ == "aws:kms/key:Key":
        key_id = f"{_h(name, n=8)}-{_h(name, 'b', n=4)}-{_h(name, 'c', n=4)}-{_h(name, 'd', n=4)}-{_h(name, 'e', n=12)}"
        out |= {"arn": f"arn:aws:kms:{region}:{acct}:key/{key_id}", "keyId": key_id}
        rid = key_id
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
    elif typ == "aws:ecr/repository:Repository":
        out |= {"arn": f"arn:aws:ecr:{region}:{acct}:repository/{given}", "registryId": acct,
                "repositoryUrl": f"{acct}.dkr.ecr.{region}.amazonaws.com/{given}"}
        rid = str(given)
    elif typ == "docker-build:index:Image":
        digest = "sha256:" + hashlib.sha256(json.dumps(inputs.get("tags", []), sort_keys=True).encode()).hexdigest()
        tags = inputs.get("tags") or []
        out = {**out, "digest": digest, "ref": f"{str(tags[0]).rsplit(':', 1)[0]}@{digest}" if tags else digest,
               "contextHash": _h(name, n=64)}
        out.pop("arn", None)
    out.setdefault("id", rid)
    return rid, out


class RenderError(Exception):
    """The program refused to run (bad config, a deploy precondition): one line for the user."""


#: The file `pulumi up` runs (Pulumi.yaml: ``main: infra/``).
ENTRY_POINT = Path(__file__).with_name("__main__.py")
PROJECT_FILE = Path(__file__).resolve().parents[1] / "Pulumi.yaml"


class _Log(logging.Handler):
    """Collects what the program logs through ``pulumi.log`` (warnings such as a missing hosted zone)."""

    def __init__(self, sink: list[str]) -> None:
        super().__init__(logging.INFO)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self.sink.append(f"{record.levelname.lower()}: {record.getMessage()}")


def render_stack(path: str | Path, *, preview: bool = True, project_file: str | Path | None = None) -> Plan:
    """Run ``infra/__main__.py`` under mocks with the stack's config as the Pulumi CLI hands it.

    ``preview=True`` is `pulumi preview` (and the local run); ``preview=False`` is `pulumi up`, where
    deploy-only preconditions (a delegated hosted zone) are enforced.
    """
    try:
        config = read_stack(path, project_file=project_file)
    except StackConfigError as exc:
        raise RenderError(str(exc)) from None
    return render_config(config, preview=preview)


def render_values(
    config: Mapping[str, Any], *, stack: str = "test", project: str = "meridian", preview: bool = True
) -> Plan:
    """Like :func:`render_stack` for a stack file whose ``config:`` is ``config`` (keys with or without
    the ``meridian:`` namespace), merged with ``Pulumi.yaml``'s declarations and defaults."""
    import yaml

    project_doc = yaml.safe_load(PROJECT_FILE.read_text()) if PROJECT_FILE.is_file() else {}
    try:
        cli = stack_config(project, stack, config, project_doc=project_doc)
    except StackConfigError as exc:
        raise RenderError(str(exc)) from None
    return render_config(cli, preview=preview)


def render_config(config: StackConfig, *, preview: bool = True, entry_point: Path = ENTRY_POINT) -> Plan:
    """Run the entry point under mocks with ``config`` (strings, as the CLI passes them)."""
    # Pulumi's runtime uses the thread's current event loop; asyncio.run() elsewhere may have unset it.
    try:
        asyncio.get_event_loop_policy().get_event_loop()
    except RuntimeError:
        asyncio.set_event_loop(asyncio.new_event_loop())
    messages: list[str] = []
    logger = logging.getLogger("meridian.plan.program")
    logger.propagate = False
    logger.handlers = [_Log(messages)]
    mocks = RecordingMocks()
    pulumi.runtime.settings.ROOT.set(None)  # a fresh root stack: outputs of an earlier render must not leak
    pulumi.runtime.set_mocks(mocks, project=config.project, stack=config.stack, preview=preview, logger=logger)
    pulumi.runtime.set_all_config(dict(config.values), sorted(config.secret_keys))
    result: dict[str, Any] = {}

    @pulumi.runtime.test  # type: ignore[untyped-decorator]
    def run() -> pulumi.Output[Any]:
        from infra.config import read_topology

        runpy.run_path(str(entry_point), run_name="__main__")
        result["topology"] = read_topology()
        stack = pulumi.runtime.get_root_resource()
        exported = dict(getattr(stack, "outputs", {}) or {})
        return pulumi.Output.from_input(exported).apply(lambda o: result.__setitem__("outputs", o))

    # The runtime creates ~30 asyncio tasks per resource; the cyclic collector, re-triggered by every few
    # hundred of them, took half of a 4-region render (bench/plan.py). Nothing here needs it until the end.
    collecting = gc.isenabled()
    gc.disable()
    try:
        run()
    except pulumi.RunError as exc:
        raise RenderError(str(exc)) from None
    finally:
        if collecting:
            gc.enable()
    plan = Plan(topology=result["topology"], outputs=dict(result.get("outputs") or {}))
    plan.resources = mocks.resources
    plan.invokes = mocks.invokes
    plan.messages = messages
    return plan
