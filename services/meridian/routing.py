"""The routing decision of one request, as a pure function of what this region knows.

Reads are served locally when this region stores the user's zone and the session token is satisfied;
writes run in the user's home region, or — when it is down — in the nearest healthy region of the
same zone (a failover write), never outside the zone. The reason is part of the result, for logs and
tests.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from meridian.geo import nearest

__all__ = ["Decision", "decide"]

Action = Literal["local", "forward", "failover", "unavailable"]
Kind = Literal["read", "write"]


@dataclass(frozen=True)
class Decision:
    action: Action
    region: str | None
    reason: str


def decide(
    *,
    kind: Kind,
    here: str,
    home: str,
    zone_regions: Sequence[str],
    healthy: Mapping[str, bool],
    token_region: str | None = None,
    token_satisfied: bool = True,
) -> Decision:
    """Where a request for a user (home region ``home``, zone ``zone_regions``) arriving ``here`` runs.

    ``healthy`` is this region's view of the others (a region missing from it counts as healthy);
    ``here`` is always taken as healthy since it is serving the request.
    """
    def ok(region: str) -> bool:
        return region == here or healthy.get(region, True)

    in_zone = here in zone_regions
    if kind == "read":
        if in_zone and token_satisfied:
            return Decision("local", here, "this region stores the user's zone and has the session's writes")
        if token_region and not token_satisfied and token_region in zone_regions and ok(token_region):
            return Decision("forward", token_region, "local replica has not caught up with the session; read where it wrote")
        if in_zone and token_satisfied:
            return Decision("local", here, "serving the local replica")
        if token_region and not token_satisfied:
            # Read-your-writes is a promise: never answer from a replica that lacks the session's writes.
            return Decision("unavailable", None, f"the session's writes are in {token_region}, unreachable from here; retry")
        # fall through: read outside the zone goes where writes go
    if ok(home):
        if home == here:
            return Decision("local", here, "this is the user's home region")
        return Decision("forward", home, "the user's home region executes" + (" writes" if kind == "write" else " reads outside the zone"))
    for region in nearest(home, [r for r in zone_regions if r != home]):
        if ok(region):
            action: Action = "local" if region == here and kind == "read" else "failover"
            return Decision(action, region, f"home region {home} is unhealthy; nearest healthy region of the zone")
    return Decision("unavailable", None, "no healthy region in the user's residency zone")
