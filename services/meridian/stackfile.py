"""A stack's configuration exactly as the Pulumi CLI hands it to the program, without the CLI.

`pulumi up` does not give the program the YAML it read: it merges the project's declared config
(``Pulumi.yaml``: types and defaults) with the stack file (``Pulumi.<stack>.yaml``), checks each value
against its declared type, and passes every value as a **string** (arrays and objects JSON-encoded,
booleans ``true``/``false``), secure values marked secret. ``meridian plan``, the tests and the local run
build that same map here and run ``infra/__main__.py`` with it, so a program that misreads its config
(``get_object`` on a string) fails offline exactly as it fails under ``pulumi preview``.

Pure Python: no Pulumi import (the CLI's other commands use it too).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["SECRET_PLACEHOLDER", "StackConfig", "StackConfigError", "encode", "read_stack", "stack_config", "typed"]

#: What a ``secure:`` value reads as offline (it cannot be decrypted without the stack's secrets provider).
SECRET_PLACEHOLDER = "[secret]"
_TYPES = ("string", "integer", "boolean", "array", "object")


class StackConfigError(ValueError):
    """A stack file the Pulumi CLI would refuse; the message is one line."""


@dataclass(frozen=True)
class Declared:
    type: str | None
    default: Any = None
    has_default: bool = False


@dataclass(frozen=True)
class StackConfig:
    project: str
    stack: str
    #: full key (``meridian:regions``) -> the string the program receives
    values: dict[str, str] = field(default_factory=dict)
    secret_keys: frozenset[str] = frozenset()

    def namespace(self, namespace: str) -> dict[str, str]:
        """The values of one namespace, keys without it (``regions``)."""
        prefix = f"{namespace}:"
        return {k[len(prefix) :]: v for k, v in self.values.items() if k.startswith(prefix)}


def encode(value: Any) -> str:
    """One config value as the CLI passes it to a program."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value, separators=(",", ":"))


def typed(key: str, kind: str, raw: str) -> Any:
    """Read one CLI string by its declared type, as ``pulumi.Config.get_<type>`` does.

    Raises :class:`StackConfigError` naming the key and the type it needs.
    """
    if kind == "string":
        return raw
    if kind == "integer":
        if re.fullmatch(r"-?\d+", raw.strip()):
            return int(raw)
        raise StackConfigError(f"{key} must be a whole number (type integer), got {raw!r}")
    if kind == "boolean":
        if raw in ("true", "false"):
            return raw == "true"
        raise StackConfigError(f"{key} must be true or false (type boolean), got {raw!r}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = None
    want = list if kind == "array" else dict
    if not isinstance(value, want):
        example = "[us-east-1, eu-west-1]" if kind == "array" else "{eu: [eu-west-1, eu-central-1]}"
        raise StackConfigError(f"{key} must be a YAML {'list' if kind == 'array' else 'map'} (type {kind}), e.g. {example}; got {raw!r}")
    return value


def _declarations(project_doc: Mapping[str, Any], project: str) -> tuple[dict[str, Declared], dict[str, Any]]:
    """Typed declarations (``regions: {type: array}``) and plain project values (``pulumi:...: [aws]``)."""
    declared: dict[str, Declared] = {}
    plain: dict[str, Any] = {}
    for key, spec in (project_doc.get("config") or {}).items():
        full = str(key) if ":" in str(key) else f"{project}:{key}"
        if isinstance(spec, Mapping) and ("type" in spec or "default" in spec or "description" in spec):
            kind = spec.get("type")
            if kind is not None and kind not in _TYPES:
                raise StackConfigError(f"Pulumi.yaml: {full} has type {kind!r}; Pulumi knows {', '.join(_TYPES)}")
            declared[full] = Declared(type=kind, default=spec.get("default"), has_default="default" in spec)
        elif isinstance(spec, Mapping) and "value" in spec:
            plain[full] = spec["value"]
        else:
            plain[full] = spec
    return declared, plain


def _json_is(value: Any, kind: type) -> bool:
    if not isinstance(value, str):
        return False
    try:
        return isinstance(json.loads(value), kind)
    except json.JSONDecodeError:
        return False


def _check_type(full: str, kind: str | None, value: Any, stack: str) -> None:
    ok = {
        None: True,
        "string": isinstance(value, str | int | float) and not isinstance(value, bool),
        "integer": (isinstance(value, int) and not isinstance(value, bool))
        or (isinstance(value, str) and re.fullmatch(r"-?\d+", value) is not None),
        "boolean": isinstance(value, bool) or value in ("true", "false"),
        # `pulumi config set` without --path stores arrays and objects as JSON strings
        "array": isinstance(value, list) or _json_is(value, list),
        "object": isinstance(value, Mapping) or _json_is(value, dict),
    }[kind]
    if not ok:
        raise StackConfigError(f"Stack '{stack}' with configuration key '{full}' must be of type '{kind}' (got {value!r})")


def stack_config(
    project: str, stack: str, config: Mapping[str, Any], *, project_doc: Mapping[str, Any] | None = None
) -> StackConfig:
    """The CLI's config map for ``config`` (stack-file keys, ``ns:key`` or bare keys of the project)."""
    declared, plain = _declarations(project_doc or {}, project)
    merged: dict[str, Any] = dict(plain)
    secrets: set[str] = set()
    for full, spec in declared.items():
        if spec.has_default:
            merged[full] = spec.default
    for key, value in config.items():
        full = str(key) if ":" in str(key) else f"{project}:{key}"
        if isinstance(value, Mapping) and set(value) == {"secure"}:
            secrets.add(full)
            merged[full] = SECRET_PLACEHOLDER
            continue
        if full in declared:
            _check_type(full, declared[full].type, value, stack)
        merged[full] = value
    missing = sorted(k for k, spec in declared.items() if not spec.has_default and k not in merged)
    if missing:
        raise StackConfigError(f"Stack '{stack}' is missing configuration value '{missing[0]}'; set it in Pulumi.{stack}.yaml")
    return StackConfig(
        project=project,
        stack=stack,
        values={k: encode(v) for k, v in merged.items() if v is not None},
        secret_keys=frozenset(secrets),
    )


def _yaml(path: Path) -> Any:
    import yaml

    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise StackConfigError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None


def read_stack(path: str | Path, *, project_file: str | Path | None = None) -> StackConfig:
    """``Pulumi.<stack>.yaml`` (and the ``Pulumi.yaml`` beside it) as the CLI hands them to the program."""
    path = Path(path)
    if not path.is_file():
        raise StackConfigError(f"stack file {path} does not exist; pass --config Pulumi.<stack>.yaml or --stack NAME")
    match = re.fullmatch(r"Pulumi\.(.+)\.ya?ml", path.name)
    if not match:
        raise StackConfigError(f"{path.name} is not a stack file; stack files are named Pulumi.<stack>.yaml")
    project_path = Path(project_file) if project_file else path.parent / "Pulumi.yaml"
    project_doc = _yaml(project_path) if project_path.is_file() else {}
    if not isinstance(project_doc, Mapping):
        raise StackConfigError(f"{project_path} must be a YAML map")
    doc = _yaml(path)
    raw = doc.get("config", {}) if isinstance(doc, Mapping) else None
    if not isinstance(raw, Mapping):
        raise StackConfigError(f"{path}: 'config' must be a map of namespace:key -> value")
    project = str(project_doc.get("name", "meridian"))
    return stack_config(project, match.group(1), raw, project_doc=project_doc)
