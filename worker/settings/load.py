"""Reading the environment into `Settings`: the `.env` file under the real environment, every
variable of `VARIABLES` parsed, the database resolved."""

from __future__ import annotations

import os
from collections.abc import Mapping

from .readers import Reader, http_timeout, resolve_database
from .types import ConfigError, Database, Settings
from .variables import VARIABLES


def load_environment(
    environ: Mapping[str, str] | None = None, dotenv_path: str = ".env"
) -> dict[str, str]:
    """The process environment over the `.env` file: the real environment wins."""
    from dotenv import dotenv_values

    merged = {k: v for k, v in dotenv_values(dotenv_path).items() if v is not None}
    merged.update(os.environ if environ is None else environ)
    return merged


def from_env(
    env: Mapping[str, str],
    *,
    service: str | None = None,
    stdout_is_tty: bool = False,
    need_database: bool = True,
) -> Settings:
    """Parse and validate every variable of VARIABLES; raise ConfigError naming the first
    bad one. Without `need_database` (commands that touch no database) none is resolved.
    """
    r = Reader(env)
    environment = VARIABLES[0].read(r, VARIABLES[0].name, VARIABLES[0].default)
    production = environment == "production" or bool(env.get("RAILWAY_ENVIRONMENT_NAME"))
    # Defaults that depend on where the worker runs.
    defaults = {"LOG_FORMAT": "console" if stdout_is_tty else "json"}
    if production:
        defaults["WORKER_HTTP_HOST"] = "0.0.0.0"  # the platform routes to it
    values = {
        var.field: var.read(r, var.name, defaults.get(var.name, var.default)) for var in VARIABLES
    }
    settings = Settings(
        database=(
            resolve_database(env, production=production) if need_database else Database("", "none")
        ),
        deprecated=http_timeout(r)[1],
        **values,
    )
    if service == "replenish" and not settings.replenish_api_url:  # `all` leaves the job out
        raise ConfigError(f"REPLENISH_API_URL is required by the {service} service")
    return settings
