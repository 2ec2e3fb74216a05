"""Where a local run keeps its state, and the client of its control API."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import httpx

DEFAULT_DIR = Path(".meridian") / "local"


class NotRunning(RuntimeError):
    """No local run is up."""


def state_file(state_dir: Path) -> Path:
    return state_dir / "state.json"


def pid_alive(pid: int) -> bool:
    """True for a running process; a zombie (exited, not yet reaped by its parent) counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def read_state(state_dir: Path) -> dict[str, Any] | None:
    path = state_file(state_dir)
    if not path.is_file():
        return None
    try:
        state: dict[str, Any] = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    return state if pid_alive(int(state.get("pid", 0))) else None


def control(state_dir: Path, method: str, path: str, body: dict[str, Any] | None = None, timeout: float = 30.0) -> dict[str, Any]:
    state = read_state(state_dir)
    if state is None:
        raise NotRunning(f"no local run in {state_dir}; start one with `meridian up --local`")
    resp = httpx.request(method, f"{state['edge']}/_meridian/{path}", json=body, timeout=timeout)
    data: dict[str, Any] = resp.json()
    if resp.status_code >= 400:
        raise ValueError(data.get("message", resp.text))
    return data
