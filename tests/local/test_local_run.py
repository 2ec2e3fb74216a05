"""End to end through the emulated edge: three regions (two in an eu zone) on this machine.

One local run is started for the module (real moto server, one uvicorn process per region, the edge,
the replication emulator), with health checks 10x faster and no injected delay.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from stacks import THREE_REGIONS

from meridian_cli.local_cmds import start_local, stop_local
from meridian_cli.main import main
from meridian_local.state import control, pid_alive

pytestmark = pytest.mark.slow

STACK = THREE_REGIONS


class Run:
    def __init__(self, state_dir: Path, state: dict[str, Any]) -> None:
        self.state_dir, self.state = state_dir, state
        self.http = httpx.Client(base_url=state["edge"], timeout=10)
        self.tokens: dict[str, str] = {}  # user id -> bearer token from its creation

    def call(self, place: str, method: str, path: str, **kw: Any) -> httpx.Response:
        headers = {"X-Meridian-Client-Region": place, **kw.pop("headers", {})}
        user = path.split("/")[3] if path.startswith("/v1/users/") else None
        if user in self.tokens:
            headers.setdefault("Authorization", f"Bearer {self.tokens[user]}")
        return self.http.request(method, path, headers=headers, **kw)

    def status(self) -> dict[str, Any]:
        return control(self.state_dir, "GET", "status")

    def wait(self, predicate: Any, timeout: float = 20.0) -> float:
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if predicate(self.status()):
                return time.monotonic() - start
            time.sleep(0.1)
        raise AssertionError("condition not reached in time")

    def drained(self) -> None:
        """Replication has caught up: every write made so far read from its stream and applied."""
        result = control(self.state_dir, "POST", "drain", {"timeout": 20}, timeout=30)
        assert result["drained"], result

    def items(self, table: str, region: str) -> list[dict[str, Any]]:
        client = boto3.client("dynamodb", region_name=region, endpoint_url=self.state["aws_endpoint"],
                              aws_access_key_id="t", aws_secret_access_key="t")
        return client.scan(TableName=table)["Items"]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    root = tmp_path_factory.mktemp("local")
    stack = root / "Pulumi.e2e.yaml"
    stack.write_text(STACK)
    state_dir = root / "state"
    state = start_local(str(stack), state_dir, time_scale=0.1, latency_scale=0, lag=0.2)
    yield Run(state_dir, state)
    left = stop_local(state_dir)
    assert left == [], f"processes left behind: {left}"


def create(run: Run, place: str, zone: str) -> httpx.Response:
    # One account per email: each user of the run has its own address.
    r = run.call(place, "POST", "/v1/users", json={"email": f"e{time.time_ns()}@example.com", "name": "E", "residency": zone})
    assert r.status_code == 201, r.text
    run.tokens[r.json()["user_id"]] = r.json()["token"]
    return r


class TestLocalRun:
    def test_status_json(self, run: Run, capsys: pytest.CaptureFixture[str]) -> None:
        """`meridian local status --json` names the AWS endpoint, the edge and each region's URL, state and dial."""
        assert main(["local", "status", "--json", "--state-dir", str(run.state_dir)]) == 0
        import json

        data = json.loads(capsys.readouterr().out)
        assert data["aws_endpoint"].startswith("http://127.0.0.1:") and data["edge"] == run.state["edge"]
        assert set(data["regions"]) == {"us-east-1", "eu-west-1", "eu-central-1"}
        assert all(r["state"] == "serving" and r["dial"] == 100 and r["url"] for r in data["regions"].values())

    def test_provisioned_from_the_program(self, run: Run) -> None:
        """Tables exist where the program's replicas say, and nowhere else (eu tables only in the eu zone)."""
        tables = run.status()["tables"]
        assert tables["meridian-e2e-eu-users"] == ["eu-west-1", "eu-central-1"]
        assert sorted(tables["meridian-e2e-directory"]) == ["eu-central-1", "eu-west-1", "us-east-1"]
        us = boto3.client("dynamodb", region_name="us-east-1", endpoint_url=run.state["aws_endpoint"],
                          aws_access_key_id="t", aws_secret_access_key="t")
        assert not [t for t in us.list_tables()["TableNames"] if "-eu-" in t]

    def test_write_in_one_region_read_in_another_after_replication(self, run: Run) -> None:
        r = create(run, "eu-west-1", "eu")
        user = r.json()["user_id"]
        run.drained()
        got = run.call("eu-central-1", "GET", f"/v1/users/{user}", headers={"X-Meridian-Session": r.headers["X-Meridian-Session"]})
        assert got.status_code == 200 and got.headers["X-Meridian-Region"] == "eu-central-1"

    def test_us_client_creating_eu_user_keeps_residency(self, run: Run) -> None:
        r = create(run, "us-east-1", "eu")
        assert r.headers["X-Meridian-Edge-Target"] == "us-east-1"
        assert r.headers["X-Meridian-Region"] in ("eu-west-1", "eu-central-1")
        run.drained()
        user = r.json()["user_id"]
        assert not [i for i in run.items("meridian-e2e-global-users", "us-east-1") if i["user_id"]["S"] == user]
        directory = [i for i in run.items("meridian-e2e-directory", "us-east-1") if i["user_id"]["S"] == user]
        assert directory and set(directory[0]) == {"user_id", "home_region", "zone", "version", "origin_region", "schema"}

    def test_failover_within_zone(self, run: Run) -> None:
        """eu-west-1 fails: eu clients go to eu-central-1, writes for its users run there, nothing leaves the zone."""
        r = create(run, "eu-west-1", "eu")
        user = r.json()["user_id"]
        assert r.json()["home_region"] == "eu-west-1"
        run.drained()
        control(run.state_dir, "POST", "fail/eu-west-1")
        try:
            took = run.wait(lambda s: not s["regions"]["eu-west-1"]["healthy"])
            assert took < 10
            upd = run.call("eu-west-1", "PUT", f"/v1/users/{user}", json={"name": "during failover"})
            assert upd.status_code == 200, upd.text
            assert upd.headers["X-Meridian-Edge-Target"] == "eu-central-1"
            assert upd.headers["X-Meridian-Region"] == "eu-central-1"
        finally:
            control(run.state_dir, "POST", "heal", {"region": "eu-west-1"})
        run.wait(lambda s: s["regions"]["eu-west-1"]["healthy"])
        run.drained()
        west = [i for i in run.items("meridian-e2e-eu-users", "eu-west-1") if i["user_id"]["S"] == user]
        assert west[0]["name"]["S"] == "during failover" and west[0]["failover"] == {"BOOL": True}

    def test_partition_then_heal_converges(self, run: Run) -> None:
        """Writes on both sides of a partition: held, not lost; after heal every replica is identical and
        the concurrent pair is recorded as one conflict."""
        r = create(run, "eu-west-1", "eu")
        user = r.json()["user_id"]
        run.drained()
        control(run.state_dir, "POST", "partition", {"a": "eu-west-1", "b": "eu-central-1"})
        try:
            a = run.call("eu-west-1", "PUT", f"/v1/users/{user}", json={"name": "west"})
            b = run.call("eu-central-1", "PUT", f"/v1/users/{user}", json={"name": "central"})
            assert a.status_code == 200 and b.status_code == 200, (a.text, b.text)
            assert (a.headers["X-Meridian-Region"], b.headers["X-Meridian-Region"]) == ("eu-west-1", "eu-central-1")
            time.sleep(0.5)
            assert run.status()["replication"]["held"] > 0
        finally:
            control(run.state_dir, "POST", "heal", {})
        run.drained()
        time.sleep(0.3)
        run.drained()
        items = {region: [i for i in run.items("meridian-e2e-eu-users", region) if i["user_id"]["S"] == user][0]
                 for region in ("eu-west-1", "eu-central-1")}
        assert items["eu-west-1"] == items["eu-central-1"]
        winner = max((a.json()["version"], "west"), (b.json()["version"], "central"))[1]
        assert items["eu-west-1"]["name"]["S"] == winner
        conflicts = [i for i in run.items("meridian-e2e-eu-conflicts", "eu-west-1") if i["item_key"]["S"] == f"users#{user}"]
        assert len(conflicts) == 1

    def test_evacuate_and_restore_local(self, run: Run, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """`meridian evacuate --local` sets the edge's dial to 0 (eu clients go elsewhere); evacuating the other
        eu region then is refused (the zone would be unserved); restore brings the dial back."""
        stack = tmp_path / "Pulumi.e2e.yaml"
        stack.write_text(STACK)
        base = ["--config", str(stack), "--local", "--yes", "--state-dir", str(run.state_dir)]
        try:
            assert main(["evacuate", "eu-west-1", *base]) == 0
            assert run.status()["regions"]["eu-west-1"]["dial"] == 0
            r = create(run, "eu-west-1", "eu")
            assert r.headers["X-Meridian-Edge-Target"] == "eu-central-1"
            assert main(["evacuate", "eu-central-1", *base]) == 1
            assert "'eu' would have no serving region" in capsys.readouterr().out
        finally:
            assert main(["restore", "eu-west-1", *base]) == 0
        assert run.status()["regions"]["eu-west-1"]["dial"] == 100

    def test_second_up_refused_and_bad_region(self, run: Run, capsys: pytest.CaptureFixture[str]) -> None:
        assert main(["up", "--local", "--config", "Pulumi.dev.yaml", "--state-dir", str(run.state_dir)]) == 2
        assert "already up" in capsys.readouterr().err
        assert main(["local", "fail", "mars-1", "--state-dir", str(run.state_dir)]) == 2
        assert "not a region of this run" in capsys.readouterr().err


def test_down_leaves_no_process(tmp_path: Path) -> None:
    """A separate run: `meridian down` stops the supervisor, every service and the moto server."""
    stack = tmp_path / "Pulumi.down.yaml"
    stack.write_text(STACK)
    state = start_local(str(stack), tmp_path / "s", time_scale=0.1, latency_scale=0, lag=0.2)
    pids = [state["pid"], state["moto_pid"], *[r["pid"] for r in state["regions"].values()]]
    assert all(pid_alive(p) for p in pids)
    assert main(["down", "--state-dir", str(tmp_path / "s")]) == 0
    assert not [p for p in pids if pid_alive(p)]
    assert not (tmp_path / "s" / "state.json").exists()
