"""The regional API against moto, three regions wired to each other through ASGI transports."""

from __future__ import annotations

import asyncio
import itertools
import re
from typing import Any

import boto3
import httpx
import pytest
from botocore.exceptions import ClientError

from meridian.api.app import Service, create_app
from meridian.hlc import Timestamp
from meridian.keys import KeyRing
from meridian.peers import sign_request
from meridian.sessions import SessionToken, sign
from meridian.settings import Settings
from meridian.store import ResidencyViolation, Store
from meridian.strong import claim_key, owner_region
from meridian.topology import load_topology

REGIONS = ["us-east-1", "eu-west-1", "eu-central-1"]
KEYS = {name: KeyRing.single(name[0].encode() * 32, kid=f"{name}-1") for name in ("session", "peer", "user", "operator")}
CLAIM_KEY = b"c" * 32
EMAILS = itertools.count()  # one account per email: every test user has its own
USER_PATH = re.compile(r"^/v1/users/(usr_[^/?]+)")


class Cluster:
    """Three regional apps; requests between them go through a transport that routes by host."""

    def __init__(self, create_tables: Any) -> None:
        self.topology = load_topology({"regions": REGIONS, "residencyZones": {"eu": ["eu-west-1", "eu-central-1"]}}, stack="api")
        self.services: dict[str, Service] = {}
        self.tokens: dict[str, str] = {}  # user id -> bearer token from its creation
        self.apps: dict[str, Any] = {}
        router = self

        class Router(httpx.AsyncBaseTransport):
            async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
                region = request.url.host.split(".")[0]
                if router.down.get(region):
                    raise httpx.ConnectError("region down", request=request)
                if router.cut.get(region):
                    return httpx.Response(502, headers={"X-Meridian-Link": "not-delivered"}, json={"error": "link_down", "message": region})
                response = await httpx.ASGITransport(app=router.apps[region]).handle_async_request(request)
                if router.late.get(region):
                    await response.aread()  # it executed there; its answer never arrives in time
                    raise httpx.ReadTimeout("answer too late", request=request)
                return response

        self.down: dict[str, bool] = {}  # connection refused: never delivered
        self.cut: dict[str, bool] = {}  # the network answers that it could not deliver
        self.late: dict[str, bool] = {}  # delivered and executed, answer times out
        for region in REGIONS:
            create_tables(self.topology, region)
            settings = Settings(region=region, topology=self.topology, session_key=KEYS["session"], peer_key=KEYS["peer"],
                                user_key=KEYS["user"], operator_key=KEYS["operator"], claim_key=CLAIM_KEY,
                                peers={r: f"http://{r}.test" for r in REGIONS}, probe_interval=0)
            store = Store(client=boto3.client("dynamodb", region_name=region), topology=self.topology, region=region)
            self.services[region] = Service(settings, store, transport=Router())
            self.apps[region] = create_app(self.services[region])

    def call(self, region: str, method: str, path: str, *, auth: bool = True, **kw: Any) -> httpx.Response:
        """A client's call; on /v1/users/{id}... it carries that user's token (from its creation) unless
        ``auth`` is False or the test passes its own Authorization header."""
        match = USER_PATH.match(path)
        if auth and match and match.group(1) in self.tokens and "Authorization" not in kw.get("headers", {}):
            kw["headers"] = {**kw.get("headers", {}), "Authorization": f"Bearer {self.tokens[match.group(1)]}"}

        async def go() -> httpx.Response:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=self.apps[region]), base_url=f"http://{region}.test") as c:
                return await c.request(method, path, **kw)
        return asyncio.run(go())

    def replicate(self, table_logical: str, zone: str, source: str, target: str) -> None:
        """Copy a table's items as global-table replication would (tests of routing, not of replication)."""
        name = self.topology.table_name(table_logical, zone)
        src, dst = boto3.client("dynamodb", region_name=source), boto3.client("dynamodb", region_name=target)
        for item in src.scan(TableName=name)["Items"]:
            dst.put_item(TableName=name, Item=item)


def claim_owner(email: str) -> str:
    """The region that owns an email's claim in this cluster (meridian.strong)."""
    return owner_region(claim_key(email, CLAIM_KEY), REGIONS)


def new_user(c: Cluster, region: str, residency: str = "eu") -> dict[str, Any]:
    r = c.call(region, "POST", "/v1/users", json={"email": f"ada{next(EMAILS)}@example.com", "name": "Ada", "residency": residency})
    assert r.status_code == 201, r.text
    c.tokens[r.json()["user_id"]] = r.json()["token"]
    return {**r.json(), "session": r.headers["X-Meridian-Session"], "executed": r.headers["X-Meridian-Region"]}


