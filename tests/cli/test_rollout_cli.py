"""`meridian rollout`: waves driven through a Pulumi stack (duck-typed like ``pulumi.automation.Stack``) and
ECS / CloudWatch / ECR clients; every request the fakes get is checked against botocore's real models, and one
rollout runs against botocore Stubbers."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import boto3
import botocore.session
import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber
from botocore.validate import validate_parameters
from pulumi.automation import events

from meridian.topology import load_topology
from meridian_cli.main import UsageError, main
from meridian_cli.rollout import Report, Rollout, StackFacts, Timing, stack_facts

ROOT = Path(__file__).resolve().parents[2]
DIGEST = "sha256:" + "ab" * 32
OLD_DIGEST = "sha256:" + "cd" * 32
ACCOUNT = "123456789012"
REPO = "meridian-test/service"
REGIONS = ("us-east-1", "eu-west-1", "eu-central-1", "ap-southeast-1")


def ref(region: str, digest: str = DIGEST) -> str:
    return f"{ACCOUNT}.dkr.ecr.{region}.amazonaws.com/{REPO}@{digest}"


IMAGE = ref("us-east-1")
_MODELS: dict[str, Any] = {}


def checked(service: str, operation: str, params: dict[str, Any]) -> None:
    """Refuse a request AWS would refuse: the parameters are validated against botocore's model."""
    if service not in _MODELS:
        _MODELS[service] = botocore.session.get_session().get_service_model(service)
    validate_parameters(params, _MODELS[service].operation_model(operation).input_shape)


# -- a small AWS: each region's service, task definitions and alarms -------------------------------------------
@dataclass
class World:
    clock: Clock
    running: dict[str, int]
    log: list[tuple[str, ...]] = field(default_factory=list)
    #: region -> task definition ARN the service runs; ARN -> image
    service_td: dict[str, str] = field(default_factory=dict)
    images: dict[str, str] = field(default_factory=dict)
    #: region -> (status, reason, triggered alarms) of the current service deployment, and polls left in progress
    deployment: dict[str, tuple[str, str, tuple[str, ...]]] = field(default_factory=dict)
    in_progress: dict[str, int] = field(default_factory=dict)
    #: how a region takes a new image: "ok", "alarm" (its 5xx alarm fires 2 min later), "breaker" (ECS puts the
    #: old task definition back and reports a finished deployment), "ecs-alarm" (ECS rolls back on its alarm)
    behaviour: dict[str, str] = field(default_factory=dict)
    alarms: dict[str, dict[str, str]] = field(default_factory=dict)
    fire_at: dict[str, float] = field(default_factory=dict)
    missing_in_ecr: set[str] = field(default_factory=set)
    revisions: int = 0

    def __post_init__(self) -> None:
        for region in self.running:
            self.service_td[region] = self.register(region, ref(region, OLD_DIGEST))
            self.deployment[region] = ("SUCCESSFUL", "", ())
            self.alarms[region] = dict.fromkeys(alarm_names(region), "OK")

    def register(self, region: str, image: str) -> str:
        self.revisions += 1
        arn = f"arn:aws:ecs:{region}:{ACCOUNT}:task-definition/meridian-test-{region}:{self.revisions}"
        self.images[arn] = image
        return arn

    def deploy(self, region: str, image: str) -> None:
        self.log.append(("deploy", region, image))
        old, new = self.service_td[region], self.register(region, image)
        how = self.behaviour.get(region, "ok")
        self.in_progress[region] = 1
        if how == "breaker":
            self.service_td[region] = old
            self.deployment[region] = ("SUCCESSFUL", "rolled back", ())
        elif how == "ecs-alarm":
            self.deployment[region] = ("ROLLBACK_SUCCESSFUL", "alarm", (f"meridian-test-{region}-alb-latency-p99",))
            self.service_td[region] = old
        else:
            self.service_td[region] = new
            self.deployment[region] = ("SUCCESSFUL", "", ())
            if how == "alarm":
                self.fire_at[region] = self.clock.now + 120
        if image == ref(region, OLD_DIGEST) or image.endswith(":built"):
            self.fire_at.pop(region, None)  # restored: the alarm clears

    def alarm_state(self, region: str, name: str) -> str:
        if name.endswith("-alb-5xx-rate") and region in self.fire_at and self.clock.now >= self.fire_at[region]:
            return "ALARM"
        return self.alarms[region][name]


