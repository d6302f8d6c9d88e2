"""One name per class: on the server side, and between the server and the caller client, an error or value
type is found by its name alone."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

from tests.support.servers import REPO_ROOT

FUNCTIONS = REPO_ROOT / "functions"
CLIENT = REPO_ROOT / "client" / "src"


def class_homes(root: Path) -> dict[str, list[str]]:
    """Every module-level class name under `root`, with the files that define it."""
    homes: dict[str, list[str]] = defaultdict(list)
    for path in sorted(root.rglob("*.py")):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.ClassDef):
                homes[node.name].append(str(path.relative_to(root)))
    return homes


def test_no_two_server_classes_share_a_name() -> None:
    shared = {name: files for name, files in class_homes(FUNCTIONS).items() if len(files) > 1}
    assert shared == {}


def test_the_caller_client_shares_no_class_name_with_the_server() -> None:
    client = class_homes(CLIENT)
    assert {"LeadsError", "LeadsPage", "ReauthRequired"} <= set(client)  # the check reads the client
    assert set(client) & set(class_homes(FUNCTIONS)) == set()


def test_the_check_sees_a_duplicate(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("class LeadsRefusal(Exception): ...\n")
    (tmp_path / "b.py").write_text("class LeadsRefusal(Exception): ...\nclass Other: ...\n")
    assert {n: f for n, f in class_homes(tmp_path).items() if len(f) > 1} == {
        "LeadsRefusal": ["a.py", "b.py"]
    }
