"""`meridian keys rotate` and `meridian keys show`: the stack's key rings (meridian.rotation).

``rotate`` reads the stack's secret (``<project>-<stack>/session-keys``) in its primary region with the
usual AWS credential chain, puts a new key with a dated key id at the head of each ring it rotates, keeps
the previous one, and writes the result as a new secret version; Secrets Manager replicates it to every
region, and each region's service re-reads it within its refresh period (meridian.keysource). The new key
signs only once every region has read it; whatever the previous key signed keeps verifying.

``--local`` does the same against a local run's embedded AWS (``.meridian/local/state.json``), where the
secret is one copy per region: the command copies the new version to each (the emulated replication).

``show`` prints each region's copy: the key ids of each ring and their age (never a secret).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from meridian.rotation import (
    ACTIVATION_SECONDS,
    ALL_SIGNING,
    DEFAULT_REFRESH_SECONDS,
    RING_FIELDS,
    KeyTooYoung,
    Rotation,
    RotationError,
    issued_at,
    plan_rotation,
    read_rings,
    rotate_secret,
    secret_name,
)
from meridian.topology import Topology, find_stack_file, load_stack_file
from meridian_cli.commands import REGISTRY
from meridian_cli.main import UsageError, add_stack_options, resolve_topology

#: A placeholder secret for a dry run without AWS access: shows the shape of the change, nothing else.
_PLACEHOLDER_RING = "current=" + "x" * 64


def _client(service: str, region: str, endpoint: str | None = None) -> Any:
    """A boto3 client (tests replace this function with one that returns stubbed clients)."""
    import boto3

    if endpoint:
        return boto3.client(service, region_name=region, endpoint_url=endpoint,
                            aws_access_key_id="meridian-local", aws_secret_access_key="meridian-local")
    return boto3.client(service, region_name=region)


def _problem(exc: Exception, *, name: str, region: str, action: str) -> str:
    """One line for a Secrets Manager failure: what is wrong and what to do."""
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError, NoRegionError

    if isinstance(exc, NoCredentialsError):
        return f"no AWS credentials to {action} secret {name} in {region}; set AWS_PROFILE or run `aws sso login`"
    if isinstance(exc, EndpointConnectionError | NoRegionError):
        return f"cannot reach Secrets Manager in {region} ({exc})"
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        if code == "ResourceNotFoundException":
            return (f"secret {name} not found in {region}: is the stack deployed (`pulumi up`), and is this the right stack? "
                    f"(the secret is created by infra/program.py)")
        if code in ("AccessDeniedException", "AccessDenied", "UnrecognizedClientException", "ExpiredTokenException"):
            return (f"AWS refused to {action} secret {name} in {region} ({code}); your identity needs secretsmanager:GetSecretValue"
                    + (" and secretsmanager:PutSecretValue" if action == "rotate" else "") + " on it")
        return f"Secrets Manager in {region} refused to {action} secret {name}: {code or exc}"
    return f"Secrets Manager in {region}: {type(exc).__name__}: {exc}"


def _rings(args: argparse.Namespace) -> tuple[str, ...]:
    return ALL_SIGNING if args.ring == "all" else (args.ring,)


def _print_rotation(rotation: Rotation, *, name: str, region: str, now: float) -> None:
    print(f"secret {name} (primary region {region})")
    for change in rotation.changes:
        print(f"  {change.describe()}")
    signs_from = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(now + ACTIVATION_SECONDS))
    print(f"every region reads the new version within {DEFAULT_REFRESH_SECONDS} s (MERIDIAN_KEYS_REFRESH_SECONDS); "
          f"the new keys sign from about {signs_from}; the previous keys keep verifying until the next rotation")


def cmd_rotate(args: argparse.Namespace) -> int:
    if args.local:
        return _rotate_local(args)
    topology = resolve_topology(args)
    name, region = secret_name(topology.project, topology.stack), topology.secret_region
    from botocore.exceptions import BotoCoreError, ClientError

    now = time.time()
    try:
        rotation = rotate_secret(_client("secretsmanager", region), name, _rings(args), now=now, force=args.force, dry_run=args.dry_run)
    except KeyTooYoung as exc:
        print(f"meridian: refused: {exc}", file=sys.stderr)
        return 1
    except RotationError as exc:
        raise UsageError(f"secret {name} in {region}: {exc}") from None
    except (BotoCoreError, ClientError) as exc:
        problem = _problem(exc, name=name, region=region, action="rotate")
        if not args.dry_run:
            raise UsageError(problem) from None
        print(f"note: {problem}")
        print("showing the change against a placeholder secret (key ids only)")
        placeholder = json.dumps({f: _PLACEHOLDER_RING for f in RING_FIELDS.values()})
        rotation = plan_rotation(placeholder, _rings(args), now=now, force=True)
    _print_rotation(rotation, name=name, region=region, now=now)
    if args.dry_run:
        print("dry run: nothing changed")
        return 0
    others = [r for r in topology.regions if r != region]
    print(f"written: version {rotation.version_id}; Secrets Manager replicates it to {', '.join(others) or 'no other region'}")
    return 0


def _local_state(args: argparse.Namespace) -> tuple[dict[str, Any], Topology]:
    from meridian_local.state import DEFAULT_DIR, read_state

    state_dir = Path(args.state_dir) if args.state_dir else DEFAULT_DIR
    state = read_state(state_dir)
    if state is None:
        raise UsageError(f"no local run in {state_dir}; start one with `meridian up --local`")
    if not state.get("aws_endpoint"):
        raise UsageError(f"the local run in {state_dir} records no aws_endpoint; restart it with `meridian up --local`")
    topology = resolve_topology(args) if args.config else load_stack_file(find_stack_file(str(state["stack"]), Path.cwd()))
    if topology.stack != state["stack"]:
        raise UsageError(f"the local run is stack {state['stack']}, not {topology.stack}")
    return state, topology


def _rotate_local(args: argparse.Namespace) -> int:
    state, topology = _local_state(args)
    endpoint = str(state["aws_endpoint"])
    name, region = secret_name(topology.project, topology.stack), topology.secret_region
    from botocore.exceptions import BotoCoreError, ClientError

    now = time.time()
    try:
        rotation = rotate_secret(_client("secretsmanager", region, endpoint), name, _rings(args), now=now, force=args.force,
                                 dry_run=args.dry_run)
    except KeyTooYoung as exc:
        print(f"meridian: refused: {exc}", file=sys.stderr)
        return 1
    except RotationError as exc:
        raise UsageError(f"secret {name} in the local run: {exc}") from None
    except (BotoCoreError, ClientError) as exc:
        raise UsageError(f"local run at {endpoint}: " + _problem(exc, name=name, region=region, action="rotate")) from None
    _print_rotation(rotation, name=name, region=region, now=now)
    if args.dry_run:
        print("dry run: nothing changed")
        return 0
    copied = []
    for other in topology.regions:
        if other == region:
            continue
        try:
            _client("secretsmanager", other, endpoint).put_secret_value(SecretId=name, SecretString=rotation.secret_string)
        except (BotoCoreError, ClientError) as exc:
            raise UsageError(f"local run: copying the new version to {other} failed: "
                             + _problem(exc, name=name, region=other, action="rotate")) from None
        copied.append(other)
    print(f"written in the local run ({endpoint}); emulated replication copied it to {', '.join(copied) or 'no other region'}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    """Each region's copy of the secret: key ids and their age, never a secret."""
    endpoint: str | None = None
    if args.local:
        state, topology = _local_state(args)
        endpoint = str(state["aws_endpoint"])
    else:
        topology = resolve_topology(args)
    name = secret_name(topology.project, topology.stack)
    from botocore.exceptions import BotoCoreError, ClientError

    now = time.time()
    rows: list[dict[str, Any]] = []
    for region in topology.regions:
        try:
            text = _client("secretsmanager", region, endpoint).get_secret_value(SecretId=name)["SecretString"]
            rings = read_rings(text)
        except (BotoCoreError, ClientError) as exc:
            raise UsageError(_problem(exc, name=name, region=region, action="read")) from None
        except RotationError as exc:
            raise UsageError(f"secret {name} in {region}: {exc}") from None
        row: dict[str, Any] = {"region": region}
        for ring_name, ring in rings.items():
            row[ring_name] = [{"kid": kid, "age_hours": None if issued_at(kid) is None else round((now - (issued_at(kid) or now)) / 3600, 1)}
                              for kid, _ in ring.keys]
        rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"secret {name} (primary {topology.secret_region}); key ids, current first, with their age")
    for row in rows:
        print(f"{row['region']}:")
        for ring_name in RING_FIELDS:
            keys = ", ".join(f"{k['kid']}" + (f" ({k['age_hours']} h)" if k["age_hours"] is not None else "") for k in row[ring_name])
            print(f"  {ring_name}: {keys}")
    current = {tuple(k["kid"] for k in row["session"]) for row in rows}
    if len(current) > 1:
        print("note: the regions' copies differ: replication is still under way, or a replica failed (aws secretsmanager describe-secret)")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    text = "the stack's key rings: rotate them, or show each region's key ids"
    keys = sub.add_parser("keys", help=text, description=text)
    keys_sub = keys.add_subparsers(dest="keys_command", metavar="SUBCOMMAND")
    text = ("rotate key rings in the stack's secret: a new dated key signs, the previous one stays accepted; "
            "every region picks it up without a redeploy")
    p = keys_sub.add_parser("rotate", help=text, description=text)
    add_stack_options(p)
    p.add_argument("--ring", choices=[*RING_FIELDS, "all"], default="all",
                   help="which ring (default all: session, peer and users; the operator credential only when named)")
    p.add_argument("--dry-run", action="store_true", help="show the new key ids, change nothing")
    p.add_argument("--force", action="store_true",
                   help="rotate even if the current key is younger than a token's lifetime (a leaked key: its tokens then stop verifying)")
    p.add_argument("--local", action="store_true", help="rotate the local run's secret (its embedded AWS)")
    p.add_argument("--state-dir", help=argparse.SUPPRESS)
    p.set_defaults(handler=cmd_rotate)
    text = "each region's copy of the stack's secret: the key ids of each ring and their age (never a secret)"
    p = keys_sub.add_parser("show", help=text, description=text)
    add_stack_options(p)
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p.add_argument("--local", action="store_true", help="read the local run's secret (its embedded AWS)")
    p.add_argument("--state-dir", help=argparse.SUPPRESS)
    p.set_defaults(handler=cmd_show)


REGISTRY.append(register)
