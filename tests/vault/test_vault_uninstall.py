"""Uninstall on real DynamoDB emulations: a replay writes nothing; a clean one still clears kept data."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.support.rig import BACKENDS, Scene

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_replayed_uninstall_is_a_conditional_no_op(
    scene_factory: Callable[..., Scene], backend: str
) -> None:
    scene = scene_factory(backend=backend)
    store = scene.workers.worker().store
    kept = store.mark_uninstalled(scene.member_id, clean=False)
    assert kept is not None
    assert kept.version == scene.portal.version + 1
    assert store.mark_uninstalled(scene.member_id, clean=False) is None
    assert scene.stored() == kept
    cleaned = store.mark_uninstalled(scene.member_id, clean=True)
    assert cleaned is not None
    assert (cleaned.version, cleaned.domain) == (kept.version + 1, None)
    assert store.mark_uninstalled(scene.member_id, clean=True) is None
    assert store.mark_uninstalled(scene.member_id, clean=False) is None
    assert scene.stored() == cleaned
