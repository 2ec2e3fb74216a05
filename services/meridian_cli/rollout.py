"""`meridian rollout --stack NAME --image REPO@sha256:...`: move a release across the regions in waves.

The release each region runs is pinned in the stack's config (``meridian:release``, region -> image by
digest), so a `pulumi up` changes only the regions whose pin moved. This command moves the pins: first
one region (``meridian:canaryRegion``, else the least loaded), then the others ``--wave-size`` at a time.
For each wave it sets the pins through Pulumi's Automation API (the stack in this folder, the same
program the CLI runs), previews (and refuses an update that would touch a region outside the wave), runs
`up`, waits until ECS has finished the deployment *and* the service runs the new task definition (after
a circuit-breaker rollback ECS reports a finished deployment too), then bakes ``meridian:bakeMinutes``
with every alarm of the wave's regions OK. On an alarm it gives the wave's regions their previous pins
back, runs `up` and stops, naming the region, the alarm and the regions that never got the release.

``--dry-run`` renders the program offline (infra.render, no Pulumi CLI, no credentials) and prints the
waves and the alarms each one watches. The decisions themselves are pure (meridian.releases); ECS,
CloudWatch and ECR are boto3 clients passed in, so tests drive this with a fake stack and stubbed clients.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, Protocol

from meridian.releases import (
    DeploymentStatus,
    Wave,
    alarm_verdict,
    changed_regions,
    choose_canary,
    deployment_verdict,
    ecr_location,
    normalize_deployment_state,
    plan_waves,
    reference_problem,
    regional_reference,
)
from meridian.topology import Topology, find_stack_file
from meridian_cli.commands import REGISTRY
from meridian_cli.main import UsageError

__all__ = ["Report", "Rollout", "StackFacts", "Timing", "describe", "stack_facts"]

RELEASE_KEY = "meridian:release"
#: The service's container in every task definition (infra.components.service.CONTAINER_NAME).
CONTAINER_NAME = "meridian"
ALARM_TYPES = ("aws:cloudwatch/metricAlarm:MetricAlarm", "aws:cloudwatch/compositeAlarm:CompositeAlarm")

Say = Callable[[str], None]
#: (AWS service, region) -> boto3 client, e.g. ``lambda s, r: boto3.client(s, region_name=r)``
Clients = Callable[[str, str], Any]


class StackLike(Protocol):
    """What the rollout uses of :class:`pulumi.automation.Stack`."""

    def get_all_config(self) -> Mapping[str, Any]: ...
    def set_config(self, key: str, value: Any, *, path: bool = False) -> None: ...
    def remove_config(self, key: str, *, path: bool = False) -> None: ...
    def preview(self, *, on_event: Callable[[Any], Any] | None = None) -> Any: ...
    def up(self, *, on_output: Callable[[str], Any] | None = None) -> Any: ...
    def outputs(self) -> Mapping[str, Any]: ...


# -- what the offline plan says --------------------------------------------------------------------------
@dataclass(frozen=True)
class StackFacts:
    """What the rollout needs from the program, read from its offline plan."""

    topology: Topology
    #: region -> every alarm the program declares there (metric and composite), by name
    alarms: Mapping[str, tuple[str, ...]]
    #: region -> the alarms ECS itself rolls a deployment back on (the service's ``alarms``)
    rollback_alarms: Mapping[str, tuple[str, ...]]
    #: the stack's ECR repository in every region (``meridian-prod/service``), or None with meridian:image
    repository: str | None

    @property
    def regions(self) -> tuple[str, ...]:
        return self.topology.regions


def stack_facts(path: Path) -> StackFacts:
    """Render the stack's program under mocks (no CLI, no credentials) and read alarm names from it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # pulumi_aws.lambda_ warns on import
        from infra.render import RenderError, render_stack

        try:
            plan = render_stack(path)
        except RenderError as exc:
            raise UsageError(str(exc)) from None
    topology = plan.topology
    alarms: dict[str, list[str]] = {r: [] for r in topology.regions}
    for type_token in ALARM_TYPES:
        for alarm in plan.of_type(type_token):
            if alarm.region in alarms:
                alarms[alarm.region].append(str(alarm.inputs.get("name") or alarm.inputs.get("alarmName")))
    rollback = {
        str(s.region): tuple((s.inputs.get("alarms") or {}).get("alarmNames") or ())
        for s in plan.of_type("aws:ecs/service:Service")
    }
    repository = None if topology.sizing.image else f"{topology.project}-{topology.stack}/service"
    return StackFacts(topology, {r: tuple(sorted(a)) for r, a in alarms.items()}, rollback, repository)


