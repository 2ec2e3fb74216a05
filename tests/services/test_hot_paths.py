"""The hot routes (meridian.api.app.HotPaths) answer exactly as FastAPI answers the same requests.

Each request of the corpus is sent to the region's app and to the same service's app without hot paths
(FastAPI alone): status, error envelope and the headers a client acts on must match. Valid requests
change state, so their bodies are compared by shape; every refusal is compared byte for byte.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import Any

import httpx
import pytest
from test_api import Cluster, new_user

from meridian.api.app import RegionalApp, create_app

KEYS = itertools.count()
HERE = "eu-west-1"


def send(app: Any, method: str, path: str, **kw: Any) -> httpx.Response:
    async def go() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=f"http://{HERE}.test") as c:
            return await c.request(method, path, **kw)

    return asyncio.run(go())


def corpus(user: str, token: str, other_token: str) -> list[tuple[str, str, str, dict[str, Any]]]:
    """(label, method, path, httpx keyword arguments): valid requests and every kind of bad input."""
    auth = {"Authorization": f"Bearer {token}"}
    key = lambda: {**auth, "Idempotency-Key": f"k{next(KEYS)}"}  # noqa: E731 - a fresh key per request
    order, rsv, ctr = f"/v1/users/{user}/orders", f"/v1/users/{user}/reservations", "/v1/counters/c1/increment"
    cases: list[tuple[str, str, str, dict[str, Any]]] = [
        ("read", "GET", f"/v1/users/{user}", {"headers": auth}),
        ("read, no credential", "GET", f"/v1/users/{user}", {}),
        ("read, another user's token", "GET", f"/v1/users/{user}", {"headers": {"Authorization": f"Bearer {other_token}"}}),
        ("read, not an id", "GET", "/v1/users/nobody", {"headers": auth}),
        ("read, region not in the stack", "GET", "/v1/users/usr_0123456789abcdef_us-west-2", {"headers": auth}),
        ("read, bad session token", "GET", f"/v1/users/{user}", {"headers": {**auth, "X-Meridian-Session": "x.y"}}),
        ("update", "PUT", f"/v1/users/{user}", {"headers": auth, "json": {"name": "Grace"}}),
        ("update, unknown field", "PUT", f"/v1/users/{user}", {"headers": auth, "json": {"nick": "G"}}),
        ("update, number for a string", "PUT", f"/v1/users/{user}", {"headers": auth, "json": {"name": 5}}),
        ("update, control character", "PUT", f"/v1/users/{user}", {"headers": auth, "json": {"name": "a\u001bb"}}),
        ("update, malformed JSON", "PUT", f"/v1/users/{user}", {"headers": {**auth, "content-type": "application/json"}, "content": b"{"}),
        ("update, empty body", "PUT", f"/v1/users/{user}", {"headers": {**auth, "content-type": "application/json"}, "content": b""}),
        ("update, text/plain", "PUT", f"/v1/users/{user}", {"headers": {**auth, "content-type": "text/plain"}, "content": b'{"name":"x"}'}),
        ("update, UTF-16 JSON", "PUT", f"/v1/users/{user}", {"headers": {**auth, "content-type": "application/json"},
                                                             "content": '{"name":"x"}'.encode("utf-16")}),
        ("update, no credential", "PUT", f"/v1/users/{user}", {"json": {"name": "Grace"}}),
        ("order", "POST", order, {"headers": key(), "json": {"item": "widget", "qty": 1}}),
        ("order, no Idempotency-Key", "POST", order, {"headers": auth, "json": {"item": "widget", "qty": 1}}),
        ("order, Idempotency-Key too long", "POST", order, {"headers": {**auth, "Idempotency-Key": "k" * 129}, "json": {"item": "w", "qty": 1}}),
        ("order, qty as a string", "POST", order, {"headers": key(), "json": {"item": "widget", "qty": "5"}}),
        ("order, qty 1.0", "POST", order, {"headers": key(), "content": b'{"item":"w","qty":1.0}'}),
        ("order, qty true", "POST", order, {"headers": key(), "json": {"item": "w", "qty": True}}),
        ("order, qty 1e400", "POST", order, {"headers": key(), "content": b'{"item":"w","qty":1e400}'}),
        ("order, qty 0", "POST", order, {"headers": key(), "json": {"item": "w", "qty": 0}}),
        ("order, duplicate field", "POST", order, {"headers": key(), "content": b'{"item":"w","qty":1,"qty":"x"}'}),
        ("order, a list", "POST", order, {"headers": key(), "json": [1]}),
        ("order, null", "POST", order, {"headers": key(), "content": b"null"}),
        ("order, another user's token", "POST", order, {"headers": {"Authorization": f"Bearer {other_token}", "Idempotency-Key": "z"},
                                                        "json": {"item": "w", "qty": 1}}),
        ("increment", "POST", ctr, {"json": {"by": 2}}),
        ("increment, by 0", "POST", ctr, {"json": {"by": 0}}),
        ("increment, by as a string", "POST", ctr, {"json": {"by": "5"}}),
        ("increment, control character in the name", "POST", "/v1/counters/a%01b/increment", {"json": {"by": 1}}),
        ("increment, name over 128 characters", "POST", f"/v1/counters/{'n' * 129}/increment", {"json": {"by": 1}}),
        ("reservation, no stock", "POST", rsv, {"headers": key(), "json": {"sku": "nothing", "quantity": 1}}),
        ("reservation, quantity 0", "POST", rsv, {"headers": key(), "json": {"sku": "s", "quantity": 0}}),
        ("reservation, no Idempotency-Key", "POST", rsv, {"headers": auth, "json": {"sku": "s", "quantity": 1}}),
        ("reservation, no credential", "POST", rsv, {"headers": {"Idempotency-Key": "a"}, "json": {"sku": "s", "quantity": 1}}),
        ("read, trailing slash", "GET", f"/v1/users/{user}/", {"headers": auth}),
    ]
    return cases


ACTED_ON = ("content-type", "x-meridian-region", "retry-after", "www-authenticate", "idempotent-replayed", "location")


@pytest.fixture
def apps(cluster: Cluster) -> tuple[Any, Any, dict[str, str]]:
    user, other = new_user(cluster, HERE), new_user(cluster, HERE)
    plain = create_app(cluster.services[HERE], hot_paths=False)
    return cluster.apps[HERE], plain, {"user": user["user_id"], "token": user["token"], "other_token": other["token"]}


def test_hot_routes_answer_as_fastapi_does(apps: tuple[Any, Any, dict[str, str]]) -> None:
    hot, plain, who = apps
    for label, method, path, kw in corpus(who["user"], who["token"], who["other_token"]):
        # A write sent twice with one key would be a replay the second time: each app gets its own key.
        other = {**kw, "headers": {k: v + "-b" if k == "Idempotency-Key" else v for k, v in kw.get("headers", {}).items()}}
        a, b = send(hot, method, path, **kw), send(plain, method, path, **other)
        assert a.status_code == b.status_code, f"{label}: {a.status_code} {a.text} != {b.status_code} {b.text}"
        assert {h: a.headers.get(h) for h in ACTED_ON} == {h: b.headers.get(h) for h in ACTED_ON}, label
        if a.status_code >= 400:
            assert a.content == b.content, label
            assert set(a.json()) == {"error", "message"}, label
        elif a.status_code < 300:
            assert set(a.json()) == set(b.json()), label
            assert ("x-meridian-session" in a.headers) == ("x-meridian-session" in b.headers), label


def test_valid_requests_do_not_enter_fastapi_and_invalid_ones_do(cluster: Cluster, apps: tuple[Any, Any, dict[str, str]],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    _, _, who = apps
    entered: list[str] = []
    stack = RegionalApp.fastapi_stack

    async def spy(self: RegionalApp, scope: Any, receive: Any, send_: Any) -> None:
        entered.append(scope["path"])
        await stack(self, scope, receive, send_)

    monkeypatch.setattr(RegionalApp, "fastapi_stack", spy)
    hot = create_app(cluster.services[HERE])
    auth = {"Authorization": f"Bearer {who['token']}"}
    assert send(hot, "GET", f"/v1/users/{who['user']}", headers=auth).status_code == 200
    assert send(hot, "POST", "/v1/counters/c2/increment", json={"by": 1}).status_code == 200
    assert entered == []
    assert send(hot, "POST", "/v1/counters/c2/increment", json={"by": "1"}).status_code == 422
    assert send(hot, "GET", "/health/live").status_code == 200
    assert entered == ["/v1/counters/c2/increment", "/health/live"]


def test_a_bug_in_a_hot_route_is_a_500_envelope_and_logged(cluster: Cluster, caplog: pytest.LogCaptureFixture,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_: Any, **__: Any) -> Any:
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(cluster.services[HERE].store, "increment", broken)
    with caplog.at_level(logging.ERROR, logger="meridian.api"):
        r = send(cluster.apps[HERE], "POST", "/v1/counters/c3/increment", json={"by": 1})
    assert r.status_code == 500 and r.json() == {"error": "internal_error", "message": "unexpected ZeroDivisionError; it was logged"}
    assert r.headers["X-Meridian-Region"] == HERE
    assert "ZeroDivisionError: boom" in caplog.text
