"""Each region's Fargate service: the container the task runs, its health check and its filesystem."""

from __future__ import annotations

import json
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
from infra.render import Plan

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