@dataclass
class Clock:
    now: float = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def alarm_names(region: str) -> tuple[str, ...]:
    return (f"meridian-test-{region}-alb-5xx-rate", f"meridian-test-{region}-alb-latency-p99", f"meridian-test-{region}-evacuate")


class FakeECS:
    def __init__(self, world: World, region: str) -> None:
        self.world, self.region = world, region

    def describe_services(self, **params: Any) -> dict[str, Any]:
        checked("ecs", "DescribeServices", params)
        w, r = self.world, self.region
        w.log.append(("describe_services", r))
        assert params["cluster"] == f"arn:aws:ecs:{r}:{ACCOUNT}:cluster/{r}-cluster" and params["services"] == ["meridian-test-service"]
        return {"services": [{
            "serviceName": "meridian-test-service", "taskDefinition": w.service_td[r], "desiredCount": w.running[r],
            "runningCount": w.running[r], "currentServiceDeployment": f"arn:aws:ecs:{r}:{ACCOUNT}:service-deployment/c/s/{w.revisions}",
        }]}

    def describe_service_deployments(self, **params: Any) -> dict[str, Any]:
        checked("ecs", "DescribeServiceDeployments", params)
        w, r = self.world, self.region
        status, reason, triggered = w.deployment[r]
        if w.in_progress.get(r):
            w.in_progress[r] -= 1
            status = "IN_PROGRESS"
        return {"serviceDeployments": [{"serviceDeploymentArn": params["serviceDeploymentArns"][0], "status": status,
                                        "statusReason": reason, "alarms": {"status": "MONITORING", "triggeredAlarmNames": list(triggered)}}]}

    def describe_task_definition(self, **params: Any) -> dict[str, Any]:
        checked("ecs", "DescribeTaskDefinition", params)
        image = self.world.images[params["taskDefinition"]]
        return {"taskDefinition": {"taskDefinitionArn": params["taskDefinition"], "containerDefinitions": [{"name": "meridian", "image": image}]}}


class FakeCloudWatch:
    def __init__(self, world: World, region: str) -> None:
        self.world, self.region = world, region

    def describe_alarms(self, **params: Any) -> dict[str, Any]:
        checked("cloudwatch", "DescribeAlarms", params)
        self.world.log.append(("alarms", self.region))
        known = self.world.alarms[self.region]
        alarms = [{"AlarmName": n, "StateValue": self.world.alarm_state(self.region, n)} for n in params["AlarmNames"] if n in known]
        return {"MetricAlarms": [a for a in alarms if not a["AlarmName"].endswith("evacuate")],
                "CompositeAlarms": [a for a in alarms if a["AlarmName"].endswith("evacuate")]}


class FakeECR:
    def __init__(self, world: World, region: str) -> None:
        self.world, self.region = world, region

    def describe_images(self, **params: Any) -> dict[str, Any]:
        checked("ecr", "DescribeImages", params)
        assert params["repositoryName"] == REPO
        if self.region in self.world.missing_in_ecr:
            raise ClientError({"Error": {"Code": "ImageNotFoundException", "Message": "not found"}}, "DescribeImages")
        return {"imageDetails": [{"imageDigest": params["imageIds"][0]["imageDigest"]}]}


def clients_for(world: World) -> Callable[[str, str], Any]:
    kinds = {"ecs": FakeECS, "cloudwatch": FakeCloudWatch, "ecr": FakeECR}
    return lambda service, region: kinds[service](world, region)


# -- a Pulumi stack: config, preview, up ---------------------------------------------------------------------
KEY = re.compile(r'^meridian:release\["([a-z0-9-]+)"\]$')