class TestUsers:
    def test_create_in_zone_region_is_local(self, cluster: Cluster) -> None:
        u = new_user(cluster, "eu-west-1")
        assert u["home_region"] == "eu-west-1" and u["zone"] == "eu" and u["executed"] == "eu-west-1"
        assert u["user_id"].endswith("_eu-west-1")

    def test_us_client_creating_eu_user_is_executed_in_eu(self, cluster: Cluster) -> None:
        """Residency: the US region forwards to the nearest EU region; nothing is written in the US."""
        u = new_user(cluster, "us-east-1")
        assert u["home_region"] == "eu-west-1" and u["executed"] == "eu-west-1"
        us = boto3.client("dynamodb", region_name="us-east-1")
        assert us.scan(TableName="meridian-api-global-users")["Items"] == []
        with pytest.raises(ClientError, match="ResourceNotFound"):
            us.describe_table(TableName="meridian-api-eu-users")

    def test_read_in_other_zone_region_forwards_to_home(self, cluster: Cluster) -> None:
        u = new_user(cluster, "eu-west-1")
        r = cluster.call("eu-central-1", "GET", f"/v1/users/{u['user_id']}")
        assert r.status_code == 200 and r.json()["name"] == "Ada"
        assert r.headers["X-Meridian-Region"] == "eu-west-1"

    def test_read_your_writes_after_replication_is_local(self, cluster: Cluster) -> None:
        u = new_user(cluster, "eu-west-1")
        for table in ("users",):
            cluster.replicate(table, "eu", "eu-west-1", "eu-central-1")
        cluster.replicate("directory", "global", "eu-west-1", "eu-central-1")
        r = cluster.call("eu-central-1", "GET", f"/v1/users/{u['user_id']}", headers={"X-Meridian-Session": u["session"]})
        assert r.status_code == 200 and r.headers["X-Meridian-Region"] == "eu-central-1"

    def test_stale_replica_forwards_to_session_region(self, cluster: Cluster) -> None:
        """The directory arrived but the profile update has not: the read goes where the session wrote."""
        u = new_user(cluster, "eu-west-1")
        cluster.replicate("users", "eu", "eu-west-1", "eu-central-1")
        cluster.replicate("directory", "global", "eu-west-1", "eu-central-1")
        upd = cluster.call("eu-west-1", "PUT", f"/v1/users/{u['user_id']}", json={"name": "Ada L."}, headers={"X-Meridian-Session": u["session"]})
        assert upd.status_code == 200
        r = cluster.call("eu-central-1", "GET", f"/v1/users/{u['user_id']}", headers={"X-Meridian-Session": upd.headers["X-Meridian-Session"]})
        assert r.headers["X-Meridian-Region"] == "eu-west-1" and r.json()["name"] == "Ada L."

    def test_failover_within_zone(self, cluster: Cluster) -> None:
        """Home eu-west-1 down: the write runs in eu-central-1, never in us-east-1."""
        u = new_user(cluster, "eu-west-1")
        cluster.replicate("users", "eu", "eu-west-1", "eu-central-1")
        for region in ("eu-central-1", "us-east-1"):
            cluster.replicate("directory", "global", "eu-west-1", region)
        cluster.down["eu-west-1"] = True
        for region in ("eu-central-1", "us-east-1"):
            cluster.services[region].health.mark("eu-west-1", False)
        r = cluster.call("us-east-1", "PUT", f"/v1/users/{u['user_id']}", json={"name": "failover"})
        assert r.status_code == 200, r.text
        assert r.headers["X-Meridian-Region"] == "eu-central-1"
        item = boto3.client("dynamodb", region_name="eu-central-1").get_item(
            TableName="meridian-api-eu-users", Key={"user_id": {"S": u["user_id"]}})["Item"]
        assert item["failover"] == {"BOOL": True} and item["name"]["S"] == "failover"

    def test_zone_with_no_region_answering_is_503(self, cluster: Cluster) -> None:
        for region in ("eu-west-1", "eu-central-1"):
            cluster.services["us-east-1"].health.mark(region, False)
        # The health view is a hint: regions believed down are still tried (a refused connection is safe to
        # move on from), so a pessimistic view on a busy host does not refuse a creation they can serve.
        r = cluster.call("us-east-1", "POST", "/v1/users", json={"email": "a@b.c", "name": "x", "residency": "eu"})
        assert r.status_code == 201
        cluster.down.update({"eu-west-1": True, "eu-central-1": True})
        r = cluster.call("us-east-1", "POST", "/v1/users", json={"email": "b@b.c", "name": "x", "residency": "eu"})
        assert r.status_code == 503 and r.json()["error"] == "zone_unavailable" and r.headers["Retry-After"]

    def test_unknown_residency_422(self, cluster: Cluster) -> None:
        r = cluster.call("us-east-1", "POST", "/v1/users", json={"email": "a@b.c", "name": "x", "residency": "mars"})
        assert r.status_code == 422 and "mars" in r.json()["message"]

    def test_bad_body_422(self, cluster: Cluster) -> None:
        r = cluster.call("us-east-1", "POST", "/v1/users", json={"email": "nope", "name": "x", "residency": "eu"})
        assert r.status_code == 422 and r.json()["error"] == "invalid_request"

    def test_unknown_user_404(self, cluster: Cluster) -> None:
        assert cluster.call("eu-west-1", "GET", "/v1/users/not-an-id").status_code == 404


