"""Put the bytecode Lambda runs into `sam build`'s output, and report each artifact's size.

    python -m operator_tools.bytecode [--build-dir .aws-sam/build] [--sizes]

`sam build` ships no `.pyc`, and Lambda's /var/task (and a layer's /opt) is read-only, so without
them every cold start compiles every module it imports. This compiles every `.py` of every Python
function (CodeUri) and layer (ContentUri) of the built template with the running interpreter, which
must be the runtime's Python (python3.13 -> 3.13: a .pyc of another minor version is ignored).

The .pyc files are unchecked-hash (PEP 552): Python loads them without comparing the source's mtime,
which the deployment zip does not keep (sam package writes 1980-01-01 for every file) and with which a
timestamp .pyc would be rejected as stale. Tracebacks name the paths Lambda sees (/var/task/..., /opt/...).
See docs/decisions/0003-vendor-boto3.md for why boto3/botocore ship inside the artifact.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import io
import os
import py_compile
import sys
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from operator_tools.cfn_yaml import SERVERLESS_FUNCTION, load_template, resources_of_type

SERVERLESS_LAYER = "AWS::Serverless::LayerVersion"
# Where Lambda mounts the code: the function's package at /var/task, every layer under /opt.
FUNCTION_ROOT = "/var/task"
LAYER_ROOT = "/opt"


class BytecodeError(RuntimeError):
    """The build cannot get bytecode Lambda would use (wrong interpreter, missing directory)."""


@dataclass(frozen=True)
class Artifact:
    """One directory of the build that becomes one deployment zip."""

    logical_id: str
    directory: Path
    runtime: str
    mount: str


@dataclass
class Compiled:
    """What compiling one artifact did."""

    sources: int = 0
    compiled: int = 0
    reused: int = 0
    failed: tuple[str, ...] = ()


def _runtime_version(runtime: str) -> tuple[int, int] | None:
    """(3, 13) for "python3.13"; None for a runtime that is not CPython."""
    if not runtime.startswith("python3."):
        return None
    return 3, int(runtime.removeprefix("python3."))


def artifacts(template: Mapping[str, Any], build_dir: Path) -> list[Artifact]:
    """Every Python function and layer of the built template whose code is a directory of the build."""
    function_globals = template.get("Globals", {}).get("Function", {})
    found: list[Artifact] = []
    for logical_id, resource in resources_of_type(template, SERVERLESS_FUNCTION).items():
        props = resource.get("Properties", {})
        runtime = props.get("Runtime", function_globals.get("Runtime"))
        code = props.get("CodeUri", function_globals.get("CodeUri"))
        if isinstance(runtime, str) and _runtime_version(runtime) and isinstance(code, str):
            found.append(Artifact(logical_id, build_dir / code, runtime, FUNCTION_ROOT))
    for logical_id, resource in resources_of_type(template, SERVERLESS_LAYER).items():
        props = resource.get("Properties", {})
        runtimes = [r for r in props.get("CompatibleRuntimes", []) if isinstance(r, str)]
        python = [r for r in runtimes if _runtime_version(r)]
        code = props.get("ContentUri")
        if python and isinstance(code, str):
            found.append(Artifact(logical_id, build_dir / code, python[0], LAYER_ROOT))
    return found


def _sources(directory: Path) -> Iterator[Path]:
    for root, dirs, files in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
            if name.endswith(".py"):
                yield Path(root) / name


def compile_artifact(artifact: Artifact, cache: dict[tuple[str, str], bytes]) -> Compiled:
    """Write an unchecked-hash .pyc next to every .py of the artifact (shared sources compile once)."""
    result = Compiled()
    failed: list[str] = []
    for source in _sources(artifact.directory):
        result.sources += 1
        relative = source.relative_to(artifact.directory).as_posix()
        digest = hashlib.sha256(source.read_bytes()).hexdigest()
        target = Path(importlib.util.cache_from_source(str(source)))
        # The .pyc holds the source's hash and the path Lambda sees, so equal keys mean equal bytes.
        key = (f"{artifact.mount}/{relative}", digest)
        if key in cache:
            target.parent.mkdir(exist_ok=True)
            target.write_bytes(cache[key])
            result.reused += 1
            continue
        try:
            py_compile.compile(
                str(source),
                cfile=str(target),
                dfile=key[0],
                doraise=True,
                invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
            )
        except py_compile.PyCompileError:
            # A dependency's file that does not compile (e.g. a Python-2 example) fails only if imported.
            failed.append(relative)
            continue
        cache[key] = target.read_bytes()
        result.compiled += 1
    result.failed = tuple(failed)
    return result


def sizes(directory: Path) -> tuple[int, int]:
    """(unzipped bytes, zipped bytes) of a directory, zipped the way `sam package` does (deflate)."""
    unzipped = 0
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for root, dirs, files in os.walk(directory):
            dirs.sort()
            for name in sorted(files):
                path = Path(root) / name
                unzipped += path.stat().st_size
                archive.write(path, path.relative_to(directory).as_posix())
    return unzipped, len(buffer.getvalue())


def _tree_digest(directory: Path) -> str:
    digest = hashlib.sha256()
    for root, dirs, files in os.walk(directory):
        dirs.sort()
        for name in sorted(files):
            path = Path(root) / name
            digest.update(path.relative_to(directory).as_posix().encode())
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def _megabytes(size: int) -> str:
    return f"{size / 1_000_000:.1f} MB" if size >= 100_000 else f"{size / 1_000:.1f} kB"


def run(build_dir: Path, *, report_sizes: bool) -> list[str]:
    """Compile every artifact of the build; return the report lines. Raise BytecodeError if unusable."""
    template_path = build_dir / "template.yaml"
    if not template_path.is_file():
        raise BytecodeError(f"{template_path} not found: run `sam build` first")
    found = artifacts(load_template(template_path), build_dir)
    if not found:
        raise BytecodeError(f"{template_path} has no Python function or layer")
    here = sys.version_info[:2]
    lines: list[str] = []
    cache: dict[tuple[str, str], bytes] = {}
    seen: dict[str, tuple[int, int]] = {}
    for artifact in found:
        if _runtime_version(artifact.runtime) != here:
            raise BytecodeError(
                f"{artifact.logical_id} runs {artifact.runtime} but this is Python {here[0]}.{here[1]}: "
                "its .pyc would be ignored; run with the runtime's Python (infra/find-python.sh)"
            )
        if not artifact.directory.is_dir():
            raise BytecodeError(
                f"{artifact.logical_id}: {artifact.directory} is not a directory of the build"
            )
        done = compile_artifact(artifact, cache)
        line = (
            f"{artifact.logical_id}: {done.sources} modules, {done.compiled} compiled, "
            f"{done.reused} shared with an earlier artifact"
        )
        if done.failed:
            line += f"; {len(done.failed)} do not compile (left as source): {', '.join(done.failed[:5])}"
        if report_sizes:
            key = _tree_digest(artifact.directory)
            if key not in seen:
                seen[key] = sizes(artifact.directory)
            unzipped, zipped = seen[key]
            line += f"; {_megabytes(unzipped)} unzipped, {_megabytes(zipped)} zipped"
        lines.append(line)
    return lines


def main(argv: list[str] | None = None) -> int:
    """Compile the build's bytecode and print one line per artifact."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build-dir", type=Path, default=Path(".aws-sam/build"))
    parser.add_argument("--sizes", action="store_true", help="also report unzipped and zipped sizes")
    args = parser.parse_args(argv)
    try:
        lines = run(args.build_dir, report_sizes=args.sizes)
    except BytecodeError as error:
        print(f"bytecode: {error}", file=sys.stderr)
        return 2
    for line in lines:
        print(f"bytecode: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