class FakeStack:
    """Duck-typed like pulumi.automation.Stack: `up` deploys the regions whose pin moved since the last `up`
    (an unpinned region runs the built image); ``drift`` lists regions some other change would also restart."""

    def __init__(self, world: World, pins: dict[str, str] | None = None, *, drift: set[str] | None = None) -> None:
        self.world, self.pins = world, dict(pins or {})
        self.applied = dict(self.pins)
        self.drift = set(drift or ())
        self.calls: list[tuple[str, ...]] = []
        self.failing_ups = 0

    def get_all_config(self) -> dict[str, Any]:
        return {"meridian:region": SimpleNamespace(value="x"), "meridian:release": SimpleNamespace(value=json.dumps(self.pins))}

    def set_config(self, key: str, value: Any, *, path: bool = False) -> None:
        match = KEY.match(key)
        assert path and match, key
        self.pins[match[1]] = value.value
        self.calls.append(("set", match[1], value.value))

    def remove_config(self, key: str, *, path: bool = False) -> None:
        match = KEY.match(key)
        assert path and match, key
        del self.pins[match[1]]
        self.calls.append(("remove", match[1]))

    def _moved(self) -> set[str]:
        return {r for r in self.world.running if self.pins.get(r) != self.applied.get(r)}

    def preview(self, *, on_event: Callable[[events.EngineEvent], None]) -> None:
        self.calls.append(("preview",))
        for seq, region in enumerate(sorted(self._moved() | self.drift)):
            meta = events.StepEventMetadata(op=events.OpType.REPLACE, urn=f"urn:pulumi:test::meridian::meridian:regional:Region$"
                                            f"aws:ecs/taskDefinition:TaskDefinition::{region}-task",
                                            type="aws:ecs/taskDefinition:TaskDefinition", provider="")
            on_event(events.EngineEvent(seq, 0, resource_pre_event=events.ResourcePreEvent(metadata=meta)))
        same = events.StepEventMetadata(op=events.OpType.SAME, urn="urn:pulumi:test::meridian::aws:ecs/service:Service::us-east-1-service",
                                        type="aws:ecs/service:Service", provider="")
        on_event(events.EngineEvent(99, 0, resource_pre_event=events.ResourcePreEvent(metadata=same)))

    def up(self, *, on_output: Callable[[str], None] | None = None) -> None:
        self.calls.append(("up",))
        if self.failing_ups:
            self.failing_ups -= 1
            self.applied = dict(self.pins)
            raise RuntimeError("code: 255\nstderr: error: update failed")
        for region in sorted(self._moved()):
            self.world.deploy(region, self.pins.get(region) or f"{ACCOUNT}.dkr.ecr.{region}.amazonaws.com/{REPO}:built")
        self.applied = dict(self.pins)

    def outputs(self) -> dict[str, Any]:
        return {"regions": SimpleNamespace(value={
            r: {"serviceName": "meridian-test-service", "clusterArn": f"arn:aws:ecs:{r}:{ACCOUNT}:cluster/{r}-cluster"}
            for r in self.world.running
        })}


def facts(regions: tuple[str, ...] = REGIONS, **config: Any) -> StackFacts:
    topology = load_topology({"regions": list(regions), **config}, stack="test")
    return StackFacts(topology, {r: alarm_names(r) for r in regions}, {r: alarm_names(r)[:2] for r in regions}, REPO)


@dataclass
class Run:
    world: World
    stack: FakeStack
    clock: Clock
    said: list[str]
    report: Report | None = None


