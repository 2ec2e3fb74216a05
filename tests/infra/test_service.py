"""Each region's Fargate service: the container the task runs, its health check and its filesystem."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from infra.components.service import health_check_command
from infra.render import Plan, PlannedResource, RenderError, render_values

ROOT = Path(__file__).resolve().parents[2]


def containers(plan: Plan) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(task definition inputs, its one container) per region."""
    out = []
    for td in plan.of_type("aws:ecs/taskDefinition:TaskDefinition"):
        (container,) = json.loads(td.inputs["containerDefinitions"])
        out.append((td.inputs, container))
    return out


@pytest.fixture
def readiness_server() -> Iterator[tuple[int, dict[str, int]]]:
    """A local server whose /health/ready answers with ``state["status"]``."""
    state = {"status": 200}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            self.send_response(state["status"] if self.path == "/health/ready" else 404)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], state
    server.shutdown()
    server.server_close()


def run_check(command: list[str]) -> int:
    assert command[0] == "CMD" and command[1] == "python"
    return subprocess.run([sys.executable, *command[2:]], capture_output=True, timeout=30).returncode


class TestContainer:
    @pytest.mark.parametrize("plan_name", ["dev_plan", "prod_plan"])
    def test_health_check_within_ecs_ranges(self, plan_name: str, request: pytest.FixtureRequest) -> None:
        plan: Plan = request.getfixturevalue(plan_name)
        port = plan.topology.sizing.container_port
        for _, container in containers(plan):
            check = container["healthCheck"]
            assert check["command"] == health_check_command(port)
            assert f"http://127.0.0.1:{port}/health/ready" in check["command"][-1]
            assert 5 <= check["interval"] <= 300 and 2 <= check["timeout"] <= 60 and check["timeout"] < check["interval"]
            assert 1 <= check["retries"] <= 10 and 0 <= check["startPeriod"] <= 300

    def test_health_check_command_passes_only_when_ready(self, readiness_server: tuple[int, dict[str, int]]) -> None:
        """The exact command ECS runs: 0 on 200, non-zero on 503 and when nothing listens."""
        port, state = readiness_server
        assert run_check(health_check_command(port)) == 0
        state["status"] = 503
        assert run_check(health_check_command(port)) != 0
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            closed = s.getsockname()[1]
        assert run_check(health_check_command(closed)) != 0

    def test_port_mapping_matches_the_target_group_and_service(self, prod_plan: Plan) -> None:
        port = prod_plan.topology.sizing.container_port
        for _, container in containers(prod_plan):
            assert container["portMappings"] == [{"containerPort": port, "protocol": "tcp"}]
        for svc in prod_plan.of_type("aws:ecs/service:Service"):
            (lb,) = svc.inputs["loadBalancers"]
            assert lb["containerName"] == "meridian" and lb["containerPort"] == port
        assert {tg.inputs["port"] for tg in prod_plan.of_type("aws:lb/targetGroup:TargetGroup")} == {port}

    def test_read_only_root_with_a_writable_scratch_volume(self, prod_plan: Plan) -> None:
        """The root filesystem stays read-only; /tmp is an ephemeral task volume the container may write."""
        for task, container in containers(prod_plan):
            assert container["readonlyRootFilesystem"] is True
            (mount,) = container["mountPoints"]
            assert mount == {"sourceVolume": "tmp", "containerPath": "/tmp", "readOnly": False}
            volumes = task["volumes"]
            assert [v["name"] for v in volumes] == ["tmp"]
            assert not volumes[0].get("host") and not volumes[0].get("efsVolumeConfiguration"), "ephemeral: no host path, no EFS"
            assert container["user"] == "10001"

    def test_image_cmd_starts_the_service(self, prod_plan: Plan) -> None:
        """No ``command`` in the container: the image's CMD runs uvicorn on MERIDIAN_PORT, which the task sets."""
        dockerfile = (ROOT / "services" / "Dockerfile").read_text()
        cmd = [line for line in dockerfile.splitlines() if line.startswith("CMD ")]
        assert cmd and "uvicorn" in cmd[-1] and "MERIDIAN_PORT" in cmd[-1]
        for _, container in containers(prod_plan):
            assert "command" not in container and "entryPoint" not in container
            env = {e["name"]: e["value"] for e in container["environment"]}
            assert env["MERIDIAN_PORT"] == str(prod_plan.topology.sizing.container_port)

    def test_service_keeps_connections_longer_than_the_alb(self, prod_plan: Plan) -> None:
        """The ALB reuses idle connections to targets for its idle timeout; a service that closed them first
        would answer some reused connection with a reset: a 502 to the client. uvicorn's default is 5 s."""
        from meridian_local.supervisor import SERVICE_KEEP_ALIVE

        cmd = next(line for line in (ROOT / "services" / "Dockerfile").read_text().splitlines() if line.startswith("CMD "))
        found = re.search(r"--timeout-keep-alive (\d+)", cmd)
        assert found, "the image's uvicorn keeps uvicorn's 5 s keep-alive"
        albs = prod_plan.of_type("aws:lb/loadBalancer:LoadBalancer")
        assert albs and all(int(found.group(1)) > int(alb.inputs["idleTimeout"]) for alb in albs)
        assert int(found.group(1)) == SERVICE_KEEP_ALIVE  # the local run's processes are started the same way

    def test_image_runs_the_http_stack_the_benchmark_measured(self) -> None:
        """bench/cost_per_request.py measures the service on uvicorn[standard] (httptools, uvloop: the
        project's own dependency); plain uvicorn parses HTTP in pure Python and would cost more per request
        than the capacity figures say."""
        dockerfile = (ROOT / "services" / "Dockerfile").read_text()
        pyproject = (ROOT / "pyproject.toml").read_text()
        assert '"uvicorn[standard]' in pyproject and '"uvicorn[standard]' in dockerfile


