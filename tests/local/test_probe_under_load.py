"""The peer-probe flake, 20 times in a row beside a CPU hog (about 35 s of all cores): a US client creating an EU user is forwarded into the EU zone every time, never refused with
503 zone_unavailable because slow probe answers on a busy machine marked the healthy EU regions down.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path

import httpx
import pytest
from stacks import THREE_REGIONS

from meridian_cli.local_cmds import start_local, stop_local

pytestmark = pytest.mark.slow

STACK = THREE_REGIONS


def hog(seconds: float) -> None:
    end = time.time() + seconds
    while time.time() < end:
        pass


def test_us_client_creating_eu_user_20_times_beside_a_cpu_hog(tmp_path: Path) -> None:
    (tmp_path / "Pulumi.e2e.yaml").write_text(STACK)
    state = start_local(str(tmp_path / "Pulumi.e2e.yaml"), tmp_path / "state", time_scale=0.1, latency_scale=0, lag=0.2)
    hogs = [multiprocessing.Process(target=hog, args=(35,)) for _ in range((os.cpu_count() or 2) + 1)]
    for h in hogs:
        h.start()
    answers = []
    try:
        time.sleep(3)  # the probes run under the hog before the first request
        for _ in range(20):
            r = httpx.post(state["edge"] + "/v1/users", json={"email": f"p{time.time_ns()}@example.com", "name": "P", "residency": "eu"},
                           headers={"X-Meridian-Client-Region": "us-east-1"}, timeout=20)
            answers.append((r.status_code, r.json().get("home_region") or r.json().get("error")))
            time.sleep(1.0)
    finally:
        for h in hogs:
            h.terminate()
        assert stop_local(tmp_path / "state") == []
    assert answers == [(201, "eu-west-1")] * 20, answers