def rollout(running: dict[str, int], *, pins: dict[str, str] | None = None, behaviour: dict[str, str] | None = None,
            wave_size: int = 1, drift: set[str] | None = None, prepare: Callable[[World], None] | None = None, **config: Any) -> Run:
    clock = Clock()
    world = World(clock, dict(running), behaviour=dict(behaviour or {}))
    if prepare:
        prepare(world)
    stack = FakeStack(world, {r: ref(r, OLD_DIGEST) for r in running} if pins is None else pins, drift=drift)
    said: list[str] = []
    run = Run(world, stack, clock, said)
    runner = Rollout(stack=stack, facts=facts(tuple(running), **config), image=IMAGE, wave_size=wave_size, clients=clients_for(world),
                     timing=Timing(poll_seconds=30, deploy_timeout_seconds=600, clock=clock, sleep=clock.sleep), say=said.append)
    run.report = runner.run()
    return run


LOAD = {"us-east-1": 6, "eu-west-1": 4, "eu-central-1": 2, "ap-southeast-1": 3}


class TestWaves:
    def test_pins_move_wave_by_wave(self) -> None:
        """Least loaded first (eu-central-1), then the rest two at a time, least loaded first; one `up` per wave,
        each after its pins and a preview; every region pinned to the digest in its own registry."""
        run = rollout(LOAD, wave_size=2)
        assert run.report is not None and run.report.ok
        assert run.stack.calls == [
            ("set", "eu-central-1", ref("eu-central-1")), ("preview",), ("up",),
            ("set", "ap-southeast-1", ref("ap-southeast-1")), ("set", "eu-west-1", ref("eu-west-1")), ("preview",), ("up",),
            ("set", "us-east-1", ref("us-east-1")), ("preview",), ("up",),
        ]
        assert run.stack.pins == {r: ref(r) for r in LOAD}
        assert run.report.released == ["eu-central-1", "ap-southeast-1", "eu-west-1", "us-east-1"]
        assert {r: run.world.images[run.world.service_td[r]] for r in LOAD} == {r: ref(r) for r in LOAD}

    def test_each_wave_waits_for_the_deployment_and_bakes(self) -> None:
        """Alarms are checked before a wave, the deployment is polled until done, and the next wave starts only
        after the whole bake (10 minutes by default) with the alarms OK."""
        run = rollout({"us-east-1": 2, "eu-west-1": 1})
        log = run.world.log
        first_deploy = log.index(("deploy", "eu-west-1", ref("eu-west-1")))
        assert ("alarms", "eu-west-1") in log[:first_deploy], "preflight before the change"
        second = log.index(("deploy", "us-east-1", ref("us-east-1")))
        between = log[first_deploy:second]
        assert between.count(("describe_services", "eu-west-1")) >= 2, "polled until ECS finished"
        assert between.count(("alarms", "eu-west-1")) >= 600 / 30, "watched through the bake"
        assert run.clock.now >= 2 * 600
        assert any("baking 10 min" in line for line in run.said)

    def test_configured_canary_region(self) -> None:
        run = rollout(LOAD, canaryRegion="us-east-1", wave_size=3)
        assert [c for c in run.stack.calls if c[0] == "set"][0] == ("set", "us-east-1", ref("us-east-1"))
        assert run.stack.calls.count(("up",)) == 2

    def test_resumed_rollout_skips_regions_on_the_release(self) -> None:
        run = rollout(LOAD, pins={"eu-central-1": ref("eu-central-1"), "us-east-1": ref("us-east-1", OLD_DIGEST)}, wave_size=3)
        assert run.report is not None and run.report.ok
        assert ("set", "eu-central-1", ref("eu-central-1")) not in run.stack.calls
        assert run.stack.calls.count(("up",)) == 1


