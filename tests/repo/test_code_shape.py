"""The shape a newcomer can read: no product module above 450 lines, no product function above
cyclomatic complexity 12 (radon's count, which also counts boolean operators and comprehensions)."""

from __future__ import annotations

from pathlib import Path

import pytest
from radon.complexity import cc_visit

REPO = Path(__file__).resolve().parents[2]
PRODUCT = sorted(
    [*(REPO / "functions" / "b24connector").rglob("*.py"), *(REPO / "client" / "src").rglob("*.py")]
)
MAX_LINES = 450
MAX_COMPLEXITY = 12


def _name(path: Path) -> str:
    return str(path.relative_to(REPO))


@pytest.mark.parametrize("path", PRODUCT, ids=_name)
def test_product_module_is_short(path: Path) -> None:
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{_name(path)} has {lines} lines; split it by job"


@pytest.mark.parametrize("path", PRODUCT, ids=_name)
def test_product_functions_are_simple(path: Path) -> None:
    # cc_visit lists functions and methods (not classes' totals) flat; nested functions are closures
    pending = [b for b in cc_visit(path.read_text(encoding="utf-8")) if hasattr(b, "is_method")]
    functions = []
    while pending:
        block = pending.pop()
        functions.append(block)
        pending.extend(block.closures)
    complex_ = sorted(f"{f.fullname} ({f.complexity})" for f in functions if f.complexity > MAX_COMPLEXITY)
    assert not complex_, f"{_name(path)}: above {MAX_COMPLEXITY}: {', '.join(complex_)}"


def test_the_check_sees_every_product_package() -> None:
    packages = {p.relative_to(REPO).parts[:3] for p in PRODUCT}
    assert ("functions", "b24connector", "handlers") in packages
    assert ("client", "src", "b24connector_client") in packages
