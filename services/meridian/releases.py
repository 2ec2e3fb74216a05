"""Releases across regions, as pure decisions: what a pinned image reference is, which region goes first,
how the others follow in waves, and whether a wave may continue, must wait or must be rolled back.

``meridian rollout`` (services/meridian_cli/rollout.py) feeds these functions what Pulumi, ECS and
CloudWatch answer and acts on the result; nothing here calls AWS or imports Pulumi, so every decision is
tested on plain values. Decision records: docs/decisions/ (0001 in-region strategy, 0002 waves).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "ALARM_STATES",
    "DEFAULT_BAKE_MINUTES",
    "DEFAULT_STRATEGY",
    "MAX_BAKE_MINUTES",
    "STRATEGIES",
    "TRAFFIC_SHIFTING",
    "AlarmVerdict",
    "DeploymentStatus",
    "DeploymentVerdict",
    "Wave",
    "alarm_verdict",
    "changed_regions",
    "choose_canary",
    "deployment_verdict",
    "ecr_location",
    "normalize_deployment_state",
    "plan_waves",
    "reference_problem",
    "regional_reference",
]

#: ECS's deployment strategies (``deploymentConfiguration.strategy``). ROLLING replaces tasks in place;
#: the other three shift ALB traffic between two target groups (docs/decisions/0001).
STRATEGIES = ("ROLLING", "BLUE_GREEN", "CANARY", "LINEAR")
TRAFFIC_SHIFTING = frozenset({"BLUE_GREEN", "CANARY", "LINEAR"})
DEFAULT_STRATEGY = "ROLLING"
#: ECS's limit on every bake time (bakeTimeInMinutes, canaryBakeTimeInMinutes, stepBakeTimeInMinutes).
MAX_BAKE_MINUTES = 1440
DEFAULT_BAKE_MINUTES = 10

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
#: An ECR registry host: <account>.dkr.ecr.<region>.amazonaws.com (.cn in China).
_ECR = re.compile(r"^(?P<account>\d{12})\.dkr\.ecr\.(?P<region>[a-z0-9-]+)\.(?P<domain>amazonaws\.com(?:\.cn)?)/(?P<path>.+)$")


# -- references -----------------------------------------------------------------------------------------
def reference_problem(reference: object) -> str | None:
    """Why ``reference`` cannot pin a release (None when it can): it must be ``REPO@sha256:<64 hex>``.

    A tag can be moved to other bytes; a digest cannot, so a pin means the same image forever.
    """
    if not isinstance(reference, str) or not reference:
        return "an image reference by digest is needed, like REPO@sha256:<64 hex digits>"
    repo, at, digest = reference.rpartition("@")
    if not at or not repo:
        return f"{reference!r} has no digest; pin by digest: REPO@sha256:<64 hex digits>"
    if any(c.isspace() for c in reference) or "@" in repo:
        return f"{reference!r} is not one image reference (spaces or several '@')"
    if not _DIGEST.fullmatch(digest):
        return f"{reference!r}: the digest must be sha256: followed by 64 lowercase hex digits"
    return None


def ecr_location(reference: str) -> tuple[str, str] | None:
    """(region, repository) of an image reference in an ECR registry, else None."""
    match = _ECR.match(reference)
    if match is None:
        return None
    name = match["path"].rpartition("@")[0]
    return match["region"], name.split(":", 1)[0]  # without a tag (NAME:TAG@DIGEST)


def regional_reference(reference: str, region: str, *, repository: str | None = None) -> str:
    """The same image in ``region``'s own registry.

    The program pushes one build to an ECR repository in every region (infra/components/image.py), so
    each region pulls from its own registry and keeps starting tasks when another region is down. When
    ``reference`` names the stack's repository (``repository``, e.g. ``meridian-prod/service``) in some
    region's ECR, the pin for ``region`` names the same digest in that region's ECR; anything else (a
    prebuilt image elsewhere) is used as given in every region.
    """
    location = ecr_location(reference)
    match = _ECR.match(reference)
    if repository is None or location is None or match is None or location[1] != repository:
        return reference
    return f"{match['account']}.dkr.ecr.{region}.{match['domain']}/{match['path']}"


# -- waves ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Wave:
    number: int  # from 1
    regions: tuple[str, ...]
    canary: bool = False


def choose_canary(
    regions: Sequence[str],
    *,
    configured: str = "",
    load: Mapping[str, float] | None = None,
    dials: Mapping[str, int] | None = None,
) -> tuple[str, str]:
    """The first region to receive a release, and why.

    ``meridian:canaryRegion`` wins. Otherwise the least loaded region that takes traffic (dial above 0;
    an evacuated region would bake on no traffic and prove nothing): by ``load`` (running tasks, which
    autoscaling keeps in step with requests) when measured, else by the configured dial. Ties go to the
    alphabetically first region: the choice never depends on the order of ``meridian:regions``.
    """
    if not regions:
        raise ValueError("no regions")
    if configured:
        if configured not in regions:
            raise ValueError(f"canary region {configured!r} is not one of {', '.join(regions)}")
        return configured, f"{configured}: meridian:canaryRegion"
    dials = dials or {}
    serving = [r for r in regions if dials.get(r, 100) > 0] or list(regions)
    if load:
        chosen = min(serving, key=lambda r: (load.get(r, float("inf")), r))
        return chosen, f"{chosen}: least loaded, {load.get(chosen, 0):g} running tasks"
    chosen = min(serving, key=lambda r: (dials.get(r, 100), r))
    offline = "a real rollout measures running tasks; meridian:canaryRegion overrides"
    if len({dials.get(r, 100) for r in serving}) == 1:
        return chosen, f"{chosen}: every traffic dial is equal, so first by name ({offline})"
    return chosen, f"{chosen}: lowest configured traffic dial, {dials.get(chosen, 100)} ({offline})"


def plan_waves(
    regions: Sequence[str],
    *,
    canary: str,
    wave_size: int = 1,
    load: Mapping[str, float] | None = None,
    done: Collection[str] = (),
) -> list[Wave]:
    """The canary alone, then the other regions ``wave_size`` at a time, least loaded first.

    Regions in ``done`` (already on the release: a resumed rollout) get no wave. Every other region is in
    exactly one wave.
    """
    if wave_size < 1:
        raise ValueError("a wave holds at least one region")
    if canary not in regions:
        raise ValueError(f"canary region {canary!r} is not one of {', '.join(regions)}")
    load = load or {}
    rest = sorted((r for r in regions if r != canary and r not in done), key=lambda r: (load.get(r, 0.0), r))
    waves: list[Wave] = []
    if canary not in done:
        waves.append(Wave(1, (canary,), canary=True))
    for start in range(0, len(rest), wave_size):
        waves.append(Wave(len(waves) + 1, tuple(rest[start:start + wave_size])))
    return waves


# -- one region's ECS deployment ----------------------------------------------------------------------
DeploymentState = Literal["in-progress", "succeeded", "failed"]

#: ECS ServiceDeployment.status and Deployment.rolloutState -> what it means for the rollout. A rollback
#: in progress already means the release failed there.
_DEPLOYMENT_STATES: dict[str, DeploymentState] = {
    "PENDING": "in-progress", "IN_PROGRESS": "in-progress", "SUCCESSFUL": "succeeded", "COMPLETED": "succeeded",
    "STOPPED": "failed", "STOP_REQUESTED": "failed", "ROLLBACK_REQUESTED": "failed", "ROLLBACK_IN_PROGRESS": "failed",
    "ROLLBACK_SUCCESSFUL": "failed", "ROLLBACK_FAILED": "failed", "FAILED": "failed",
}


def normalize_deployment_state(status: str | None) -> DeploymentState:
    return _DEPLOYMENT_STATES.get(status or "", "in-progress")


@dataclass(frozen=True)
class DeploymentStatus:
    """What ECS says about a region's service now."""

    state: DeploymentState
    #: the image of the task definition the service runs now (after a rollback: the old one)
    image: str
    running: int
    desired: int
    reason: str = ""
    #: alarms ECS saw fire during the deployment (ServiceDeployment.alarms.triggeredAlarmNames)
    triggered_alarms: tuple[str, ...] = ()


