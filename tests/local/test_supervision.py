"""The local run's control API is the run's own (a per-run secret), and its region services are supervised.

One run for the module (three regions, two in an eu zone). Its last test kills the embedded AWS, so it
stays last; the fixture's teardown checks that the normal stop logged no crash beyond those caused here.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from stacks import THREE_REGIONS

from meridian_cli.local_cmds import start_local, stop_local
from meridian_cli.main import main
from meridian_local.state import control, pid_alive, read_state

pytestmark = pytest.mark.slow

STACK = THREE_REGIONS


class Run:
    def __init__(self, state_dir: Path, state: dict[str, Any]) -> None:
        self.state_dir, self.state = state_dir, state
        self.edge = httpx.Client(base_url=state["edge"], timeout=10)
        self.crashes_caused = 0

    def status(self) -> dict[str, Any]:
        return control(self.state_dir, "GET", "status")

    def wait(self, predicate: Any, timeout: float = 20.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.status()
            if predicate(status):
                return status
            time.sleep(0.1)
        raise AssertionError(f"condition not reached in {timeout} s: {self.status()['regions']}")

    def log(self) -> str:
        return (self.state_dir / "supervisor.log").read_text()


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    root = tmp_path_factory.mktemp("supervision")
    stack = root / "Pulumi.sup.yaml"
    stack.write_text(STACK)
    state = start_local(str(stack), root / "state", time_scale=0.1, latency_scale=0, lag=0.2)
    r = Run(root / "state", state)
    yield r
    assert stop_local(root / "state") == []
    log = r.log()
    assert log.count("CRASHED") == r.crashes_caused, log  # the normal stop is not a crash
    assert "stopped; no process left" in log


def user(run: Run, place: str, residency: str = "eu") -> httpx.Response:
    return run.edge.post("/v1/users", json={"email": f"s{time.time_ns()}@example.com", "name": "S", "residency": residency},
                         headers={"X-Meridian-Client-Region": place})


class TestControlApi:
    def test_unauthenticated_shutdown_is_refused_and_the_run_stays_up(self, run: Run) -> None:
        """A client on the edge port cannot stop the run: 401 with the error envelope; every region still serves."""
        r = run.edge.post("/_meridian/shutdown")
        assert r.status_code == 401
        assert set(r.json()) == {"error", "message"} and r.json()["error"] == "unauthorized"
        time.sleep(0.5)
        assert pid_alive(run.state["pid"])
        assert all(s["state"] == "serving" for s in run.status()["regions"].values())

    @pytest.mark.parametrize(("method", "path"), [("GET", "/_meridian/status"), ("POST", "/_meridian/fail/eu-west-1"),
                                                  ("POST", "/_meridian/heal"), ("POST", "/_meridian/dial/eu-west-1"),
                                                  ("POST", "/_meridian/partition"), ("POST", "/_meridian/slow"),
                                                  ("POST", "/_meridian/no-such-route")])
    def test_every_control_route_needs_the_secret(self, run: Run, method: str, path: str) -> None:
        """No route of the control API answers without the secret, nor with a wrong one; nothing changed."""
        for headers in ({}, {"Authorization": "Bearer not-the-secret"}, {"Authorization": f"Basic {run.state['control_secret']}"}):
            r = run.edge.request(method, path, json={"value": 0, "a": "eu-west-1", "b": "eu-central-1", "seconds": 5}, headers=headers)
            assert r.status_code == 401, (path, headers, r.text)
        status = run.status()
        assert status["regions"]["eu-west-1"]["dial"] == 100 and status["regions"]["eu-west-1"]["state"] == "serving"
        assert status["replication"]["partitions"] == []

    def test_clients_cannot_use_the_link_between_regions(self, run: Run) -> None:
        """/_link carries region-to-region calls; a client that guesses its shape gets 401, never a region."""
        for path in ("/_link/us-east-1/eu-west-1/health/ready", "/_link/guess/us-east-1/eu-west-1/health/ready",
                     "/_link/guess/us-east-1/eu-west-1/v1/users"):
            r = run.edge.get(path)
            assert r.status_code == 401, (path, r.text)
            assert "X-Meridian-Region" not in r.headers

    def test_regions_still_reach_each_other_through_the_link(self, run: Run) -> None:
        """A US client creating an eu user: us-east-1 forwards it to the eu zone through the secret link."""
        r = user(run, "us-east-1")
        assert r.status_code == 201, r.text
        assert r.headers["X-Meridian-Region"] in ("eu-west-1", "eu-central-1")

    def test_state_file_is_private_and_the_status_shows_no_secret(self, run: Run) -> None:
        path = run.state_dir / "state.json"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        secret = json.loads(path.read_text())["control_secret"]
        assert len(secret) >= 32
        assert secret not in json.dumps(run.status())

    def test_the_cli_sends_the_secret(self, run: Run, capsys: pytest.CaptureFixture[str]) -> None:
        assert main(["local", "status", "--json", "--state-dir", str(run.state_dir)]) == 0
        assert set(json.loads(capsys.readouterr().out)["regions"]) == {"us-east-1", "eu-west-1", "eu-central-1"}
        assert main(["local", "partition", "eu-west-1", "eu-central-1", "--state-dir", str(run.state_dir)]) == 0
        assert run.status()["replication"]["partitions"] == [["eu-central-1", "eu-west-1"]]
        assert main(["local", "heal", "--state-dir", str(run.state_dir)]) == 0
        assert run.status()["replication"]["partitions"] == []


class TestSupervision:
    def test_a_killed_service_comes_back_and_is_counted(self, run: Run) -> None:
        """kill -9 of eu-west-1's service: restarted after the backoff, serving again, restarts=1; state.json
        follows the new pid (so `meridian down` stops it) and the table shows the count."""
        old = run.status()["regions"]["eu-west-1"]
        os.kill(old["pid"], signal.SIGKILL)
        run.crashes_caused += 1
        status = run.wait(lambda s: s["regions"]["eu-west-1"]["state"] == "serving" and s["regions"]["eu-west-1"]["pid"] != old["pid"])
        region = status["regions"]["eu-west-1"]
        assert region["restarts"] == old["restarts"] + 1 == 1
        assert region["last_exit"] == -signal.SIGKILL
        assert (read_state(run.state_dir) or {})["regions"]["eu-west-1"]["pid"] == region["pid"]
        assert httpx.get(region["url"] + "/health/ready", timeout=5).status_code == 200
        # The edge's checks may have seen it down meanwhile: its clients return once they see it up again.
        run.wait(lambda s: s["regions"]["eu-west-1"]["healthy"])
        r = user(run, "eu-west-1")
        assert r.status_code == 201 and r.headers["X-Meridian-Region"] == "eu-west-1"
        assert "eu-west-1 service CRASHED (exit -9); restarting in 0.5 s" in run.log()

    def test_backoff_doubles_when_it_crashes_again(self, run: Run) -> None:
        """A service that crashes again before it has served 10 s waits twice as long before its restart."""
        before = run.status()["regions"]["eu-central-1"]
        for n in (1, 2):
            pid = run.wait(lambda s: s["regions"]["eu-central-1"]["state"] == "serving")["regions"]["eu-central-1"]["pid"]
            os.kill(pid, signal.SIGKILL)
            run.crashes_caused += 1
            run.wait(lambda s, n=n: s["regions"]["eu-central-1"]["restarts"] == before["restarts"] + n)
        assert "eu-central-1 service CRASHED (exit -9); restarting in 0.5 s" in run.log()
        assert "eu-central-1 service CRASHED (exit -9); restarting in 1.0 s" in run.log()
        run.wait(lambda s: s["regions"]["eu-central-1"]["state"] == "serving")

    def test_status_table_shows_restarts(self, run: Run, capsys: pytest.CaptureFixture[str]) -> None:
        assert main(["local", "status", "--state-dir", str(run.state_dir)]) == 0
        out = capsys.readouterr().out
        assert "restarts" in out
        row = next(line for line in out.splitlines() if "eu-west-1" in line)
        assert " 1 " in row
        assert max(len(line) for line in out.splitlines()) <= 80

    def test_an_injected_region_loss_is_not_restarted(self, run: Run) -> None:
        """`fail` is a fault, not a crash: the service stays down past any backoff, until healed."""
        restarts = run.status()["regions"]["eu-central-1"]["restarts"]
        control(run.state_dir, "POST", "fail/eu-central-1")
        try:
            time.sleep(2.0)  # four times the first backoff
            region = run.status()["regions"]["eu-central-1"]
            assert region["state"] == "failed" and region["restarts"] == restarts
            assert region["pid"] is None or not pid_alive(region["pid"])
        finally:
            control(run.state_dir, "POST", "heal", {"region": "eu-central-1"})
        status = run.wait(lambda s: s["regions"]["eu-central-1"]["state"] == "serving")
        assert status["regions"]["eu-central-1"]["restarts"] == restarts

    def test_zz_dead_embedded_aws_is_reported_and_answered_503(self, run: Run) -> None:
        """The moto server dies: the run stays up and says so; the services answer 503 storage_unavailable.
        (Last in the module: nothing after it can use storage.)"""
        os.kill(run.state["moto_pid"], signal.SIGKILL)
        status = run.wait(lambda s: s["aws"]["state"] == "dead", timeout=10)
        assert "503 storage_unavailable" in status["aws"]["detail"]
        r = run.edge.post("/v1/counters/sup/increment", json={"by": 1}, headers={"X-Meridian-Client-Region": "eu-west-1"})
        assert r.status_code == 503 and r.json()["error"] == "storage_unavailable", r.text
        assert "Retry-After" in r.headers
        assert "DIED" in run.log()
        assert pid_alive(run.state["pid"])