def targets(facts: StackFacts, image: str) -> dict[str, str]:
    """The pin each region gets: the same digest, from the region's own registry where the program has one."""
    return {r: regional_reference(image, r, repository=facts.repository) for r in facts.regions}


def describe(facts: StackFacts, image: str, waves: Sequence[Wave], *, canary_reason: str, done: Sequence[str] = (),
             wave_size: int, say: Say) -> None:
    """The plan of a rollout, in words: waves, pins, bake time and the alarms each wave watches."""
    t, pins = facts.topology, targets(facts, image)
    bake = t.release.bake_minutes
    say(f"{t.project}/{t.stack}: roll out {image}")
    say(f"  to {len(facts.regions) - len(done)} of {len(facts.regions)} regions in {len(waves)} wave(s): the canary alone, "
        f"then {wave_size} region(s) at a time")
    if facts.repository and any(p != image for p in pins.values()):
        say(f"  each region pulls the same digest from its own ECR repository {facts.repository}")
    if done:
        say(f"  already on this release (no wave): {', '.join(done)}")
    say(f"  in each region: ECS {t.release.strategy} deployment; ECS rolls it back by itself on the circuit breaker or on "
        "its release alarms")
    say(f"  after each wave: the ECS deployment finished AND the service runs the new task definition, then a {bake}-minute "
        "bake with every alarm of the wave's regions OK")
    for wave in waves:
        label = f"wave {wave.number}" + (f" (canary: {canary_reason})" if wave.canary else "")
        say(label)
        for region in wave.regions:
            say(f"  {region}: pin {pins[region]}")
            say(f"    ECS rolls back on: {', '.join(facts.rollback_alarms.get(region, ())) or '(none)'}")
            watched = facts.alarms.get(region, ())
            say(textwrap.fill(", ".join(watched), width=110, initial_indent=f"    bake watches {len(watched)} alarms: ",
                              subsequent_indent="      ", break_on_hyphens=False, break_long_words=False))
    say("on an alarm (or an ECS rollback): the wave's regions get their previous pins back, `pulumi up`, and the rollout "
        "stops; later waves never receive the release")


# -- the rollout --------------------------------------------------------------------------------------
@dataclass
class Timing:
    poll_seconds: float = 15.0
    deploy_timeout_seconds: float = 45 * 60
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep


@dataclass
class Report:
    ok: bool
    #: regions that run the release now (their waves baked with every alarm OK)
    released: list[str] = field(default_factory=list)
    #: where it stopped: the regions whose pins were given back, the alarms that fired, why
    stopped_in: list[str] = field(default_factory=list)
    alarms: list[str] = field(default_factory=list)
    reason: str = ""
    #: regions that never received the release
    never: list[str] = field(default_factory=list)
    #: False when the stop came before anything was deployed (an alarm already firing, a wider update)
    changed: bool = False
    #: the wave's previous pins are back and ECS runs them again
    restored: bool = False

    def summary(self) -> str:
        if self.ok:
            return f"released to {', '.join(self.released)}"
        where = ", ".join(self.stopped_in) or "before the first wave"
        alarms = f"; alarm {', '.join(self.alarms)}" if self.alarms else ""
        back = ("; nothing was changed there" if not self.changed else "; previous pins restored" if self.restored
                else "; restoring the previous pins did not finish: check with `pulumi up` and ECS")
        return (f"stopped in {where}{alarms}: {self.reason}{back}. Release kept by: {', '.join(self.released) or 'none'}; "
                f"never received it: {', '.join(self.never) or 'none'}")