# -- releases inside a region (docs/decisions/0001) ------------------------------------------------------
SERVICE = "aws:ecs/service:Service"
ALARM_TYPES = ("aws:cloudwatch/metricAlarm:MetricAlarm", "aws:cloudwatch/compositeAlarm:CompositeAlarm")
DIGEST = "sha256:" + "ab" * 32
SMALL = {"regions": ["us-east-1", "eu-west-1"]}


def alarm_names(plan: Plan, region: str) -> dict[str, dict[str, Any]]:
    """Every alarm the plan declares in ``region``, by name -> inputs."""
    return {
        (a.inputs.get("name") or a.inputs.get("alarmName")): a.inputs
        for t in ALARM_TYPES for a in plan.of_type(t) if a.region == region
    }


def by_arn(plan: Plan, type_token: str) -> dict[str, PlannedResource]:
    return {r.outputs["arn"]: r for r in plan.of_type(type_token)}


@pytest.fixture(scope="module")
def strategy_plans() -> dict[str, Plan]:
    """A 2-region stack rendered with each traffic-shifting strategy (and a 20-minute bake)."""
    return {s: render_values({**SMALL, "deploymentStrategy": s, "bakeMinutes": 20}, stack=f"rel-{s.lower().replace('_', '')}")
            for s in ("BLUE_GREEN", "CANARY", "LINEAR")}


class TestInRegionRollback:
    @pytest.mark.parametrize("plan_name", ["dev_plan", "prod_plan"])
    def test_every_service_rolls_back_on_its_regions_alarms(self, plan_name: str, request: pytest.FixtureRequest) -> None:
        """Alarm-based rollback on, naming alarms the plan declares in the service's own region (its 5xx rate and
        p99 latency), and the circuit breaker on with rollback."""
        plan: Plan = request.getfixturevalue(plan_name)
        services = plan.of_type(SERVICE)
        assert {s.region for s in services} == set(plan.topology.regions)
        for svc in services:
            alarms = svc.inputs["alarms"]
            assert alarms["enable"] is True and alarms["rollback"] is True, svc.name
            declared = alarm_names(plan, svc.region)
            assert alarms["alarmNames"] and set(alarms["alarmNames"]) <= set(declared), (svc.name, alarms["alarmNames"])
            metrics = {declared[n].get("metricName") for n in alarms["alarmNames"]} | {
                q["metric"]["metricName"] for n in alarms["alarmNames"] for q in declared[n].get("metricQueries") or [] if q.get("metric")
            }
            assert {"HTTPCode_Target_5XX_Count", "TargetResponseTime"} <= metrics, svc.name
            assert svc.inputs["deploymentCircuitBreaker"] == {"enable": True, "rollback": True}

    @pytest.mark.parametrize("plan_name", ["dev_plan", "prod_plan"])
    def test_latency_alarm_watches_the_regions_alb_p99(self, plan_name: str, request: pytest.FixtureRequest) -> None:
        """The latency alarm reads p99 TargetResponseTime of the same region's ALB."""
        plan: Plan = request.getfixturevalue(plan_name)
        albs = {r.region: r.outputs["arnSuffix"] for r in plan.of_type("aws:lb/loadBalancer:LoadBalancer")}
        for region in plan.topology.regions:
            (alarm,) = [a for n, a in alarm_names(plan, region).items() if n.endswith(f"{region}-alb-latency-p99")]
            (metric,) = [q["metric"] for q in alarm["metricQueries"] if q.get("metric")]
            assert metric["metricName"] == "TargetResponseTime" and metric["stat"] == "p99"
            assert metric["namespace"] == "AWS/ApplicationELB" and metric["dimensions"] == {"LoadBalancer": albs[region]}
            assert alarm["treatMissingData"] == "notBreaching" and alarm["threshold"] == 1.0

    @pytest.mark.parametrize("plan_name", ["dev_plan", "prod_plan"])
    def test_default_is_rolling_with_nothing_more(self, plan_name: str, request: pytest.FixtureRequest) -> None:
        """ROLLING needs no second target group, listener rule or ECS role; none is declared."""
        plan: Plan = request.getfixturevalue(plan_name)
        assert plan.topology.release.strategy == "ROLLING"
        for svc in plan.of_type(SERVICE):
            assert svc.inputs["deploymentConfiguration"] == {"strategy": "ROLLING"}
            assert all("advancedConfiguration" not in lb for lb in svc.inputs["loadBalancers"])
        assert plan.of_type("aws:lb/listenerRule:ListenerRule") == []
        assert len(plan.of_type("aws:lb/targetGroup:TargetGroup")) == len(plan.topology.regions)

    def test_service_waits_for_its_alarms(self) -> None:
        """The service's alarm names come from the alarms' outputs, so the alarms exist before ECS needs them."""
        import inspect

        from infra.components import regional

        source = inspect.getsource(regional.Region.__init__)
        assert source.index("alarms(scope") < source.index("fargate_service(")