class TestStops:
    def test_alarm_in_a_later_wave_restores_that_wave_and_stops(self) -> None:
        """eu-west-1's 5xx alarm fires during its bake: its previous pin comes back (one more `up`) and the
        rollout stops there, naming the region, the alarm and the regions that never got the release."""
        run = rollout(LOAD, behaviour={"eu-west-1": "alarm"})
        report = run.report
        assert report is not None and not report.ok and report.changed and report.restored
        assert report.stopped_in == ["eu-west-1"] and report.alarms == ["meridian-test-eu-west-1-alb-5xx-rate"]
        assert report.released == ["eu-central-1", "ap-southeast-1"] and report.never == ["us-east-1"]
        assert run.stack.calls[-5:] == [
            ("set", "eu-west-1", ref("eu-west-1")), ("preview",), ("up",), ("set", "eu-west-1", ref("eu-west-1", OLD_DIGEST)), ("up",),
        ]
        assert "us-east-1" not in {c[1] for c in run.stack.calls if c[0] == "set"}
        assert run.world.images[run.world.service_td["eu-west-1"]] == ref("eu-west-1", OLD_DIGEST)
        line = run.said[-1]
        assert line.startswith("rollout stopped: stopped in eu-west-1; alarm meridian-test-eu-west-1-alb-5xx-rate")
        assert "never received it: us-east-1" in line

    def test_region_without_a_previous_pin_returns_to_the_built_image(self) -> None:
        run = rollout({"us-east-1": 2, "eu-west-1": 1}, pins={}, behaviour={"eu-west-1": "alarm"})
        assert run.stack.calls[-2:] == [("remove", "eu-west-1"), ("up",)]
        assert run.stack.pins == {}
        assert run.report is not None and run.report.never == ["us-east-1"]

    def test_circuit_breaker_rollback_that_reports_success_is_caught(self) -> None:
        """ECS put the old task definition back and calls the deployment finished: the rollout sees the old image."""
        run = rollout(LOAD, behaviour={"eu-central-1": "breaker"})
        report = run.report
        assert report is not None and not report.ok and report.stopped_in == ["eu-central-1"]
        assert "rolled back" in report.reason and ref("eu-central-1", OLD_DIGEST) in report.reason
        assert report.released == [] and report.never == ["ap-southeast-1", "eu-west-1", "us-east-1"]
        assert run.stack.pins["eu-central-1"] == ref("eu-central-1", OLD_DIGEST)

    def test_ecs_alarm_rollback_names_the_alarm(self) -> None:
        run = rollout(LOAD, behaviour={"eu-central-1": "ecs-alarm"})
        assert run.report is not None and run.report.alarms == ["meridian-test-eu-central-1-alb-latency-p99"]

    def test_alarm_already_firing_refuses_the_wave_untouched(self) -> None:
        def firing(world: World) -> None:
            world.alarms["eu-central-1"]["meridian-test-eu-central-1-evacuate"] = "ALARM"

        run = rollout(LOAD, prepare=firing)
        report = run.report
        assert report is not None and not report.ok and not report.changed and not report.restored
        assert report.alarms == ["meridian-test-eu-central-1-evacuate"] and "already in ALARM" in report.reason
        assert run.stack.calls == [] and not [e for e in run.world.log if e[0] == "deploy"]
        assert report.never == ["eu-central-1", "ap-southeast-1", "eu-west-1", "us-east-1"]

    def test_update_that_would_restart_other_regions_is_refused(self) -> None:
        """us-east-1 follows the built image, which changed: the wave's `up` would restart it too. The pin goes back
        and nothing is deployed."""
        run = rollout(LOAD, drift={"us-east-1"})
        assert run.stack.calls == [("set", "eu-central-1", ref("eu-central-1")), ("preview",), ("set", "eu-central-1", ref("eu-central-1", OLD_DIGEST))]
        assert run.report is not None and "also change the service or functions in us-east-1" in run.report.reason
        assert not [e for e in run.world.log if e[0] == "deploy"]

    @pytest.mark.parametrize("failing", [1, 2])
    def test_failed_up_restores_the_pins(self, failing: int) -> None:
        """A `pulumi up` that fails leaves the wave half-applied: the pins go back and one more `up` runs; when that
        fails too the report says the restore did not finish."""
        clock = Clock()
        world = World(clock, dict(LOAD))
        stack = FakeStack(world, {r: ref(r, OLD_DIGEST) for r in LOAD})
        stack.failing_ups = failing
        report = Rollout(stack=stack, facts=facts(REGIONS), image=IMAGE, wave_size=1, clients=clients_for(world),
                         timing=Timing(clock=clock, sleep=clock.sleep), say=lambda line: None).run()
        assert not report.ok and report.stopped_in == ["eu-central-1"] and "pulumi up failed: RuntimeError: code: 255" in report.reason
        assert stack.calls[-2:] == [("set", "eu-central-1", ref("eu-central-1", OLD_DIGEST)), ("up",)]
        assert report.changed and report.restored is (failing == 1)
        assert ("did not finish" in report.summary()) is (failing == 2)

    def test_image_missing_from_a_regions_registry(self) -> None:
        def missing(world: World) -> None:
            world.missing_in_ecr.add("ap-southeast-1")

        with pytest.raises(UsageError, match="not in ap-southeast-1's repository meridian-test/service"):
            rollout(LOAD, prepare=missing)


