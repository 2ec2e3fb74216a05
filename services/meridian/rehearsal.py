"""REHEARSAL FAULT: a release that fails a share of its requests on purpose.

A bad build cannot be rehearsed with a good one. On the local run, ``meridian rollout --local
--inject-fault 5xx=RATE`` starts the new release with ``MERIDIAN_FAULT_5XX=RATE`` (read by
:class:`meridian.settings.Settings`); this middleware then answers that share of the requests with
500 and the error envelope (``rehearsal_fault``), before the request reaches any route, so nothing is
executed or written. Health checks (``/health/...``) are never failed: a build that passes its health
checks and fails its users is exactly what the region's 5xx-rate alarm, and the rollout that watches
it, must catch. The variable is never set by the Pulumi program: on AWS the share is 0 and the
middleware is not installed.
"""

from __future__ import annotations

import random
from typing import Any

__all__ = ["FAULT_CODE", "FAULT_HEADER", "RehearsalFault"]

FAULT_CODE = "rehearsal_fault"
#: Marks an answer failed on purpose, so that a report can tell it from a real error.
FAULT_HEADER = "X-Meridian-Fault"


class RehearsalFault:
    """Pure ASGI middleware: answers ``share`` of the non-health requests 500 ``rehearsal_fault``."""

    def __init__(self, app: Any, *, share: float, rng: random.Random | None = None) -> None:
        self.app, self.share, self.rng = app, share, rng or random.Random()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("path", "").startswith("/health/") or self.rng.random() >= self.share:
            await self.app(scope, receive, send)
            return
        more = True
        while more:  # read the request to its end, so that the connection stays usable
            message = await receive()
            if message["type"] != "http.request":
                return
            more = message.get("more_body", False)
        content = (b'{"error": "' + FAULT_CODE.encode() + b'", "message": "rehearsal fault: this release fails '
                   + f"{self.share:.0%}".encode() + b' of requests on purpose (MERIDIAN_FAULT_5XX)"}')
        await send({"type": "http.response.start", "status": 500,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(content)).encode()),
                                (FAULT_HEADER.lower().encode(), b"rehearsal")]})
        await send({"type": "http.response.body", "body": content})
