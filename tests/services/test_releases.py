"""Releases across regions as pure decisions: references, the canary, the waves, and the verdicts on what
ECS and CloudWatch report."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meridian.releases import (
    DeploymentStatus,
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

DIGEST = "sha256:" + "0123456789abcdef" * 4
ECR = f"123456789012.dkr.ecr.us-east-1.amazonaws.com/meridian-prod/service@{DIGEST}"
REGIONS = ["us-east-1", "eu-west-1", "eu-central-1", "ap-southeast-1"]


class TestReferences:
    @pytest.mark.parametrize("ref", [ECR, f"ghcr.io/acme/meridian@{DIGEST}", f"registry:5000/meridian:v1@{DIGEST}"])
    def test_digest_references_pin(self, ref: str) -> None:
        """Any registry, with or without a tag, as long as the digest is there."""
        assert reference_problem(ref) is None

    @pytest.mark.parametrize(("ref", "says"), [
        ("123456789012.dkr.ecr.us-east-1.amazonaws.com/meridian-prod/service:src-1234", "has no digest"),
        ("repo@sha256:abc", "64 lowercase hex digits"),
        ("repo@sha256:" + "0123456789ABCDEF" * 4, "64 lowercase hex digits"),
        ("repo@md5:" + "0" * 64, "64 lowercase hex digits"),
        (f"@{DIGEST}", "has no digest"),
        (f"a@b@{DIGEST}", "several '@'"),
        (f"repo @{DIGEST}", "spaces"),
        ("", "by digest"),
        (None, "by digest"),
    ])
    def test_anything_else_is_refused_with_the_reason(self, ref: object, says: str) -> None:
        problem = reference_problem(ref)
        assert problem is not None and says in problem

    def test_stack_repository_is_pinned_per_region(self) -> None:
        """The stack's own ECR repository: the same digest from each region's registry."""
        assert regional_reference(ECR, "eu-west-1", repository="meridian-prod/service") == ECR.replace("us-east-1", "eu-west-1")
        assert regional_reference(ECR, "us-east-1", repository="meridian-prod/service") == ECR

    @pytest.mark.parametrize("ref", [
        f"123456789012.dkr.ecr.us-east-1.amazonaws.com/other/service@{DIGEST}",  # not the stack's repository
        f"ghcr.io/acme/meridian@{DIGEST}",  # not ECR
    ])
    def test_other_images_are_used_as_given(self, ref: str) -> None:
        assert regional_reference(ref, "eu-west-1", repository="meridian-prod/service") == ref
        assert regional_reference(ECR, "eu-west-1", repository=None) == ECR, "meridian:image stacks have no repositories"

    def test_china_and_tagged_references(self) -> None:
        ref = f"123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn/meridian-prod/service:v1@{DIGEST}"
        assert ecr_location(ref) == ("cn-north-1", "meridian-prod/service")
        assert regional_reference(ref, "cn-northwest-1", repository="meridian-prod/service") == ref.replace("cn-north-1", "cn-northwest-1")
        assert ecr_location(f"ghcr.io/x@{DIGEST}") is None


class TestCanary:
    def test_configured_region_wins(self) -> None:
        assert choose_canary(REGIONS, configured="eu-west-1", load={"us-east-1": 1})[0] == "eu-west-1"
        with pytest.raises(ValueError, match="ap-south-1"):
            choose_canary(REGIONS, configured="ap-south-1")

    def test_least_loaded_region_by_running_tasks(self) -> None:
        region, why = choose_canary(REGIONS, load={"us-east-1": 9, "eu-west-1": 4, "eu-central-1": 3, "ap-southeast-1": 3})
        assert region == "ap-southeast-1" and "3 running tasks" in why, "ties go to the first by name"

    def test_evacuated_region_is_not_the_canary(self) -> None:
        """A region dialed to 0 takes no traffic: its bake would prove nothing."""
        load = {"us-east-1": 9, "eu-west-1": 0, "eu-central-1": 3, "ap-southeast-1": 5}
        assert choose_canary(REGIONS, load=load, dials={"eu-west-1": 0})[0] == "eu-central-1"
        assert choose_canary(["a-1", "b-1"], load={"a-1": 1, "b-1": 0}, dials={"a-1": 0, "b-1": 0})[0] == "b-1"

    def test_offline_choice_uses_the_configured_dials(self) -> None:
        assert choose_canary(REGIONS)[0] == "ap-southeast-1"
        region, why = choose_canary(REGIONS, dials={"us-east-1": 40})
        assert region == "us-east-1" and "lowest configured traffic dial" in why

    @given(st.permutations(REGIONS), st.lists(st.integers(0, 5), min_size=4, max_size=4))
    def test_never_depends_on_list_order(self, order: list[str], counts: list[int]) -> None:
        load = dict(zip(REGIONS, map(float, counts), strict=True))
        assert choose_canary(order, load=load) == choose_canary(REGIONS, load=load)


class TestWaves:
    @settings(max_examples=100, deadline=None)
    @given(
        st.lists(st.sampled_from([*REGIONS, "us-west-2", "eu-west-3", "sa-east-1"]), min_size=1, max_size=7, unique=True),
        st.integers(1, 4),
        st.data(),
    )
    def test_canary_alone_then_every_other_region_once(self, regions: list[str], size: int, data: st.DataObject) -> None:
        canary = data.draw(st.sampled_from(regions))
        load = {r: float(data.draw(st.integers(0, 9))) for r in regions}
        waves = plan_waves(regions, canary=canary, wave_size=size, load=load)
        assert waves[0].regions == (canary,) and waves[0].canary
        assert sorted(r for w in waves for r in w.regions) == sorted(regions)
        assert all(1 <= len(w.regions) <= size and not w.canary for w in waves[1:])
        assert [w.number for w in waves] == list(range(1, len(waves) + 1))
        rest = [r for w in waves[1:] for r in w.regions]
        assert rest == sorted(rest, key=lambda r: (load[r], r)), "least loaded first"

    def test_regions_already_on_the_release_get_no_wave(self) -> None:
        waves = plan_waves(REGIONS, canary="eu-west-1", wave_size=2, done={"eu-west-1", "us-east-1"})
        assert [w.regions for w in waves] == [("ap-southeast-1", "eu-central-1")]

    def test_bad_arguments(self) -> None:
        with pytest.raises(ValueError, match="at least one region"):
            plan_waves(REGIONS, canary="eu-west-1", wave_size=0)
        with pytest.raises(ValueError, match="ap-south-1"):
            plan_waves(REGIONS, canary="ap-south-1")


NEW, OLD = f"repo@{DIGEST}", "repo@sha256:" + "f" * 64


def status(state: str = "SUCCESSFUL", image: str = NEW, running: int = 2, desired: int = 2, **kw: object) -> DeploymentStatus:
    return DeploymentStatus(state=normalize_deployment_state(state), image=image, running=running, desired=desired, **kw)  # type: ignore[arg-type]


class TestDeploymentVerdict:
    def test_done_only_on_the_new_image_with_every_task(self) -> None:
        assert deployment_verdict(status(), NEW).outcome == "done"
        assert deployment_verdict(status("COMPLETED"), NEW).outcome == "done", "Deployment.rolloutState too"
        assert deployment_verdict(status(running=1), NEW).outcome == "wait"
        assert deployment_verdict(status("IN_PROGRESS"), NEW).outcome == "wait"
        assert deployment_verdict(status("IN_PROGRESS", image=OLD), NEW).outcome == "wait"

    def test_finished_on_the_old_image_is_a_rollback(self) -> None:
        """The case a deploy waiter reports as success: ECS finished, but the circuit breaker put the old task
        definition back."""
        verdict = deployment_verdict(status("SUCCESSFUL", image=OLD), NEW)
        assert verdict.outcome == "rolled-back" and OLD in verdict.reason

    @pytest.mark.parametrize("state", ["ROLLBACK_REQUESTED", "ROLLBACK_IN_PROGRESS", "ROLLBACK_SUCCESSFUL", "ROLLBACK_FAILED",
                                       "STOPPED", "FAILED"])
    def test_failed_deployment_names_the_alarm(self, state: str) -> None:
        verdict = deployment_verdict(status(state, triggered_alarms=("x-alb-5xx-rate",)), NEW)
        assert verdict.outcome == "rolled-back" and "x-alb-5xx-rate" in verdict.reason

    def test_unknown_states_wait(self) -> None:
        assert normalize_deployment_state(None) == "in-progress"
        assert normalize_deployment_state("PENDING") == "in-progress"


WATCHED = ["r-5xx", "r-latency", "r-heartbeat"]


class TestAlarmVerdict:
    def test_before_a_wave(self) -> None:
        """An alarm already firing, or missing, refuses the wave; no data yet is fine."""
        ok = {"r-5xx": "OK", "r-latency": "INSUFFICIENT_DATA", "r-heartbeat": "OK"}
        assert alarm_verdict(WATCHED, ok).outcome == "continue"
        firing = alarm_verdict(WATCHED, {**ok, "r-5xx": "ALARM"})
        assert firing.outcome == "refuse" and firing.alarms == ("r-5xx",)
        missing = alarm_verdict(WATCHED, {"r-5xx": "OK"})
        assert missing.outcome == "refuse" and missing.missing == ("r-heartbeat", "r-latency")

    def test_during_the_bake(self) -> None:
        before = dict.fromkeys(WATCHED, "OK")
        assert alarm_verdict(WATCHED, before, before=before).outcome == "wait"
        verdict = alarm_verdict(WATCHED, {**before, "r-latency": "ALARM"}, before=before)
        assert verdict.outcome == "rollback" and verdict.alarms == ("r-latency",)

    def test_at_the_end_of_the_bake(self) -> None:
        """Every alarm OK; no data only where there was none before either."""
        before = {"r-5xx": "OK", "r-latency": "INSUFFICIENT_DATA", "r-heartbeat": "OK"}
        assert alarm_verdict(WATCHED, before, before=before, final=True).outcome == "continue"
        gone_quiet = alarm_verdict(WATCHED, {**before, "r-heartbeat": "INSUFFICIENT_DATA"}, before=before, final=True)
        assert gone_quiet.outcome == "rollback" and gone_quiet.alarms == ("r-heartbeat",)


def urn(name: str, type_: str = "aws:ecs/taskDefinition:TaskDefinition") -> str:
    return f"urn:pulumi:prod::meridian::meridian:regional:Region${type_}::{name}"


class TestChangedRegions:
    def test_tasks_and_functions_that_change(self) -> None:
        td, svc = "aws:ecs/taskDefinition:TaskDefinition", "aws:ecs/service:Service"
        steps = [
            ("replace", urn("eu-west-1-task"), td),
            ("update", urn("us-east-1-service", svc), svc),
            ("same", urn("eu-central-1-task"), td),
            ("update", urn("ap-southeast-1-alb", "aws:lb/loadBalancer:LoadBalancer"), "aws:lb/loadBalancer:LoadBalancer"),
            ("create", "urn:pulumi:prod::meridian::docker-build:index:Image::service-image-build", "docker-build:index:Image"),
            ("update", urn("eu-central-1-evacuator", "aws:lambda/function:Function"), "aws:lambda/function:Function"),
        ]
        assert changed_regions(steps, REGIONS) == {"eu-west-1", "us-east-1", "eu-central-1"}

    def test_longest_region_name_wins(self) -> None:
        regions = ["ap-southeast-1", "ap-southeast-1-x"]
        assert changed_regions([("update", urn("ap-southeast-1-x-task"), "aws:ecs/taskDefinition:TaskDefinition")], regions) == {
            "ap-southeast-1-x"}
        random.shuffle(regions)
        assert changed_regions([("update", urn("ap-southeast-1-task"), "aws:ecs/taskDefinition:TaskDefinition")], regions) == {
            "ap-southeast-1"}
