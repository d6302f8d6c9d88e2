"""In-process moto for the vault's unit tests (tests/support/vault_unit.py; tests/vault and
tests/token_refresh share it). The integration tests use the project's `scene_factory` (tests/conftest.py).
"""

from tests.support.vault_unit import _in_process_moto, mocked_aws, vault  # noqa: F401  (fixtures)
