"""operator_tools.bytecode: the .pyc Lambda uses from a read-only /var/task, for every function and layer."""

from __future__ import annotations

import importlib.util
import marshal
import os
import subprocess
import sys
import types
import zipfile
from pathlib import Path

import pytest

from operator_tools import bytecode

RUNTIME = f"python{sys.version_info[0]}.{sys.version_info[1]}"


def _build(root: Path, runtime: str = RUNTIME) -> Path:
    """A miniature `sam build` output: two functions sharing a package, a layer, and a Node function."""
    build = root / "build"
    for function in ("OneFunction", "TwoFunction"):
        package = build / function / "pkg"
        package.mkdir(parents=True)
        (package / "__init__.py").write_text("VALUE = 'original'\n")
        (package / "handler.py").write_text(f"NAME = {function!r}\n")
    (build / "OneFunction" / "broken_example.py").write_text("print 'python 2'\n")
    layer = build / "ClientLayer" / "python" / "client"
    layer.mkdir(parents=True)
    (layer / "__init__.py").write_text("LAYER = True\n")
    (build / "NodeFunction").mkdir()
    (build / "NodeFunction" / "tool.py").write_text("X = 1\n")
    (build / "template.yaml").write_text(
        f"""
Transform: AWS::Serverless-2016-10-31
Globals:
  Function:
    Runtime: {runtime}
Resources:
  OneFunction:
    Type: AWS::Serverless::Function
    Properties: {{CodeUri: OneFunction, Handler: pkg.handler.handler}}
  TwoFunction:
    Type: AWS::Serverless::Function
    Properties: {{CodeUri: TwoFunction, Handler: pkg.handler.handler}}
  NodeFunction:
    Type: AWS::Serverless::Function
    Properties: {{CodeUri: NodeFunction, Handler: index.handler, Runtime: nodejs22.x}}
  ClientLayer:
    Type: AWS::Serverless::LayerVersion
    Properties: {{ContentUri: ClientLayer, CompatibleRuntimes: [{runtime}]}}
"""
    )
    return build


def _pyc(source: Path) -> Path:
    return Path(importlib.util.cache_from_source(str(source)))


def test_every_python_function_and_layer_gets_unchecked_hash_bytecode(tmp_path: Path) -> None:
    # Given a build
    build = _build(tmp_path)

    # When its bytecode is compiled
    lines = bytecode.run(build, report_sizes=True)

    # Then every .py of the Python functions and the layer has a .pyc of this Python, unchecked-hash
    for source in [*build.glob("*Function/pkg/*.py"), build / "ClientLayer/python/client/__init__.py"]:
        header = _pyc(source).read_bytes()[:8]
        assert header[:4] == importlib.util.MAGIC_NUMBER
        assert int.from_bytes(header[4:8], "little") == 0b01  # hash-based, source never checked
    # And the Node function is left alone; the Python-2 file is reported, not fatal
    assert not _pyc(build / "NodeFunction/tool.py").exists()
    assert any("1 do not compile" in line and "broken_example.py" in line for line in lines)
    # And of the second function only the source that differs is compiled again
    two = next(line for line in lines if line.startswith("TwoFunction"))
    assert "1 compiled, 1 shared" in two
    assert all("unzipped" in line and "zipped" in line for line in lines)


def _code(pyc: Path) -> types.CodeType:
    # Our own freshly written .pyc (16-byte header, then the marshalled code object).
    code: types.CodeType = marshal.loads(pyc.read_bytes()[16:])  # noqa: S302
    return code


def test_tracebacks_name_the_paths_lambda_sees(tmp_path: Path) -> None:
    build = _build(tmp_path)
    bytecode.run(build, report_sizes=False)
    function_code = _code(_pyc(build / "OneFunction/pkg/handler.py"))
    layer_code = _code(_pyc(build / "ClientLayer/python/client/__init__.py"))
    assert function_code.co_filename == "/var/task/pkg/handler.py"
    assert layer_code.co_filename == "/opt/python/client/__init__.py"


def test_python_loads_the_shipped_bytecode_without_writing_or_checking_the_source(tmp_path: Path) -> None:
    # Given a compiled function whose source then changes (a zip keeps no mtimes Python could compare)
    build = _build(tmp_path)
    bytecode.run(build, report_sizes=False)
    (build / "OneFunction/pkg/__init__.py").write_text("VALUE = 'edited after the build'\n")
    before = sorted(build.rglob("*"))

    # When a fresh interpreter imports it from there, writing no bytecode (as on a read-only /var/task)
    out = subprocess.run(
        [sys.executable, "-S", "-P", "-c", "import pkg; print(pkg.VALUE)"],
        env={"PYTHONPATH": str(build / "OneFunction"), "PYTHONDONTWRITEBYTECODE": "1", "PATH": os.defpath},
        capture_output=True,
        text=True,
        check=True,
    )

    # Then the shipped .pyc ran (no recompilation), and nothing was written
    assert out.stdout.strip() == "original"
    assert sorted(build.rglob("*")) == before


def test_a_runtime_of_another_python_is_refused(tmp_path: Path) -> None:
    other = "python3.12" if sys.version_info[:2] != (3, 12) else "python3.13"
    build = _build(tmp_path, runtime=other)
    with pytest.raises(bytecode.BytecodeError, match="would be ignored"):
        bytecode.run(build, report_sizes=False)
    assert not list(build.rglob("*.pyc"))


def test_a_missing_build_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(bytecode.BytecodeError, match="run `sam build` first"):
        bytecode.run(tmp_path / "nothing", report_sizes=False)
    assert bytecode.main(["--build-dir", str(tmp_path / "nothing")]) == 2


def test_sizes_are_of_the_zip_sam_would_upload(tmp_path: Path) -> None:
    directory = tmp_path / "code"
    directory.mkdir()
    (directory / "a.py").write_text("A = 1\n" * 1000)
    (directory / "sub").mkdir()
    (directory / "sub" / "b.txt").write_bytes(os.urandom(2000))
    unzipped, zipped = bytecode.sizes(directory)
    assert unzipped == 6000 + 2000
    reference = tmp_path / "ref.zip"
    with zipfile.ZipFile(reference, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.write(directory / "a.py", "a.py")
        archive.write(directory / "sub" / "b.txt", "sub/b.txt")
    assert zipped == reference.stat().st_size