class TestSecurity:
    def test_forged_token_rejected(self, cluster: Cluster) -> None:
        u = new_user(cluster, "eu-west-1")
        forged = sign(SessionToken(region="eu-west-1", hlc=Timestamp(1), scope=u["user_id"]), b"wrong key")
        r = cluster.call("eu-west-1", "GET", f"/v1/users/{u['user_id']}", headers={"X-Meridian-Session": forged})
        assert r.status_code == 401 and r.json()["error"] == "invalid_session"
        r = cluster.call("eu-west-1", "GET", f"/v1/users/{u['user_id']}", headers={"X-Meridian-Session": "garbage"})
        assert r.status_code == 401

    def test_unsigned_peer_call_rejected(self, cluster: Cluster) -> None:
        headers = sign_request(KeyRing.single(b"n" * 32), "POST", "/v1/users", b"{}", "us-east-1")
        r = cluster.call("eu-west-1", "POST", "/v1/users", content=b"{}", headers=headers)
        assert r.status_code in (401, 422)
        body = b'{"email": "a@b.c", "name": "x", "residency": "eu"}'
        headers = sign_request(KeyRing.single(b"n" * 32), "POST", "/v1/users", body, "us-east-1")
        r = cluster.call("eu-west-1", "POST", "/v1/users", content=body, headers={**headers, "content-type": "application/json"})
        assert r.status_code == 401 and r.json()["error"] == "peer_auth"

    def test_signed_call_for_eu_data_in_us_is_refused_by_the_store(self, cluster: Cluster) -> None:
        """Even a valid peer call cannot make us-east-1 store eu data: the store refuses by construction."""
        body = b'{"email": "a@b.c", "name": "x", "residency": "eu"}'
        headers = sign_request(KEYS["peer"], "POST", "/v1/users", body, "eu-west-1")
        r = cluster.call("us-east-1", "POST", "/v1/users", content=body, headers={**headers, "content-type": "application/json"})
        assert r.status_code == 409 and r.json()["error"] == "residency"
        with pytest.raises(ResidencyViolation):
            cluster.services["us-east-1"].store.table("eu", "users")


class TestOrders:
    def test_idempotent_order(self, cluster: Cluster) -> None:
        u = new_user(cluster, "eu-west-1")
        path = f"/v1/users/{u['user_id']}/orders"
        first = cluster.call("eu-west-1", "POST", path, json={"item": "book", "qty": 2}, headers={"Idempotency-Key": "k1"})
        again = cluster.call("eu-west-1", "POST", path, json={"item": "book", "qty": 2}, headers={"Idempotency-Key": "k1"})
        assert first.status_code == again.status_code == 201
        assert first.json() == again.json() and again.headers["Idempotent-Replayed"] == "true"
        assert first.json()["order_id"].startswith("ord_") and first.json()["created_region"] == "eu-west-1"
        listed = cluster.call("eu-west-1", "GET", path).json()["orders"]
        assert [o["order_id"] for o in listed] == [first.json()["order_id"]]

    def test_idempotency_key_reused_for_other_order_409(self, cluster: Cluster) -> None:
        u = new_user(cluster, "eu-west-1")
        path = f"/v1/users/{u['user_id']}/orders"
        cluster.call("eu-west-1", "POST", path, json={"item": "book", "qty": 2}, headers={"Idempotency-Key": "k1"})
        r = cluster.call("eu-west-1", "POST", path, json={"item": "pen", "qty": 1}, headers={"Idempotency-Key": "k1"})
        assert r.status_code == 409

    def test_missing_idempotency_key_400(self, cluster: Cluster) -> None:
        u = new_user(cluster, "eu-west-1")
        r = cluster.call("eu-west-1", "POST", f"/v1/users/{u['user_id']}/orders", json={"item": "x", "qty": 1})
        assert r.status_code == 400 and r.json()["error"] == "idempotency_key_required"

    def test_orders_newest_first_forwarded_from_us(self, cluster: Cluster) -> None:
        u = new_user(cluster, "eu-west-1")
        cluster.replicate("directory", "global", "eu-west-1", "us-east-1")
        ids = []
        for i in range(3):
            r = cluster.call("us-east-1", "POST", f"/v1/users/{u['user_id']}/orders", json={"item": f"i{i}", "qty": 1},
                             headers={"Idempotency-Key": f"k{i}"})
            assert r.status_code == 201 and r.headers["X-Meridian-Region"] == "eu-west-1"
            ids.append(r.json()["order_id"])
        listed = cluster.call("us-east-1", "GET", f"/v1/users/{u['user_id']}/orders").json()["orders"]
        assert [o["order_id"] for o in listed] == ids[::-1]


