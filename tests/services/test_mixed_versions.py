"""Two releases side by side, as a rollout leaves them: each region reads and updates what the other wrote.

The cluster of test_api runs the regional apps against moto; here eu-central-1 runs *release 2*, whose
store writes an additional optional attribute (``locale``) and stamps its user items ``schema`` 2, while
eu-west-1 and us-east-1 run today's release (``schema`` = :data:`meridian.store.SCHEMA`). Replication is
copied item by item, as global tables copy whole items (docs/releases.md: the rule for mixed versions).
"""

from __future__ import annotations

from typing import Any

import boto3
from test_api import Cluster, new_user

from meridian.store import SCHEMA, Store, from_item

USERS = "meridian-api-eu-users"
NEW, OLD = "eu-central-1", "eu-west-1"


class Release2Store(Store):
    """Release 2: a user item carries ``locale`` (optional: readers default it to "en") and schema 2."""

    def _call(self, op: str, **kwargs: Any) -> Any:
        if op == "put_item" and kwargs["TableName"].endswith("-users"):
            kwargs["Item"] = {**kwargs["Item"], "locale": {"S": "fr"}, "schema": {"N": str(SCHEMA + 1)}}
        return super()._call(op, **kwargs)

    @staticmethod
    def locale(item: dict[str, Any]) -> str:
        return str(item.get("locale", "en"))


def release_2(cluster: Cluster) -> None:
    service = cluster.services[NEW]
    service.store = Release2Store(client=boto3.client("dynamodb", region_name=NEW), topology=cluster.topology, region=NEW)


def stored(region: str, user_id: str) -> dict[str, Any]:
    item = boto3.client("dynamodb", region_name=region).get_item(TableName=USERS, Key={"user_id": {"S": user_id}})["Item"]
    return from_item(item)


def replicate(cluster: Cluster, source: str, target: str) -> None:
    cluster.replicate("users", "eu", source, target)
    cluster.replicate("directory", "global", source, target)


def fail(cluster: Cluster, region: str) -> None:
    """``region`` unreachable, and known so by the others: writes for its users fail over inside the zone."""
    cluster.down[region] = True
    for other in cluster.services:
        if other != region:
            cluster.services[other].health.mark(region, False)


def heal(cluster: Cluster, region: str) -> None:
    cluster.down[region] = False
    for other in cluster.services:
        cluster.services[other].health.mark(region, True)


class TestMixedVersions:
    def test_every_item_carries_the_schema_version(self, cluster: Cluster) -> None:
        """Users, their directory pointers, orders and counter shards are stamped ``schema``."""
        u = new_user(cluster, OLD)
        assert stored(OLD, u["user_id"])["schema"] == SCHEMA
        directory = boto3.client("dynamodb", region_name=OLD).scan(TableName="meridian-api-directory")["Items"]
        assert [from_item(d)["schema"] for d in directory] == [SCHEMA]
        order = cluster.call(OLD, "POST", f"/v1/users/{u['user_id']}/orders", json={"item": "w", "qty": 1},
                             headers={"Idempotency-Key": "k1"})
        assert order.status_code == 201, order.text
        orders = boto3.client("dynamodb", region_name=OLD).scan(TableName="meridian-api-eu-orders")["Items"]
        assert [from_item(o)["schema"] for o in orders] == [SCHEMA]
        assert cluster.call(OLD, "POST", "/v1/counters/c/increment", json={"by": 1}).status_code == 200
        shards = boto3.client("dynamodb", region_name=OLD).scan(TableName="meridian-api-global-counters")["Items"]
        assert [from_item(s)["schema"] for s in shards] == [SCHEMA]

    def test_old_release_reads_and_updates_what_the_new_one_wrote(self, cluster: Cluster) -> None:
        """Release 1 serves a release-2 item, updates it without dropping ``locale`` or lowering ``schema``,
        and release 2 then reads release 1's update with its own field intact."""
        release_2(cluster)
        u = new_user(cluster, NEW)
        assert u["executed"] == NEW and stored(NEW, u["user_id"])["schema"] == SCHEMA + 1
        replicate(cluster, NEW, OLD)
        read = cluster.call(OLD, "GET", f"/v1/users/{u['user_id']}", headers={"X-Meridian-Session": u["session"]})
        assert read.status_code == 200 and read.headers["X-Meridian-Region"] == OLD, read.text
        assert read.json()["name"] == "Ada" and "locale" not in read.json()  # what release 1 does not know, it ignores
        fail(cluster, NEW)
        update = cluster.call(OLD, "PUT", f"/v1/users/{u['user_id']}", json={"name": "written by release 1"})
        assert update.status_code == 200 and update.headers["X-Meridian-Region"] == OLD, update.text
        item = stored(OLD, u["user_id"])
        assert (item["name"], item["locale"], item["schema"]) == ("written by release 1", "fr", SCHEMA + 1)
        heal(cluster, NEW)
        replicate(cluster, OLD, NEW)
        again = cluster.call(NEW, "GET", f"/v1/users/{u['user_id']}", headers={"X-Meridian-Session": update.headers["X-Meridian-Session"]})
        assert again.status_code == 200 and again.headers["X-Meridian-Region"] == NEW
        assert again.json()["name"] == "written by release 1"
        assert Release2Store.locale(stored(NEW, u["user_id"])) == "fr"

    def test_new_release_reads_and_updates_what_the_old_one_wrote(self, cluster: Cluster) -> None:
        """Release 2 serves a release-1 item (no ``locale``: its default) and updates it; the item stays schema 1."""
        release_2(cluster)
        u = new_user(cluster, OLD)
        replicate(cluster, OLD, NEW)
        read = cluster.call(NEW, "GET", f"/v1/users/{u['user_id']}", headers={"X-Meridian-Session": u["session"]})
        assert read.status_code == 200 and read.headers["X-Meridian-Region"] == NEW, read.text
        assert Release2Store.locale(stored(NEW, u["user_id"])) == "en"
        fail(cluster, OLD)
        update = cluster.call(NEW, "PUT", f"/v1/users/{u['user_id']}", json={"name": "written by release 2"})
        assert update.status_code == 200 and update.headers["X-Meridian-Region"] == NEW, update.text
        assert stored(NEW, u["user_id"])["schema"] == SCHEMA
        heal(cluster, OLD)
        replicate(cluster, NEW, OLD)
        back = cluster.call(OLD, "GET", f"/v1/users/{u['user_id']}", headers={"X-Meridian-Session": update.headers["X-Meridian-Session"]})
        assert back.status_code == 200 and back.json()["name"] == "written by release 2"

    def test_an_item_from_before_the_stamp_gets_it_on_update(self, cluster: Cluster) -> None:
        """An item written before releases stamped ``schema`` reads fine and is stamped by its next update."""
        u = new_user(cluster, OLD)
        boto3.client("dynamodb", region_name=OLD).update_item(TableName=USERS, Key={"user_id": {"S": u["user_id"]}},
                                                                UpdateExpression="REMOVE #s", ExpressionAttributeNames={"#s": "schema"})
        assert "schema" not in stored(OLD, u["user_id"])
        assert cluster.call(OLD, "GET", f"/v1/users/{u['user_id']}").status_code == 200
        assert cluster.call(OLD, "PUT", f"/v1/users/{u['user_id']}", json={"name": "x"}).status_code == 200
        assert stored(OLD, u["user_id"])["schema"] == SCHEMA
