"""The key-rotator Lambda: the scheduled event rotates the stack's secret (moto), with the environment the
program gives the function; a rotation too soon after another is skipped, not an error; any other failure
raises (the function's Errors metric fires the key-rotation-failed alarm)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from botocore.stub import ANY, Stubber
from moto import mock_aws

from infra.components.functions import key_rotator_environment
from lambdas import runtime
from meridian.rotation import read_rings
from meridian.topology import load_topology

TOPOLOGY = load_topology({"regions": ["us-east-1", "eu-west-1"]}, stack="fn")
NAME = "meridian-fn/session-keys"
VALUE = json.dumps({ring: f"{ring}-old=" + ring[0] * 40 for ring in ("session", "peer", "users", "operator")} | {"claims": "c" * 64})
SCHEDULED = {"version": "0", "id": "1", "detail-type": "Scheduled Event", "source": "aws.events", "account": "123456789012",
             "time": "2026-11-23T00:00:00Z", "region": "eu-west-1", "resources": [], "detail": {}}


@dataclass
class FakeContext:
    function_name: str = "meridian-fn-key-rotator"
    memory_limit_in_mb: int = 256
    invoked_function_arn: str = "arn:aws:lambda:eu-west-1:123456789012:function:meridian-fn-key-rotator"
    aws_request_id: str = "00000000-0000-0000-0000-000000000000"


@pytest.fixture
def secret(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The secret in the primary region (moto) and the function's environment naming its ARN."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    runtime.client.cache_clear()
    with mock_aws():
        region = TOPOLOGY.secret_region
        sm = boto3.client("secretsmanager", region_name=region)
        arn = sm.create_secret(Name=NAME, SecretString=VALUE)["ARN"]
        for k, v in key_rotator_environment(TOPOLOGY, arn).items():
            monkeypatch.setenv(k, v)
        yield sm
    runtime.client.cache_clear()


class TestKeyRotator:
    def test_scheduled_event_rotates_the_signing_rings(self, secret: Any) -> None:
        from lambdas.key_rotator import handler

        result = handler.lambda_handler(SCHEDULED, FakeContext())
        assert result["rotated"] is True and len(result["changes"]) == 3
        rings = read_rings(secret.get_secret_value(SecretId=NAME)["SecretString"])
        for ring in ("session", "peer", "users"):
            assert [k for k, _ in rings[ring].keys][1] == f"{ring}-old" and rings[ring].current != f"{ring}-old"
        assert rings["operator"].current == "operator-old"
        assert "s" * 40 not in json.dumps(result), "no secret in the result (or the log)"

    def test_too_soon_after_a_rotation_is_skipped_not_failed(self, secret: Any) -> None:
        from lambdas.key_rotator import handler

        handler.lambda_handler(SCHEDULED, FakeContext())
        written = secret.get_secret_value(SecretId=NAME)["SecretString"]
        again = handler.lambda_handler(SCHEDULED, FakeContext())
        assert again["rotated"] is False and "would drop key session-old" in again["reason"]
        assert secret.get_secret_value(SecretId=NAME)["SecretString"] == written

    def test_dry_run_writes_nothing(self, secret: Any) -> None:
        from lambdas.key_rotator import handler

        result = handler.lambda_handler({"rings": ["operator"], "dry_run": True}, FakeContext())
        assert result["rotated"] is False and result["changes"][0].startswith("operator: new current key")
        assert secret.get_secret_value(SecretId=NAME)["SecretString"] == VALUE

    def test_a_missing_secret_fails_the_invocation(self, secret: Any) -> None:
        from lambdas.key_rotator import handler

        secret.delete_secret(SecretId=NAME, ForceDeleteWithoutRecovery=True)
        with pytest.raises(ClientError, match="ResourceNotFound"):
            handler.lambda_handler(SCHEDULED, FakeContext())

    def test_requests_match_the_secrets_manager_model(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Stubber: GetSecretValue then PutSecretValue on the ARN the environment names, nothing else."""
        from lambdas.key_rotator import handler

        arn = f"arn:aws:secretsmanager:{TOPOLOGY.secret_region}:123456789012:secret:{NAME}-AbCdEf"
        for k, v in key_rotator_environment(TOPOLOGY, arn).items():
            monkeypatch.setenv(k, v)
        client = boto3.client("secretsmanager", region_name=TOPOLOGY.secret_region, aws_access_key_id="x", aws_secret_access_key="x")
        monkeypatch.setattr(runtime, "client", lambda service, region_name=None: client)
        with Stubber(client) as stub:
            stub.add_response("get_secret_value", {"ARN": arn, "VersionId": "v" * 32, "SecretString": VALUE},
                              expected_params={"SecretId": arn})
            stub.add_response("put_secret_value", {"ARN": arn, "VersionId": "w" * 32},
                              expected_params={"SecretId": arn, "SecretString": ANY, "ClientRequestToken": ANY})
            assert handler.lambda_handler(SCHEDULED, FakeContext())["version_id"] == "w" * 32
            stub.assert_no_pending_responses()