class TestCountersAndHealth:
    def test_counter_shards(self, cluster: Cluster) -> None:
        cluster.call("us-east-1", "POST", "/v1/counters/visits/increment", json={"by": 2})
        r = cluster.call("eu-west-1", "POST", "/v1/counters/visits/increment", json={"by": 3})
        # The increment answers its own shard (one write); the total is the read below.
        assert r.json() == {"name": "visits", "region": "eu-west-1", "shard_value": 3}
        assert cluster.call("eu-west-1", "POST", "/v1/counters/visits/increment", json={"by": 4}).json()["shard_value"] == 7
        assert cluster.call("eu-west-1", "GET", "/v1/counters/visits").json() == {"name": "visits", "value": 7, "shards": {"eu-west-1": 7}}
        cluster.replicate("counters", "global", "us-east-1", "eu-west-1")
        assert cluster.call("eu-west-1", "GET", "/v1/counters/visits").json()["shards"] == {"us-east-1": 2, "eu-west-1": 7}

    def test_health(self, cluster: Cluster) -> None:
        assert cluster.call("eu-west-1", "GET", "/health/live").json()["status"] == "live"
        r = cluster.call("eu-west-1", "GET", "/health/ready")
        assert r.status_code == 200 and r.headers["X-Meridian-Region"] == "eu-west-1"
        boto3.client("dynamodb", region_name="eu-west-1").delete_table(TableName="meridian-api-eu-orders")
        cluster.services["eu-west-1"]._ready = (0.0, [])
        r = cluster.call("eu-west-1", "GET", "/health/ready")
        assert r.status_code == 503 and any("orders" in p for p in r.json()["problems"])

    def test_openapi(self, cluster: Cluster) -> None:
        paths = cluster.call("eu-west-1", "GET", "/openapi.json").json()["paths"]
        assert {"/v1/users", "/v1/users/{user_id}", "/v1/users/{user_id}/orders", "/v1/counters/{name}/increment"} <= set(paths)


class TestReadYourWritesUnderFailure:
    def test_unreachable_session_region_is_503_not_stale(self, cluster: Cluster) -> None:
        """The session wrote in eu-west-1, which then died before replicating: eu-central-1 refuses to
        answer from its stale replica (503) instead of breaking read-your-writes."""
        u = new_user(cluster, "eu-west-1")
        cluster.replicate("users", "eu", "eu-west-1", "eu-central-1")
        cluster.replicate("directory", "global", "eu-west-1", "eu-central-1")
        upd = cluster.call("eu-west-1", "PUT", f"/v1/users/{u['user_id']}", json={"name": "newer"}, headers={"X-Meridian-Session": u["session"]})
        cluster.down["eu-west-1"] = True
        r = cluster.call("eu-central-1", "GET", f"/v1/users/{u['user_id']}", headers={"X-Meridian-Session": upd.headers["X-Meridian-Session"]})
        assert r.status_code == 503 and r.json()["error"] == "session_unavailable"
        # Without the session's token, the local replica answers.
        assert cluster.call("eu-central-1", "GET", f"/v1/users/{u['user_id']}").status_code == 200