class TestTrafficShiftingStrategies:
    @pytest.mark.parametrize("strategy", ["BLUE_GREEN", "CANARY", "LINEAR"])
    def test_companions_present(self, strategy: str, strategy_plans: dict[str, Plan]) -> None:
        """An alternate target group like the first, a production rule on the HTTPS listener forwarding to both
        (100/0, weights left to ECS), and a role ECS may assume with AWS's load-balancer policy; all in the region."""
        plan = strategy_plans[strategy]
        groups = by_arn(plan, "aws:lb/targetGroup:TargetGroup")
        rules = by_arn(plan, "aws:lb/listenerRule:ListenerRule")
        roles = by_arn(plan, "aws:iam/role:Role")
        listeners = {r.outputs["arn"]: r for r in plan.of_type("aws:lb/listener:Listener")}
        attachments = plan.of_type("aws:iam/rolePolicyAttachment:RolePolicyAttachment")
        for svc in plan.of_type(SERVICE):
            (lb,) = svc.inputs["loadBalancers"]
            advanced = lb["advancedConfiguration"]
            primary, alternate = groups[lb["targetGroupArn"]], groups[advanced["alternateTargetGroupArn"]]
            assert primary.region == alternate.region == svc.region and primary.name != alternate.name
            same = ("port", "protocol", "targetType", "vpcId", "healthCheck")
            assert {k: alternate.inputs[k] for k in same} == {k: primary.inputs[k] for k in same}
            rule = rules[advanced["productionListenerRule"]]
            assert rule.region == svc.region and listeners[rule.inputs["listenerArn"]].inputs["protocol"] == "HTTPS"
            (action,) = rule.inputs["actions"]
            weights = {g["arn"]: g["weight"] for g in action["forward"]["targetGroups"]}
            assert weights == {lb["targetGroupArn"]: 100, advanced["alternateTargetGroupArn"]: 0}
            role = roles[advanced["roleArn"]]
            assert role.region == svc.region
            assert json.loads(role.inputs["assumeRolePolicy"])["Statement"][0]["Principal"] == {"Service": "ecs.amazonaws.com"}
            assert any(a.inputs["role"] == role.outputs["name"] and a.inputs["policyArn"].endswith(
                ":iam::aws:policy/AmazonECSInfrastructureRolePolicyForLoadBalancers") for a in attachments)

    @pytest.mark.parametrize(("strategy", "extra"), [
        ("BLUE_GREEN", {}),
        ("CANARY", {"canaryConfiguration": {"canaryPercent": 10.0, "canaryBakeTimeInMinutes": "20"}}),
        ("LINEAR", {"linearConfiguration": {"stepPercent": 25.0, "stepBakeTimeInMinutes": "20"}}),
    ])
    def test_strategy_and_bake(self, strategy: str, extra: dict[str, Any], strategy_plans: dict[str, Plan]) -> None:
        """meridian:deploymentStrategy and meridian:bakeMinutes reach every service's deploymentConfiguration."""
        for svc in strategy_plans[strategy].of_type(SERVICE):
            assert svc.inputs["deploymentConfiguration"] == {"strategy": strategy, "bakeTimeInMinutes": "20", **extra}
            assert svc.inputs["alarms"]["rollback"] is True and svc.inputs["deploymentCircuitBreaker"]["rollback"] is True

    @pytest.mark.parametrize("strategy", ["BLUE_GREEN", "CANARY", "LINEAR"])
    def test_policy_clean(self, strategy: str, strategy_plans: dict[str, Plan]) -> None:
        """Every policy rule (ECS's ranges and companions included) passes with each strategy."""
        from policy.rules import Res, check

        plan = strategy_plans[strategy]
        assert check([Res(r.type, r.name, r.region, r.inputs) for r in plan.custom], plan.topology.regions) == []

    def test_production_rule_weights_are_left_to_ecs(self) -> None:
        """ECS moves the weights after each deployment; an `up` must not put them back."""
        import inspect

        from infra.components import load_balancer

        assert 'ignore_changes=["actions"]' in inspect.getsource(load_balancer.load_balancer)