@dataclass(frozen=True)
class DeploymentVerdict:
    outcome: Literal["wait", "done", "rolled-back"]
    reason: str = ""


def deployment_verdict(status: DeploymentStatus, expected_image: str) -> DeploymentVerdict:
    """Has the region finished deploying ``expected_image``?

    A finished deployment is not enough: after the circuit breaker or an alarm rolled a deployment back,
    ECS reports the rollback's deployment as finished too (a waiter says "stable"). Only a service whose
    task definition runs ``expected_image`` with every desired task running is done.
    """
    if status.state == "failed":
        cause = f"alarm {', '.join(status.triggered_alarms)}" if status.triggered_alarms else (status.reason or "deployment failed")
        return DeploymentVerdict("rolled-back", f"ECS stopped the deployment ({cause})")
    if status.image != expected_image:
        if status.state == "succeeded":
            return DeploymentVerdict(
                "rolled-back", f"ECS reports a finished deployment but the service runs {status.image}: it was rolled back"
            )
        return DeploymentVerdict("wait", "the service has not taken the new task definition yet")
    if status.state == "succeeded" and status.running >= status.desired:
        return DeploymentVerdict("done")
    return DeploymentVerdict("wait", f"{status.running}/{status.desired} tasks running, deployment {status.state}")


# -- alarms during the bake ---------------------------------------------------------------------------------
ALARM_STATES = ("OK", "ALARM", "INSUFFICIENT_DATA")