class WaveFailed(Exception):
    def __init__(self, regions: Sequence[str], reason: str, alarms: Iterable[str] = (), *, changed: bool = True) -> None:
        super().__init__(reason)
        self.regions, self.reason, self.alarms, self.changed = list(regions), reason, sorted(set(alarms)), changed
        #: the previous pins are back and deployed (set after a restore)
        self.restored = False


class Rollout:
    def __init__(self, *, stack: StackLike, facts: StackFacts, image: str, wave_size: int, clients: Clients,
                 timing: Timing | None = None, say: Say = print) -> None:
        problem = reference_problem(image)
        if problem:
            raise UsageError(f"--image: {problem}")
        self.stack, self.facts, self.image, self.wave_size = stack, facts, image, wave_size
        self.clients, self.timing, self.say = clients, timing or Timing(), say
        self.targets = targets(facts, image)
        self._images: dict[tuple[str, str], str] = {}
        self._services: dict[str, tuple[str, str]] = {}
        #: what each region ran before the rollout (its image and load)
        self.before: dict[str, DeploymentStatus] = {}

    # -- Pulumi ----------------------------------------------------------------------------------------
    def pins(self) -> dict[str, str]:
        value = self.stack.get_all_config().get(RELEASE_KEY)
        raw = getattr(value, "value", value)
        if raw in (None, ""):
            return {}
        pins = json.loads(raw) if isinstance(raw, str) else raw
        return dict(pins)

    @staticmethod
    def _key(region: str) -> str:
        return f'{RELEASE_KEY}["{region}"]'

    def set_pins(self, pins: Mapping[str, str | None]) -> None:
        from pulumi.automation import ConfigValue

        for region, ref in pins.items():
            if ref is None:
                self.stack.remove_config(self._key(region), path=True)
            else:
                self.stack.set_config(self._key(region), ConfigValue(value=ref), path=True)

    def services(self) -> dict[str, tuple[str, str]]:
        """region -> (cluster ARN, service name), from the stack's outputs."""
        outputs = self.stack.outputs()
        regions = getattr(outputs.get("regions"), "value", outputs.get("regions")) or {}
        out = {}
        for region in self.facts.regions:
            entry = regions.get(region) or {}
            if not entry.get("clusterArn") or not entry.get("serviceName"):
                raise UsageError(f"the stack's outputs lack regions.{region}.clusterArn/serviceName: run `pulumi up` once "
                                 "with this version of the program, then roll out")
            out[region] = (entry["clusterArn"], entry["serviceName"])
        return out

    def preview_changes(self) -> set[str]:
        steps: list[tuple[str, str, str]] = []

        def collect(event: Any) -> None:
            pre = getattr(event, "resource_pre_event", None)
            meta = getattr(pre, "metadata", None)
            if meta is not None:
                steps.append((str(getattr(meta.op, "value", meta.op)), meta.urn, meta.type))

        self.stack.preview(on_event=collect)
        return changed_regions(steps, self.facts.regions)

    def up(self) -> None:
        self.stack.up(on_output=self.say)

    # -- AWS -------------------------------------------------------------------------------------------
    def status(self, region: str) -> DeploymentStatus:
        ecs = self.clients("ecs", region)
        cluster, name = self._services[region]
        (svc,) = ecs.describe_services(cluster=cluster, services=[name])["services"]
        state: str | None = "IN_PROGRESS"
        reason, triggered = "", ()
        current = svc.get("currentServiceDeployment")
        if current:
            (dep,) = ecs.describe_service_deployments(serviceDeploymentArns=[current])["serviceDeployments"]
            state, reason = dep.get("status"), dep.get("statusReason", "")
            triggered = tuple((dep.get("alarms") or {}).get("triggeredAlarmNames") or ())
        else:
            primary: dict[str, Any] = next((d for d in svc.get("deployments", []) if d.get("status") == "PRIMARY"), {})
            state, reason = primary.get("rolloutState"), primary.get("rolloutStateReason", "")
        return DeploymentStatus(
            state=normalize_deployment_state(state), image=self.task_image(region, svc["taskDefinition"]),
            running=int(svc.get("runningCount", 0)), desired=int(svc.get("desiredCount", 0)), reason=reason,
            triggered_alarms=triggered,
        )

    def task_image(self, region: str, task_definition: str) -> str:
        key = (region, task_definition)
        if key not in self._images:
            described = self.clients("ecs", region).describe_task_definition(taskDefinition=task_definition)["taskDefinition"]
            containers = {c["name"]: c["image"] for c in described["containerDefinitions"]}
            self._images[key] = containers.get(CONTAINER_NAME, "")
        return self._images[key]

    def alarm_states(self, region: str, names: Sequence[str]) -> dict[str, str]:
        cloudwatch, states = self.clients("cloudwatch", region), {}
        for start in range(0, len(names), 100):  # DescribeAlarms takes at most 100 names
            resp = cloudwatch.describe_alarms(AlarmNames=list(names[start:start + 100]), AlarmTypes=["MetricAlarm", "CompositeAlarm"])
            for alarm in [*resp.get("MetricAlarms", []), *resp.get("CompositeAlarms", [])]:
                states[alarm["AlarmName"]] = alarm["StateValue"]
        return states

    def check_images(self) -> None:
        """The digest is in every region's own repository (pushed by a `pulumi up` of that source)."""
        if not self.facts.repository:
            return
        from botocore.exceptions import ClientError

        digest = self.image.rpartition("@")[2]
        for ref in self.targets.values():
            location = ecr_location(ref)
            if location is None or location[1] != self.facts.repository:
                continue  # not the stack's repository: used as given
            region = location[0]
            try:
                self.clients("ecr", region).describe_images(repositoryName=self.facts.repository, imageIds=[{"imageDigest": digest}])
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("ImageNotFoundException", "RepositoryNotFoundException"):
                    raise UsageError(f"{digest} is not in {region}'s repository {self.facts.repository}: a `pulumi up` of that "
                                     "source pushes it to every region; roll out after that") from None
                raise

    # -- waves -----------------------------------------------------------------------------------------
    def plan(self) -> tuple[list[Wave], str, list[str]]:
        t = self.facts.topology
        pins = self.pins()
        done = [r for r in self.facts.regions if pins.get(r) == self.targets[r]]
        load = {r: float(self.before[r].running) for r in self.facts.regions}
        canary, why = choose_canary(self.facts.regions, configured=t.release.canary_region, load=load,
                                    dials={r: t.routing.dial(r) for r in t.regions})
        return plan_waves(self.facts.regions, canary=canary, wave_size=self.wave_size, load=load, done=done), why, done

    def run(self) -> Report:
        self._services = self.services()
        self.before = {r: self.status(r) for r in self.facts.regions}
        self.check_images()
        waves, why, done = self.plan()
        describe(self.facts, self.image, waves, canary_reason=why, done=done, wave_size=self.wave_size, say=self.say)
        released = list(done)
        for index, wave in enumerate(waves):
            later = [r for w in waves[index + 1:] for r in w.regions]
            try:
                self.run_wave(wave)
            except WaveFailed as failed:
                never = ([] if failed.changed else list(wave.regions)) + later
                report = Report(False, released, failed.regions, failed.alarms, failed.reason, never, changed=failed.changed,
                                restored=failed.restored)
                self.say(f"rollout stopped: {report.summary()}")
                return report
            released += wave.regions
            self.say(f"wave {wave.number} done: {', '.join(wave.regions)} run the release with every alarm OK")
        report = Report(True, released)
        self.say(f"rollout complete: {report.summary()}")
        return report

    def run_wave(self, wave: Wave) -> None:
        regions, bake = list(wave.regions), self.facts.topology.release.bake_minutes * 60
        self.say(f"wave {wave.number}: {', '.join(regions)}")
        watched = {r: self.facts.alarms.get(r, ()) for r in regions}
        before: dict[str, dict[str, str]] = {}
        for region in regions:
            before[region] = self.alarm_states(region, watched[region])
            verdict = alarm_verdict(watched[region], before[region])
            if verdict.outcome != "continue":
                raise WaveFailed([region], f"refused before wave {wave.number}: {verdict.reason}", verdict.alarms, changed=False)
        pins = self.pins()
        previous = {r: pins.get(r) for r in regions}
        self.set_pins({r: self.targets[r] for r in regions})
        try:
            outside = self.preview_changes() - set(regions)
        except Exception as exc:
            self.set_pins(previous)
            raise WaveFailed(regions, f"pulumi preview failed: {_first_line(exc)}", changed=False) from None
        if outside:
            self.set_pins(previous)
            raise WaveFailed(regions, f"the update would also change the service or functions in {', '.join(sorted(outside))} "
                             "(unpinned regions follow the built image; or the Lambda code or other config changed): pin them, "
                             "or `pulumi up` that change on its own first", changed=False)
        try:
            self.up()
            for region in regions:
                self.wait_deployed(region, self.targets[region])
            self.bake(regions, watched, before, bake)
        except WaveFailed as failed:
            failed.restored = self.restore(previous)
            raise failed from None
        except Exception as exc:  # `pulumi up` failed: the pins moved, the regions may be half-updated
            up_failed = WaveFailed(regions, f"pulumi up failed: {_first_line(exc)}")
            up_failed.restored = self.restore(previous)
            raise up_failed from None

    def wait_deployed(self, region: str, image: str) -> None:
        deadline = self.timing.clock() + self.timing.deploy_timeout_seconds
        while True:
            status = self.status(region)
            verdict = deployment_verdict(status, image)
            if verdict.outcome == "done":
                self.say(f"  {region}: ECS deployment finished, the service runs {image}")
                return
            if verdict.outcome == "rolled-back":
                raise WaveFailed([region], verdict.reason, status.triggered_alarms)
            if self.timing.clock() >= deadline:
                raise WaveFailed([region], f"ECS deployment not finished after {self.timing.deploy_timeout_seconds / 60:g} min "
                                 f"({verdict.reason})")
            self.timing.sleep(self.timing.poll_seconds)

    def bake(self, regions: Sequence[str], watched: Mapping[str, Sequence[str]], before: Mapping[str, Mapping[str, str]],
             seconds: float) -> None:
        self.say(f"  baking {seconds / 60:g} min: {', '.join(regions)}")
        deadline = self.timing.clock() + seconds
        while True:
            final = self.timing.clock() >= deadline
            for region in regions:
                verdict = alarm_verdict(watched[region], self.alarm_states(region, watched[region]), before=before[region], final=final)
                if verdict.outcome in ("rollback", "refuse"):
                    raise WaveFailed([region], verdict.reason, verdict.alarms)
            if final:
                return
            self.timing.sleep(max(0.0, min(self.timing.poll_seconds, deadline - self.timing.clock())))

    def restore(self, previous: Mapping[str, str | None]) -> bool:
        """Give the regions their previous pins back (none: back to the built image) and `up` again; True
        when every region runs what it ran before the rollout."""
        self.say(f"restoring the previous release in {', '.join(previous)}")
        self.set_pins(previous)
        try:
            self.up()
        except Exception as exc:
            self.say(f"  the restoring `pulumi up` failed too: {_first_line(exc)}; run `pulumi up` by hand")
            return False
        restored = True
        for region, pin in previous.items():
            try:
                self.wait_deployed(region, pin or self.before[region].image)
            except WaveFailed as failed:
                self.say(f"  {region}: {failed.reason}")
                restored = False
        return restored


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


