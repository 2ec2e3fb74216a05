"""The Lambdas' code package: exactly the modules the handlers import, as a byte-for-byte reproducible zip.

Pulumi hashes a path archive that is a ``.zip`` by the file's bytes (``Archive.EnsureHash`` in
pulumi/pulumi ``sdk/go/common/resource/archive``) and uploads those bytes as they are. So the zip must not
depend on the machine that builds it: entries are sorted, every entry carries the same timestamp
(1980-01-01, the zip epoch) and permissions (0644, Unix), and entries are stored, not deflated, because
deflate output may differ between zlib builds. Only what the handlers import goes in (walked from the
handler modules through their ``meridian`` and ``lambdas`` imports): no ``meridian.api``, no
``__pycache__``, no ``.pyc``.

Pure Python, no Pulumi: the program, the tests and the local run can all build it.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import io
import os
import tempfile
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
#: import name -> the folder that holds that package (import names are directory names)
PACKAGE_ROOTS: Mapping[str, Path] = {
    "lambdas": REPO_ROOT / "lambdas",
    "meridian": REPO_ROOT / "services" / "meridian",
}
#: Where the program writes the zip it hands to Pulumi (git-ignored).
BUILD_DIR = REPO_ROOT / "build" / "lambda"
ARCHIVE_NAME = "meridian-lambdas.zip"

ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
FILE_MODE = 0o100644  # regular file, rw-r--r--


def module_path(module: str, roots: Mapping[str, Path] = PACKAGE_ROOTS) -> Path | None:
    """The source file of ``module`` if it belongs to one of ``roots`` (a package's ``__init__.py``)."""
    top, _, rest = module.partition(".")
    if top not in roots:
        return None
    base = roots[top].joinpath(*rest.split(".")) if rest else roots[top]
    if base.is_dir() and (base / "__init__.py").is_file():
        return base / "__init__.py"
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    return None


def _imported_names(path: Path, module: str) -> set[str]:
    """Every module name ``path`` imports, anywhere in the file (lazy imports in functions included)."""
    stat = path.stat()
    return set(_parsed_imports(path, module, stat.st_mtime_ns, stat.st_size))


@functools.lru_cache(maxsize=512)
def _parsed_imports(path: Path, module: str, mtime_ns: int, size: int) -> frozenset[str]:
    """Parsing is the costly part and every region packages the same files: once per file version."""
    is_package = path.name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base_parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            names.add(base)
            # `from pkg import sub` may name a submodule: keep the candidate, it is dropped if no file exists.
            names.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
    return frozenset(names)


def _with_parents(module: str) -> list[str]:
    """``a.b.c`` -> ``a``, ``a.b``, ``a.b.c``: importing a module runs its packages' ``__init__`` first."""
    parts = module.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def required_modules(entry_modules: Iterable[str], roots: Mapping[str, Path] = PACKAGE_ROOTS) -> dict[str, Path]:
    """Module name -> source file, for the entry modules and everything of ``roots`` they import, transitively."""
    found: dict[str, Path] = {}
    pending = [m for e in entry_modules for m in _with_parents(e)]
    while pending:
        module = pending.pop()
        if module in found:
            continue
        path = module_path(module, roots)
        if path is None:
            continue
        found[module] = path
        for name in _imported_names(path, module):
            pending.extend(m for m in _with_parents(name) if m not in found)
    return found


def package_files(handlers: Iterable[str], roots: Mapping[str, Path] = PACKAGE_ROOTS) -> dict[str, Path]:
    """Archive member name (``meridian/topology.py``) -> file, for Lambda handler strings ``pkg.mod.func``."""
    entries = [h.rpartition(".")[0] for h in handlers]
    missing = [e for e in entries if module_path(e, roots) is None]
    if missing:
        raise ValueError(f"handler module(s) {missing} not found under {sorted(str(p) for p in roots.values())}")
    files: dict[str, Path] = {}
    for module, path in required_modules(entries, roots).items():
        top = module.partition(".")[0]
        files[f"{top}/{path.relative_to(roots[top]).as_posix()}"] = path
    return dict(sorted(files.items()))


def build_zip(files: Mapping[str, Path]) -> bytes:
    """The zip of ``files`` (member name -> path): same inputs, same bytes, on any machine."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for name in sorted(files):
            info = zipfile.ZipInfo(name, date_time=ZIP_EPOCH)
            info.create_system = 3  # Unix, so that external_attr holds Unix permissions on every OS
            info.external_attr = FILE_MODE << 16
            info.compress_type = zipfile.ZIP_STORED
            archive.writestr(info, files[name].read_bytes())
    return buffer.getvalue()


def write_archive(handlers: Iterable[str], build_dir: Path = BUILD_DIR, name: str = ARCHIVE_NAME) -> Path:
    """Build the zip and write it to ``build_dir/name``, replacing the file atomically and only if it changed."""
    data = build_zip(package_files(handlers))
    build_dir.mkdir(parents=True, exist_ok=True)
    target = build_dir / name
    if target.is_file() and hashlib.sha256(target.read_bytes()).digest() == hashlib.sha256(data).digest():
        return target
    fd, tmp = tempfile.mkstemp(dir=build_dir, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
