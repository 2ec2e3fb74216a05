"""Key rings refreshed from the stack's secret in a running service (meridian.keysource): a rotation breaks
no user token, no session and no in-flight region-to-region call, and a region never signs with a key the
others have not read. Three regional apps against moto (test_api.Cluster); the secret in moto too."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import boto3
import jwt
import pytest
from botocore.stub import Stubber
from test_api import KEYS, Cluster, new_user

from meridian.api.app import create_app
from meridian.keys import KeyRing
from meridian.keysource import KeySource, KeySourceError, Rings, start_refresh
from meridian.peers import sign_request
from meridian.rotation import ALL_SIGNING, key_id, rotate_secret

NAME = "meridian-api/session-keys"
PRIMARY = "eu-west-1"
REPLICA_REGIONS = ("eu-central-1", "us-east-1")


def secret_value(**rings: KeyRing) -> str:
    value = {"session": KEYS["session"].encode(), "peer": KEYS["peer"].encode(), "users": KEYS["user"].encode(),
             "operator": KEYS["operator"].encode(), "claims": "c" * 32}
    value.update({k: r.encode() for k, r in rings.items()})
    return json.dumps(value)


def make_secret(value: str | None = None) -> None:
    """The stack's secret in the primary region and (as replication would) in the others."""
    for region in (PRIMARY, *REPLICA_REGIONS):
        boto3.client("secretsmanager", region_name=region).create_secret(Name=NAME, SecretString=value or secret_value())


def rotate(now: float) -> str:
    """`meridian keys rotate` at ``now`` in the primary region, then the replication Secrets Manager does."""
    sm = boto3.client("secretsmanager", region_name=PRIMARY)
    rotation = rotate_secret(sm, NAME, ALL_SIGNING, now=now)
    for region in REPLICA_REGIONS:
        boto3.client("secretsmanager", region_name=region).put_secret_value(SecretId=NAME, SecretString=rotation.secret_string)
    return key_id(now)


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def source(region: str, clock: Clock) -> KeySource:
    return KeySource(NAME, client=boto3.client("secretsmanager", region_name=region), interval=300, clock=clock)


def refresh(cluster: Cluster, region: str, src: KeySource) -> None:
    """One refresh period of ``region``'s service: read the secret, apply what it holds."""
    src.fetch()
    src.apply(cluster.services[region])


def refresh_all(cluster: Cluster, clock: Clock) -> dict[str, KeySource]:
    """Every region's refresh period has passed (each reads its own replica)."""
    sources = {region: source(region, clock) for region in cluster.services}
    for region, src in sources.items():
        refresh(cluster, region, src)
    return sources


def user_token_kid(token: str) -> str:
    return str(jwt.get_unverified_header(token)["kid"])


def session_kid(token: str) -> str:
    import base64

    body = token.split(".")[0]
    return str(json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))["k"])


@pytest.fixture
def t0() -> float:
    return float(int(time.time()))


