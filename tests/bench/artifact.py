"""The deployment artifact as Lambda runs it: `make build`'s output, checked fresh, copied read-only.

The cold-start section measures imports from these copies: each function's own directory of
`.aws-sam/build`, made read-only, imported with PYTHONDONTWRITEBYTECODE=1 (as on Lambda's read-only
/var/task, nothing can be compiled and kept), and checked afterwards that no file appeared.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from operator_tools.cfn_yaml import function_handlers, load_template
from tests.bench.common import BENCH_DIR, REPO_ROOT

BUILD_DIR = REPO_ROOT / ".aws-sam" / "build"
SOURCE_PACKAGE = REPO_ROOT / "functions" / "b24connector"
REQUIREMENTS = REPO_ROOT / "functions" / "requirements.txt"
COPIES = BENCH_DIR / ".tmp" / "artifact"
# PEP 552 flags word of an unchecked-hash .pyc: bit 0 = hash-based, bit 1 = check_source (off).
_UNCHECKED_HASH = 0b01


@dataclass(frozen=True)
class BuiltFunction:
    """One function of the build: its logical ID, handler module and artifact directory."""

    logical_id: str
    module: str
    directory: Path


def _digests(root: Path) -> dict[str, str]:
    return {
        path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*.py"))
    }


def _unchecked_hash_pyc(source: Path) -> bool:
    cached = Path(importlib.util.cache_from_source(str(source)))
    try:
        header = cached.read_bytes()[:8]
    except OSError:
        return False
    return (
        header[:4] == importlib.util.MAGIC_NUMBER and int.from_bytes(header[4:8], "little") == _UNCHECKED_HASH
    )


def staleness(build_dir: Path = BUILD_DIR) -> str | None:
    """Why the build is not what `make build` makes of this tree now; None when it is."""
    template_path = build_dir / "template.yaml"
    if not template_path.is_file():
        return f"{template_path.relative_to(REPO_ROOT)} is missing"
    wanted = _digests(SOURCE_PACKAGE)
    for function in built_functions(build_dir):
        package = function.directory / "b24connector"
        if not package.is_dir() or _digests(package) != wanted:
            return f"{function.logical_id}'s b24connector differs from functions/b24connector"
        requirements = function.directory / "requirements.txt"
        if not requirements.is_file() or requirements.read_bytes() != REQUIREMENTS.read_bytes():
            return f"{function.logical_id} was built from another functions/requirements.txt"
        for source in (package / "__init__.py", function.directory / "boto3" / "__init__.py"):
            if not _unchecked_hash_pyc(source):
                return f"{source.relative_to(build_dir)} has no unchecked-hash .pyc for this Python"
    return None


def built_functions(build_dir: Path = BUILD_DIR) -> list[BuiltFunction]:
    """Every function of the built template with its handler module (from the template itself)."""
    template = load_template(build_dir / "template.yaml")
    resources = template["Resources"]
    found = []
    for logical_id, handler in function_handlers(template).items():
        code = resources[logical_id]["Properties"]["CodeUri"]
        found.append(BuiltFunction(logical_id, handler.rsplit(".", 1)[0], build_dir / str(code)))
    return found


def ensure_build() -> str:
    """Run `make build` unless the build is fresh; say which happened."""
    reason = staleness()
    if reason is None:
        return "the existing .aws-sam/build (fresh: same sources, requirements and bytecode)"
    print(f"coldstart: {reason}; running make build", flush=True)
    subprocess.run(["make", "--no-print-directory", "build"], cwd=REPO_ROOT, check=True)
    again = staleness()
    if again is not None:
        raise RuntimeError(f"make build did not produce a fresh artifact: {again}")
    return "a fresh `make build`"


def _files(root: Path) -> set[str]:
    return {str(Path(base, name)) for base, _dirs, names in os.walk(root) for name in names}


def _set_writable(root: Path, writable: bool) -> None:
    for base, dirs, names in os.walk(root):
        for name in [*dirs, *names, ""]:
            path = Path(base, name) if name else Path(base)
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode):
                continue
            os.chmod(path, (mode | stat.S_IWUSR) if writable else (mode & ~0o222))


@dataclass
class ReadOnlyCopies:
    """Read-only copies of each function's artifact (and one without bytecode, as sam build alone ships)."""

    functions: dict[str, Path]
    without_bytecode: Path
    files_before: int

    def files_now(self) -> int:
        """Files under the copies now (equal to files_before when nothing was written)."""
        return sum(len(_files(path)) for path in [*self.functions.values(), self.without_bytecode])


@contextmanager
def read_only_copies(functions: list[BuiltFunction], bare: BuiltFunction) -> Iterator[ReadOnlyCopies]:
    """Copy every artifact to BENCH_DIR/.tmp, strip `bare`'s copy of bytecode, make all read-only."""
    if COPIES.exists():
        _set_writable(COPIES, True)
        shutil.rmtree(COPIES)
    COPIES.mkdir(parents=True)
    copies = {
        f.logical_id: shutil.copytree(f.directory, COPIES / f.logical_id, symlinks=True) for f in functions
    }
    without = shutil.copytree(bare.directory, COPIES / f"{bare.logical_id}-no-bytecode", symlinks=True)
    for cache in sorted(without.rglob("__pycache__")):
        shutil.rmtree(cache)
    _set_writable(COPIES, False)
    result = ReadOnlyCopies(copies, without, 0)
    result.files_before = result.files_now()
    try:
        yield result
    finally:
        _set_writable(COPIES, True)
        shutil.rmtree(COPIES)


def lambda_env(code_dir: Path) -> dict[str, str]:
    """A Lambda worker's view: only the artifact on PYTHONPATH, no bytecode writes, fake credentials."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(code_dir),
        "PYTHONDONTWRITEBYTECODE": "1",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_SESSION_TOKEN": "test",
        "AWS_DEFAULT_REGION": "eu-central-1",
        "AWS_LAMBDA_FUNCTION_NAME": "bench",
        "POWERTOOLS_SERVICE_NAME": "bench",
        "POWERTOOLS_METRICS_NAMESPACE": "Bench",
        "POWERTOOLS_TRACE_DISABLED": "true",
    }


# -S: none of this machine's site-packages or .pth hooks (Lambda's own boto3 in /var/runtime comes
# after /var/task, so the artifact's shadows it); -P: the working directory is not on sys.path.
LAMBDA_FLAGS = ("-S", "-P")


def interpreter() -> str:
    """The interpreter of the measurements: this one, which `make build` compiled the bytecode for."""
    return sys.executable