class TestPins:
    EU = f"123456789012.dkr.ecr.eu-west-1.amazonaws.com/meridian-pin/service@{DIGEST}"

    @pytest.fixture(scope="class")
    @classmethod
    def plans(cls) -> tuple[Plan, Plan]:
        base = render_values({**SMALL, "image": "registry.example.com/meridian:base"}, stack="pin")
        pinned = render_values({**SMALL, "image": "registry.example.com/meridian:base", "release": {"eu-west-1": cls.EU}}, stack="pin")
        return base, pinned

    def test_a_pin_changes_only_its_region(self, plans: tuple[Plan, Plan]) -> None:
        """The pinned region runs its pin; every other region's task definition is byte for byte what it was
        (the pins are not in the topology the tasks carry)."""
        base, pinned = plans
        before = {td.region: td.inputs for td in base.of_type("aws:ecs/taskDefinition:TaskDefinition")}
        after = {td.region: td.inputs for td in pinned.of_type("aws:ecs/taskDefinition:TaskDefinition")}
        assert after["us-east-1"] == before["us-east-1"]
        assert after["eu-west-1"] != before["eu-west-1"]
        (container,) = json.loads(after["eu-west-1"]["containerDefinitions"])
        assert container["image"] == self.EU
        (old,) = json.loads(before["eu-west-1"]["containerDefinitions"])
        assert {**container, "image": old["image"]} == old, "only the image moved"
        environments = lambda p: {f.name: f.inputs["environment"] for f in p.of_type("aws:lambda/function:Function")}  # noqa: E731
        assert environments(base) == environments(pinned), "the Lambdas' topology carries no pin either"

    def test_unpinned_regions_run_the_built_image(self) -> None:
        """Without meridian:image, an unpinned region runs the content-tagged image pushed to its own ECR repository."""
        plan = render_values({**SMALL, "release": {"eu-west-1": self.EU}}, stack="pin")
        images = {td.region: json.loads(td.inputs["containerDefinitions"])[0]["image"]
                  for td in plan.of_type("aws:ecs/taskDefinition:TaskDefinition")}
        assert images["eu-west-1"] == self.EU
        assert re.fullmatch(r"123456789012\.dkr\.ecr\.us-east-1\.amazonaws\.com/meridian-pin/service:src-[0-9a-f]{16}", images["us-east-1"])

    @pytest.mark.parametrize(("release", "says"), [
        ({"eu-west-3": EU}, "meridian:release pins region 'eu-west-3', which is not in meridian:regions"),
        ({"eu-west-1": "123456789012.dkr.ecr.eu-west-1.amazonaws.com/meridian-pin/service:v1"}, "has no digest"),
        ({"eu-west-1": "repo@sha256:abc"}, "64 lowercase hex digits"),
        ({"eu-west-1": "repo@sha256:" + "AB" * 32}, "64 lowercase hex digits"),
    ])
    def test_bad_pins_are_one_line_errors(self, release: dict[str, str], says: str) -> None:
        with pytest.raises(RenderError) as info:
            render_values({**SMALL, "release": release}, stack="pin")
        assert says in str(info.value) and "\n" not in str(info.value)

    @pytest.mark.parametrize(("config", "says"), [
        ({"deploymentStrategy": "RECREATE"}, "use ROLLING, BLUE_GREEN, CANARY, LINEAR"),
        ({"bakeMinutes": 1441}, "0 to 1440 minutes"),
        ({"canaryRegion": "ap-south-1"}, "meridian:canaryRegion is 'ap-south-1'"),
    ])
    def test_bad_release_settings(self, config: dict[str, Any], says: str) -> None:
        with pytest.raises(RenderError, match=re.escape(says)):
            render_values({**SMALL, **config}, stack="pin")
