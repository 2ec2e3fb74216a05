"""`meridian up --local --backend localstack`: a LocalStack the user runs, reached through LOCALSTACK_HOST.

LocalStack cannot run here (auth token, Docker). The end-to-end tests present the embedded moto server,
one port for every service like LocalStack's edge, as that endpoint; they always run. The same tests run
against a real LocalStack too when ``LOCALSTACK_HOST`` is set (it must answer then: a failure, not a skip).

moto keeps separate tables per replica region, LocalStack one shared table: the detection is tested both
ways with in-memory fakes of the two behaviours.
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from botocore.exceptions import ClientError
from stacks import THREE_REGIONS

from meridian_cli.main import main
from meridian_local import backend as backends
from meridian_local import moto_server
from meridian_local.state import control, pid_alive, read_state, state_file


# -- in-memory DynamoDB with LocalStack's and moto's global-table behaviour ---------------------------------
class FakeDynamo:
    """``shared=True``: one table behind every replica (LocalStack: ReplicaUpdates makes the table answer in
    the replica region, with the same items). ``shared=False``: ReplicaUpdates accepted, nothing created (moto)."""

    def __init__(self, *, shared: bool) -> None:
        self.shared = shared
        self.tables: dict[tuple[str, str], dict[str, Any]] = {}  # (region, name) -> items by pk
        self.calls: list[tuple[str, str, str]] = []  # (operation, region, table)

    def client(self, region: str) -> FakeClient:
        return FakeClient(self, region)


class FakeClient:
    def __init__(self, dynamo: FakeDynamo, region: str) -> None:
        self.dynamo, self.region = dynamo, region

    def _table(self, name: str) -> dict[str, Any]:
        if (self.region, name) not in self.dynamo.tables:
            raise ClientError({"Error": {"Code": "ResourceNotFoundException", "Message": f"Table: {name} not found"}}, "DescribeTable")
        return self.dynamo.tables[(self.region, name)]

    def create_table(self, TableName: str, **_: Any) -> None:  # noqa: N803 - boto3's parameter names
        self.dynamo.calls.append(("CreateTable", self.region, TableName))
        if (self.region, TableName) in self.dynamo.tables:
            raise ClientError({"Error": {"Code": "ResourceInUseException", "Message": "exists"}}, "CreateTable")
        self.dynamo.tables[(self.region, TableName)] = {}

    def describe_table(self, TableName: str) -> dict[str, Any]:  # noqa: N803
        self._table(TableName)
        return {"Table": {"TableName": TableName, "TableStatus": "ACTIVE"}}

    def update_table(self, TableName: str, ReplicaUpdates: list[dict[str, Any]]) -> None:  # noqa: N803
        self.dynamo.calls.append(("UpdateTable", self.region, TableName))
        items = self._table(TableName)
        for update in ReplicaUpdates:
            if self.dynamo.shared and "Create" in update:
                self.dynamo.tables[(update["Create"]["RegionName"], TableName)] = items  # the same dict: shared
            if self.dynamo.shared and "Delete" in update:
                self.dynamo.tables.pop((update["Delete"]["RegionName"], TableName), None)

    def delete_table(self, TableName: str) -> None:  # noqa: N803
        self.dynamo.calls.append(("DeleteTable", self.region, TableName))
        self._table(TableName)
        del self.dynamo.tables[(self.region, TableName)]

    def put_item(self, TableName: str, Item: dict[str, Any]) -> None:  # noqa: N803
        self._table(TableName)[Item["pk"]["S"]] = dict(Item)

    def get_item(self, TableName: str, Key: dict[str, Any], ConsistentRead: bool = False) -> dict[str, Any]:  # noqa: N803
        item = self._table(TableName).get(Key["pk"]["S"])
        return {"Item": item} if item else {}

    def delete_item(self, TableName: str, Key: dict[str, Any]) -> None:  # noqa: N803
        self._table(TableName).pop(Key["pk"]["S"], None)


class FakeBackend(backends.Backend):
    def __init__(self, dynamo: FakeDynamo) -> None:
        super().__init__("fake", "http://fake", owned=False)
        self.dynamo = dynamo

    def client(self, service: str, region: str, config: Any = None) -> Any:
        assert service == "dynamodb"
        return self.dynamo.client(region)


class TestLiveness:
    """A user's LocalStack may stop and come back; the run says so instead of hiding it."""

    def test_a_localstack_that_stops_answering_is_unreachable_then_serving_again(self, tmp_path: Path) -> None:
        from types import SimpleNamespace

        from meridian_local.supervisor import Supervisor

        proc, endpoint = moto_server.start(tmp_path / "moto.log")
        try:
            backend = backends.Backend(name="localstack", endpoint=endpoint, owned=False, probe_every=0.0)
            logs: list[str] = []
            sup = SimpleNamespace(backend=backend, aws={"state": "serving"}, log=logs.append)
            Supervisor.watch_aws(sup)  # type: ignore[arg-type]
            assert sup.aws["state"] == "serving" and logs == []
        finally:
            proc.kill()
            proc.wait(5)
        Supervisor.watch_aws(sup)  # type: ignore[arg-type]
        assert sup.aws["state"] == "unreachable" and "does not answer" in sup.aws["detail"], sup.aws
        assert "UNREACHABLE" in logs[-1]
        again, backend.endpoint = moto_server.start(tmp_path / "moto2.log")  # it answers again (here: at a new port)
        try:
            Supervisor.watch_aws(sup)  # type: ignore[arg-type]
            assert sup.aws["state"] == "serving" and "answers again" in logs[-1]
        finally:
            again.kill()
            again.wait(5)

    def test_probes_are_rate_limited(self) -> None:
        backend = backends.Backend(name="localstack", endpoint=f"http://127.0.0.1:{moto_server.free_port()}", owned=False)
        started = time.monotonic()
        assert backend.alive() is False
        assert backend.alive() is False and time.monotonic() - started < 5  # the second answer is the cached one


