"""A local stack over the fake-handler template, shared by the tests of this directory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from local_stack import LocalStack, StackConfig

HERE = Path(__file__).resolve().parent
FAKE_TEMPLATE = HERE / "template.yaml"


@pytest.fixture(scope="session")
def seen_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the fake SQS worker writes every record it receives."""
    return tmp_path_factory.mktemp("seen") / "records.jsonl"


@pytest.fixture(scope="session")
def fake_stack(seen_file: Path) -> Iterator[LocalStack]:
    """The stack on ephemeral ports, without the emulator (the fakes do not talk to Bitrix24)."""
    config = StackConfig(
        template=FAKE_TEMPLATE,
        emulator=False,
        workers_per_function=2,
        env_overrides={"SEEN_FILE": str(seen_file)},
    )
    with LocalStack(config) as stack:
        yield stack
