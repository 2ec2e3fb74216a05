"""Refuse, before it is sent, any request that breaks a constraint of AWS's own service model.

moto accepts requests that AWS refuses, so a local run can pass with calls that `pulumi up` would see
fail. botocore validates every request against the service model (types, required members, ``min``), but
not the rest of what the model says: ``max`` lengths and values, list and map sizes, ``pattern`` and
``enum``. :func:`check_params` walks an operation's input shape and reports those; :func:`validate_requests`
hooks it into a client's ``before-parameter-build`` event, so that every call is checked before botocore
serializes it and nothing that fails reaches the endpoint.

The service model does not hold every documented limit. CloudWatch's ``MetricDataQuery.Id``, for one, has
only a length (1-255) in the model: "the first character must be a lowercase letter" and "at most 10
metrics per alarm" are in the API reference only. Those limits are checked on the program itself, by the
policy rules (``policy.rules``: ``alarm-metric-math`` and the other AWS-limit rules), which also run
without any local emulator.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from functools import cache
from typing import Any

from botocore.exceptions import ParamValidationError
from botocore.model import ListShape, MapShape, OperationModel, Shape, StructureShape

__all__ = ["ModelConstraintError", "check_params", "skipped_patterns", "validate", "validate_requests"]

HANDLER_ID = "meridian-model-constraints"
NUMERIC = ("integer", "long", "float", "double")
_SKIPPED: set[str] = set()


class ModelConstraintError(ParamValidationError):  # type: ignore[misc]  # botocore ships no types
    """A request breaks the service model in a way botocore itself does not check."""

    fmt = "{service} {operation}: {report}"


@cache
def _compiled(pattern: str) -> re.Pattern[str] | None:
    """``pattern`` as Python compiles it, or None when Python cannot express it faithfully.

    The models' patterns are Java regular expressions. Most compile unchanged; ``re.ASCII`` gives ``\\w``,
    ``\\d`` and ``\\s`` Java's ASCII meaning. Some do not: ``\\p{L}`` and other Unicode classes, ``\\Q...\\E``,
    ``\\z``, and character-class intersections (``[a-z&&[^b]]``, which Python would read as literal
    characters and only warn about). Those patterns are skipped, never guessed: the request goes on, and
    :func:`skipped_patterns` lists what was not checked.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # "possible set intersection/union": Java syntax
        try:
            return re.compile(pattern, re.ASCII)
        except (re.error, FutureWarning):
            _SKIPPED.add(pattern)
            return None


def skipped_patterns() -> frozenset[str]:
    """The model patterns met so far that Python's ``re`` cannot check (see :func:`_compiled`)."""
    return frozenset(_SKIPPED)


def _show(value: Any, shape: Shape, sensitive: bool) -> str:
    if sensitive or shape.metadata.get("sensitive"):
        return "(sensitive value)"
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:60]}...{text[-12:]} ({len(value)} characters)"


def _size(path: str, shape: Shape, count: int, what: str, problems: list[str]) -> None:
    low, high = shape.metadata.get("min"), shape.metadata.get("max")
    if low is not None and count < low:
        problems.append(f"{path} has {count} {what}, fewer than the minimum {low}")
    if high is not None and count > high:
        problems.append(f"{path} has {count} {what}, more than the maximum {high}")


def _string(path: str, shape: Shape, value: str, sensitive: bool, problems: list[str]) -> None:
    _size(path, shape, len(value), "characters", problems)
    enum = shape.metadata.get("enum")
    if enum and value not in enum:
        shown = ", ".join(enum) if len(enum) <= 12 else ", ".join(enum[:12]) + f" ... ({len(enum)} values)"
        problems.append(f"{path} {_show(value, shape, sensitive)} is not one of {shown}")
    pattern = shape.metadata.get("pattern")
    if pattern:
        compiled = _compiled(pattern)
        # A whole-value match: AWS refuses 'my function' as a FunctionName although its pattern has no
        # anchors, so the service matches the entire value (Java's Pattern.matches), not a substring.
        if compiled is not None and not compiled.fullmatch(value):
            problems.append(f"{path} {_show(value, shape, sensitive)} does not match {pattern}")


def _walk(shape: Shape, value: Any, path: str, sensitive: bool, problems: list[str]) -> None:
    """Append to ``problems`` every constraint ``value`` breaks. Values of the wrong type are left to botocore."""
    sensitive = sensitive or bool(shape.metadata.get("sensitive"))
    if isinstance(shape, StructureShape):
        if isinstance(value, Mapping):
            for name, member in value.items():
                if name in shape.members:
                    _walk(shape.members[name], member, f"{path}.{name}" if path else name, sensitive, problems)
    elif isinstance(shape, ListShape):
        if isinstance(value, list | tuple):
            _size(path, shape, len(value), "items", problems)
            for i, item in enumerate(value):
                _walk(shape.member, item, f"{path}[{i}]", sensitive, problems)
    elif isinstance(shape, MapShape):
        if isinstance(value, Mapping):
            _size(path, shape, len(value), "entries", problems)
            for key, item in value.items():
                _walk(shape.key, key, f"{path} key", sensitive, problems)
                _walk(shape.value, item, f"{path}[{key}]", sensitive, problems)
    elif shape.type_name == "string":
        if isinstance(value, str):
            _string(path, shape, value, sensitive, problems)
    elif shape.type_name in NUMERIC:
        if isinstance(value, int | float) and not isinstance(value, bool):
            low, high = shape.metadata.get("min"), shape.metadata.get("max")
            if low is not None and value < low:
                problems.append(f"{path} {value} is below the minimum {low}")
            if high is not None and value > high:
                problems.append(f"{path} {value} is above the maximum {high}")
    elif shape.type_name == "blob" and isinstance(value, bytes | bytearray):
        _size(path, shape, len(value), "bytes", problems)


def check_params(operation: OperationModel, params: Mapping[str, Any]) -> list[str]:
    """Every constraint of ``operation``'s input shape that ``params`` breaks, one line each (empty: none)."""
    problems: list[str] = []
    if operation.input_shape is not None:
        _walk(operation.input_shape, params, "", False, problems)
    return problems


def validate(operation: OperationModel, params: Mapping[str, Any]) -> None:
    """Raise :class:`ModelConstraintError` naming service, operation, parameter and constraint, if any is broken."""
    problems = check_params(operation, params)
    if problems:
        raise ModelConstraintError(
            service=operation.service_model.service_name, operation=operation.name, report="; ".join(problems)
        )


def _before_parameter_build(params: Mapping[str, Any], model: OperationModel, **_: Any) -> None:
    validate(model, params)


def validate_requests(client: Any) -> Any:
    """Check every request ``client`` makes against its service model before it is sent; returns ``client``.

    ``before-parameter-build`` fires with the caller's parameters before botocore's own validation and
    serialization, so a refused request never reaches the endpoint (nor a ``Stubber``).
    """
    client.meta.events.register("before-parameter-build.*.*", _before_parameter_build, unique_id=HANDLER_ID)
    return client
