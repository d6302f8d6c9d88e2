"""The b24connector-client wheel, installed alone in a fresh virtualenv, reads leads from the local stack.

The virtualenv gets boto3 and nothing else of ours: boto3's distributions (and their requirements) are
copied from this virtualenv's site-packages, so the test needs no network; then pip installs the wheel
with --no-index (it must resolve with boto3 alone) and `pip check` confirms every requirement is met.
The same wheel unpacked as Lambda's layer build does it (client/Makefile) is tried the way an attached
layer is used: its python/ directory on sys.path of an interpreter that has boto3 only.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement

from local_stack import LocalStack
from tests.e2e.helpers import admin, install_app
from tests.support.servers import REPO_ROOT

REPO = REPO_ROOT
CLIENT = REPO / "client"
VERSION = re.search(
    r'^__version__ = "(.+)"$', (CLIENT / "src/b24connector_client/__init__.py").read_text(), re.M
)

# Runs inside the fresh virtualenv with -I (no PYTHONPATH, no user site, no working directory on the path).
_PROBE = """
import importlib.metadata, json, sys
layer = sys.argv[2]
if layer:
    sys.path.insert(0, layer)  # as Lambda puts /opt/python of an attached layer on the path
import boto3
import b24connector_client as c

args = json.loads(sys.argv[1])
lam = boto3.client("lambda", endpoint_url=args["url"], region_name=args["region"],
                   aws_access_key_id="test", aws_secret_access_key="test")
ids = [lead["ID"] for lead in c.fetch_leads(member_id=args["member_id"], select=["ID", "TITLE"], limit=700,
                                            lambda_client=lam, function_name="LeadsFunction")]
# No lambda_client: the client's own boto3 client, pointed at the stack by AWS_ENDPOINT_URL_LAMBDA.
page = c.fetch_leads_page(domain=args["domain"], limit=5)
try:
    c.fetch_leads_page(domain="unknown.bitrix24.com", lambda_client=lam)
    error = None
except c.LeadsError as exc:
    error = type(exc).__name__
try:
    import b24connector  # noqa: F401
    ours = True
except ImportError:
    ours = False
try:
    version = importlib.metadata.version("b24connector-client")
except importlib.metadata.PackageNotFoundError:
    version = None
print(json.dumps({"ids": ids, "page": len(page.leads), "more": page.next_cursor is not None, "error": error,
                  "file": c.__file__, "connector_importable": ours, "version": version}))
"""


def _closure(name: str) -> list[importlib.metadata.Distribution]:
    """`name`'s distribution and everything it requires (no extras), as installed here."""
    found: dict[str, importlib.metadata.Distribution] = {}
    pending = [name]
    while pending:
        current = pending.pop()
        dist = importlib.metadata.distribution(current)
        key = dist.metadata["Name"].lower().replace("_", "-")
        if key in found:
            continue
        found[key] = dist
        for text in dist.requires or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                pending.append(requirement.name)
    return list(found.values())


