"""`meridian keys rotate` and `meridian keys show`: botocore's Stubber against the real Secrets Manager model
(each request checked against the model and the exact parameters expected), then end to end against moto,
and against a local run's embedded AWS."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import NoCredentialsError
from botocore.stub import ANY, Stubber
from moto import mock_aws

from meridian.keys import KeyRing
from meridian.rotation import key_id, read_rings
from meridian_cli import keys as cli
from meridian_cli.main import main

STACK_FILE = """config:
  meridian:regions: [us-east-1, eu-west-1, eu-central-1]
  meridian:residencyZones:
    eu: [eu-west-1, eu-central-1]
"""
NAME = "meridian-fn/session-keys"
REGIONS = ("us-east-1", "eu-west-1", "eu-central-1")
#: The secret's region: the all-regions zone's home (its alphabetically first region unless pinned).
PRIMARY = "eu-central-1"
OLD = {ring: f"{ring}-old=" + ring[0] * 40 for ring in ("session", "peer", "users", "operator")}
VALUE = json.dumps({**OLD, "claims": "c" * 64})


@pytest.fixture
def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "Pulumi.fn.yaml").write_text(STACK_FILE)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        yield


def stubbed(monkeypatch: pytest.MonkeyPatch) -> tuple[Stubber, list[str]]:
    client = boto3.client("secretsmanager", region_name=PRIMARY, aws_access_key_id="x", aws_secret_access_key="x")
    regions: list[str] = []

    def make(service: str, region: str, endpoint: str | None = None) -> Any:
        regions.append(region)
        return client

    monkeypatch.setattr(cli, "_client", make)
    return Stubber(client), regions


def test_primary_is_the_secret_region() -> None:
    assert load_stack_file_text(STACK_FILE).secret_region == PRIMARY


def load_stack_file_text(text: str) -> Any:
    import tempfile

    from meridian.topology import load_stack_file

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "Pulumi.fn.yaml"
        path.write_text(text)
        return load_stack_file(path)


class TestAgainstTheModel:
    def test_rotate_reads_then_writes_one_new_version_in_the_primary_region(self, stack: Path, monkeypatch: pytest.MonkeyPatch,
                                                                            capsys: pytest.CaptureFixture[str]) -> None:
        stub, regions = stubbed(monkeypatch)
        stub.add_response("get_secret_value", {"Name": NAME, "VersionId": "v" * 32, "SecretString": VALUE},
                          expected_params={"SecretId": NAME})
        stub.add_response("put_secret_value", {"Name": NAME, "VersionId": "w" * 32},
                          expected_params={"SecretId": NAME, "SecretString": ANY, "ClientRequestToken": ANY})
        with stub:
            assert main(["keys", "rotate", "--stack", "fn"]) == 0
            stub.assert_no_pending_responses()
        assert set(regions) == {PRIMARY}  # the primary: replicas are read-only
        out = capsys.readouterr().out
        assert "session: new current key" in out and "still accepted: session-old" in out and f"version {'w' * 32}" in out
        assert "operator" not in out.split("every region")[0], "--ring all leaves the operator credential alone"
        assert "c" * 64 not in out and "s" * 40 not in out, "no secret is printed"

    def test_dry_run_reads_and_writes_nothing(self, stack: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
        stub, _ = stubbed(monkeypatch)
        stub.add_response("get_secret_value", {"Name": NAME, "SecretString": VALUE}, expected_params={"SecretId": NAME})
        with stub:
            assert main(["keys", "rotate", "--stack", "fn", "--ring", "operator", "--dry-run"]) == 0
            stub.assert_no_pending_responses()  # and no put_secret_value was queued: a put would fail the stub
        out = capsys.readouterr().out
        assert "operator: new current key" in out and "session:" not in out and "dry run: nothing changed" in out

    @pytest.mark.parametrize(("code", "says"), [
        ("ResourceNotFoundException", "secret meridian-fn/session-keys not found in eu-central-1: is the stack deployed"),
        ("AccessDeniedException", "needs secretsmanager:GetSecretValue and secretsmanager:PutSecretValue"),
    ])
    def test_aws_errors_are_one_line(self, stack: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                     code: str, says: str) -> None:
        stub, _ = stubbed(monkeypatch)
        stub.add_client_error("get_secret_value", code, "nope", expected_params={"SecretId": NAME})
        with stub:
            assert main(["keys", "rotate", "--stack", "fn"]) == 2
        err = capsys.readouterr().err
        assert says in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err

    def test_no_credentials(self, stack: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
        class NoCredentials:
            def get_secret_value(self, **_: Any) -> Any:
                raise NoCredentialsError()

        monkeypatch.setattr(cli, "_client", lambda *a, **k: NoCredentials())
        assert main(["keys", "rotate", "--stack", "fn"]) == 2
        assert capsys.readouterr().err.strip() == (
            "meridian: error: no AWS credentials to rotate secret meridian-fn/session-keys in eu-central-1; "
            "set AWS_PROFILE or run `aws sso login`")
        assert main(["keys", "rotate", "--stack", "fn", "--dry-run"]) == 0, "a dry run shows the change offline"
        assert "dry run: nothing changed" in capsys.readouterr().out

    def test_no_stack(self, stack: Path, capsys: pytest.CaptureFixture[str]) -> None:
        assert main(["keys", "rotate", "--stack", "nope"]) == 2
        assert "no stack file Pulumi.nope.yaml" in capsys.readouterr().err


class TestEndToEnd:
    def test_rotated_secret_has_the_new_current_key_and_the_previous_one(self, stack: Path, aws: None) -> None:
        sm = boto3.client("secretsmanager", region_name=PRIMARY)
        sm.create_secret(Name=NAME, SecretString=VALUE)
        before = time.time()
        assert main(["keys", "rotate", "--stack", "fn"]) == 0
        value = json.loads(sm.get_secret_value(SecretId=NAME)["SecretString"])
        rings = read_rings(json.dumps(value))
        for ring in ("session", "peer", "users"):
            (new, new_secret), (kept, kept_secret) = rings[ring].keys
            assert key_id(before) <= new <= key_id(time.time())
            assert kept == f"{ring}-old" and kept_secret == OLD[ring].split("=")[1].encode()
            assert len(new_secret) >= 64
        assert value["operator"] == OLD["operator"] and value["claims"] == "c" * 64
        assert len(sm.list_secret_version_ids(SecretId=NAME)["Versions"]) == 2

    def test_a_second_rotation_the_same_day_is_refused_unless_forced(self, stack: Path, aws: None,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
        sm = boto3.client("secretsmanager", region_name=PRIMARY)
        sm.create_secret(Name=NAME, SecretString=VALUE)
        assert main(["keys", "rotate", "--stack", "fn"]) == 0
        first = sm.get_secret_value(SecretId=NAME)["SecretString"]
        assert main(["keys", "rotate", "--stack", "fn"]) == 1
        err = capsys.readouterr().err
        assert "would drop key session-old" in err and "--force" in err and len(err.strip().splitlines()) == 1
        assert sm.get_secret_value(SecretId=NAME)["SecretString"] == first
        time.sleep(1.0)  # a new dated key id
        assert main(["keys", "rotate", "--stack", "fn", "--force", "--ring", "session"]) == 0
        assert "session-old" not in read_rings(sm.get_secret_value(SecretId=NAME)["SecretString"])["session"].encode()

    def test_show_lists_key_ids_per_region_never_secrets(self, stack: Path, aws: None, capsys: pytest.CaptureFixture[str]) -> None:
        for region in REGIONS:
            boto3.client("secretsmanager", region_name=region).create_secret(Name=NAME, SecretString=VALUE)
        assert main(["keys", "show", "--stack", "fn", "--json"]) == 0
        rows = json.loads(capsys.readouterr().out)
        assert [r["region"] for r in rows] == ["us-east-1", "eu-west-1", "eu-central-1"]
        assert rows[0]["session"] == [{"kid": "session-old", "age_hours": None}]
        assert main(["keys", "show", "--stack", "fn"]) == 0
        out = capsys.readouterr().out
        assert "session: session-old" in out and "s" * 40 not in out


class TestLocal:
    def test_local_rotation_writes_every_region_of_the_embedded_aws(self, stack: Path, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
        """--local: the state file's aws_endpoint (a moto server), one copy of the secret per region."""
        from moto.server import ThreadedMotoServer

        server = ThreadedMotoServer(port=0, verbose=False)
        server.start()
        try:
            host, port = server.get_host_and_port()
            endpoint = f"http://{host}:{port}"
            state_dir = tmp_path / "state"
            state_dir.mkdir()
            (state_dir / "state.json").write_text(json.dumps({"pid": os.getpid(), "stack": "fn", "aws_endpoint": endpoint}))
            clients = {r: cli._client("secretsmanager", r, endpoint) for r in REGIONS}
            for client in clients.values():
                client.create_secret(Name=NAME, SecretString=VALUE)
            assert main(["keys", "rotate", "--local", "--state-dir", str(state_dir)]) == 0
            assert "emulated replication copied it to us-east-1, eu-west-1" in capsys.readouterr().out
            values = {r: c.get_secret_value(SecretId=NAME)["SecretString"] for r, c in clients.items()}
            assert len(set(values.values())) == 1 and values[PRIMARY] != VALUE
            assert read_rings(values["us-east-1"])["peer"].keys[1][0] == "peer-old"
        finally:
            server.stop()

    def test_no_local_run(self, stack: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        assert main(["keys", "rotate", "--local", "--state-dir", str(tmp_path / "none")]) == 2
        assert "no local run in" in capsys.readouterr().err


def test_placeholder_ring_parses() -> None:
    """The offline dry run's placeholder is a valid ring (or the dry run itself would fail)."""
    assert KeyRing.parse(cli._PLACEHOLDER_RING).current == "current"