class TestCounterVersions:
    def test_shard_version_only_moves_forward(self, cluster: Cluster) -> None:
        """An increment stamped earlier than the shard's version is re-stamped, never applied backwards."""
        store = cluster.services["eu-west-1"].store
        store.increment("c", 1)
        table = "meridian-api-global-counters"
        client = boto3.client("dynamodb", region_name="eu-west-1")
        key = {"name": {"S": "c"}, "shard": {"S": "eu-west-1"}}
        import time

        ahead = f"{int(time.time() * 1000) + 5000:013d}.000000@eu-west-1"  # another request stamped later, landed first
        client.update_item(TableName=table, Key=key, UpdateExpression="SET version = :v", ExpressionAttributeValues={":v": {"S": ahead}})
        store.increment("c", 2)
        item = client.get_item(TableName=table, Key=key)["Item"]
        assert item["value"]["N"] == "3" and item["version"]["S"] > ahead and item["base"]["S"] == ahead

    def test_a_retried_increment_that_had_landed_counts_once(self, cluster: Cluster) -> None:
        """The SDK retries a write whose answer was lost (a read timeout); the retry meets the condition the
        first attempt's own version set. That increment is done: it must not be added a second time."""
        from botocore.exceptions import ClientError

        store = cluster.services["eu-west-1"].store
        real = store.client

        class AnswerLost:
            def __getattr__(self, name: str) -> Any:
                return getattr(real, name)

            def update_item(self, **kwargs: Any) -> Any:
                real.update_item(**kwargs)  # applied; then the retry of the same request is refused
                raise ClientError({"Error": {"Code": "ConditionalCheckFailedException", "Message": "retry"}}, "UpdateItem")

        store.client = AnswerLost()
        try:
            _, shard_value = store.increment("once", 5)
        finally:
            store.client = real
        assert shard_value == 5
        assert store.counter("once")["value"] == 5


class TestTaskRoleMatchesCalls:
    def test_calls_made_are_what_the_role_allows(self, cluster: Cluster) -> None:
        """Every DynamoDB call a full flow makes needs only the task role's actions, and each action is used."""
        from infra.layout import SERVICE_TABLE_ACTIONS
        from meridian.store import CALLS

        seen: set[str] = set()
        for service in cluster.services.values():
            service.store.client.meta.events.register("before-call.dynamodb.*", lambda model, **_: seen.add(model.name))
        u = new_user(cluster, "eu-west-1")
        path = f"/v1/users/{u['user_id']}"
        cluster.call("eu-west-1", "PUT", path, json={"name": "n"})
        cluster.call("eu-west-1", "GET", path)
        cluster.call("eu-west-1", "POST", f"{path}/orders", json={"item": "x", "qty": 1}, headers={"Idempotency-Key": "k"})
        cluster.call("eu-west-1", "GET", f"{path}/orders")
        cluster.call("eu-west-1", "POST", "/v1/counters/c/increment", json={"by": 1})
        cluster.call("eu-west-1", "GET", "/health/ready")
        # The strong keys: the owner's transaction (the map's ConditionCheck, an update, a put) and its reads.
        owner = cluster.services["eu-west-1"].strong.owner("iam-sku")
        operator = {"Authorization": f"Bearer {KEYS['operator'].signing_key.decode()}"}
        assert cluster.call(owner, "PUT", "/v1/stock/iam-sku", json={"available": 1}, headers=operator).status_code == 200
        assert cluster.call(owner, "POST", f"{path}/reservations", json={"sku": "iam-sku", "quantity": 1},
                            headers={"Idempotency-Key": "r"}).status_code == 201
        assert {"TransactWriteItems", "TransactGetItems"} <= seen
        assert seen <= set(CALLS)
        assert {f"dynamodb:{action}" for c in seen for action in CALLS[c]} == set(SERVICE_TABLE_ACTIONS)