class TestRotationInAService:
    def test_accepts_old_tokens_and_signs_with_the_new_key_once_active(self, cluster: Cluster, t0: float) -> None:
        """(a) After the refresh the service verifies what the old keys signed; the new key signs only after
        the activation delay (two refresh periods), then every new token carries it."""
        make_secret()
        before = new_user(cluster, PRIMARY)
        assert user_token_kid(before["token"]) == "user-1"
        new = rotate(t0)
        clock = Clock(t0 + 10)
        sources = refresh_all(cluster, clock)
        ring = cluster.services[PRIMARY].settings.user_key
        assert ring.get(new) is not None and ring.current == "user-1", "accepted at once, not signing yet"
        assert user_token_kid(new_user(cluster, PRIMARY)["token"]) == "user-1"

        clock.now = t0 + 2 * 300
        for region, src in sources.items():
            src.apply(cluster.services[region])
        after = new_user(cluster, PRIMARY)
        assert user_token_kid(after["token"]) == new and session_kid(after["session"]) == new
        assert cluster.call(PRIMARY, "GET", f"/v1/users/{before['user_id']}").status_code == 200, "old user token still verifies"
        assert cluster.call(PRIMARY, "GET", f"/v1/users/{after['user_id']}").status_code == 200

    def test_tokens_issued_before_the_rotation_verify_after_it(self, cluster: Cluster, t0: float) -> None:
        """(b) A session token and a user token from before the rotation verify after the new key signs;
        once the old key has left the ring (two rotations later) the same tokens are refused."""
        make_secret()
        u = new_user(cluster, PRIMARY)
        headers = {"Authorization": f"Bearer {u['token']}", "X-Meridian-Session": u["session"]}
        rotate(t0)
        src = source(PRIMARY, Clock(t0 + 3600))
        refresh(cluster, PRIMARY, src)
        assert cluster.services[PRIMARY].settings.session_key.current != "session-1"
        r = cluster.call(PRIMARY, "GET", f"/v1/users/{u['user_id']}", headers=headers)
        assert r.status_code == 200, r.text

        # A second rotation drops the original keys: what they signed stops verifying (so the test above can fail).
        rotate(t0 + 3 * 86400)
        src.clock = Clock(t0 + 4 * 86400)
        refresh(cluster, PRIMARY, src)
        r = cluster.call(PRIMARY, "GET", f"/v1/users/{u['user_id']}", headers=headers)
        assert r.status_code == 401, r.text

    def test_in_flight_peer_call_signed_with_the_old_key_verifies_after_the_receiver_rotated(self, cluster: Cluster,
                                                                                            t0: float) -> None:
        """(c) eu-central-1 signs a forwarded call with the old peer key; eu-west-1 rotates (and starts signing
        with the new key) before the call arrives: it still executes."""
        make_secret()
        body = json.dumps({"email": "inflight@example.com", "name": "In flight", "residency": "eu"}).encode()
        signed = sign_request(KEYS["peer"], "POST", "/v1/users", body, "eu-central-1")
        rotate(t0)
        refresh_all(cluster, Clock(t0 + 3600))
        assert cluster.services[PRIMARY].settings.peer_key.current == key_id(t0)
        r = cluster.call(PRIMARY, "POST", "/v1/users", content=body, headers={**signed, "content-type": "application/json"})
        assert r.status_code == 201, r.text

        # Two rotations later the old peer key is gone: a call it signs is refused (the check above can fail).
        rotate(t0 + 3 * 86400)
        refresh_all(cluster, Clock(t0 + 4 * 86400))
        body = json.dumps({"email": "late@example.com", "name": "Late", "residency": "eu"}).encode()
        late = sign_request(KEYS["peer"], "POST", "/v1/users", body, "eu-central-1")
        r = cluster.call(PRIMARY, "POST", "/v1/users", content=body, headers={**late, "content-type": "application/json"})
        assert r.status_code == 401 and r.json()["error"] == "peer_auth", r.text

    def test_a_region_signs_with_a_new_key_only_after_every_region_could_read_it(self, cluster: Cluster, t0: float) -> None:
        """eu-central-1 has read the rotated secret, eu-west-1 not yet: eu-central-1's forwards still use the
        old key and eu-west-1 accepts them. Had eu-central-1 signed at once, eu-west-1 would refuse them."""
        make_secret()
        u = new_user(cluster, PRIMARY)
        rotate(t0)
        clock = Clock(t0 + 30)
        sender = source("eu-central-1", clock)
        refresh(cluster, "eu-central-1", sender)
        r = cluster.call("eu-central-1", "GET", f"/v1/users/{u['user_id']}")
        assert r.status_code == 200 and r.headers["X-Meridian-Region"] == PRIMARY, r.text

        # Without the activation delay (a new key signing while the receiver has not refreshed), forwards fail.
        clock.now = t0 + 600
        sender.apply(cluster.services["eu-central-1"])
        assert cluster.call("eu-central-1", "GET", f"/v1/users/{u['user_id']}").status_code != 200
        refresh(cluster, PRIMARY, source(PRIMARY, clock))
        assert cluster.call("eu-central-1", "GET", f"/v1/users/{u['user_id']}").status_code == 200


