"""Secrets Manager values (client secret, cursor signing key) through Powertools with a bounded cache age."""

from __future__ import annotations

from aws_lambda_powertools.utilities import parameters

from b24connector.settings import Settings, get_settings


class SecretUnavailable(RuntimeError):
    """A secret could not be read or is empty; the text names the secret id, never its value."""


def _read_secret(secret_id: str, max_age: int) -> str:
    try:
        value = parameters.get_secret(secret_id, max_age=max_age)
    except parameters.GetParameterError as exc:
        # The cause names the AWS error only, but drop it anyway: nothing from the call reaches logs.
        raise SecretUnavailable(f"secret {secret_id} could not be read ({type(exc).__name__})") from None
    if not value.strip():
        raise SecretUnavailable(f"secret {secret_id} is empty or not a plain string")
    return value.strip()


def client_secret(settings: Settings | None = None) -> str:
    """The Bitrix24 application's client secret (raw string), cached for SECRET_MAX_AGE_SECONDS."""
    conf = settings or get_settings()
    return _read_secret(conf.client_secret_id, conf.secret_max_age_seconds)


def cursor_signing_key(settings: Settings | None = None) -> bytes:
    """The key that signs lead-list cursors, cached for SECRET_MAX_AGE_SECONDS."""
    conf = settings or get_settings()
    return _read_secret(conf.cursor_secret_id, conf.secret_max_age_seconds).encode("utf-8")