# -- the command ---------------------------------------------------------------------------------------
def cmd_rollout(args: argparse.Namespace) -> int:
    if args.local:
        return local_rollout(args)
    if args.release is not None or args.inject_fault is not None or args.bake_seconds is not None or args.json:
        raise UsageError("--release, --inject-fault, --bake-seconds and --json belong to `meridian rollout --local`; "
                         "a stack rollout takes --image")
    if not (args.stack or args.config):
        raise UsageError("name the stack: --stack NAME (or --config PATH); or roll out on the local run with --local --release NAME")
    if args.image is None:
        raise UsageError("--image REPO@sha256:<64 hex digits> is needed: the release to roll out")
    problem = reference_problem(args.image)
    if problem:
        raise UsageError(f"--image: {problem}")
    if args.wave_size < 1:
        raise UsageError(f"--wave-size is {args.wave_size}; a wave holds at least one region")
    path = Path(args.config) if args.config else find_stack_file(args.stack, Path.cwd())
    facts = stack_facts(path)
    if args.stack and args.stack != facts.topology.stack:
        raise UsageError(f"{path} is stack {facts.topology.stack!r}, not {args.stack!r}")
    if args.dry_run:
        return dry_run(facts, args.image, args.wave_size)
    return real_rollout(facts, path, args)