@dataclass(frozen=True)
class AlarmVerdict:
    outcome: Literal["wait", "continue", "rollback", "refuse"]
    #: alarms in ALARM (rollback), or the alarms that make the verdict what it is
    alarms: tuple[str, ...] = ()
    reason: str = ""
    missing: tuple[str, ...] = field(default=())


def alarm_verdict(
    watched: Iterable[str],
    now: Mapping[str, str],
    *,
    before: Mapping[str, str] | None = None,
    final: bool = False,
) -> AlarmVerdict:
    """Decide from alarm states (name -> OK | ALARM | INSUFFICIENT_DATA).

    - Before a wave (``before`` is None): an alarm that does not exist, or is in ALARM already, refuses
      the wave: what fires afterwards could not be told apart from what was firing before.
    - During the bake: any watched alarm in ALARM rolls the wave back at once.
    - At the end of the bake (``final``): every alarm must be OK; INSUFFICIENT_DATA is accepted only for
      an alarm that had no data before the wave either (it says nothing about the release).
    """
    names = sorted(set(watched))
    missing = tuple(n for n in names if n not in now)
    if missing:
        return AlarmVerdict("refuse", missing, f"alarm(s) not found in CloudWatch: {', '.join(missing)}", missing)
    firing = tuple(n for n in names if now[n] == "ALARM")
    if before is None:
        if firing:
            return AlarmVerdict("refuse", firing, f"already in ALARM before the wave: {', '.join(firing)}")
        return AlarmVerdict("continue")
    if firing:
        return AlarmVerdict("rollback", firing, f"in ALARM: {', '.join(firing)}")
    if not final:
        return AlarmVerdict("wait")
    unconfirmed = tuple(n for n in names if now[n] != "OK" and before.get(n) != now[n])
    if unconfirmed:
        return AlarmVerdict("rollback", unconfirmed, f"not OK at the end of the bake: {', '.join(unconfirmed)}")
    return AlarmVerdict("continue")


# -- what an update would change --------------------------------------------------------------------------
#: What a release changes in a region: its tasks (task definition, service) and its functions, which run the
#: same library. A wave's update may change these only in the wave's regions.
RELEASE_TYPES = ("aws:ecs/taskDefinition:TaskDefinition", "aws:ecs/service:Service", "aws:lambda/function:Function")
_CHANGING_OPS = frozenset({"create", "update", "replace", "create-replacement", "delete-replaced", "delete"})


def changed_regions(steps: Iterable[tuple[str, str, str]], regions: Sequence[str]) -> set[str]:
    """Regions whose service, task definition or functions a preview's steps (op, urn, type) would change.

    Children of a region's component are named from the region (``eu-west-1-task``), the last part of
    their URN; the longest matching region wins (``ap-southeast-1`` before ``ap-southeast-1x``).
    """
    by_length = sorted(regions, key=len, reverse=True)
    out: set[str] = set()
    for op, urn, type_ in steps:
        if op not in _CHANGING_OPS or type_ not in RELEASE_TYPES:
            continue
        name = urn.rsplit("::", 1)[-1]
        region = next((r for r in by_length if name == r or name.startswith(f"{r}-")), None)
        if region is not None:
            out.add(region)
    return out
