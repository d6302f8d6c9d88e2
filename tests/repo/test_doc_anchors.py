"""Every `docs/<name>.md#anchor` a comment or docstring cites names a heading that exists."""

from __future__ import annotations

import re
from pathlib import Path

from tests.support.servers import REPO_ROOT

REPO = REPO_ROOT
SOURCES = ("functions", "client/src", "infra", "tests")
# A citation, and the further anchors that follow it: "docs/<name>.md#a, #b to #c"
CITATION = re.compile(r"docs/([\w.-]+\.md)((?:#[\w-]+(?:(?:,\s*|\s+to\s+|\s+and\s+)#[\w-]+)*)?)")


def slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(doc: Path) -> set[str]:
    """The anchors of every heading in `doc`."""
    return {
        slug(line.lstrip("#"))
        for line in doc.read_text(encoding="utf-8").splitlines()
        if line.startswith("#")
    }


def citations() -> list[tuple[str, str, str]]:
    """(file, doc, anchor) for every anchored citation under SOURCES."""
    found = []
    for root in SOURCES:
        for path in sorted((REPO / root).rglob("*.py")):
            for match in CITATION.finditer(path.read_text(encoding="utf-8")):
                for anchor in re.findall(r"#([\w-]+)", match.group(2)):
                    found.append((str(path.relative_to(REPO)), match.group(1), anchor))
    return found


def test_cited_anchors_exist() -> None:
    cited = citations()
    assert len(cited) > 20  # the scan sees the citations (they are many)
    missing = [
        (where, doc, anchor)
        for where, doc, anchor in cited
        if not (REPO / "docs" / doc).is_file() or anchor not in anchors(REPO / "docs" / doc)
    ]
    assert missing == []


def test_slugs_follow_github() -> None:
    assert slug(" F-OAUTH-6a") == "f-oauth-6a"
    assert slug(" Functions, queues, tables") == "functions-queues-tables"
    assert slug(" The local stack: `.local/stack.json`") == "the-local-stack-localstackjson"
