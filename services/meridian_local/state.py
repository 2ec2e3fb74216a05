"""Where a local run keeps its state, and the client of its control API.

The state folder is ``.meridian/local`` in the project root: the nearest folder, from the current one
upwards, that holds ``Pulumi.yaml`` (so ``meridian down`` run from ``services/`` finds the run started
at the root); outside any project, the current folder. Its ``state.json`` (mode 0600) carries the
run's control secret: every ``/_meridian/...`` call sends it as ``Authorization: Bearer <secret>``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import httpx

DEFAULT_DIR = Path(".meridian") / "local"
#: The header the control API reads: ``Authorization: Bearer <control_secret of state.json>``.
CONTROL_HEADER = "Authorization"


class NotRunning(RuntimeError):
    """No local run is up."""


def project_root(start: Path | None = None) -> Path:
    """The nearest folder from ``start`` (default: the current one) upwards that holds Pulumi.yaml; else ``start``."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "Pulumi.yaml").is_file():
            return folder
    return here


def resolve(state_dir: Path | None = None) -> Path:
    """The state folder: ``state_dir`` as given, except the default, which lives in the project root."""
    if state_dir is None or Path(state_dir) == DEFAULT_DIR:
        return project_root() / DEFAULT_DIR
    return Path(state_dir)


def state_file(state_dir: Path) -> Path:
    return resolve(state_dir) / "state.json"


def write_state(state_dir: Path, state: dict[str, Any]) -> None:
    """Written whole (a reader never sees half a file) and readable by its owner only: it holds the secret."""
    path = state_file(state_dir)
    tmp = path.with_name(f".state.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(json.dumps(state, indent=2))
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


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
    except (json.JSONDecodeError, OSError):
        return None
    return state if pid_alive(int(state.get("pid", 0))) else None


def control_headers(state: dict[str, Any]) -> dict[str, str]:
    secret = state.get("control_secret")
    return {CONTROL_HEADER: f"Bearer {secret}"} if secret else {}


def control(state_dir: Path, method: str, path: str, body: dict[str, Any] | None = None, timeout: float = 30.0) -> dict[str, Any]:
    state = read_state(state_dir)
    if state is None:
        raise NotRunning(f"no local run in {resolve(state_dir)}; start one with `meridian up --local`")
    resp = httpx.request(method, f"{state['edge']}/_meridian/{path}", json=body, timeout=timeout, headers=control_headers(state))
    try:
        data: dict[str, Any] = resp.json()
    except ValueError:
        data = {"message": resp.text}
    if resp.status_code >= 400:
        raise ValueError(data.get("message", resp.text))
    return data


class _Unreachable:
    """A failed region's DynamoDB in the local run: every call fails as an unreachable endpoint does."""

    def __init__(self, region: str) -> None:
        self.region = region

    def __getattr__(self, _name: str) -> Any:
        def call(**_kwargs: Any) -> Any:
            from botocore.exceptions import EndpointConnectionError

            raise EndpointConnectionError(endpoint_url=f"dynamodb.{self.region} (failed in the local run)")
        return call


def dynamodb_clients(state_dir: Path) -> Any:
    """region -> a DynamoDB client of the local run's embedded AWS in that region; a failed region's does not
    answer (a region lost with its storage: what the ownership handover must not write through)."""
    import boto3

    status = control(state_dir, "GET", "status")
    failed = {r for r, s in status["regions"].items() if s.get("state") == "failed"}
    endpoint = status["aws_endpoint"]

    def client(region: str) -> Any:
        if region in failed:
            return _Unreachable(region)
        return boto3.client("dynamodb", region_name=region, endpoint_url=endpoint,
                            aws_access_key_id="meridian-local", aws_secret_access_key="meridian-local")
    return client
