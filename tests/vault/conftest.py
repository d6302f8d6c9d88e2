"""The vault's fixtures: in-process moto for the unit tests, real servers and the emulator for the rest.

Both live in tests/support (vault_unit.py, vault_scene.py) because tests/vault and tests/token_refresh
share them.
"""

from tests.support.vault_scene import emulator, scene_factory  # noqa: F401  (fixtures)
from tests.support.vault_unit import _in_process_moto, mocked_aws, vault  # noqa: F401  (fixtures)