class TestKeySource:
    def test_a_failed_read_keeps_the_rings_and_logs(self, caplog: pytest.LogCaptureFixture) -> None:
        """AccessDenied (checked against the real Secrets Manager model): rings unchanged, one warning."""
        client = boto3.client("secretsmanager", region_name=PRIMARY, aws_access_key_id="x", aws_secret_access_key="x")
        rings = Rings(session=KEYS["session"], peer=KEYS["peer"], users=KEYS["user"], operator=KEYS["operator"])
        src = KeySource("arn:aws:secretsmanager:eu-west-1:123456789012:secret:meridian-api/session-keys-AbCdEf", client=client)
        src.seed(rings)
        with Stubber(client) as stub, caplog.at_level(logging.WARNING, logger="meridian.keysource"):
            stub.add_client_error("get_secret_value", "AccessDeniedException", "not allowed",
                                  expected_params={"SecretId": src.secret_id})
            assert src.fetch() is None
            stub.assert_no_pending_responses()
        assert src.latest == rings and src.failures == 1
        assert "keeping the current ones" in caplog.text and "AccessDeniedException" in caplog.text

    def test_malformed_secret_keeps_the_rings(self, cluster: Cluster) -> None:
        make_secret(json.dumps({"session": "short"}))
        src = source(PRIMARY, Clock(time.time()))
        assert src.fetch() is None and src.latest is None and src.failures == 1

    def test_an_arn_the_emulator_does_not_know_is_read_by_its_name(self, cluster: Cluster) -> None:
        """The local run's moto gives the secret another ARN than the plan; the name in the ARN finds it."""
        make_secret()
        planned = f"arn:aws:secretsmanager:{PRIMARY}:123456789012:secret:{NAME}-693d56"
        src = KeySource(planned, client=boto3.client("secretsmanager", region_name=PRIMARY))
        rings = src.fetch()
        assert rings is not None and rings.peer == KEYS["peer"]

    def test_environment(self) -> None:
        arn = "arn:aws:secretsmanager:eu-central-1:123456789012:secret:meridian-prod/session-keys-AbCdEf"
        assert KeySource.from_env({}) is None
        src = KeySource.from_env({"MERIDIAN_KEYS_SECRET_ARN": arn, "AWS_ACCESS_KEY_ID": "x"}, client=object())
        assert src is not None and src.interval == 300 and src.activation == 600
        made = KeySource.from_env({"MERIDIAN_KEYS_SECRET_ARN": arn, "MERIDIAN_KEYS_REFRESH_SECONDS": "60"})
        assert made is not None and made.client.meta.region_name == "eu-central-1" and made.interval == 60
        with pytest.raises(KeySourceError, match="MERIDIAN_KEYS_REFRESH_SECONDS is 'soon'"):
            KeySource.from_env({"MERIDIAN_KEYS_SECRET_ARN": arn, "MERIDIAN_KEYS_REFRESH_SECONDS": "soon"})
        with pytest.raises(KeySourceError, match="positive"):
            KeySource.from_env({"MERIDIAN_KEYS_SECRET_ARN": arn, "MERIDIAN_KEYS_REFRESH_SECONDS": "0"})

    def test_the_app_refreshes_while_it_runs(self, cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
        """create_app's lifespan starts the refresh from MERIDIAN_KEYS_SECRET_ARN and stops it on shutdown."""
        make_secret()
        arn = boto3.client("secretsmanager", region_name=PRIMARY).describe_secret(SecretId=NAME)["ARN"]
        monkeypatch.setenv("MERIDIAN_KEYS_SECRET_ARN", arn)
        monkeypatch.setenv("MERIDIAN_KEYS_REFRESH_SECONDS", "0.05")
        service = cluster.services[PRIMARY]
        app = create_app(service)
        new = key_id(time.time() - 7200)

        async def run() -> Any:
            async with app.router.lifespan_context(app):
                rotate(time.time() - 7200)  # two hours ago: active at once
                for _ in range(100):
                    await asyncio.sleep(0.02)
                    if service.settings.session_key.current == new:
                        break
                tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            await asyncio.sleep(0)
            return tasks

        tasks = asyncio.run(run())
        assert service.settings.session_key.current == new and service.users.ring.current == new
        assert service.settings.session_key.get("session-1") is not None
        assert tasks and all(t.done() for t in tasks), "the refresh task ends with the app"

    def test_without_a_secret_nothing_starts(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.delenv("MERIDIAN_KEYS_SECRET_ARN", raising=False)

        class Nothing:
            settings = None

            def use_keys(self, **rings: KeyRing) -> None:
                raise AssertionError("no secret, no swap")

        async def go() -> Any:
            return start_refresh(Nothing())

        assert asyncio.run(go()) is None