def _site_packages(python: Path) -> Path:
    out = subprocess.run(
        [str(python), "-I", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    )
    return Path(out.stdout.strip())


def _virtualenv_with_boto3_only(root: Path) -> Path:
    """A fresh virtualenv (no pip, no system site-packages) holding boto3 and its requirements only."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    python = root / "bin" / "python"
    target = _site_packages(python)
    for dist in _closure("boto3"):
        for file in dist.files or []:
            source = Path(str(dist.locate_file(file)))
            relative = Path(str(file))
            if relative.is_absolute() or ".." in relative.parts or "__pycache__" in relative.parts:
                continue  # console scripts and the like live outside site-packages
            destination = target / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination)
    return python


def _pip(python: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "--disable-pip-version-check", *args],
        capture_output=True,
        text=True,
        check=False,
    )


# The Makefile's `client` recipe: no dependencies, the installed setuptools, never an index.
_PIP_WHEEL = (
    sys.executable,
    "-m",
    "pip",
    "wheel",
    "--quiet",
    "--no-deps",
    "--no-build-isolation",
    "--no-index",
)


def _build_wheel(work: Path) -> Path:
    """The wheel, built as `make client` builds it (offline, setuptools without isolation)."""
    source = shutil.copytree(
        CLIENT, work / "client-src", ignore=shutil.ignore_patterns("build", "*.egg-info")
    )
    dist = work / "dist"
    subprocess.run(
        [*_PIP_WHEEL, "--wheel-dir", str(dist), str(source)],
        check=True,
    )
    assert VERSION is not None
    wheel = dist / f"b24connector_client-{VERSION.group(1)}-py3-none-any.whl"
    assert wheel.is_file(), sorted(p.name for p in dist.iterdir())
    return wheel


def _layer(work: Path, wheel: Path) -> Path:
    """The layer's content as `sam build` makes it (client/Makefile's build-LeadsClientLayer)."""
    artifacts = work / "layer"
    subprocess.run(
        ["make", "--no-print-directory", "-s", "-C", str(CLIENT), "build-LeadsClientLayer"],
        env={
            **os.environ,
            "ARTIFACTS_DIR": str(artifacts),
            "CLIENT_WHEEL": str(wheel),
            "PYTHON": sys.executable,
        },
        check=True,
    )
    return artifacts / "python"


def _probe(python: Path, stack: LocalStack, work: Path, layer: Path | None = None) -> dict[str, Any]:
    args = {
        "url": stack.lambda_endpoint_url,
        "region": stack.aws_region,
        "member_id": stack.member_id,
        "domain": stack.portal_domain,
    }
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": stack.aws_region,
        "AWS_ENDPOINT_URL_LAMBDA": stack.lambda_endpoint_url,
        "AWS_CONFIG_FILE": str(work / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(work / "no-aws-credentials"),
    }
    out = subprocess.run(
        [str(python), "-I", "-c", _PROBE, json.dumps(args), str(layer or "")],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.slow
def test_the_wheel_alone_reads_leads_from_the_local_stack(stack: LocalStack, tmp_path: Path) -> None:
    # Given an installed portal, the wheel, and a fresh virtualenv with boto3 only
    install_app(stack)
    seeded = admin(stack, "GET", "/leads")["count"]
    wheel = _build_wheel(tmp_path)
    python = _virtualenv_with_boto3_only(tmp_path / "venv")

    # When the wheel is installed there without an index (its requirements must be met by boto3 alone)
    installed = _pip(python, "install", "--no-index", "--find-links", str(wheel.parent), str(wheel))
    assert installed.returncode == 0, installed.stdout + installed.stderr
    checked = _pip(python, "check")
    assert checked.returncode == 0, checked.stdout + checked.stderr

    # Then fetch_leads reads every lead in ID order, the default client works, errors are typed
    result = _probe(python, stack, tmp_path)
    ids = [int(i) for i in result["ids"]]
    assert len(ids) == seeded
    assert ids == sorted(set(ids))
    assert (result["page"], result["more"]) == (5, seeded > 5)
    assert result["error"] == "PortalNotFound"
    # And it ran from the virtualenv's own copy, with none of the connector's code reachable
    assert Path(result["file"]).is_relative_to(tmp_path / "venv")
    assert result["connector_importable"] is False
    assert VERSION is not None
    assert result["version"] == VERSION.group(1)


@pytest.mark.slow
def test_the_layer_content_works_like_an_attached_layer(stack: LocalStack, tmp_path: Path) -> None:
    # Given an installed portal and the layer's python/ directory as sam build makes it
    install_app(stack)
    seeded = admin(stack, "GET", "/leads")["count"]
    layer = _layer(tmp_path, _build_wheel(tmp_path))
    assert (layer / "b24connector_client" / "__init__.py").is_file()
    assert VERSION is not None
    dist_info = layer / f"b24connector_client-{VERSION.group(1)}.dist-info"
    assert dist_info.is_dir()
    assert not (dist_info / "direct_url.json").exists()  # no build-machine path in the layer
    python = _virtualenv_with_boto3_only(tmp_path / "venv")

    # When an interpreter with boto3 only puts the layer on its path, as Lambda does with /opt/python
    result = _probe(python, stack, tmp_path, layer=layer)

    # Then it reads every lead through the layer's package
    assert len(result["ids"]) == seeded
    assert Path(result["file"]).is_relative_to(layer)
    assert result["error"] == "PortalNotFound"
    assert result["connector_importable"] is False