def parse_fault(text: str) -> float:
    """``5xx=RATE`` -> RATE (a share of requests, 0-1; ``30%`` is accepted too)."""
    kind, eq, value = text.partition("=")
    if kind.strip().lower() != "5xx" or not eq:
        raise UsageError(f"--inject-fault {text!r}: the fault is 5xx=RATE, e.g. 5xx=0.3 (a share of requests answered 500)")
    try:
        rate = float(value.rstrip("%")) / (100 if value.endswith("%") else 1)
    except ValueError:
        rate = -1.0
    if not 0.0 < rate <= 1.0:
        raise UsageError(f"--inject-fault {text!r}: RATE is a share of requests above 0 and at most 1 (or a percentage)")
    return rate


def local_rollout(args: argparse.Namespace) -> int:
    """`meridian rollout --local --release NAME`: the release moved over the local run's regions (meridian_local.rollout)."""
    from meridian.topology import TopologyError, load_stack_file
    from meridian_local.rollout import LocalRollout, RolloutError, release_problem
    from meridian_local.state import NotRunning, control, read_state, resolve

    if args.stack or args.config or args.image or args.dry_run or args.yes:
        raise UsageError("--local rolls out on the running local run: it takes --release NAME, not --stack, --config, --image, "
                         "--dry-run or --yes")
    if not args.release:
        raise UsageError("--local needs --release NAME: the name of the release to roll out")
    if (problem := release_problem(args.release)) is not None:
        raise UsageError(f"--release: {problem}")
    if args.wave_size < 1:
        raise UsageError(f"--wave-size is {args.wave_size}; a wave holds at least one region")
    fault = parse_fault(args.inject_fault) if args.inject_fault is not None else 0.0
    bake: float | None = None
    if args.bake_seconds is not None:
        try:
            bake = float(args.bake_seconds)
        except ValueError:
            bake = -1.0
        if not 0 <= bake <= 24 * 3600:
            raise UsageError(f"--bake-seconds {args.bake_seconds!r}: a number of seconds, 0 to 86400")
    state_dir = resolve(Path(args.state_dir) if args.state_dir else None).absolute()
    state = read_state(state_dir)
    if state is None:
        raise UsageError(f"no local run in {state_dir}; start one with `meridian up --local --detach` first")
    canary, default_bake = "", None
    try:
        topology = load_stack_file(Path(state["config"]))
        canary = topology.release.canary_region
        default_bake = topology.release.bake_minutes * 60 * float(state.get("time_scale") or 1.0)
    except (TopologyError, OSError, KeyError, TypeError):
        pass  # the stack file changed or moved since `up`: the dials choose the canary, the alarm's window is the bake

    def say(line: str) -> None:
        print(line, file=sys.stderr if args.json else sys.stdout, flush=True)

    def ctl(method: str, path: str, body: dict[str, Any] | None) -> dict[str, Any]:
        return control(state_dir, method, path, body, timeout=60.0)

    try:
        outcome = LocalRollout(ctl, release=args.release, fault_5xx=fault, bake_seconds=bake, wave_size=args.wave_size,
                               canary_region=canary, default_bake_seconds=default_bake, say=say).run()
    except (RolloutError, NotRunning) as exc:
        raise UsageError(str(exc)) from None
    if args.json:
        print(json.dumps(outcome.to_json(), indent=2))
    return 0 if outcome.completed else 1


