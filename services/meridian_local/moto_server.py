"""The embedded AWS: a real moto server process on a free loopback port."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(log_path: Path, *, port: int | None = None, timeout: float = 20.0, plain: bool = False) -> tuple[subprocess.Popen[bytes], str]:
    """Start moto's server (its request log goes to ``log_path``, not the terminal): through
    :mod:`meridian_local.moto_main`, which numbers stream records as DynamoDB does, or ``plain`` moto."""
    port = port or free_port()
    log = open(log_path, "ab")  # noqa: SIM115 - owned by the child for its lifetime
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server" if plain else "meridian_local.moto_main", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto server exited with {proc.returncode}; see {log_path}")
        try:
            httpx.get(f"{endpoint}/moto-api/", timeout=0.5)
            return proc, endpoint
        except httpx.HTTPError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"moto server did not answer on {endpoint} within {timeout:.0f} s; see {log_path}")
