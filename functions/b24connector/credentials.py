"""Secrets Manager values (client secret, cursor signing key, PKCE key) through Powertools with a bounded cache age."""

from __future__ import annotations

from aws_lambda_powertools.utilities import parameters

from b24connector.observability import count, logger
from b24connector.settings import Settings, get_settings

# What template.yaml's ClientSecret holds until `make put-secret` stores the real one (a Bitrix24
# client secret is alphanumeric, so it can never look like this). Functions refuse it: fail closed.
CLIENT_SECRET_NOT_SET = "not-set: run `make put-secret` to store the Bitrix24 client secret"
CLIENT_SECRET_MISSING_METRIC = "ClientSecretMissing"


class SecretUnavailable(RuntimeError):
    """A secret could not be read or is empty; the text names the secret id, never its value."""

    code = "CLIENT_SECRET_UNAVAILABLE"


class ClientSecretNotSet(SecretUnavailable):
    """The stack's ClientSecret still holds the deploy-time marker: `make put-secret` has not run."""

    code = "CLIENT_SECRET_NOT_SET"


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
    value = _read_secret(conf.client_secret_id, conf.secret_max_age_seconds)
    if value == CLIENT_SECRET_NOT_SET:
        count(CLIENT_SECRET_MISSING_METRIC)
        logger.error(
            "client secret not set: run `make put-secret`", extra={"secret_id": conf.client_secret_id}
        )
        raise ClientSecretNotSet(
            f"client secret not set: secret {conf.client_secret_id} still holds the deploy marker"
        )
    return value


def cursor_signing_key(settings: Settings | None = None) -> bytes:
    """The key that signs lead-list cursors, cached for SECRET_MAX_AGE_SECONDS."""
    conf = settings or get_settings()
    return _read_secret(conf.cursor_secret_id, conf.secret_max_age_seconds).encode("utf-8")


def pkce_key(settings: Settings | None = None) -> bytes:
    """The key PKCE verifiers are derived from (its own secret, not the cursor key), cached likewise."""
    conf = settings or get_settings()
    if not conf.pkce_secret_id:
        raise SecretUnavailable("no PKCE key is configured (PKCE_SECRET_ID)")
    return _read_secret(conf.pkce_secret_id, conf.secret_max_age_seconds).encode("utf-8")
