"""EMULATION of the global edge (Route 53 latency records + Global Accelerator) and of the network
between regions, in one HTTP endpoint.

- A client states where it is with ``X-Meridian-Client-Region``. The edge sends it to the
  lowest-latency region whose endpoint-group dial is above 0 and that its own health checks find
  healthy: the plan's health path, interval and threshold (scaled by ``time_scale``), Route 53's rule
  of N consecutive results to change state. When no region is healthy it fails open to every region
  with a dial above 0, as Route 53 and Global Accelerator do. Traffic dials are applied as weights
  across equally near regions only (enough for evacuation: dial 0 removes a region).
- ``/_link/{secret}/{src}/{dst}/...`` is the network between regions: region-to-region calls pass through
  it, with the inter-region delay injected and partitions enforced (502, as a load balancer answers when
  nothing behind it can be reached). ``secret`` is the run's link secret, which only the region processes
  know (it is part of the peer URLs in their environment): a client on the edge port gets 401.
- The control API (``/_meridian/...``) needs ``Authorization: Bearer <control secret>``, the per-run
  secret the supervisor writes into the state folder's ``state.json`` (mode 0600); else 401.
- Delays are real round-trip medians (meridian.geo) times ``latency_scale``; 0 disables them.
  ``POST /_meridian/slow {"a", "b", "seconds"}`` adds a delay to the *answers* on a link (the request
  reaches the region and executes; its answer is late), the slow forward that makes a caller time out
  after the callee committed; ``seconds`` 0 removes it. Only API calls (``/v1/...``) are slowed: health
  probes still answer, so the region stays healthy and the slow call is the forward itself.
- A request the link refuses (partition, failed region) never reached the region: the answer says so
  with ``X-Meridian-Link: not-delivered`` (on AWS the caller would see its connection fail), so the
  caller may send it elsewhere; an answer lost after delivery carries no such header.
- Request bodies over 64 KB are refused with 413 before they are read further, at the edge as at the
  service (an ALB forwards any size; the limit is the service's, applied where the request enters).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from meridian.api.app import LINK_HEADER, MAX_BODY_BYTES, NOT_DELIVERED
from meridian.geo import nearest, rtt_ms

HOP_HEADERS = {"host", "content-length", "connection", "transfer-encoding", "keep-alive", "date", "server"}
CLIENT_HEADER = "x-meridian-client-region"


class TooLarge(Exception):
    """A request body over the limit."""


async def read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The body, refused (TooLarge) as soon as it is known to pass ``limit``: by Content-Length, or while streaming."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"request body of {declared} bytes is over the {limit}-byte limit")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"request body is over the {limit}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


def too_large(exc: TooLarge) -> JSONResponse:
    return JSONResponse({"error": "payload_too_large", "message": str(exc)}, status_code=413, headers={"Connection": "close"})


@dataclass
class RegionState:
    url: str
    dial: int = 100
    healthy: bool = True
    successes: int = 0
    failures: int = 0
    changed_at: float = field(default_factory=time.time)
    requests: int = 0
    errors: int = 0
    #: What the region's load balancer would count: every answer from the region (clients' requests and
    #: other regions' calls over /_link), and those that were a 5xx (the service's own or the edge's 502):
    #: the inputs of the region's 5xx-rate alarm, which a local rollout evaluates (meridian_local.rollout).
    answers: int = 0
    answers_5xx: int = 0


def unauthorized(message: str) -> JSONResponse:
    return JSONResponse({"error": "unauthorized", "message": message}, status_code=401, headers={"WWW-Authenticate": 'Bearer realm="meridian-control"'})


class Edge:
    #: Set by the supervisor before serving (None: open). The control API needs ``Authorization: Bearer
    #: <control_secret>``; ``/_link`` needs ``link_secret`` as its first path segment.
    control_secret: str | None = None
    link_secret: str | None = None

    def __init__(self, regions: dict[str, str], *, dials: dict[str, int], health: dict[str, dict[str, Any]],
                 time_scale: float = 1.0, latency_scale: float = 1.0, default_client: str | None = None) -> None:
        self.regions = {r: RegionState(url=u, dial=dials.get(r, 100)) for r, u in regions.items()}
        any_health: dict[str, Any] = next(iter(health.values()), {"path": "/health/ready", "interval": 30, "threshold": 3})
        self.path = str(any_health["path"])
        self.interval = float(any_health["interval"]) * time_scale
        self.threshold = int(any_health["threshold"])
        self.latency_scale = latency_scale
        self.default_client = default_client or next(iter(regions))
        self.partitions: set[frozenset[str]] = set()
        self.failed: set[str] = set()
        self.slow: dict[frozenset[str], float] = {}  # link -> seconds added to each answer on it
        self.events: list[dict[str, Any]] = []
        #: upstream URL -> requests sent there and not answered yet: a release swap waits for 0 before it
        #: stops the replaced process (no request dropped).
        self.inflight: dict[str, int] = {}
        self.http = httpx.AsyncClient(timeout=10.0, limits=httpx.Limits(max_connections=200, max_keepalive_connections=100))
        self._aio: aiohttp.ClientSession | None = None

    # -- routing ---------------------------------------------------------------------------------------
    def choose(self, client_region: str) -> list[str]:
        """Regions in the order the edge would try them for a client there."""
        serving = [r for r, s in self.regions.items() if s.dial > 0]
        healthy = [r for r in serving if self.regions[r].healthy]
        return nearest(client_region, healthy or serving)

    def linked(self, a: str, b: str) -> bool:
        """The emulated network lets ``a`` reach ``b``: neither failed, no partition between them. The one
        rule for region-to-region calls and for the MRSC emulation's majorities (meridian_local.mrsc)."""
        return a not in self.failed and b not in self.failed and frozenset((a, b)) not in self.partitions

    async def delay(self, a: str, b: str) -> None:
        if self.latency_scale > 0:
            await asyncio.sleep(rtt_ms(a, b) * self.latency_scale / 1000)

    # -- health checks -----------------------------------------------------------------------------------
    async def check_loop(self) -> None:
        while True:
            await asyncio.gather(*(self.check(r) for r in self.regions))
            await asyncio.sleep(self.interval)

    async def check(self, region: str) -> None:
        state = self.regions[region]
        try:
            resp = await self.http.get(state.url + self.path, timeout=max(0.5, min(4.0, self.interval)))
            ok = resp.status_code == 200
        except httpx.HTTPError:
            ok = False
        if ok:
            state.successes, state.failures = state.successes + 1, 0
            if not state.healthy and state.successes >= self.threshold:
                self._transition(region, True)
        else:
            state.failures, state.successes = state.failures + 1, 0
            if state.healthy and state.failures >= self.threshold:
                self._transition(region, False)

    def _transition(self, region: str, healthy: bool) -> None:
        state = self.regions[region]
        state.healthy, state.changed_at = healthy, time.time()
        self.events.append({"at": state.changed_at, "region": region, "healthy": healthy})

    # -- HTTP ------------------------------------------------------------------------------------------------
    async def proxy(self, request: Request) -> Response:
        client_region = request.headers.get(CLIENT_HEADER, self.default_client)
        order = self.choose(client_region)
        try:
            body = await read_body(request)
        except TooLarge as exc:
            return too_large(exc)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        target = order[0]
        state = self.regions[target]
        state.requests += 1
        await self.delay(client_region, target)
        url = state.url
        self.inflight[url] = self.inflight.get(url, 0) + 1
        try:
            session = self._session()
            async with session.request(request.method, url + path, data=body, headers=headers) as resp:
                content = await resp.read()
                status, resp_headers = resp.status, resp.headers
        except (TimeoutError, aiohttp.ClientError) as exc:
            state.errors += 1
            state.answers, state.answers_5xx = state.answers + 1, state.answers_5xx + 1
            return JSONResponse({"error": "edge_upstream", "message": f"{target} did not answer ({type(exc).__name__})"},
                                status_code=502, headers={"X-Meridian-Edge-Target": target})
        finally:
            self.inflight[url] -= 1
        state.answers, state.answers_5xx = state.answers + 1, state.answers_5xx + (status >= 500)
        out = {k: v for k, v in resp_headers.items() if k.lower() not in HOP_HEADERS}
        out["X-Meridian-Edge-Target"] = target
        return Response(content, status_code=status, headers=out)

    def _session(self) -> aiohttp.ClientSession:
        """aiohttp's client: a pooled keep-alive hop costs a fraction of httpx's on the request path."""
        if self._aio is None:
            self._aio = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10), auto_decompress=False,
                                              connector=aiohttp.TCPConnector(limit=200, keepalive_timeout=30))
        return self._aio

    def control_allowed(self, request: Request) -> bool:
        if self.control_secret is None:
            return True
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self.control_secret.encode())

    def guarded(self, endpoint: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        """``endpoint`` answered only with the run's control secret; 401 before anything else (body unread)."""
        async def handler(request: Request) -> Response:
            if not self.control_allowed(request):
                return unauthorized("the control API needs the run's secret: Authorization: Bearer <control_secret "
                                    "of .meridian/local/state.json>; `meridian local ...` sends it")
            return await endpoint(request)
        return handler

    async def no_such_control(self, request: Request) -> Response:
        return JSONResponse({"error": "not_found", "message": f"no control route {request.url.path}"}, status_code=404)

    async def link(self, request: Request) -> Response:
        if self.link_secret is not None and not hmac.compare_digest(request.path_params["secret"].encode(), self.link_secret.encode()):
            return unauthorized("/_link is the emulated network between regions, for the run's region processes only")
        src, dst, rest = request.path_params["src"], request.path_params["dst"], request.path_params["rest"]
        if dst not in self.regions:
            return JSONResponse({"error": "no_such_region", "message": dst}, status_code=404)
        if not self.linked(src, dst):
            return JSONResponse({"error": "link_down", "message": f"{src} cannot reach {dst}"}, status_code=502,
                                headers={LINK_HEADER: NOT_DELIVERED})
        await self.delay(src, dst)
        try:
            body = await read_body(request)
        except TooLarge as exc:
            return too_large(exc)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        path = "/" + rest + (f"?{request.url.query}" if request.url.query else "")
        state = self.regions[dst]
        url = state.url
        self.inflight[url] = self.inflight.get(url, 0) + 1
        try:
            async with self._session().request(request.method, url + path, data=body, headers=headers) as resp:
                content, status, resp_headers = await resp.read(), resp.status, resp.headers
        except aiohttp.ClientConnectorError as exc:
            return JSONResponse({"error": "link_down", "message": f"{dst}: {type(exc).__name__}"}, status_code=502,
                                headers={LINK_HEADER: NOT_DELIVERED})
        except (TimeoutError, aiohttp.ClientError) as exc:
            # Sent, answer lost: the region may have executed it.
            return JSONResponse({"error": "link_broken", "message": f"{dst}: {type(exc).__name__}"}, status_code=502)
        finally:
            self.inflight[url] -= 1
        if not rest.startswith("health/"):  # a region's probes of its peers are health checks, not requests
            state.answers, state.answers_5xx = state.answers + 1, state.answers_5xx + (status >= 500)
        if (extra := self.slow.get(frozenset((src, dst)), 0.0)) > 0 and path.startswith("/v1/"):
            await asyncio.sleep(extra)  # executed there; the answer is late
        out = {k: v for k, v in resp_headers.items() if k.lower() not in HOP_HEADERS}
        return Response(content, status_code=status, headers=out)

    async def set_slow(self, request: Request) -> JSONResponse:
        """``POST /_meridian/slow {"a", "b", "seconds"}``: answers on the link a<->b arrive ``seconds`` late."""
        try:
            data = json.loads(await read_body(request) or b"{}")
            a, b, seconds = str(data["a"]), str(data["b"]), float(data.get("seconds", 0))
        except (TooLarge, ValueError, KeyError, TypeError) as exc:
            return JSONResponse({"error": "bad_request", "message": f"send {{'a', 'b', 'seconds'}} ({exc})"}, status_code=400)
        if a not in self.regions or b not in self.regions or a == b or not 0 <= seconds <= 60:
            return JSONResponse({"error": "bad_request", "message": "two different regions of this run, 0-60 seconds"}, status_code=400)
        if seconds:
            self.slow[frozenset((a, b))] = seconds
        else:
            self.slow.pop(frozenset((a, b)), None)
        return JSONResponse({"a": a, "b": b, "seconds": seconds})

    def status(self) -> dict[str, Any]:
        return {
            r: {"url": s.url, "dial": s.dial, "healthy": s.healthy, "since": s.changed_at, "requests": s.requests, "errors": s.errors,
                "answers": s.answers, "answers_5xx": s.answers_5xx, "inflight": self.inflight.get(s.url, 0)}
            for r, s in self.regions.items()
        }

    def app(self, control_routes: list[Route]) -> Starlette:
        routes = [
            *(Route(r.path, self.guarded(r.endpoint), methods=r.methods) for r in control_routes),
            Route("/_meridian/slow", self.guarded(self.set_slow), methods=["POST"]),
            Route("/_meridian/{rest:path}", self.guarded(self.no_such_control), methods=["GET", "POST", "PUT", "DELETE", "PATCH"]),
            Route("/_link/{secret}/{src}/{dst}/{rest:path}", self.link, methods=["GET", "POST", "PUT", "DELETE"]),
            Route("/{path:path}", self.proxy, methods=["GET", "POST", "PUT", "DELETE", "PATCH"]),
        ]
        @contextlib.asynccontextmanager
        async def lifespan(_: Starlette) -> AsyncIterator[None]:
            task = asyncio.create_task(self.check_loop())
            yield
            task.cancel()
            await self.http.aclose()
            if self._aio is not None:
                await self._aio.close()

        return Starlette(routes=routes, lifespan=lifespan)