# -- against botocore's Stubber ------------------------------------------------------------------------------
class TestWithStubbers:
    def test_dev_stack_rollout_with_real_clients(self) -> None:
        """Two regions of the dev stack's real plan (its alarm names), boto3 clients answered by Stubbers that
        check every request and response against the service models, in order."""
        dev = stack_facts(ROOT / "Pulumi.dev.yaml")
        assert dev.repository == "meridian-dev/service"
        image = f"{ACCOUNT}.dkr.ecr.us-west-2.amazonaws.com/meridian-dev/service@{DIGEST}"
        old = {r: f"{ACCOUNT}.dkr.ecr.{r}.amazonaws.com/meridian-dev/service@{OLD_DIGEST}" for r in dev.regions}
        new = {r: f"{ACCOUNT}.dkr.ecr.{r}.amazonaws.com/meridian-dev/service@{DIGEST}" for r in dev.regions}
        made: dict[tuple[str, str], Any] = {}
        stubs: list[Stubber] = []
        for region in dev.regions:
            for service in ("ecs", "cloudwatch", "ecr"):
                client = boto3.client(service, region_name=region, aws_access_key_id="x", aws_secret_access_key="x")
                made[(service, region)] = client
                stubs.append(Stubber(client))
        stub = {key: s for key, s in zip(made, stubs, strict=True)}
        cluster = {r: f"arn:aws:ecs:{r}:{ACCOUNT}:cluster/{r}-cluster" for r in dev.regions}
        td = {(r, v): f"arn:aws:ecs:{r}:{ACCOUNT}:task-definition/meridian-dev-{r}:{v}" for r in dev.regions for v in (1, 2)}

        def service(region: str, version: int, state: str) -> dict[str, Any]:
            return {"services": [{"serviceName": "meridian-dev-service", "taskDefinition": td[(region, version)], "desiredCount": 1,
                                  "runningCount": 1, "deployments": [{"status": "PRIMARY", "taskDefinition": td[(region, version)],
                                                                      "rolloutState": state}]}]}

        def task_definition(region: str, version: int, image: str) -> None:
            stub[("ecs", region)].add_response("describe_task_definition", {"taskDefinition": {
                "taskDefinitionArn": td[(region, version)], "containerDefinitions": [{"name": "meridian", "image": image}]}},
                {"taskDefinition": td[(region, version)]})

        def alarms(region: str) -> None:
            names = list(dev.alarms[region])
            stub[("cloudwatch", region)].add_response(
                "describe_alarms",
                {"MetricAlarms": [{"AlarmName": n, "StateValue": "OK"} for n in names if not n.endswith("-evacuate")],
                 "CompositeAlarms": [{"AlarmName": n, "StateValue": "OK"} for n in names if n.endswith("-evacuate")]},
                {"AlarmNames": names, "AlarmTypes": ["MetricAlarm", "CompositeAlarm"]})

        services = {"cluster": None, "services": ["meridian-dev-service"]}
        for region in dev.regions:  # what each region runs before
            stub[("ecs", region)].add_response("describe_services", service(region, 1, "COMPLETED"), {**services, "cluster": cluster[region]})
            task_definition(region, 1, old[region])
        for region in dev.regions:  # the digest is in each region's registry
            stub[("ecr", region)].add_response("describe_images", {"imageDetails": [{"imageDigest": DIGEST}]},
                                               {"repositoryName": "meridian-dev/service", "imageIds": [{"imageDigest": DIGEST}]})
        for region in ("us-east-1", "us-west-2"):  # equal load: the canary is the first by name
            alarms(region)  # before the wave
            stub[("ecs", region)].add_response("describe_services", service(region, 2, "IN_PROGRESS"), {**services, "cluster": cluster[region]})
            task_definition(region, 2, new[region])
            stub[("ecs", region)].add_response("describe_services", service(region, 2, "COMPLETED"), {**services, "cluster": cluster[region]})
            for _ in range(3):  # bake 10 min, polled every 5: at 0, 5 and 10 minutes
                alarms(region)

        class World2:
            running = dict.fromkeys(dev.regions, 1)

            def deploy(self, region: str, image: str) -> None:
                pass

        stack = FakeStack(World2(), dict(old))  # type: ignore[arg-type]
        stack.outputs = lambda: {"regions": SimpleNamespace(value={  # type: ignore[method-assign]
            r: {"serviceName": "meridian-dev-service", "clusterArn": cluster[r]} for r in dev.regions})}
        clock, said = Clock(), []
        for s in stubs:
            s.activate()
        report = Rollout(stack=stack, facts=dev, image=image, wave_size=1, clients=lambda s, r: made[(s, r)],
                         timing=Timing(poll_seconds=300, clock=clock, sleep=clock.sleep), say=said.append).run()
        for s in stubs:
            s.assert_no_pending_responses()
            s.deactivate()
        assert report.ok and report.released == ["us-east-1", "us-west-2"]
        assert [c for c in stack.calls if c[0] == "set"] == [("set", "us-east-1", new["us-east-1"]), ("set", "us-west-2", new["us-west-2"])]