class TestReplicaDetection:
    def test_shared_replicas_are_detected(self) -> None:
        """LocalStack's behaviour: the write in one region is read at once in the other."""
        dynamo = FakeDynamo(shared=True)
        replicas = backends.probe_replicas(FakeBackend(dynamo), ["eu-west-1", "eu-central-1"], prefix="t")
        assert replicas.shared and replicas.replication == "shared by the backend (no lag, no conflicts)"
        assert "eu-west-1" in replicas.detail and "eu-central-1" in replicas.detail
        # The replica was the backend's: no table was created in the replica region, and the probe is gone.
        assert not [c for c in dynamo.calls if c[0] == "CreateTable" and c[1] == "eu-central-1"]
        assert dynamo.tables == {}

    def test_separate_replicas_are_detected(self) -> None:
        """moto's behaviour: ReplicaUpdates creates nothing, so the run creates a table per region; not shared."""
        dynamo = FakeDynamo(shared=False)
        replicas = backends.probe_replicas(FakeBackend(dynamo), ["us-east-1", "eu-west-1"], prefix="t")
        assert not replicas.shared and replicas.replication.startswith("emulated")
        assert [c[1] for c in dynamo.calls if c[0] == "CreateTable"] == ["us-east-1", "eu-west-1"]
        assert dynamo.tables == {}

    @pytest.mark.parametrize("shared", [True, False])
    def test_detector_on_a_client_pair(self, shared: bool) -> None:
        dynamo = FakeDynamo(shared=shared)
        backends.create_global_table(dynamo.client, {"TableName": "t"}, "a", ["b"])
        result = backends.detect_replicas(dynamo.client("a"), dynamo.client("b"), table="t", writer_region="a", reader_region="b")
        assert result.shared is shared
        assert dynamo.tables[("a", "t")] == {}, "the probe item is deleted"

    def test_the_real_moto_server_keeps_separate_replicas(self, tmp_path: Path) -> None:
        proc, endpoint = moto_server.start(tmp_path / "moto.log")
        try:
            replicas = backends.probe_replicas(backends.Backend("moto", endpoint, owned=True, proc=proc), ["us-east-1", "eu-west-1"], prefix="t")
            assert not replicas.shared
            client = boto3.client("dynamodb", region_name="us-east-1", endpoint_url=endpoint, aws_access_key_id="t", aws_secret_access_key="t")
            assert client.list_tables()["TableNames"] == [], "the probe table is deleted"
        finally:
            proc.kill()
            proc.wait(5)


