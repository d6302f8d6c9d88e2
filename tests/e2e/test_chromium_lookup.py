"""Where the browser tests find Chromium, and what a missing one means (fail in CI, skip locally)."""

from __future__ import annotations

import stat
from pathlib import Path

from tests.e2e.helpers import chromium_missing_means_failure, find_chromium


def _executable(path: Path) -> str:
    path.write_text("#!/bin/sh\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def test_chromium_path_wins_and_is_not_second_guessed(tmp_path: Path) -> None:
    chosen = _executable(tmp_path / "my-chromium")
    on_path = _executable(tmp_path / "chromium")
    assert find_chromium({"CHROMIUM_PATH": chosen}, lambda name: on_path) == chosen
    # a wrong CHROMIUM_PATH is reported missing rather than silently replaced
    assert find_chromium({"CHROMIUM_PATH": str(tmp_path / "nope")}, lambda name: on_path) is None


def test_chromium_on_path_then_debian_default(tmp_path: Path) -> None:
    on_path = _executable(tmp_path / "chromium")
    default = _executable(tmp_path / "default-chromium")
    assert find_chromium({}, lambda name: on_path, default) == on_path
    assert find_chromium({}, lambda name: None, default) == default
    assert find_chromium({}, lambda name: None, str(tmp_path / "absent")) is None
    not_executable = tmp_path / "plain"
    not_executable.write_text("")
    assert find_chromium({}, lambda name: None, str(not_executable)) is None


def test_missing_chromium_fails_only_in_ci() -> None:
    assert chromium_missing_means_failure({"CI": "true"})
    assert chromium_missing_means_failure({"CI": "1"})
    assert not chromium_missing_means_failure({})
    assert not chromium_missing_means_failure({"CI": ""})
    assert not chromium_missing_means_failure({"CI": "false"})
