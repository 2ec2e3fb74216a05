"""The Lambdas' code package: only what the handlers import, importable on its own, the same bytes anywhere."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from infra.components import lambda_archive
from infra.components.functions import ARCHIVE_HANDLERS
from infra.render import Plan

HANDLERS = list(ARCHIVE_HANDLERS)  # the regional functions' and the key rotator's


def members(data: bytes) -> list[zipfile.ZipInfo]:
    return zipfile.ZipFile(io.BytesIO(data)).infolist()


@pytest.fixture(scope="module")
def archive() -> bytes:
    return lambda_archive.build_zip(lambda_archive.package_files(HANDLERS))


class TestContents:
    def test_no_caches_no_api_only_python(self, archive: bytes) -> None:
        names = [m.filename for m in members(archive)]
        assert names == sorted(names) and len(names) == len(set(names))
        assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
        assert not [n for n in names if n.startswith("meridian/api")], "the web app is not the Lambdas' code"
        assert all(n.endswith(".py") and n.split("/")[0] in ("lambdas", "meridian") for n in names)

    def test_holds_the_handlers_and_their_library_modules(self, archive: bytes) -> None:
        names = {m.filename for m in members(archive)}
        for handler in HANDLERS:
            module = handler.rpartition(".")[0]
            assert module.replace(".", "/") + ".py" in names
        # Imported by the handlers (directly or through other modules): the canary, the store, the clocks, ...
        assert {"lambdas/__init__.py", "lambdas/runtime.py", "meridian/__init__.py", "meridian/topology.py", "meridian/canary.py",
                "meridian/store.py", "meridian/hlc.py", "meridian/conflicts.py", "meridian/evacuation.py"} <= names
        # ... and nothing the handlers never reach.
        assert not names & {"meridian/sessions.py", "meridian/routing.py", "meridian/health.py", "meridian/peers.py"}

    def test_handlers_import_from_the_archive_alone(self, archive: bytes, tmp_path: Path) -> None:
        """A fresh interpreter with the archive and site-packages only (boto3 and Powertools come from the Lambda
        runtime and layer), in that order on PYTHONPATH, as Lambda puts the function's code first; no site
        initialisation (-S: no .pth processing), so the repository's editable install cannot fill a gap."""
        zipfile.ZipFile(io.BytesIO(archive)).extractall(tmp_path)
        script = "\n".join([
            "import importlib, sys",
            f"for handler in {HANDLERS!r}:",
            "    module, _, func = handler.rpartition('.')",
            "    assert callable(getattr(importlib.import_module(module), func)), handler",
            "ours = {n: m.__file__ for n, m in sys.modules.items() if n.split('.')[0] in ('meridian', 'lambdas')}",
            f"outside = {{n: f for n, f in ours.items() if not f.startswith({str(tmp_path)!r})}}",
            "assert not outside, outside",
            "print(len(ours))",
        ])
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
        env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), sysconfig.get_paths()["purelib"]])
        result = subprocess.run([sys.executable, "-s", "-S", "-c", script], capture_output=True, text=True, env=env,
                                cwd=tmp_path, timeout=120)
        assert result.returncode == 0, result.stderr
        assert int(result.stdout) >= 10


class TestReproducible:
    def test_same_bytes_twice(self, archive: bytes) -> None:
        assert lambda_archive.build_zip(lambda_archive.package_files(HANDLERS)) == archive

    def test_same_bytes_from_another_checkout(self, archive: bytes, tmp_path: Path) -> None:
        """Other timestamps, other permissions, stray caches: the same zip."""
        roots = {}
        for top, root in lambda_archive.PACKAGE_ROOTS.items():
            copy = tmp_path / top
            shutil.copytree(root, copy, ignore=shutil.ignore_patterns("__pycache__"))
            (copy / "__pycache__").mkdir()
            (copy / "__pycache__" / "topology.cpython-311.pyc").write_bytes(b"\0stale")
            for path in copy.rglob("*"):
                if path.is_file():
                    os.utime(path, (1_700_000_000, 1_700_000_000))
                    path.chmod(0o600)
            roots[top] = copy
        assert lambda_archive.build_zip(lambda_archive.package_files(HANDLERS, roots)) == archive

    def test_entries_carry_fixed_metadata(self, archive: bytes) -> None:
        for m in members(archive):
            assert m.date_time == lambda_archive.ZIP_EPOCH and m.create_system == 3
            assert m.external_attr >> 16 == 0o100644 and m.compress_type == zipfile.ZIP_STORED

    def test_written_once_to_a_fixed_path(self, archive: bytes, tmp_path: Path) -> None:
        first = lambda_archive.write_archive(HANDLERS, tmp_path)
        stamp = first.stat().st_mtime_ns
        second = lambda_archive.write_archive(HANDLERS, tmp_path)
        assert first == second == tmp_path / lambda_archive.ARCHIVE_NAME
        assert second.read_bytes() == archive and second.stat().st_mtime_ns == stamp, "unchanged content is not rewritten"
        assert [p.name for p in tmp_path.iterdir()] == [lambda_archive.ARCHIVE_NAME]


class TestProgram:
    def test_every_function_runs_the_archive(self, prod_plan: Plan, archive: bytes) -> None:
        """Pulumi hashes a .zip path archive by its bytes: the file the functions name is the reproducible zip."""
        paths = {fn.inputs["code"].path for fn in prod_plan.of_type("aws:lambda/function:Function")}
        (path,) = paths
        assert Path(path) == lambda_archive.BUILD_DIR / lambda_archive.ARCHIVE_NAME
        assert hashlib.sha256(Path(path).read_bytes()).digest() == hashlib.sha256(archive).digest()

    def test_unknown_handler_refused(self) -> None:
        with pytest.raises(ValueError, match="not found"):
            lambda_archive.package_files(["lambdas.nope.handler.lambda_handler"])
