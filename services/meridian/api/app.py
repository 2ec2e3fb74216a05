"""The regional HTTP API: a thin layer over the library (routing, residency, sessions, store).

Every response carries ``X-Meridian-Region`` (where it executed); writes return ``X-Meridian-Session``.
A request arriving in the wrong region is forwarded (HMAC-signed) to the region that must execute it;
a signed forwarded request executes where it lands, never forwarded again. A forward that may have
been executed (a timeout, a reset after sending) is sent to another region only when the request is
idempotent (reads, PUT, orders: their id is derived from the Idempotency-Key); otherwise the answer is
504 ``outcome_unknown``, never a second execution.

Orders: the first execution answers 201; the same Idempotency-Key again — here, in another region, on
either side of a partition — answers 201 with the same ``order_id`` and the stored order, marked
``Idempotent-Replayed: true``; the same key with another body is 409 ``idempotency_mismatch``.

Errors are always ``{"error": code, "message": text}``: unknown routes (404/405), malformed JSON (400),
invalid fields (422), bodies over 64 KB (413, refused before parsing), storage unreachable (503
``storage_unavailable`` with ``Retry-After``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import inspect
import json
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import httpx
from fastapi import FastAPI, Header, Path, Request, Response, Security
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBearer
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from meridian import __version__
from meridian.auth import AuthError, UserTokens, bearer, operator_matches
from meridian.geo import nearest
from meridian.health import HealthView
from meridian.hlc import ClockDriftError, Timestamp, Version
from meridian.ids import IdError, parse_id
from meridian.keys import KeyRing
from meridian.ownership import RESERVED_PREFIX
from meridian.peers import ORIGIN, SIGNED_HEADERS, NonceCache, PeerAuthError, sign_request, verify_request
from meridian.routing import Decision, decide
from meridian.sessions import SessionToken, TokenError, satisfied, sign, verify
from meridian.settings import Settings
from meridian.store import IdempotencyMismatch, ResidencyViolation, Store, StoreError, UserExists
from meridian.strong import (
    ConsistencyUnavailable,
    EmailTaken,
    NotOwner,
    OutOfStock,
    StrongStore,
    claim_key,
    home_owner,
    reservation_id_for,
)

REGION_HEADER = "X-Meridian-Region"
SESSION_HEADER = "X-Meridian-Session"
FAILOVER_HEADER = "X-Meridian-Failover"
HLC_HEADER = "X-Meridian-HLC"
#: Set by the (emulated) network on an answer it gave itself because the request never reached the
#: region (partition, region down): safe to send elsewhere, whatever the request.
LINK_HEADER = "X-Meridian-Link"
NOT_DELIVERED = "not-delivered"
DIRECTORY_CACHE_SIZE = 100_000
#: Bearer tokens verified here and still valid -> (user id, expiry): a client sends the same token on many
#: requests, and verifying a JWT again (three parses, an HMAC) is a tenth of a read's CPU. Bounded; emptied
#: when the key rings change, so a rotated-out key's tokens are verified (and refused) afresh.
TOKEN_CACHE_SIZE = 100_000
#: Largest request body accepted (413 above it, before anything parses it). The edge applies the same.
MAX_BODY_BYTES = 64 * 1024
#: Seconds a client is asked to wait after a 503 for unavailable storage.
RETRY_AFTER_SECONDS = 1
_PASSTHROUGH = {REGION_HEADER.lower(), SESSION_HEADER.lower(), "idempotent-replayed", "retry-after"}
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
IDEMPOTENCY_KEY_RULE = "send an Idempotency-Key header (1-128 printable ASCII characters) with every order"
_KEY = re.compile(r"^[\x20-\x7e]{1,128}$")
#: Documents the bearer scheme in OpenAPI; the check itself is ``authorize`` (it needs the path's user).
BEARER = HTTPBearer(auto_error=False, description="the token from POST /v1/users (or an OIDC issuer's)")
USER_AUTH = [Security(BEARER)]


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, *, headers: dict[str, str] | None = None,
                 maybe_executed: str = "") -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}
        #: A forward's 503 after a target that may have executed the request (sent, answer lost): a caller
        #: that may not execute it elsewhere must not say "nothing was written" (meridian.api.app at_owner).
        self.maybe_executed = maybe_executed


def _no_control(value: str) -> str:
    if _CONTROL.search(value):
        raise ValueError("control characters (C0, DEL, C1: NUL, ESC, ...) are not allowed")
    return value


NO_CONTROL = r"^[^\x00-\x1f\x7f-\x9f]*$"
#: A string that is a JSON string (never a number coerced) and holds no control character. The contract
#: states the rule as a pattern; the validator enforces it with a message a person can act on.
Text = Annotated[StrictStr, AfterValidator(_no_control)]
EMAIL = r"^[^@\s\x00-\x1f\x7f-\x9f]+@[^@\s\x00-\x1f\x7f-\x9f]+$"


#: A sku: no control character, and not the stock table's own keys (``__meridian…``: meridian.ownership).
SKU = rf"^(?!{RESERVED_PREFIX})[^\x00-\x1f\x7f-\x9f]*$"
#: A sku: the contract states the rule the handlers enforce (400 ``invalid_sku``).
SkuName = Annotated[str, Path(json_schema_extra={"minLength": 1, "maxLength": 128, "pattern": SKU})]
#: A counter's name: the contract states the rule the handlers enforce (400 ``invalid_counter``).
CounterName = Annotated[str, Path(json_schema_extra={"minLength": 1, "maxLength": 128, "pattern": NO_CONTROL})]


class Request_(BaseModel):
    """A request body: unknown fields are refused (422), not silently dropped."""

    model_config = ConfigDict(extra="forbid")


class NewUser(Request_):
    email: StrictStr = Field(min_length=3, max_length=254, pattern=EMAIL)
    name: Text = Field(min_length=1, max_length=200, json_schema_extra={"pattern": NO_CONTROL})
    residency: Text = Field(min_length=1, max_length=32)


class UserUpdate(Request_):
    email: StrictStr | None = Field(default=None, min_length=3, max_length=254, pattern=EMAIL)
    name: Text | None = Field(default=None, min_length=1, max_length=200, json_schema_extra={"pattern": NO_CONTROL})


class NewOrder(Request_):
    item: Text = Field(min_length=1, max_length=200, json_schema_extra={"pattern": NO_CONTROL})
    qty: StrictInt = Field(ge=1, le=10_000)  # "5", true and 1.0 are not integers


class Increment(Request_):
    by: StrictInt = Field(ge=1, le=1_000_000)


class StockLevel(Request_):
    available: StrictInt = Field(ge=0, le=1_000_000_000)


class NewReservation(Request_):
    sku: Text = Field(min_length=1, max_length=128, json_schema_extra={"pattern": SKU})
    quantity: StrictInt = Field(ge=1, le=10_000)


class Stock(BaseModel):
    sku: str
    available: int
    reserved: int


class ReservationOut(BaseModel):
    reservation_id: str
    sku: str
    quantity: int
    status: str


class ErrorBody(BaseModel):
    """Every error: a stable code to branch on and a sentence for a person."""

    error: str
    message: str


class CreatedUser(BaseModel):
    user_id: str
    home_region: str
    zone: str
    token: str = Field(description="bearer token for this user's calls (Authorization: Bearer <token>)")


class UserToken(BaseModel):
    token: str


class PublicUser(BaseModel):
    user_id: str
    email: str
    name: str
    zone: str
    home_region: str
    version: str


class Order(BaseModel):
    order_id: str
    user_id: str
    item: str
    qty: int
    idempotency_key: str
    created_region: str
    created_at: int


class Orders(BaseModel):
    orders: list[Order]


class CounterValue(BaseModel):
    name: str
    value: int
    shards: dict[str, int]


class CounterIncrement(BaseModel):
    """What an increment's one write answers: the shard it added to, not the total (a read: GET the counter)."""

    name: str
    region: str = Field(description="the region whose shard took the increment (each region adds only to its own)")
    shard_value: int = Field(description="that shard's value after the increment; the counter's total is GET /v1/counters/{name}")


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI responses for these error statuses, each with the error envelope."""
    described = {400: "malformed request (JSON, header, token format)", 401: "no or invalid credential",
                 403: "credential of another user", 404: "no such user or route", 409: "conflicts with stored state",
                 413: "body over 64 KB", 422: "a field is invalid", 503: "unavailable now; retry after Retry-After",
                 504: "the executing region did not answer; the request may have executed"}
    return {code: {"model": ErrorBody, "description": described[code]} for code in codes}


def _expiry(token: str) -> float | None:
    """The ``exp`` claim of a JWT that has just been verified (None when it has none: then it is not cached)."""
    try:
        payload = token.split(".")[1]
        exp = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))).get("exp")
    except (IndexError, ValueError, AttributeError):
        return None
    return float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None


def error_body(code: str, message: str) -> bytes:
    return json.dumps({"error": code, "message": message}).encode()


class Service:
    """One region's service: the store, its view of the other regions, and the forwarding client."""

    def __init__(self, settings: Settings, store: Store, *, transport: httpx.AsyncBaseTransport | None = None,
                 strong_store: Store | None = None) -> None:
        self.settings, self.store = settings, store
        self.region, self.topology = settings.region, settings.topology
        self.health = HealthView(self.topology.regions, failure_threshold=self.topology.routing.failure_threshold)
        self.http = httpx.AsyncClient(timeout=settings.forward_timeout, transport=transport)
        self.users = UserTokens(settings.user_key, issuer=f"meridian/{self.topology.project}-{self.topology.stack}",
                                oidc=settings.oidc, builtin=settings.builtin_tokens)
        self.nonces = NonceCache()
        # The strong keys' calls: the same store, or (the local run's MRSC emulation) one whose client
        # reaches DynamoDB through the emulator (MERIDIAN_STRONG_ENDPOINT_URL; meridian_local.mrsc).
        self.strong = StrongStore(strong_store or store, fenced=self._strong_mechanism() != "mrsc")
        self._ready: tuple[float, list[str]] = (0.0, [])
        self._directory: dict[str, tuple[str, str]] = {}
        self._tokens: dict[str, tuple[str, float]] = {}

    def use_keys(self, *, session: KeyRing, peer: KeyRing, users: KeyRing, operator: KeyRing) -> None:
        """Swap the key rings while running (meridian.keysource re-reads the stack's secret; no redeploy)."""
        from dataclasses import replace

        self.settings = replace(self.settings, session_key=session, peer_key=peer, user_key=users, operator_key=operator)
        self.users.ring = users  # the same UserTokens: an OIDC issuer's cached keys are kept
        self._tokens = {}

    def bearer_subject(self, token: str) -> str:
        """The user a bearer token speaks for (:class:`AuthError` if it cannot be trusted). A token verified
        here before is answered from the cache until its own ``exp``, never longer."""
        hit = self._tokens.get(token)
        if hit is not None and time.time() < hit[1]:
            return hit[0]
        subject = self.users.verify(token)
        expiry = _expiry(token)
        if expiry is not None:
            if len(self._tokens) >= TOKEN_CACHE_SIZE:
                self._tokens.clear()
            self._tokens[token] = (subject, expiry)
        return subject

    # -- sessions ---------------------------------------------------------------------------------------
    def token(self, header: str | None) -> SessionToken | None:
        if not header:
            return None
        try:
            return verify(header, self.settings.session_key)
        except TokenError as exc:
            raise ApiError(401, "invalid_session", str(exc)) from None

    def issue(self, previous: SessionToken | None, *, scope: str, table: str, hlc: Timestamp) -> str:
        base = previous or SessionToken(region=self.region, hlc=hlc, scope=scope)
        return sign(base.after_write(region=self.region, hlc=hlc, scope=scope, table=table), self.settings.session_key)

    # -- where a user lives -------------------------------------------------------------------------------
    def locate(self, user_id: str) -> tuple[str, str] | None:
        """(home region, zone) from the directory replica here, or None if it has not arrived (yet).

        A user's home region and zone never change after creation, so found entries are cached."""
        cached = self._directory.get(user_id)
        if cached is not None:
            return cached
        entry = self.store.directory_get(user_id)
        if not entry:
            return None
        if len(self._directory) >= DIRECTORY_CACHE_SIZE:
            self._directory.clear()
        self._directory[user_id] = (str(entry["home_region"]), str(entry["zone"]))
        return self._directory[user_id]

    def cached_home(self, user_id: str) -> tuple[str, str] | None:
        return self._directory.get(user_id)

    def healthy(self) -> dict[str, bool]:
        return self.health.snapshot()

    # -- forwarding ---------------------------------------------------------------------------------------
    async def forward(self, request: Request, body: bytes, targets: list[str], *, failover: bool, idempotent: bool | None = None) -> Response:
        """Send the request to the first target that answers.

        The next target (a failover) is tried only when the request certainly did not reach the first
        (connection refused or timed out, the network or load balancer answered that it could not reach
        the region), or when the request is ``idempotent`` — safe to execute twice: reads, PUT, and orders,
        whose id is derived from the Idempotency-Key. A non-idempotent request that may have executed
        (read timeout, reset after sending, 502/504 from the load balancer) is 504 ``outcome_unknown``:
        a second execution elsewhere would create a second thing."""
        if idempotent is None:
            idempotent = request.method in ("GET", "HEAD", "PUT", "DELETE")
        last_error, maybe_executed = "", ""
        for target in targets[:2]:
            path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            if target not in self.settings.peers:
                last_error = f"{target}: no address"
                continue
            # Every header that changes what the peer does is signed with the call (meridian.peers).
            signed = {name: request.headers[name] for name in SIGNED_HEADERS if request.headers.get(name)}
            signed[HLC_HEADER.lower()] = self.store.clock.now().encode()
            signed.pop(FAILOVER_HEADER.lower(), None)
            if failover:
                signed[FAILOVER_HEADER.lower()] = "1"
            headers = {**signed, **sign_request(self.settings.peer_key, request.method, path, body, self.region, headers=signed),
                       "content-type": "application/json"}
            try:
                resp = await self.http.request(request.method, self.settings.peer_url(target) + path, content=body, headers=headers)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
                # Never sent: safe to send elsewhere.
                self.health.record(target, False)
                last_error, failover = f"{target}: {type(exc).__name__}", True
                continue
            except httpx.HTTPError as exc:
                self.health.record(target, False)
                if not idempotent:
                    raise self._unknown(target, type(exc).__name__) from None
                last_error, failover = f"{target}: {type(exc).__name__} (may have executed; idempotent, so sent on)", True
                maybe_executed = maybe_executed or f"{target}: {type(exc).__name__}"
                continue
            from_service = REGION_HEADER.lower() in (k.lower() for k in resp.headers)
            if resp.headers.get(LINK_HEADER) == NOT_DELIVERED or (resp.status_code == 503 and not from_service):
                # The network or the load balancer could not reach the region: nothing executed there.
                self.health.record(target, False)
                last_error, failover = f"{target}: HTTP {resp.status_code} (not delivered)", True
                continue
            if resp.status_code in (502, 504) and not from_service:
                # The load balancer lost the answer: the region may have executed the request.
                self.health.record(target, False)
                if not idempotent:
                    raise self._unknown(target, f"HTTP {resp.status_code}")
                last_error, failover = f"{target}: HTTP {resp.status_code} (may have executed; idempotent, so sent on)", True
                maybe_executed = maybe_executed or f"{target}: HTTP {resp.status_code}"
                continue
            passthrough = {k: v for k, v in resp.headers.items() if k.lower() in _PASSTHROUGH}
            return Response(content=resp.content, status_code=resp.status_code, headers=passthrough, media_type="application/json")
        raise ApiError(503, "region_unavailable", f"no region of the zone answered ({last_error}); retry later",
                       headers={"Retry-After": str(RETRY_AFTER_SECONDS)}, maybe_executed=maybe_executed)

    @staticmethod
    def _unknown(target: str, why: str) -> ApiError:
        return ApiError(504, "outcome_unknown", f"{target} did not answer ({why}): the request may have executed there, "
                        "so it was not sent to another region; check its effect before repeating it")

    # -- strong keys (meridian.strong) ------------------------------------------------------------------
    def _strong_mechanism(self) -> str:
        """``mrsc`` where the strong tables are an MRSC set (and, locally, its emulation runs), else ``owner``."""
        mechanism = self.topology.mechanism(self.topology.table("stock"), self.topology.global_zone)
        return "mrsc" if mechanism == "mrsc" and self.settings.mrsc else "owner"

    def strong_owner(self, key: str) -> str | None:
        """The region that must execute a strong write or read of ``key``: None where every region may
        (MRSC), else the key's owner region under this region's ownership map (meridian.ownership)."""
        if not self.strong.fenced:
            return None
        return self.strong.owner(key)

    async def strong_owner_async(self, key: str) -> str | None:
        """:meth:`strong_owner`, off the event loop when the map must be read again."""
        if self.strong.map_fresh():
            return self.strong_owner(key)
        return await asyncio.to_thread(self.strong_owner, key)

    async def peer_request(self, target: str, method: str, path: str, payload: dict[str, Any]) -> httpx.Response:
        """A signed call of this region's own making (not a client's request forwarded)."""
        body = json.dumps(payload).encode()
        signed = {HLC_HEADER.lower(): self.store.clock.now().encode()}
        headers = {**signed, **sign_request(self.settings.peer_key, method, path, body, self.region, headers=signed),
                   "content-type": "application/json"}
        try:
            resp = await self.http.request(method, self.settings.peer_url(target) + path, content=body, headers=headers)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            self.health.record(target, False)
            raise ApiError(503, "consistency_unavailable", f"{target} owns this key and cannot be reached ({type(exc).__name__}); "
                           "nothing was written; retry", headers={"Retry-After": str(RETRY_AFTER_SECONDS)}) from None
        except httpx.HTTPError as exc:  # sent, answer lost: it may have been written there
            self.health.record(target, False)
            raise self._unknown(target, type(exc).__name__) from None
        if resp.status_code in (502, 504) and REGION_HEADER.lower() not in resp.headers and resp.headers.get(LINK_HEADER) != NOT_DELIVERED:
            self.health.record(target, False)
            raise self._unknown(target, f"HTTP {resp.status_code}")
        if resp.headers.get(LINK_HEADER) == NOT_DELIVERED or (resp.status_code >= 500 and REGION_HEADER.lower() not in resp.headers):
            self.health.record(target, False)
            raise ApiError(503, "consistency_unavailable", f"{target} owns this key and cannot be reached (HTTP {resp.status_code}); "
                           "nothing was written; retry", headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
        return resp

    def zone_regions(self, zone: str) -> list[str]:
        try:
            return list(self.topology.zone(zone).regions)
        except KeyError:
            raise ApiError(422, "unknown_residency", f"residency {zone!r} is not a zone of this deployment: {[z.name for z in self.topology.zones]}") from None

    def targets_for(self, decision: Decision, zone_regions: list[str]) -> list[str]:
        if decision.region is None:
            raise ApiError(503, "zone_unavailable", f"{decision.reason}; nothing was written")
        rest = [r for r in nearest(decision.region, zone_regions) if r not in (decision.region, self.region)]
        return [decision.region, *self.healthy_first(rest)]

    def healthy_first(self, regions: list[str]) -> list[str]:
        """The regions this one believes healthy first, then the others: the view is a hint (a probe can be
        slow on a busy host), and a region that is really down refuses the connection, which is safe to
        move on from for any request."""
        return [r for r in regions if self.health.is_healthy(r)] + [r for r in regions if not self.health.is_healthy(r)]

    def ready(self) -> list[str]:
        at, problems = self._ready
        if time.monotonic() - at > 2.0:  # DescribeTable is rate limited; checkers come every few seconds
            problems = self.store.ready()
            self._ready = (time.monotonic(), problems)
        return problems

    async def probe_peers(self) -> None:
        """This region's own view of the others, from their /health/ready (interval and threshold).

        The peers are probed at once, each with the forward timeout (2 s), whatever the interval: a probe
        timeout tied to a scaled-down interval (1 s locally at time scale 0.1) marked healthy regions
        down on a busy machine. A slow answer is not a dead region; a refused connection is."""

        async def probe(region: str) -> None:
            try:
                resp = await self.http.get(self.settings.peer_url(region) + "/health/ready", timeout=self.settings.forward_timeout)
                self.health.record(region, resp.status_code == 200)
            except httpx.HTTPError:
                self.health.record(region, False)

        while True:
            started = time.monotonic()
            await asyncio.gather(*(probe(r) for r in self.topology.regions if r != self.region))
            await asyncio.sleep(max(0.0, self.settings.probe_interval - (time.monotonic() - started)))


class RegionHeader:
    """Pure ASGI middleware (BaseHTTPMiddleware costs ~0.5 ms a request): stamps X-Meridian-Region
    on every response that does not carry one (a forwarded response keeps the executing region)."""

    def __init__(self, app: Any, *, region: str) -> None:
        self.app, self.header = app, (REGION_HEADER.lower().encode(), region.encode())

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def stamped(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                if not any(k.lower() == self.header[0] for k, _ in headers):
                    headers.append(self.header)
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, stamped)


class BodyLimit:
    """Pure ASGI middleware: a body over ``limit`` bytes is refused with 413 before anything parses it —
    at once when Content-Length declares it, else as soon as the streamed bytes pass the limit. The
    body (at most ``limit`` bytes) is buffered and handed to the app unchanged."""

    def __init__(self, app: Any, *, limit: int = MAX_BODY_BYTES) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = next((v for k, v in scope.get("headers", []) if k.lower() == b"content-length"), None)
        if declared is not None:
            try:
                too_big = int(declared) > self.limit
            except ValueError:
                await self._refuse(send, 400, "invalid_request", "Content-Length is not a number")
                return
            if too_big:
                await self._refuse(send, 413, "payload_too_large", f"request body of {int(declared)} bytes is over the {self.limit}-byte limit")
                return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                await self._refuse(send, 413, "payload_too_large", f"request body is over the {self.limit}-byte limit")
                return
            more = message.get("more_body", False)
        await self.app(scope, _replaying(b"".join(chunks), receive), send)

    @staticmethod
    async def _refuse(send: Any, status: int, code: str, message: str) -> None:
        content = error_body(code, message)
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(content)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": content})


@dataclass(frozen=True)
class HotRoute:
    """One of the busiest routes, served by :class:`HotPaths`: its method, its path (FastAPI's path
    parameters as named groups) and the endpoint FastAPI also serves it with."""

    method: str
    path: re.Pattern[str]
    endpoint: Callable[..., Awaitable[Response]]
    body: type[BaseModel] | None = None
    params: frozenset[str] = frozenset()

    @classmethod
    def of(cls, method: str, template: str, endpoint: Callable[..., Awaitable[Response]], body: type[BaseModel] | None = None) -> HotRoute:
        path = re.compile(re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", template))
        return cls(method, path, endpoint, body, frozenset(inspect.signature(endpoint).parameters))


class HotPaths:
    """Pure ASGI: the busiest routes (profile read and update, orders, increments, reservations) without
    FastAPI's per-request machinery — routing over every route, dependency solving, the exception
    and exit-stack middleware — which cost about as much CPU as the endpoint's own work
    (bench/cost_per_request.py). The endpoint is FastAPI's own, called with the arguments FastAPI would
    pass, and its exceptions are answered by the app's own exception handlers, so both paths answer
    alike; FastAPI still documents the routes (OpenAPI).

    Only a request whose every input is valid is served here: a body that is not JSON or not a valid
    model, a content type other than JSON, a missing or invalid ``Idempotency-Key`` goes to FastAPI
    unchanged (body replayed), which answers its 400/422 as it always has."""

    def __init__(self, app: Any, *, routes: list[HotRoute], handlers: dict[Any, Callable[..., Any]]) -> None:
        self.app, self.handlers = app, handlers
        self.routes: dict[str, list[HotRoute]] = {}
        for route in routes:
            self.routes.setdefault(route.method, []).append(route)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            for route in self.routes.get(scope["method"], ()):
                if (match := route.path.fullmatch(scope["path"])) is not None:
                    await self._serve(route, match.groupdict(), scope, receive, send)
                    return
        await self.app(scope, receive, send)

    async def _serve(self, route: HotRoute, path: dict[str, str], scope: Any, receive: Any, send: Any) -> None:
        request = Request(scope, receive)
        kwargs: dict[str, Any] = {**path}
        body = await request.body() if route.body is not None else b""
        valid = True
        if route.body is not None:
            content_type = request.headers.get("content-type")
            if content_type is None or content_type.split(";", 1)[0].strip().lower() == "application/json":
                try:
                    kwargs["payload"] = route.body.model_validate_json(body)
                except ValidationError:
                    valid = False
            else:
                valid = False
        if "idempotency_key" in route.params:
            kwargs["idempotency_key"] = key = request.headers.get("idempotency-key")
            valid = valid and key is not None and _KEY.match(key) is not None
        if not valid:  # FastAPI answers it as it always has (the body was read: replay it)
            await self.app(scope, _replaying(body, receive), send)
            return
        if "request" in route.params:
            kwargs["request"] = request
        if "x_meridian_session" in route.params:
            kwargs["x_meridian_session"] = request.headers.get("x-meridian-session")
        try:
            response = await route.endpoint(**kwargs)
        except Exception as exc:
            handled = next((c for c in type(exc).__mro__ if c in self.handlers), None)
            if handled is None:
                raise
            if handled is Exception:  # a bug: logged with its traceback, as the server error middleware does
                logging.getLogger("meridian.api").exception("unexpected error in %s %s", scope["method"], scope["path"])
            response = self.handlers[handled](request, exc)
            if inspect.isawaitable(response):
                response = await response
        await response(scope, receive, send)


def _replaying(body: bytes, receive: Any) -> Any:
    """A ``receive`` that hands over ``body`` (already read: buffered, or validated) once, then the client's."""
    sent = False

    async def replay() -> Any:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


class RegionalApp(FastAPI):
    """FastAPI with the region's own pure-ASGI layers in front of its stack (``front``: region header, body
    limit, hot routes): a hot route's request never enters FastAPI's middleware at all."""

    front: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and self.front is not None:
            await self.front(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)

    async def fastapi_stack(self, scope: Any, receive: Any, send: Any) -> None:
        """What every request not served in front reaches: FastAPI as it is."""
        await super().__call__(scope, receive, send)


def create_app(service: Service, *, hot_paths: bool = True) -> FastAPI:
    """The region's app. ``hot_paths=False`` serves every route through FastAPI alone (the tests compare the two)."""
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(service.probe_peers()) if service.settings.probe_interval > 0 else None
        from meridian.keysource import start_refresh

        keys = start_refresh(service)  # None unless MERIDIAN_KEYS_SECRET_ARN names the stack's secret
        yield
        if task:
            task.cancel()
        if keys:
            keys.cancel()
        await service.http.aclose()

    app = RegionalApp(title="Meridian regional service", version=__version__, lifespan=lifespan)
    region = service.region

    def openapi() -> dict[str, Any]:
        """FastAPI's schema, plus what it cannot know from the types: this deployment's zones."""
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
            zones = [z.name for z in service.topology.zones]
            schema["components"]["schemas"]["NewUser"]["properties"]["residency"]["enum"] = zones
            # FastAPI documents its own validation body for 422; this API answers with the error envelope.
            for methods in schema["paths"].values():
                for op in methods.values():
                    if "422" in op.get("responses", {}):
                        op["responses"]["422"] = {"description": "a field is invalid", "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}}
            for unused in ("HTTPValidationError", "ValidationError"):
                schema["components"]["schemas"].pop(unused, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"error": exc.code, "message": exc.message}, status_code=exc.status, headers={REGION_HEADER: region, **exc.headers})

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        message = f"no route {request.method} {request.url.path}" if exc.status_code in (404, 405) else str(exc.detail)
        return JSONResponse({"error": code, "message": message}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        if first.get("type") == "json_invalid":
            return JSONResponse({"error": "invalid_json", "message": f"the request body is not valid JSON: {first.get('ctx', {}).get('error', 'decode error')}"},
                                status_code=400)
        loc = tuple(str(p) for p in first.get("loc", ()))
        if loc[:1] == ("header",) and loc[-1].lower() == "idempotency-key":
            return JSONResponse({"error": "idempotency_key_required", "message": IDEMPOTENCY_KEY_RULE}, status_code=400)
        where = ".".join(p for p in loc if p != "body")
        return JSONResponse({"error": "invalid_request", "message": f"{where}: {first.get('msg', 'invalid')}"}, status_code=422)

    @app.exception_handler(ResidencyViolation)
    async def residency(_: Request, exc: ResidencyViolation) -> JSONResponse:
        return JSONResponse({"error": "residency", "message": str(exc)}, status_code=409)

    @app.exception_handler(EmailTaken)
    async def email_taken(_: Request, exc: EmailTaken) -> JSONResponse:
        return JSONResponse({"error": "email_taken", "message": str(exc)}, status_code=409)

    @app.exception_handler(OutOfStock)
    async def out_of_stock(_: Request, exc: OutOfStock) -> JSONResponse:
        return JSONResponse({"error": "out_of_stock", "message": str(exc)}, status_code=409)

    @app.exception_handler(ConsistencyUnavailable)
    async def consistency_unavailable(_: Request, exc: ConsistencyUnavailable) -> JSONResponse:
        return JSONResponse({"error": "consistency_unavailable", "message": str(exc)}, status_code=503,
                            headers={"Retry-After": str(RETRY_AFTER_SECONDS)})

    @app.exception_handler(StoreError)
    async def store_error(_: Request, exc: StoreError) -> JSONResponse:
        return JSONResponse({"error": "storage_unavailable", "message": str(exc)}, status_code=503,
                            headers={"Retry-After": str(RETRY_AFTER_SECONDS)})

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        # A bug: the client gets the envelope, never a traceback (the server log keeps it).
        return JSONResponse({"error": "internal_error", "message": f"unexpected {type(exc).__name__}; it was logged"}, status_code=500)

    async def peer_call(request: Request, body: bytes) -> str | None:
        """The signed nonce of a call from another region (it executes here), None for a client's call;
        401 for a bad or replayed signature. Only a peer's call may carry the failover mark or an HLC:
        a client's are ignored."""
        if not any(h in request.headers for h in ("x-meridian-peer-signature", ORIGIN)):
            return None
        path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        try:
            _, nonce = verify_request(service.settings.peer_key, request.method, path, body, request.headers, nonces=service.nonces)
            if request.headers.get(HLC_HEADER):
                service.store.clock.update(Timestamp.decode(request.headers[HLC_HEADER]))
        except PeerAuthError as exc:
            raise ApiError(401, "peer_auth", str(exc)) from None
        except (ClockDriftError, ValueError) as exc:
            raise ApiError(400, "peer_clock", str(exc)) from None
        return nonce

    def authorize(request: Request, user_id: str) -> None:
        """401 without a valid bearer token, 403 with another user's. Checked in every region a request
        passes through (no call to another region: every region holds the key ring)."""
        check_user_id(user_id)
        try:
            subject = service.bearer_subject(bearer(request.headers.get("authorization")))
        except AuthError as exc:
            raise ApiError(401, "unauthorized", str(exc), headers={"WWW-Authenticate": 'Bearer realm="meridian"'}) from None
        if subject != user_id:
            raise ApiError(403, "forbidden", "this token belongs to another user")

    def check_user_id(user_id: str) -> None:
        """404 for what cannot be a user of this deployment: not an id, or an id of a region that is not in
        this stack (no user can live there). Checked before the credential: an id's shape is public."""
        try:
            parsed = parse_id(user_id)
        except IdError:
            raise ApiError(404, "not_found", f"no user {user_id!r}") from None
        if parsed.prefix != "usr" or parsed.region not in service.topology.regions:
            raise ApiError(404, "not_found", f"no user {user_id!r} (not a user id of this deployment's regions)")

    async def user_home(user_id: str) -> tuple[str, str] | None:
        """(home, zone) of a user id from the directory (None: not there, or not yet)."""
        check_user_id(user_id)
        cached = service.cached_home(user_id)
        return cached if cached is not None else await asyncio.to_thread(service.locate, user_id)

    async def route(request: Request, body: bytes, user_id: str, *, kind: Literal["read", "write"], table: str,
                    token: SessionToken | None, local_version: Any = None,
                    idempotent: bool | None = None) -> tuple[Decision, str | None, Response | None]:
        located = await user_home(user_id)
        if located is None:
            origin = parse_id(user_id).region
            if origin != region and service.health.is_healthy(origin):
                return Decision("forward", origin, "directory not replicated here yet; the id's origin region knows"), None, \
                    await service.forward(request, body, [origin], failover=False, idempotent=idempotent)
            raise ApiError(404, "not_found", f"no user {user_id!r}")
        home, zone = located
        zone_regions = service.zone_regions(zone)
        ok = True
        if kind == "read" and region in zone_regions:
            # local_version reads storage: off the event loop, or one read would stall every request of the task.
            local = await asyncio.to_thread(local_version, zone) if local_version else None
            ok = satisfied(token, here=region, scope=user_id, table=table, local=local)
        elif kind == "read" and token is not None and token.scope == user_id and (m := token.watermark(table)) and m.region != home:
            ok = False  # read from outside the zone: go where the session wrote this table, not to a stale home
        mark = token.watermark(table) if token is not None and token.scope == user_id else None
        decision = decide(kind=kind, here=region, home=home, zone_regions=zone_regions, healthy=service.healthy(),
                          token_region=mark.region if mark else None, token_satisfied=ok)
        if decision.action in ("forward", "failover") and decision.region != region:
            try:
                return decision, zone, await service.forward(request, body, service.targets_for(decision, zone_regions),
                                                             failover=decision.action == "failover", idempotent=idempotent)
            except ApiError as exc:
                if exc.code == "outcome_unknown":
                    raise  # it may have executed there: executing it here too could do it twice
                if kind == "read" and not ok:
                    # Never answer a read from a replica that lacks the session's writes.
                    raise ApiError(503, "session_unavailable", f"the session's writes are in {decision.region}, "
                                   f"unreachable now ({exc.message}); retry") from None
                if region not in zone_regions:
                    raise
                # Every other region of the zone is unreachable from here, and this one belongs to the
                # zone: execute here as a failover write (a read serves the local replica).
                return Decision("failover", region, "no other region of the zone reachable; executing here"), zone, None
        if decision.action == "unavailable":
            if kind == "read":
                raise ApiError(503, "session_unavailable", decision.reason)
            raise ApiError(503, "zone_unavailable", f"{decision.reason}; nothing was written")
        return decision, zone, None

    # -- health -----------------------------------------------------------------------------------------
    @app.get("/health/live")
    async def live() -> dict[str, str]:
        return {"status": "live", "region": region}

    @app.get("/health/ready")
    async def ready() -> JSONResponse:
        problems = await asyncio.to_thread(service.ready)
        status = 200 if not problems else 503
        return JSONResponse({"status": "ready" if not problems else "not_ready", "region": region, "problems": problems}, status_code=status)

    # -- users ----------------------------------------------------------------------------------------------
    async def claim_email(email: str, user_id: str) -> None:
        """Holds the email's claim for ``user_id`` in the claim's owner region (or here, under MRSC);
        409 ``email_taken`` if another account holds it, 503 ``consistency_unavailable`` if the owner
        cannot be reached (no account is created then)."""
        claim = claim_key(email, service.settings.claim_key)
        owner = await service.strong_owner_async(claim)
        if owner is None or owner == region:
            try:
                await asyncio.to_thread(service.strong.claim, claim, user_id)
                return
            except NotOwner as exc:  # handed over since this region read its map: ask the new owner
                if exc.owner in (None, region):
                    raise
                owner = exc.owner
        resp = await service.peer_request(owner, "PUT", f"/internal/claims/{claim}", {"user_id": user_id})
        if resp.status_code == 409:
            raise EmailTaken("an account with this email exists")
        if resp.status_code != 204:
            raise ApiError(503, "consistency_unavailable", f"{owner} could not record the email claim (HTTP {resp.status_code}); retry",
                           headers={"Retry-After": str(RETRY_AFTER_SECONDS)})

    @app.put("/internal/claims/{claim}", status_code=204, include_in_schema=False)
    async def put_claim(request: Request, claim: str) -> Response:
        """Region-to-region only: the claim's owner records it."""
        body = await request.body()
        if await peer_call(request, body) is None:
            raise ApiError(404, "not_found", f"no route {request.method} {request.url.path}")
        try:
            user_id = json.loads(body)["user_id"]
        except (ValueError, KeyError, TypeError):
            raise ApiError(400, "invalid_request", "body must be {\"user_id\": ...}") from None
        await asyncio.to_thread(service.strong.claim, claim, str(user_id))
        return Response(status_code=204)

    @app.post("/v1/users", status_code=201, response_model=CreatedUser, responses=errors(400, 401, 409, 413, 422, 503, 504))
    async def create_user(request: Request, payload: NewUser, x_meridian_session: str | None = Header(default=None)) -> Response:
        body = await request.body()
        nonce = await peer_call(request, body)
        from_peer = nonce is not None
        token = service.token(x_meridian_session)
        zone_regions = service.zone_regions(payload.residency)
        if not from_peer and region not in zone_regions:
            candidates = service.healthy_first(nearest(region, zone_regions))
            # Not idempotent: a forward that may have executed is never sent to a second region.
            try:
                return await service.forward(request, body, candidates, failover=False, idempotent=False)
            except ApiError as exc:
                if exc.code != "region_unavailable":
                    raise
                raise ApiError(503, "zone_unavailable", f"no region of zone {payload.residency!r} answered ({exc.message}); "
                               "nothing was written", headers=exc.headers) from None
        # A peer's call: the id derives from its signed nonce, so a replay that escapes the nonce cache
        # (another task of this region) collides with the first write instead of creating a second user.
        user_id = service.store.new_user_id(nonce)
        # One account per email, across every zone and region: the claim is a strong key (meridian.strong).
        await claim_email(payload.email, user_id)
        try:
            user, hlc = await asyncio.to_thread(
                service.store.create_user, email=payload.email, name=payload.name, zone=payload.residency,
                failover=from_peer and request.headers.get(FAILOVER_HEADER) == "1", user_id=user_id)
        except UserExists:
            raise ApiError(401, "peer_auth", "peer call replayed (the user it creates exists)") from None
        session = service.issue(token, scope=user.user_id, table="users", hlc=hlc)
        return JSONResponse({"user_id": user.user_id, "home_region": user.home_region, "zone": user.zone,
                             "token": service.users.issue(user.user_id)}, status_code=201, headers={SESSION_HEADER: session})

    @app.post("/v1/users/{user_id}/token", dependencies=USER_AUTH, response_model=UserToken, responses=errors(401, 403, 404))
    async def refresh_token(request: Request, user_id: str) -> Response:
        """A fresh token for a valid one (before it expires): answered by any region, no storage call."""
        authorize(request, user_id)
        return JSONResponse({"token": service.users.issue(user_id)})

    def public_user(item: dict[str, Any]) -> dict[str, Any]:
        return {k: item[k] for k in ("user_id", "email", "name", "zone", "home_region", "version") if k in item}

    async def placement(request: Request, body: bytes, user_id: str, *, kind: Literal["read", "write"], table: str,
                        token: SessionToken | None, local_version: Any = None,
                        idempotent: bool | None = None) -> tuple[str, bool, Response | None]:
        """(zone, failover?, forwarded response) for a request about ``user_id``. A signed call from another
        region executes here as it is; anything else goes through the routing decision."""
        if await peer_call(request, body) is not None:
            located = await user_home(user_id)
            if located is None:
                raise ApiError(404, "not_found", f"no user {user_id!r}")
            return located[1], request.headers.get(FAILOVER_HEADER) == "1", None
        decision, zone, forwarded = await route(request, body, user_id, kind=kind, table=table, token=token,
                                                local_version=local_version, idempotent=idempotent)
        assert zone is not None or forwarded is not None
        return zone or "", decision.action == "failover", forwarded

    @app.get("/v1/users/{user_id}", dependencies=USER_AUTH, response_model=PublicUser, responses=errors(400, 401, 403, 404, 503, 504))
    async def get_user(request: Request, user_id: str, x_meridian_session: str | None = Header(default=None)) -> Response:
        authorize(request, user_id)
        token = service.token(x_meridian_session)
        cache: dict[str, Any] = {}

        def local_version(zone: str) -> Timestamp | None:
            cache["item"] = service.store.get_user(zone, user_id)
            return Version.decode(cache["item"]["version"]).hlc if cache["item"] else None

        zone, _, forwarded = await placement(request, b"", user_id, kind="read", table="users", token=token, local_version=local_version)
        if forwarded is not None:
            return forwarded
        item = cache["item"] if "item" in cache else await asyncio.to_thread(service.store.get_user, zone, user_id)
        if item is None:
            raise ApiError(404, "not_found", f"no user {user_id!r}")
        return JSONResponse(public_user(item))

    @app.put("/v1/users/{user_id}", dependencies=USER_AUTH, response_model=PublicUser,
             responses=errors(400, 401, 403, 404, 409, 413, 422, 503, 504))
    async def update_user(request: Request, user_id: str, payload: UserUpdate, x_meridian_session: str | None = Header(default=None)) -> Response:
        authorize(request, user_id)
        body = await request.body()
        token = service.token(x_meridian_session)
        zone, failover, forwarded = await placement(request, body, user_id, kind="write", table="users", token=token)
        if forwarded is not None:
            return forwarded
        if payload.email is not None:
            await claim_email(payload.email, user_id)  # the new address must be free (409 email_taken)
        try:
            item, hlc = await asyncio.to_thread(service.store.update_user, zone, user_id, payload.model_dump(), failover=failover)
        except KeyError:
            raise ApiError(404, "not_found", f"no user {user_id!r}") from None
        return JSONResponse(public_user(item), headers={SESSION_HEADER: service.issue(token, scope=user_id, table="users", hlc=hlc)})

    # -- orders ---------------------------------------------------------------------------------------------
    ORDER_FIELDS = ("order_id", "user_id", "item", "qty", "idempotency_key", "created_region", "created_at")

    @app.post("/v1/users/{user_id}/orders", dependencies=USER_AUTH, status_code=201, response_model=Order,
              responses=errors(400, 401, 403, 404, 409, 413, 422, 503, 504))
    async def create_order(request: Request, user_id: str, payload: NewOrder,
                           idempotency_key: str = Header(alias="Idempotency-Key", min_length=1, max_length=128, pattern=_KEY.pattern,
                                                         description="one key per order: the same key again answers the same order"),
                           x_meridian_session: str | None = Header(default=None)) -> Response:
        authorize(request, user_id)
        if not _KEY.match(idempotency_key):
            raise ApiError(400, "idempotency_key_required", IDEMPOTENCY_KEY_RULE)
        body = await request.body()
        token = service.token(x_meridian_session)
        # Idempotent by key: the order's id is derived from it, so a second execution anywhere writes the same item.
        zone, _, forwarded = await placement(request, body, user_id, kind="write", table="orders", token=token, idempotent=True)
        if forwarded is not None:
            return forwarded
        try:
            order, created, hlc = await asyncio.to_thread(service.store.create_order, zone, user_id, item=payload.item,
                                                          qty=payload.qty, idempotency_key=idempotency_key)
        except IdempotencyMismatch as exc:
            raise ApiError(409, "idempotency_mismatch", str(exc)) from None
        headers = {SESSION_HEADER: service.issue(token, scope=user_id, table="orders", hlc=hlc)}
        if not created:
            headers["Idempotent-Replayed"] = "true"
        return JSONResponse({k: order[k] for k in ORDER_FIELDS}, status_code=201, headers=headers)

    @app.get("/v1/users/{user_id}/orders", dependencies=USER_AUTH, response_model=Orders, responses=errors(400, 401, 403, 404, 503, 504))
    async def list_orders(request: Request, user_id: str, x_meridian_session: str | None = Header(default=None)) -> Response:
        authorize(request, user_id)
        token = service.token(x_meridian_session)
        cache: dict[str, Any] = {}

        def local_version(zone: str) -> Timestamp | None:
            cache["orders"] = service.store.list_orders(zone, user_id)
            versions = [Version.decode(o["version"]).hlc for o in cache["orders"]]
            return max(versions) if versions else None

        zone, _, forwarded = await placement(request, b"", user_id, kind="read", table="orders", token=token, local_version=local_version)
        if forwarded is not None:
            return forwarded
        orders = cache["orders"] if "orders" in cache else await asyncio.to_thread(service.store.list_orders, zone, user_id)
        return JSONResponse({"orders": [{k: o[k] for k in ORDER_FIELDS} for o in orders]})

    # -- counters (every region increments its own shard: no forwarding) ---------------------------------
    @app.post("/v1/counters/{name}/increment", response_model=CounterIncrement, responses=errors(400, 401, 413, 422, 503))
    async def increment(name: CounterName, payload: Increment, x_meridian_session: str | None = Header(default=None)) -> Response:
        """Adds to this region's shard: one write, which answers that shard's new value. The total over
        every region's shards is a read: ``GET /v1/counters/{name}``."""
        if not 1 <= len(name) <= 128 or _CONTROL.search(name):
            raise ApiError(400, "invalid_counter", "counter names are 1-128 characters, without control characters")
        token = service.token(x_meridian_session)
        hlc, shard_value = await asyncio.to_thread(service.store.increment, name, payload.by)
        return JSONResponse({"name": name, "region": region, "shard_value": shard_value},
                            headers={SESSION_HEADER: service.issue(token, scope=f"counter:{name}", table="counters", hlc=hlc)})

    @app.get("/v1/counters/{name}", response_model=CounterValue, responses=errors(400, 503))
    async def counter(name: CounterName) -> Response:
        if not 1 <= len(name) <= 128 or _CONTROL.search(name):
            raise ApiError(400, "invalid_counter", "counter names are 1-128 characters, without control characters")
        return JSONResponse(await asyncio.to_thread(service.store.counter, name))

    # -- strong keys: stock and reservations (meridian.strong) ---------------------------------------------
    async def at_owner(request: Request, body: bytes, key: str) -> Response | None:
        """None: execute here (this region owns ``key``, or MRSC lets every region, or a peer sent it here).
        Else the owner's answer; 503 ``consistency_unavailable`` if the request certainly did not reach it —
        never executed elsewhere, which could sell a unit twice — and 504 ``outcome_unknown`` if it was sent
        and no answer came (it may have executed: the same Idempotency-Key again answers what was done)."""
        request.state.from_peer = await peer_call(request, body) is not None
        if request.state.from_peer:
            return None
        owner = await service.strong_owner_async(key)
        if owner is None or owner == region:
            return None
        answer = await at_region(request, body, key, owner)
        if answer.status_code == 503:
            # The owner may have handed the key over (meridian.ownership) after this region last read its map:
            # read it again, and go where it says, once — here included.
            moved = await asyncio.to_thread(lambda: service.strong.ownership(fresh=True).owner(key, service.strong.regions))
            if moved == region:
                return None
            if moved != owner:
                return await at_region(request, body, key, moved)
        return answer

    async def at_region(request: Request, body: bytes, key: str, owner: str) -> Response:
        try:
            return await service.forward(request, body, [owner], failover=False, idempotent=True)
        except ApiError as exc:
            if exc.status == 503 and exc.maybe_executed:
                # Sent and unanswered: the owner may have executed it, so "refused" would be a false answer.
                raise ApiError(504, "outcome_unknown", f"{exc.maybe_executed}: {owner} owns {key!r} and may have executed this; "
                               "send it again with the same Idempotency-Key", headers={"Retry-After": str(RETRY_AFTER_SECONDS)}) from None
            if exc.status == 503:
                raise ApiError(503, "consistency_unavailable", f"{owner} owns {key!r} and cannot be reached ({exc.message}); "
                               "refused rather than risk two owners", headers={"Retry-After": str(RETRY_AFTER_SECONDS)}) from None
            raise

    async def here(request: Request, body: bytes, key: str, run: Callable[[], Awaitable[Response]]) -> Response:
        """``run`` executes here, where this region's map says ``key`` is owned. If a handover moved the key
        since this region read its map, the fence refuses the write, and the new owner is asked instead."""
        try:
            return await run()
        except NotOwner as exc:
            if getattr(request.state, "from_peer", True) or exc.owner in (None, region):
                raise
            return await at_region(request, body, key, exc.owner)

    def operator(request: Request) -> None:
        try:
            presented = bearer(request.headers.get("authorization"))
        except AuthError as exc:
            raise ApiError(401, "unauthorized", f"{exc} (the operator key)", headers={"WWW-Authenticate": 'Bearer realm="meridian-operator"'}) from None
        if not operator_matches(presented, service.settings.operator_key):
            raise ApiError(403, "forbidden", "not the operator key")

    def check_sku(sku: str) -> None:
        if not 1 <= len(sku) <= 128 or _CONTROL.search(sku) or sku.startswith(RESERVED_PREFIX):
            raise ApiError(400, "invalid_sku", f"a sku is 1-128 characters, without control characters, not starting with {RESERVED_PREFIX}")

    @app.put("/v1/stock/{sku}", response_model=Stock, dependencies=USER_AUTH, responses=errors(400, 401, 403, 413, 422, 503, 504))
    async def set_stock(request: Request, sku: SkuName, payload: StockLevel) -> Response:
        """Operator action: sets the units available (reserved units are kept)."""
        check_sku(sku)
        operator(request)
        body = await request.body()
        if (forwarded := await at_owner(request, body, sku)) is not None:
            return forwarded

        async def run() -> Response:
            return JSONResponse(await asyncio.to_thread(service.strong.set_stock, sku, payload.available))
        return await here(request, body, sku, run)

    @app.get("/v1/stock/{sku}", response_model=Stock, responses=errors(400, 404, 503, 504))
    async def get_stock(request: Request, sku: SkuName) -> Response:
        """Strongly consistent, from any region: read where the key is written."""
        check_sku(sku)
        if (forwarded := await at_owner(request, b"", sku)) is not None:
            return forwarded

        async def run() -> Response:
            stock = await asyncio.to_thread(service.strong.get_stock, sku)
            if stock is None:
                raise ApiError(404, "not_found", f"no stock of {sku!r}")
            return JSONResponse(stock)
        return await here(request, b"", sku, run)

    @app.post("/v1/users/{user_id}/reservations", status_code=201, dependencies=USER_AUTH, response_model=ReservationOut,
              responses=errors(400, 401, 403, 404, 409, 413, 422, 503, 504))
    async def reserve(request: Request, user_id: str, payload: NewReservation,
                      idempotency_key: str = Header(alias="Idempotency-Key", min_length=1, max_length=128, pattern=_KEY.pattern,
                                                    description="one key per reservation: the same key again answers the same one")) -> Response:
        authorize(request, user_id)
        if not _KEY.match(idempotency_key):
            raise ApiError(400, "idempotency_key_required", IDEMPOTENCY_KEY_RULE)
        check_sku(payload.sku)
        body = await request.body()
        if (forwarded := await at_owner(request, body, payload.sku)) is not None:
            return forwarded
        rid = reservation_id_for(user_id, idempotency_key, home_owner(payload.sku, service.topology.global_zone.regions))

        async def run() -> Response:
            try:
                reservation, created = await asyncio.to_thread(service.strong.reserve, user_id, payload.sku, payload.quantity, rid)
            except IdempotencyMismatch as exc:
                raise ApiError(409, "idempotency_mismatch", str(exc)) from None
            return JSONResponse(reservation.public(), status_code=201, headers={} if created else {"Idempotent-Replayed": "true"})
        return await here(request, body, payload.sku, run)

    @app.delete("/v1/users/{user_id}/reservations/{reservation_id}", dependencies=USER_AUTH, response_model=ReservationOut,
                responses=errors(400, 401, 403, 404, 503, 504))
    async def release(request: Request, user_id: str, reservation_id: str) -> Response:
        """Gives the units back; releasing twice is releasing once."""
        authorize(request, user_id)
        try:
            parsed = parse_id(reservation_id)
        except IdError:
            raise ApiError(404, "not_found", f"no reservation {reservation_id!r}") from None
        if parsed.prefix != "rsv" or parsed.region not in service.topology.regions:
            raise ApiError(404, "not_found", f"no reservation {reservation_id!r}")
        # Released where its sku is owned now (or here, under MRSC). The record names the sku (which never
        # changes, so this region's replica may be read); a record not here yet is asked of the region its id
        # ends with, the sku's home owner, which holds it whenever it owns the sku.
        if await peer_call(request, b"") is None and service.strong.fenced:
            sku = await asyncio.to_thread(service.strong.sku_of, reservation_id)
            target = await service.strong_owner_async(sku) if sku is not None else parsed.region
            if target is not None and target != region:
                try:
                    return await service.forward(request, b"", [target], failover=False, idempotent=True)
                except ApiError as exc:
                    if exc.status == 503:
                        raise ApiError(503, "consistency_unavailable", f"{target} holds this reservation and cannot be "
                                       f"reached ({exc.message}); retry", headers={"Retry-After": str(RETRY_AFTER_SECONDS)}) from None
                    raise
        reservation = await asyncio.to_thread(service.strong.reservation, reservation_id)
        if reservation is None or reservation.user_id != user_id:
            raise ApiError(404, "not_found", f"no reservation {reservation_id!r}")
        if reservation.status != "released":
            reservation = await asyncio.to_thread(service.strong.release, reservation)
        return JSONResponse(reservation.public())

    # In front of FastAPI's own stack, innermost first: the hot routes, the body limit before them, the
    # rehearsal fault, and the region header outermost (it stamps the 413s too).
    front: Any = app.fastapi_stack
    if hot_paths:
        front = HotPaths(front, routes=[
            HotRoute.of("GET", "/v1/users/{user_id}", get_user), HotRoute.of("PUT", "/v1/users/{user_id}", update_user, UserUpdate),
            HotRoute.of("POST", "/v1/users/{user_id}/orders", create_order, NewOrder),
            HotRoute.of("POST", "/v1/counters/{name}/increment", increment, Increment),
            HotRoute.of("POST", "/v1/users/{user_id}/reservations", reserve, NewReservation)], handlers=app.exception_handlers)
    front = BodyLimit(front, limit=MAX_BODY_BYTES)
    if service.settings.fault_5xx > 0:  # a rehearsal of a bad release (meridian.rehearsal); never set on AWS
        from meridian.rehearsal import RehearsalFault

        front = RehearsalFault(front, share=service.settings.fault_5xx)
    app.front = RegionHeader(front, region=region)
    return app


def dynamodb_client(settings: Settings, **kwargs: Any) -> Any:
    """The service's DynamoDB client (bench/cost_per_request.py builds the same one to count its calls)."""
    import boto3
    from botocore.config import Config

    # No client-side parameter validation: every request is built by this code, not taken from input, and
    # DynamoDB validates each one anyway (a ValidationException is a 503 like any failed call); walking the
    # parameters against the model costs about a twentieth of a call's CPU.
    return boto3.client("dynamodb", region_name=settings.region,
                        config=Config(retries={"mode": "standard", "max_attempts": 3}, connect_timeout=2, read_timeout=5,
                                      parameter_validation=False), **kwargs)


def app_from_env() -> FastAPI:
    """The ASGI app uvicorn runs in each region: ``uvicorn --factory meridian.api.app:app_from_env``."""
    settings = Settings.from_env()
    store = Store(client=dynamodb_client(settings), topology=settings.topology, region=settings.region)
    strong_endpoint = os.environ.get("MERIDIAN_STRONG_ENDPOINT_URL")  # never set on AWS: MRSC is DynamoDB's own there
    strong = Store(client=dynamodb_client(settings, endpoint_url=strong_endpoint), topology=settings.topology,
                   region=settings.region, clock=store.clock) if strong_endpoint else None
    return create_app(Service(settings, store, strong_store=strong))