def orders_in(region: str, user_id: str) -> list[dict[str, Any]]:
    client, items = boto3.client("dynamodb", region_name=region), []
    kw: dict[str, Any] = {"TableName": "meridian-api-eu-orders", "KeyConditionExpression": "user_id = :u",
                          "ExpressionAttributeValues": {":u": {"S": user_id}}}
    while True:
        page = client.query(**kw)
        items += page["Items"]
        if "LastEvaluatedKey" not in page:
            return [{k: next(iter(v.values())) for k, v in i.items()} for i in items]
        kw["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def replicated_user(cluster: Cluster, region: str = "eu-west-1") -> dict[str, Any]:
    """A user whose profile and directory entry every region already holds."""
    u = new_user(cluster, region)
    cluster.replicate("users", "eu", region, "eu-central-1" if region == "eu-west-1" else "eu-west-1")
    for other in REGIONS:
        if other != region:
            cluster.replicate("directory", "global", region, other)
    return u


class TestExactlyOnceOrders:
    """D11: one (user, Idempotency-Key) is at most one order, whatever the interleaving."""

    def test_order_id_derived_from_user_and_key_in_home_region(self, cluster: Cluster) -> None:
        """The order id is a function of (user, key), carries the user's home region, and parses back as derived."""
        from meridian.ids import parse_id
        from meridian.store import order_id_for

        u = replicated_user(cluster)
        r = cluster.call("eu-west-1", "POST", f"/v1/users/{u['user_id']}/orders", json={"item": "book", "qty": 1},
                         headers={"Idempotency-Key": "k-1"})
        assert r.status_code == 201
        assert r.json()["order_id"] == order_id_for(u["user_id"], "k-1")
        parsed = parse_id(r.json()["order_id"])
        assert parsed.derived and parsed.region == "eu-west-1" and parsed.timestamp_ms is None

    def test_same_key_in_two_regions_during_partition_is_one_order_id(self, cluster: Cluster) -> None:
        """eu-central-1 cannot reach the home region: it executes the key itself (failover); both answers carry
        the same order id, and each replica holds exactly one item for the key — the same item, which LWW merges."""
        u = replicated_user(cluster)
        path, body = f"/v1/users/{u['user_id']}/orders", {"item": "lamp", "qty": 2}
        cluster.cut["eu-west-1"] = True
        central = cluster.call("eu-central-1", "POST", path, json=body, headers={"Idempotency-Key": "split"})
        cluster.cut["eu-west-1"] = False
        west = cluster.call("eu-west-1", "POST", path, json=body, headers={"Idempotency-Key": "split"})
        assert central.status_code == west.status_code == 201
        assert central.headers["X-Meridian-Region"] == "eu-central-1" and west.headers["X-Meridian-Region"] == "eu-west-1"
        assert central.json()["order_id"] == west.json()["order_id"]
        for region in ("eu-west-1", "eu-central-1"):
            assert [o["order_id"] for o in orders_in(region, u["user_id"])] == [west.json()["order_id"]]

    def test_concurrent_duplicates_in_one_region(self, cluster: Cluster) -> None:
        """40 keys x 2 concurrent executions beside a writer of other keys: one item per key, both callers get its
        id, and nothing the other writer was told is lost."""
        import threading
        import time
        from concurrent.futures import ThreadPoolExecutor

        u = replicated_user(cluster)
        store = cluster.services["eu-west-1"].store
        acked: list[str] = []
        stop = threading.Event()

        def background() -> None:
            i = 0
            while not stop.is_set() and i < 300:
                order, created, _ = store.create_order("eu", u["user_id"], item="bg", qty=1, idempotency_key=f"bg-{i}")
                assert created
                acked.append(str(order["order_id"]))
                i += 1
                time.sleep(0.001)  # a steady writer, not one that starves the others of the GIL

        def place(key: str) -> tuple[str, bool]:
            order, created, _ = store.create_order("eu", u["user_id"], item="dup", qty=1, idempotency_key=key)
            return str(order["order_id"]), created

        writer = threading.Thread(target=background)
        writer.start()
        try:
            with ThreadPoolExecutor(8) as pool:
                results = list(pool.map(place, [f"dup-{i // 2}" for i in range(80)]))
        finally:
            stop.set()
            writer.join()
        for i in range(40):
            (a, created_a), (b, created_b) = results[2 * i], results[2 * i + 1]
            # On AWS exactly one of the two creates; moto checks a condition and writes without a lock, so
            # both may "create" — the SAME item (the id is derived), which is why it is still one order.
            assert a == b and (created_a or created_b)
        stored = orders_in("eu-west-1", u["user_id"])
        per_key: dict[str, int] = {}
        for o in stored:
            per_key[o["idempotency_key"]] = per_key.get(o["idempotency_key"], 0) + 1
        assert max(per_key.values()) == 1
        assert {r[0] for r in results} | set(acked) == {o["order_id"] for o in stored}

    def test_retry_after_forward_timeout_executes_same_order(self, cluster: Cluster) -> None:
        """The home region committed but its answer timed out: the order is sent on (it is idempotent by key),
        executes in eu-central-1 as a failover with the SAME order id; no second order anywhere."""
        u = replicated_user(cluster)
        cluster.late["eu-west-1"] = True
        r = cluster.call("eu-central-1", "POST", f"/v1/users/{u['user_id']}/orders", json={"item": "x", "qty": 1},
                         headers={"Idempotency-Key": "slow"})
        cluster.late["eu-west-1"] = False
        assert r.status_code == 201 and r.headers["X-Meridian-Region"] == "eu-central-1"
        west, central = orders_in("eu-west-1", u["user_id"]), orders_in("eu-central-1", u["user_id"])
        assert [o["order_id"] for o in west] == [o["order_id"] for o in central] == [r.json()["order_id"]]

    def test_non_idempotent_forward_that_may_have_executed_is_never_sent_elsewhere(self, cluster: Cluster) -> None:
        """A user creation forwarded to eu-west-1 times out after executing: 504 outcome_unknown, not a second
        user in eu-central-1."""
        cluster.late["eu-west-1"] = True
        r = cluster.call("us-east-1", "POST", "/v1/users", json={"email": "once@example.com", "name": "Once", "residency": "eu"})
        cluster.late["eu-west-1"] = False
        assert r.status_code == 504 and r.json()["error"] == "outcome_unknown"
        counts = {region: len(boto3.client("dynamodb", region_name=region).scan(TableName="meridian-api-eu-users")["Items"])
                  for region in ("eu-west-1", "eu-central-1")}
        assert counts == {"eu-west-1": 1, "eu-central-1": 0}

    def test_not_delivered_forward_goes_to_the_next_region(self, cluster: Cluster) -> None:
        """The network says the request never reached eu-west-1: even a user creation is safe to send on."""
        cluster.cut["eu-west-1"] = True
        # (an email whose claim is owned by a region that is reachable: see TestStrongKeys for the other case)
        email = next(e for e in (f"a{i}@example.com" for i in range(100)) if claim_owner(e) != "eu-west-1")
        r = cluster.call("us-east-1", "POST", "/v1/users", json={"email": email, "name": "A", "residency": "eu"})
        assert r.status_code == 201 and r.headers["X-Meridian-Region"] == "eu-central-1"

    def test_replay_is_201_with_the_same_body_and_other_body_is_409(self, cluster: Cluster) -> None:
        """Documented: a replay answers 201 with the stored order and Idempotent-Replayed: true, from any region."""
        u = replicated_user(cluster)
        path = f"/v1/users/{u['user_id']}/orders"
        first = cluster.call("eu-west-1", "POST", path, json={"item": "a", "qty": 1}, headers={"Idempotency-Key": "r"})
        cluster.replicate("orders", "eu", "eu-west-1", "eu-central-1")
        cluster.down["eu-west-1"] = True
        cluster.services["eu-central-1"].health.mark("eu-west-1", False)
        again = cluster.call("eu-central-1", "POST", path, json={"item": "a", "qty": 1}, headers={"Idempotency-Key": "r"})
        other = cluster.call("eu-central-1", "POST", path, json={"item": "b", "qty": 1}, headers={"Idempotency-Key": "r"})
        assert first.status_code == again.status_code == 201 and "Idempotent-Replayed" not in first.headers
        assert again.json() == first.json() and again.headers["Idempotent-Replayed"] == "true"
        assert other.status_code == 409 and other.json()["error"] == "idempotency_mismatch"

    def test_no_transaction_on_any_path(self, cluster: Cluster) -> None:
        """No TransactWriteItems for orders: it costs double on AWS (only the strong keys use them)."""
        seen: set[str] = set()
        u = replicated_user(cluster)
        for service in cluster.services.values():
            service.store.client.meta.events.register("before-call.dynamodb.*", lambda model, **_: seen.add(model.name))
        for _ in range(2):
            cluster.call("eu-central-1", "POST", f"/v1/users/{u['user_id']}/orders", json={"item": "x", "qty": 1},
                         headers={"Idempotency-Key": "t"})
        assert "PutItem" in seen and not {c for c in seen if c.startswith("Transact")}


class TestClearErrors:
    """Every error is {"error", "message"}, never a traceback; storage trouble is a 503 with Retry-After."""

    def test_id_of_a_region_not_in_the_stack_is_404(self, cluster: Cluster) -> None:
        for path in ("/v1/users/usr_01M80HSAS49SQMAC95ENHJPDV6_us-west-2", "/v1/users/usr_01M80HSAS49SQMAC95ENHJPDV6_us-west-2/orders"):
            r = cluster.call("eu-west-1", "GET", path)
            assert r.status_code == 404 and set(r.json()) == {"error", "message"}

    def test_storage_unreachable_is_503_with_retry_after(self, cluster: Cluster) -> None:
        from botocore.config import Config

        service = cluster.services["eu-west-1"]
        dead = boto3.client("dynamodb", region_name="eu-west-1", endpoint_url="http://127.0.0.1:9",
                            config=Config(retries={"max_attempts": 1}, connect_timeout=0.5, read_timeout=0.5))
        service.store = Store(client=dead, topology=cluster.topology, region="eu-west-1")
        r = cluster.call("eu-west-1", "POST", "/v1/users", json={"email": "a@b.c", "name": "x", "residency": "eu"})
        assert r.status_code == 503 and r.json()["error"] == "storage_unavailable" and r.headers["Retry-After"] == "1"
        someone = "usr_01M80HSAS49SQMAC95ENHJPDV6_eu-west-1"
        r = cluster.call("eu-west-1", "GET", f"/v1/users/{someone}",
                         headers={"Authorization": f"Bearer {service.users.issue(someone)}"})
        assert r.status_code == 503 and r.json()["error"] == "storage_unavailable"
        r = cluster.call("eu-west-1", "POST", "/v1/counters/c/increment", json={"by": 1})
        assert r.status_code == 503 and "Retry-After" in r.headers

    def test_body_over_64kb_is_413_before_parsing(self, cluster: Cluster) -> None:
        for size in (64 * 1024 + 1, 10 * 1024 * 1024):
            body = b'{"email": "a@b.c", "name": "' + b"x" * size + b'", "residency": "eu"}'
            r = cluster.call("eu-west-1", "POST", "/v1/users", content=body, headers={"content-type": "application/json"})
            assert r.status_code == 413 and r.json()["error"] == "payload_too_large"
            assert r.headers["X-Meridian-Region"] == "eu-west-1"
        assert boto3.client("dynamodb", region_name="eu-west-1").scan(TableName="meridian-api-eu-users")["Items"] == []

    def test_streamed_body_over_64kb_is_413(self, cluster: Cluster) -> None:
        """No Content-Length (chunked): refused as soon as the streamed bytes pass the limit."""
        async def chunks() -> Any:
            for _ in range(20):
                yield b"x" * 8192

        r = cluster.call("eu-west-1", "POST", "/v1/users", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413

    def test_body_at_the_limit_is_parsed(self, cluster: Cluster) -> None:
        body = b'{"email": "a@b.c", "name": "x", "residency": "eu"}'
        body += b" " * (64 * 1024 - len(body))
        r = cluster.call("eu-west-1", "POST", "/v1/users", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 201

    def test_strict_integers(self, cluster: Cluster) -> None:
        """"5", true and 1.0 are not integers (nor null, nor a list)."""
        for by in ("5", True, 1.0, None, [1]):
            r = cluster.call("us-east-1", "POST", "/v1/counters/c/increment", json={"by": by})
            assert r.status_code == 422 and r.json()["error"] == "invalid_request", by
        u = new_user(cluster, "eu-west-1")
        for qty in ("2", True, 2.0):
            r = cluster.call("eu-west-1", "POST", f"/v1/users/{u['user_id']}/orders", json={"item": "x", "qty": qty},
                             headers={"Idempotency-Key": "q"})
            assert r.status_code == 422, qty
        assert cluster.call("us-east-1", "POST", "/v1/counters/c/increment", json={"by": 5}).status_code == 200

    def test_control_characters_refused(self, cluster: Cluster) -> None:
        """C0 (NUL, BEL, ESC, TAB), DEL and C1 are refused in names and emails, at creation and update."""
        u = new_user(cluster, "eu-west-1")
        for bad in ("nul\x00", "esc\x1b[31mred", "bell\x07", "del\x7f", "c1\x85", "csi\x9b", "tab\t"):
            r = cluster.call("eu-west-1", "POST", "/v1/users", json={"email": "a@b.c", "name": bad, "residency": "eu"})
            assert r.status_code == 422 and "control characters" in r.json()["message"], bad
            r = cluster.call("eu-west-1", "POST", "/v1/users", json={"email": f"a{bad}@b.c", "name": "x", "residency": "eu"})
            assert r.status_code == 422, bad
            r = cluster.call("eu-west-1", "PUT", f"/v1/users/{u['user_id']}", json={"name": bad})
            assert r.status_code == 422, bad
        assert cluster.call("eu-west-1", "PUT", f"/v1/users/{u['user_id']}", json={"name": "Zoë Ångström"}).status_code == 200

    def test_strings_must_be_strings(self, cluster: Cluster) -> None:
        r = cluster.call("eu-west-1", "POST", "/v1/users", json={"email": "a@b.c", "name": 5, "residency": "eu"})
        assert r.status_code == 422

    def test_unknown_route_wrong_method_malformed_json(self, cluster: Cluster) -> None:
        r = cluster.call("eu-west-1", "GET", "/v2/nothing")
        assert r.status_code == 404 and set(r.json()) == {"error", "message"} and r.json()["error"] == "not_found"
        r = cluster.call("eu-west-1", "DELETE", "/v1/users")
        assert r.status_code == 405 and r.json()["error"] == "method_not_allowed"
        r = cluster.call("eu-west-1", "POST", "/v1/users", content=b'{"email": ', headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error"] == "invalid_json" and r.json()["message"]

    def test_idempotency_key_with_control_characters_400(self, cluster: Cluster) -> None:
        u = new_user(cluster, "eu-west-1")
        r = cluster.call("eu-west-1", "POST", f"/v1/users/{u['user_id']}/orders", json={"item": "x", "qty": 1},
                         headers={"Idempotency-Key": "k\x7f"})
        assert r.status_code == 400 and r.json()["error"] == "idempotency_key_required"