# -- the command ---------------------------------------------------------------------------------------------
PROD_IMAGE = f"{ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com/meridian-prod/service@{DIGEST}"


class TestCommand:
    def test_dry_run_prints_the_waves(self, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
        """Regions in order, the bake, and the alarms each wave watches by the names the plan gives them."""
        monkeypatch.chdir(ROOT)
        assert main(["rollout", "--stack", "prod", "--image", PROD_IMAGE, "--dry-run"]) == 0
        out = capsys.readouterr().out
        waves = re.findall(r"^wave (\d+)", out, re.M)
        assert waves == ["1", "2", "3", "4"]
        order = re.findall(r"^  ([a-z0-9-]+): pin ", out, re.M)
        assert order == ["ap-southeast-1", "eu-central-1", "eu-west-1", "us-east-1"]
        assert f"ap-southeast-1: pin {PROD_IMAGE.replace('us-east-1', 'ap-southeast-1')}" in out
        assert "10-minute bake" in out
        assert "ECS rolls back on: meridian-prod-eu-west-1-alb-5xx-rate, meridian-prod-eu-west-1-alb-latency-p99" in out
        assert "meridian-prod-replication-eu-west-1-to-eu-central-1-eu" in out and "meridian-prod-eu-west-1-evacuate" in out
        assert out.rstrip().endswith("no Pulumi CLI, no AWS credentials)")

    def test_dry_run_needs_neither_the_pulumi_cli_nor_credentials(self, capsys: pytest.CaptureFixture[str],
                                                                    monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        monkeypatch.setenv("PATH", str(tmp_path))
        for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))

        def forbidden(*args: Any, **kwargs: Any) -> Any:
            raise AssertionError("a dry run must not reach Pulumi or AWS")

        monkeypatch.setattr("pulumi.automation.select_stack", forbidden)
        monkeypatch.setattr("boto3.client", forbidden)
        assert main(["rollout", "--config", str(ROOT / "Pulumi.dev.yaml"), "--image", PROD_IMAGE, "--dry-run", "--wave-size", "2"]) == 0
        out = capsys.readouterr().out
        assert re.findall(r"^wave (\d+)", out, re.M) == ["1", "2"]
        assert "us-west-2: pin " in out and "dry run: nothing changed" in out

    def test_wave_size_groups_the_regions_after_the_canary(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert main(["rollout", "--config", str(ROOT / "Pulumi.prod.yaml"), "--image", PROD_IMAGE, "--dry-run", "--wave-size", "2"]) == 0
        out = capsys.readouterr().out
        assert re.findall(r"^wave (\d+)", out, re.M) == ["1", "2", "3"]

    @pytest.mark.parametrize(("extra", "says"), [
        (["--local"], "--local rolls out on the running local run"),
        (["--image", f"{ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com/meridian-prod/service:latest"], "has no digest"),
        (["--wave-size", "0"], "--wave-size is 0"),
    ])
    def test_mistakes_are_one_line_exit_2(self, extra: list[str], says: str, capsys: pytest.CaptureFixture[str]) -> None:
        args = ["rollout", "--config", str(ROOT / "Pulumi.dev.yaml"), "--image", PROD_IMAGE, "--dry-run", *extra]
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert says in err and len(err.splitlines()) == 1

    def test_real_rollout_without_the_pulumi_cli_says_so(self, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path) -> None:
        monkeypatch.setenv("PATH", str(tmp_path))
        assert main(["rollout", "--config", str(ROOT / "Pulumi.dev.yaml"), "--image", PROD_IMAGE, "--yes"]) == 2
        err = capsys.readouterr().err.strip()
        assert "needs the Pulumi CLI" in err and len(err.splitlines()) == 1


class TestLocalArguments:
    """`meridian rollout --local`: every mistake is one line on stderr and exit status 2, before anything runs."""

    @pytest.mark.parametrize(("args", "says"), [
        (["--local"], "--local needs --release NAME"),
        (["--local", "--release", "v2", "--image", PROD_IMAGE], "takes --release NAME, not --stack"),
        (["--local", "--release", "v2", "--stack", "prod"], "takes --release NAME, not --stack"),
        (["--local", "--release", "no spaces"], "--release: release name"),
        (["--local", "--release", "v2", "--inject-fault", "5xx=1.5"], "RATE is a share of requests"),
        (["--local", "--release", "v2", "--inject-fault", "5xx=0"], "RATE is a share of requests"),
        (["--local", "--release", "v2", "--inject-fault", "latency=0.3"], "the fault is 5xx=RATE"),
        (["--local", "--release", "v2", "--inject-fault", "5xx=lots"], "RATE is a share of requests"),
        (["--local", "--release", "v2", "--bake-seconds", "soon"], "--bake-seconds 'soon'"),
        (["--local", "--release", "v2", "--bake-seconds", "-1"], "--bake-seconds '-1'"),
        (["--local", "--release", "v2", "--wave-size", "0"], "--wave-size is 0"),
        (["--local", "--release", "v2", "--wave-size", "two"], "invalid int value"),
        (["--local", "--release", "v2"], "no local run in"),
        (["--release", "v2", "--stack", "prod", "--image", PROD_IMAGE], "belong to `meridian rollout --local`"),
        (["--image", PROD_IMAGE], "name the stack"),
        (["--stack", "prod"], "--image REPO@sha256"),
    ])
    def test_mistakes_are_one_line_exit_2(self, args: list[str], says: str, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
        try:
            code = main(["rollout", *args, "--state-dir", str(tmp_path / "none")])
        except SystemExit as exc:  # argparse's own checks (types), with the command's one-line error
            code = int(exc.code or 0)
        assert code == 2
        err = capsys.readouterr().err.strip()
        assert says in err and len(err.splitlines()) == 1, err

    def test_fault_accepts_a_share_or_a_percentage(self) -> None:
        from meridian_cli.rollout import parse_fault

        assert parse_fault("5xx=0.3") == pytest.approx(0.3) and parse_fault("5XX=30%") == pytest.approx(0.3)
