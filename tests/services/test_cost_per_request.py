"""Cost per request: one DynamoDB call per operation on the common path, and verified bearer tokens cached
no longer than they are valid. (CPU figures are measured by bench/cost_per_request.py, never asserted here.)"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from test_api import KEYS, Cluster, new_user

from meridian.api.app import Service
from meridian.keys import KeyRing


class Calls:
    """The DynamoDB calls every region's client makes, by operation name."""

    def __init__(self, cluster: Cluster) -> None:
        self.seen: list[str] = []
        for service in cluster.services.values():
            service.store.client.meta.events.register("after-call.dynamodb.*", lambda model, **_: self.seen.append(model.name))

    def during(self, fn: Any) -> list[str]:
        self.seen.clear()
        fn()
        return list(self.seen)


@pytest.fixture
def calls(cluster: Cluster) -> Iterator[Calls]:
    yield Calls(cluster)


class TestOneCallPerOperation:
    def test_read(self, cluster: Cluster, calls: Calls) -> None:
        """A profile read in the user's home region: one GetItem (the directory entry is cached after the first)."""
        u = new_user(cluster, "eu-west-1")
        path = f"/v1/users/{u['user_id']}"
        cluster.call("eu-west-1", "GET", path)
        assert calls.during(lambda: cluster.call("eu-west-1", "GET", path)) == ["GetItem"]

    def test_update(self, cluster: Cluster, calls: Calls) -> None:
        """A profile update: one conditional UpdateItem, no directory lookup once the home is cached."""
        u = new_user(cluster, "eu-west-1")
        path = f"/v1/users/{u['user_id']}"
        cluster.call("eu-west-1", "PUT", path, json={"name": "first"})
        assert calls.during(lambda: cluster.call("eu-west-1", "PUT", path, json={"name": "second"})) == ["UpdateItem"]

    def test_increment(self, cluster: Cluster, calls: Calls) -> None:
        """An increment: one UpdateItem, whose answer (UPDATED_NEW) is the shard's new value; no Query of the shards."""
        assert calls.during(lambda: cluster.call("us-east-1", "POST", "/v1/counters/c/increment", json={"by": 2})) == ["UpdateItem"]
        r = cluster.call("us-east-1", "POST", "/v1/counters/c/increment", json={"by": 3})
        assert r.json() == {"name": "c", "region": "us-east-1", "shard_value": 5}
        assert "X-Meridian-Session" in r.headers

    def test_order(self, cluster: Cluster, calls: Calls) -> None:
        """A new order: one conditional PutItem (no pre-read, no transaction); its replay is the same one call."""
        u = new_user(cluster, "eu-west-1")
        path = f"/v1/users/{u['user_id']}/orders"
        cluster.call("eu-west-1", "GET", f"/v1/users/{u['user_id']}")  # caches the directory entry

        def order() -> None:
            r = cluster.call("eu-west-1", "POST", path, json={"item": "x", "qty": 1}, headers={"Idempotency-Key": "k1"})
            assert r.status_code == 201

        assert calls.during(order) == ["PutItem"]
        assert calls.during(order) == ["PutItem"]  # the replay: the failed condition returns the stored order


class TestTokenCache:
    def test_expired_token_refused_even_when_cached(self, cluster: Cluster) -> None:
        """A token verified (and cached) before its exp is refused after it, as if never seen."""
        u = new_user(cluster, "eu-west-1")
        service = cluster.services["eu-west-1"]
        token = service.users.issue(u["user_id"], now=time.time() - service.users.ttl + 2)  # expires within 2 s
        path, auth = f"/v1/users/{u['user_id']}", {"Authorization": f"Bearer {token}"}
        assert cluster.call("eu-west-1", "GET", path, headers=auth).status_code == 200
        expiry = service._tokens[token][1]
        time.sleep(max(0.0, expiry - time.time()) + 0.1)
        r = cluster.call("eu-west-1", "GET", path, headers=auth)
        assert r.status_code == 401 and "expired" in r.json()["message"]

    def test_rotated_out_key_refused_even_when_cached(self, cluster: Cluster) -> None:
        """A new user key ring empties the cache: tokens of the removed key are verified again, and refused."""
        u = new_user(cluster, "eu-west-1")
        path = f"/v1/users/{u['user_id']}"
        assert cluster.call("eu-west-1", "GET", path).status_code == 200
        service: Service = cluster.services["eu-west-1"]
        service.use_keys(session=KEYS["session"], peer=KEYS["peer"], users=KeyRing.single(b"n" * 32, kid="user-2"),
                         operator=KEYS["operator"])
        r = cluster.call("eu-west-1", "GET", path)
        assert r.status_code == 401

    def test_forged_token_never_cached(self, cluster: Cluster) -> None:
        """A token whose signature fails is refused and not remembered as valid."""
        u = new_user(cluster, "eu-west-1")
        head, payload, _ = u["token"].split(".")
        forged = f"{head}.{payload}.{'A' * 43}"
        path = f"/v1/users/{u['user_id']}"
        for _ in range(2):
            r = cluster.call("eu-west-1", "GET", path, headers={"Authorization": f"Bearer {forged}"})
            assert r.status_code == 401
        assert forged not in cluster.services["eu-west-1"]._tokens

    def test_cached_token_still_checked_against_the_path_user(self, cluster: Cluster) -> None:
        """A cached token of one user opens no other user's data (403)."""
        a, b = new_user(cluster, "eu-west-1"), new_user(cluster, "eu-west-1")
        assert cluster.call("eu-west-1", "GET", f"/v1/users/{a['user_id']}").status_code == 200
        r = cluster.call("eu-west-1", "GET", f"/v1/users/{b['user_id']}", headers={"Authorization": f"Bearer {a['token']}"})
        assert r.status_code == 403
