"""The portal's people: user 1 administers the portal, users 2 and 3 do not, plus the app's system user."""

from __future__ import annotations

from dataclasses import dataclass

from bitrix24_emulator.config import EmulatorConfig


@dataclass(frozen=True)
class User:
    """One portal user as `profile` shows them."""

    user_id: int
    name: str
    last_name: str
    admin: bool
    system: bool = False


# Fixed employees; the system user's id and admin flag come from the config.
_EMPLOYEES = (
    User(1, "Ada", "Admin", admin=True),
    User(2, "Emil", "Employee", admin=False),
    User(3, "Erin", "Employee", admin=False),
)


def users(config: EmulatorConfig) -> dict[int, User]:
    """Every user of the portal by id."""
    table = {user.user_id: user for user in _EMPLOYEES}
    table[config.system_user_id] = User(
        config.system_user_id, "Application", "System user", admin=config.system_user_admin, system=True
    )
    return table


def get_user(config: EmulatorConfig, user_id: int) -> User:
    """The user with that id; ValueError for an unknown one (admin API input)."""
    user = users(config).get(user_id)
    if user is None:
        known = ", ".join(str(i) for i in sorted(users(config)))
        raise ValueError(f"unknown user_id {user_id} (known: {known})")
    return user


def is_admin(config: EmulatorConfig, user_id: int) -> bool:
    """What `user.admin` answers for that user."""
    user = users(config).get(user_id)
    return bool(user and user.admin)


def parse_user_id(raw: object, default: int) -> int:
    """A user id from admin JSON (None = default); ValueError for anything but a positive integer."""
    if raw is None:
        return default
    if isinstance(raw, bool) or not isinstance(raw, int | str):
        raise ValueError("user_id must be an integer")
    try:
        value = int(raw)
    except ValueError as exc:
        raise ValueError("user_id must be an integer") from exc
    if value < 1:
        raise ValueError("user_id must be positive")
    return value


# The emulated portal's login session: which user a browser is logged in as (GET /_emulator/login sets it).
SESSION_COOKIE = "b24_emulator_user"
