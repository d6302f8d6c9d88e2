"""The parsed template.yaml, shared by the template tests."""

from __future__ import annotations

from typing import Any

import pytest

from operator_tools.cfn_yaml import load_template
from tests.support.template_support import TEMPLATE_PATH, TEMPLATE_VARIANTS, resolve_conditions


@pytest.fixture(scope="session")
def raw_template() -> dict[str, Any]:
    """template.yaml in its JSON form, every condition as written."""
    return load_template(TEMPLATE_PATH)


@pytest.fixture(scope="session", params=sorted(TEMPLATE_VARIANTS))
def template_variant(request: pytest.FixtureRequest) -> str:
    """The name of the parameter set the `template` fixture is resolved for."""
    return str(request.param)


@pytest.fixture(scope="session")
def template(raw_template: dict[str, Any], template_variant: str) -> dict[str, Any]:
    """template.yaml in its JSON form, its PKCE and reservation conditions chosen for one variant."""
    return resolve_conditions(raw_template, TEMPLATE_VARIANTS[template_variant])