def dry_run(facts: StackFacts, image: str, wave_size: int) -> int:
    t, pins = facts.topology, targets(facts, image)
    done = [r for r in facts.regions if t.release.pin(r) == pins[r]]
    canary, why = choose_canary(facts.regions, configured=t.release.canary_region, dials={r: t.routing.dial(r) for r in t.regions})
    waves = plan_waves(facts.regions, canary=canary, wave_size=wave_size, done=done)
    describe(facts, image, waves, canary_reason=why, done=done, wave_size=wave_size, say=print)
    print("dry run: nothing changed (the plan was rendered offline: no Pulumi CLI, no AWS credentials)")
    return 0


def real_rollout(facts: StackFacts, path: Path, args: argparse.Namespace) -> int:
    try:
        from pulumi import automation as auto

        stack = auto.select_stack(stack_name=facts.topology.stack, work_dir=str(path.resolve().parent))
    except Exception as exc:
        raise UsageError(f"cannot select Pulumi stack {facts.topology.stack!r} ({_first_line(exc)}); a rollout runs "
                         "`pulumi up` and needs the Pulumi CLI and the stack's backend (or use --dry-run)") from None
    if not args.yes:
        if not sys.stdin.isatty():
            raise UsageError("refusing to roll out without confirmation; pass --yes")
        if input(f"roll {args.image} out to {facts.topology.stack}, wave by wave? [y/N] ").strip().lower() not in ("y", "yes"):
            print("cancelled")
            return 1
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    def clients(service: str, region: str) -> Any:
        return boto3.client(service, region_name=region)

    try:
        report = Rollout(stack=stack, facts=facts, image=args.image, wave_size=args.wave_size, clients=clients).run()
    except (BotoCoreError, ClientError) as exc:
        raise UsageError(f"AWS: {_first_line(exc)}") from None
    return 0 if report.ok else 1


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("rollout", help="move a release to the stack's regions in waves (canary first), with bake and rollback")

    def one_line_error(message: str) -> NoReturn:
        print(f"meridian rollout: error: {message}", file=sys.stderr)
        sys.exit(2)

    parser.error = one_line_error  # type: ignore[method-assign]
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--stack", metavar="NAME", help="the Pulumi stack (Pulumi.NAME.yaml in this folder)")
    group.add_argument("--config", metavar="PATH", help="the stack file (its stack name is the file's)")
    parser.add_argument("--image", metavar="REPO@sha256:DIGEST", help="the release: an image reference by digest")
    parser.add_argument("--wave-size", type=int, default=1, metavar="N", help="regions per wave after the canary (default 1)")
    parser.add_argument("--dry-run", action="store_true", help="print the waves and the alarms they watch; change nothing, "
                        "need neither the Pulumi CLI nor AWS credentials")
    parser.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    parser.add_argument("--local", action="store_true", help="roll out on the running local run (`meridian up --local`): each "
                        "region's process is replaced by the release, wave by wave, and rolled back when its 5xx-rate alarm's rule fires")
    parser.add_argument("--release", metavar="NAME", help="--local: the release's name (a named set of service settings)")
    parser.add_argument("--inject-fault", metavar="5xx=RATE", help="--local: REHEARSAL FAULT, the release answers RATE of its "
                        "requests 500 (e.g. 5xx=0.3)")
    parser.add_argument("--bake-seconds", metavar="S", help="--local: bake per wave (default: the stack's bake time scaled by "
                        "the run's time scale, at least the alarm's window)")
    parser.add_argument("--json", action="store_true", help="--local: print the outcome as JSON")
    parser.add_argument("--state-dir", help=argparse.SUPPRESS)
    parser.set_defaults(handler=cmd_rollout)


REGISTRY.append(register)
