"""The README's security model stays true: every test it cites exists, and every security test file is cited."""

from __future__ import annotations

import re
from pathlib import Path

from tests.support.servers import REPO_ROOT

REPO = REPO_ROOT
README = REPO / "README.md"
PREFIXES = {"S/": "tests/security/", "T/": "tests/infra/template/"}
_REFERENCE = re.compile(r"`((?:S/|T/|tests/)[\w/]+\.py)?(::\w+)?`")


def cited_tests() -> list[tuple[str, str | None]]:
    """(file, test name or None) for every reference in the table rows."""
    cited: list[tuple[str, str | None]] = []
    section = README.read_text().split("\n## Security model\n", 1)[1].split("\n## ", 1)[0]
    for row in section.splitlines():
        if not row.startswith("|"):
            continue
        current: str | None = None
        for match in _REFERENCE.finditer(row):
            path, test = match.group(1), match.group(2)
            if path:
                for short, long in PREFIXES.items():
                    if path.startswith(short):
                        path = long + path[len(short) :]
                current = path
                cited.append((path, None))
            if test and current:
                cited.append((current, test[2:]))
    return cited


def test_every_cited_test_exists() -> None:
    cited = cited_tests()
    assert len({name for _, name in cited if name}) >= 60
    for path, name in cited:
        source = (REPO / path).read_text()
        if name is not None:
            assert f"def {name}(" in source, f"{path}::{name}"


def test_every_security_test_file_is_cited() -> None:
    cited = {path for path, _ in cited_tests()}
    for test_file in sorted((REPO / "tests" / "security").glob("test_*.py")):
        relative = str(test_file.relative_to(REPO))
        if test_file.name != Path(__file__).name:
            assert relative in cited, relative
