"""Inter-region round-trip times, used to pick the nearest region and, locally, to inject delay.

Medians in milliseconds between AWS regions, rounded, as published by public inter-region latency
dashboards (CloudPing's AWS inter-region matrix, 50th percentile, and AWS Network Manager's
Infrastructure Performance pages). Pairs not listed are estimated from the continents (documented in
docs/local.md); a region to itself is 1 ms (within-region, cross-AZ).
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["nearest", "rtt_ms"]

_RTT: dict[frozenset[str], float] = {
    frozenset(p): ms
    for p, ms in {
        ("us-east-1", "us-east-2"): 12, ("us-east-1", "us-west-2"): 68, ("us-east-2", "us-west-2"): 50,
        ("us-east-1", "eu-west-1"): 68, ("us-east-1", "eu-west-2"): 76, ("us-east-1", "eu-central-1"): 90,
        ("us-east-1", "eu-west-3"): 80, ("us-east-1", "ap-southeast-1"): 215, ("us-east-1", "ap-northeast-1"): 145,
        ("us-west-2", "eu-west-1"): 120, ("us-west-2", "eu-central-1"): 140, ("us-west-2", "ap-southeast-1"): 165,
        ("us-west-2", "ap-northeast-1"): 98, ("us-east-2", "eu-west-1"): 80, ("us-east-2", "eu-central-1"): 100,
        ("eu-west-1", "eu-west-2"): 11, ("eu-west-1", "eu-central-1"): 25, ("eu-west-1", "eu-west-3"): 18,
        ("eu-west-2", "eu-central-1"): 15, ("eu-west-2", "eu-west-3"): 9, ("eu-west-3", "eu-central-1"): 10,
        ("eu-west-1", "ap-southeast-1"): 175, ("eu-central-1", "ap-southeast-1"): 160,
        ("eu-west-1", "ap-northeast-1"): 200, ("eu-central-1", "ap-northeast-1"): 225,
        ("ap-southeast-1", "ap-northeast-1"): 70, ("ap-northeast-1", "ap-northeast-2"): 33,
        ("ap-northeast-1", "ap-northeast-3"): 9, ("ap-southeast-1", "ap-southeast-2"): 92,
    }.items()
}
_CONTINENT_RTT = {("us", "us"): 50, ("eu", "eu"): 20, ("ap", "ap"): 80, ("us", "eu"): 90, ("us", "ap"): 170, ("eu", "ap"): 190}


def _continent(region: str) -> str:
    prefix = region.split("-", 1)[0]
    return {"ca": "us", "sa": "us", "mx": "us", "me": "eu", "af": "eu", "il": "eu"}.get(prefix, prefix)


def rtt_ms(a: str, b: str) -> float:
    """Median round trip between two regions (a client in region ``a`` reaches ``b``)."""
    if a == b:
        return 1.0
    known = _RTT.get(frozenset((a, b)))
    if known is not None:
        return known
    first, second = sorted((_continent(a), _continent(b)))
    return float(_CONTINENT_RTT.get((first, second), 150))


def nearest(origin: str, candidates: Iterable[str]) -> list[str]:
    """Candidates ordered nearest-first from ``origin`` (ties by name, so the order is stable)."""
    return sorted(candidates, key=lambda r: (rtt_ms(origin, r), r))