class TestScenarios:
    SHARED = {"name": "localstack", "shared": True}

    def test_shared_replicas_leave_out_what_needs_diverging_replicas(self) -> None:
        runnable, not_possible = backends.split_scenarios(["region-loss", "partition", "conflicts"], self.SHARED)
        assert runnable == ["region-loss"], "region loss by stopping a region's service still runs"
        assert set(not_possible) == {"partition", "conflicts"}
        assert all(reason.startswith("not possible on localstack: ") for reason in not_possible.values())

    def test_separate_replicas_run_everything(self) -> None:
        assert backends.split_scenarios(["partition", "conflicts"], {"name": "moto", "shared": False}) == (["partition", "conflicts"], {})

    def test_gameday_refuses_a_scenario_the_backend_cannot_run(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """Never run and called passed: one line with the reason, exit 2 (this process stands in for a supervisor)."""
        state_file(tmp_path).write_text(json.dumps({"pid": os.getpid(), "edge": "http://127.0.0.1:9", "backend": self.SHARED}))
        assert main(["gameday", "--scenario", "partition", "--state-dir", str(tmp_path), "--report", str(tmp_path / "r")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("meridian: error: partition is not possible on localstack: a partition between replicas cannot happen")
        assert err.count("\n") == 1 and not (tmp_path / "r").exists()

    def test_not_possible_is_written_into_the_report(self, tmp_path: Path) -> None:
        (tmp_path / "report.md").write_text("# Game day\n")
        (tmp_path / "metrics.json").write_text(json.dumps({"passed": True}))
        backends.record_not_possible(tmp_path, {"partition": "not possible on localstack: why"})
        assert "## Not possible on this backend" in (tmp_path / "report.md").read_text()
        assert json.loads((tmp_path / "metrics.json").read_text())["not_possible"] == {"partition": "not possible on localstack: why"}


class TestEndpoint:
    def test_localstack_host_as_localstack_client_reads_it(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
        monkeypatch.delenv("LOCALSTACK_HOST", raising=False)
        assert backends.localstack_endpoint() == "http://localhost:4566"
        monkeypatch.setenv("LOCALSTACK_HOST", "ls.internal:4577")
        assert backends.localstack_endpoint() == "http://ls.internal:4577"
        monkeypatch.setenv("LOCALSTACK_HOST", "ls.internal:port")
        with pytest.raises(backends.BackendError, match="LOCALSTACK_HOST='ls.internal:port' is not host:port"):
            backends.localstack_endpoint()

    def test_up_against_nothing_is_one_line_naming_localstack_host(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
        monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
        monkeypatch.setenv("LOCALSTACK_HOST", f"127.0.0.1:{moto_server.free_port()}")
        stack = tmp_path / "Pulumi.lsdown.yaml"
        stack.write_text("config:\n  meridian:regions: [us-east-1, eu-west-1]\n")
        code = main(["up", "--local", "--backend", "localstack", "--config", str(stack), "--detach", "--state-dir", str(tmp_path / "s")])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
        assert "no AWS endpoint answers at http://127.0.0.1:" in err and "LOCALSTACK_HOST=127.0.0.1:" in err and "`localstack start`" in err
        assert not (tmp_path / "s").exists(), "nothing started"


# -- end to end: `meridian up --local --backend localstack` ---------------------------------------------------------
STACK = THREE_REGIONS + '  meridian:globalAccelerator: false\n'


def real_localstack() -> str | None:
    """The opt-in: LOCALSTACK_HOST set and answering an AWS call."""
    if not os.environ.get("LOCALSTACK_HOST"):
        return None
    try:
        endpoint = backends.localstack_endpoint()
        backends.check_answers(endpoint)
    except backends.BackendError:
        return None
    return endpoint


class Run:
    def __init__(self, kind: str, endpoint: str, state_dir: Path, stack: str, backend_proc: Any) -> None:
        self.kind, self.endpoint, self.state_dir, self.stack, self.backend_proc = kind, endpoint, state_dir, stack, backend_proc
        state = read_state(state_dir)
        assert state is not None
        self.state = state
        self.http = httpx.Client(base_url=state["edge"], timeout=10)

    def status(self) -> dict[str, Any]:
        return control(self.state_dir, "GET", "status")

    def dynamodb(self, region: str) -> Any:
        return boto3.client("dynamodb", region_name=region, endpoint_url=self.endpoint, aws_access_key_id="test", aws_secret_access_key="test")


#: The real LocalStack joins only where the user points LOCALSTACK_HOST at one (it needs Docker and an auth
#: token: not on this project's CI); set and not answering is a failure, never a skip.
BACKENDS = ["moto-as-localstack", *(["real-localstack"] if os.environ.get("LOCALSTACK_HOST") else [])]


@pytest.fixture(scope="module", params=BACKENDS)
def run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    root = tmp_path_factory.mktemp("localstack")
    proc = None
    if request.param == "real-localstack":
        endpoint = real_localstack()
        assert endpoint is not None, f"LOCALSTACK_HOST={os.environ['LOCALSTACK_HOST']} does not answer: start LocalStack or unset it"
        host = os.environ["LOCALSTACK_HOST"]
    else:
        proc, endpoint = moto_server.start(root / "moto.log")
        host = endpoint.removeprefix("http://")
    stack_name = f"ls{uuid.uuid4().hex[:6]}"  # a persistent LocalStack keeps earlier runs' tables
    stack = root / f"Pulumi.{stack_name}.yaml"
    stack.write_text(STACK)
    state_dir = root / "state"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("LOCALSTACK_HOST", host)
        env.delenv("AWS_ENDPOINT_URL", raising=False)
        assert main(["up", "--local", "--backend", "localstack", "--config", str(stack), "--detach", "--time-scale", "0.1",
                     "--latency-scale", "0", "--lag", "0.2", "--state-dir", str(state_dir)]) == 0
        try:
            yield Run(request.param, endpoint, state_dir, stack_name, proc)
        finally:
            main(["down", "--state-dir", str(state_dir)])
            if proc is not None:
                proc.kill()
                proc.wait(5)


@pytest.mark.slow
class TestUpAgainstLocalStack:
    def test_status_names_backend_endpoint_and_replication(self, run: Run, capsys: pytest.CaptureFixture[str]) -> None:
        status = run.status()
        backend = status["backend"]
        assert backend["name"] == "localstack" and backend["endpoint"] == run.endpoint == status["aws_endpoint"]
        assert backend["owned"] is False and backend["pid"] is None, "Meridian did not start it"
        if run.kind == "moto-as-localstack":
            assert backend["shared"] is False and "separate tables per replica" in backend["detail"]
        assert main(["local", "status", "--state-dir", str(run.state_dir)]) == 0
        out = " ".join(capsys.readouterr().out.split())
        assert f"backend: localstack at {run.endpoint}" in out
        assert ("replication: shared by the backend (no lag, no conflicts)" in out) is backend["shared"]

    def test_provisioned_into_the_backend(self, run: Run) -> None:
        names = run.dynamodb("eu-west-1").list_tables()["TableNames"]
        assert f"meridian-{run.stack}-eu-users" in names and f"meridian-{run.stack}-directory" in names
        assert not [n for n in names if "replica-probe" in n], "the capability probe cleans up"

    def test_a_user_created_through_the_edge_reads_back(self, run: Run) -> None:
        created = run.http.post("/v1/users", headers={"X-Meridian-Client-Region": "eu-west-1"},
                                json={"email": f"ls{time.time_ns()}@example.com", "name": "L", "residency": "eu"})
        assert created.status_code == 201, created.text
        user, token = created.json()["user_id"], created.json()["token"]
        headers = {"X-Meridian-Client-Region": "eu-central-1", "Authorization": f"Bearer {token}",
                   "X-Meridian-Session": created.headers["X-Meridian-Session"]}
        deadline = time.monotonic() + 15
        while True:
            got = run.http.get(f"/v1/users/{user}", headers=headers)
            if got.status_code == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert got.status_code == 200, got.text
        assert got.json()["user_id"] == user
        items = run.dynamodb("eu-west-1").scan(TableName=f"meridian-{run.stack}-eu-users")["Items"]
        assert any(user in json.dumps(i) for i in items)

    def test_down_leaves_the_backend_and_its_data(self, run: Run, capsys: pytest.CaptureFixture[str]) -> None:
        pids = [int(r["pid"]) for r in run.state["regions"].values()] + [int(run.state["pid"])]
        assert main(["down", "--state-dir", str(run.state_dir)]) == 0
        out = capsys.readouterr().out
        assert "was not started by Meridian: it keeps running, with its data" in out
        assert not any(pid_alive(p) for p in pids), "every process Meridian started is gone"
        if run.backend_proc is not None:
            assert run.backend_proc.poll() is None, "the backend server is still up"
        table = f"meridian-{run.stack}-eu-users"
        assert table in run.dynamodb("eu-west-1").list_tables()["TableNames"]
        assert run.dynamodb("eu-west-1").scan(TableName=table)["Count"] >= 1, "the data stays"

    def test_a_second_up_over_kept_data_says_what_to_do(self, run: Run, capsys: pytest.CaptureFixture[str]) -> None:
        stack = run.state_dir.parent / f"Pulumi.{run.stack}.yaml"
        with pytest.MonkeyPatch.context() as env:
            env.setenv("LOCALSTACK_HOST", run.endpoint.removeprefix("http://"))
            code = main(["up", "--local", "--backend", "localstack", "--config", str(stack), "--detach", "--state-dir", str(run.state_dir)])
        err = capsys.readouterr().err
        assert code == 2 and re.search(r"already holds \d+ table\(s\) of stack", err) and "Traceback" not in err
