"""The parsed template.yaml, shared by the template tests."""

from __future__ import annotations

from typing import Any

import pytest

from operator_tools.cfn_yaml import load_template
from tests.unit.template.template_support import TEMPLATE_PATH


@pytest.fixture(scope="session")
def template() -> dict[str, Any]:
    """template.yaml in its JSON form."""
    return load_template(TEMPLATE_PATH)
