"""Configuration: every variable the worker reads, declared once and parsed in one place.

- `types`: what a parsed configuration is (`Settings`, `Database`, `RetentionRule`...).
- `variables`: `VARIABLES`, one row per environment variable (name, field, default,
  bounds, meaning), the table the README's configuration section is checked against.
- `readers`: how a variable's text becomes its value; every error names the variable.
- `load`: `from_env` (the environment into `Settings`) and `load_environment` (`.env`).
"""

from .load import from_env, load_environment
from .readers import parse_extra_rules, resolve_database
from .types import (
    SERVICE_NAMES,
    WEBHOOK_FORMATS,
    ConfigError,
    Database,
    Deprecated,
    RetentionRule,
    Settings,
)
from .variables import VARIABLES, Var

__all__ = [
    "SERVICE_NAMES",
    "VARIABLES",
    "WEBHOOK_FORMATS",
    "ConfigError",
    "Database",
    "Deprecated",
    "RetentionRule",
    "Settings",
    "Var",
    "from_env",
    "load_environment",
    "parse_extra_rules",
    "resolve_database",
]
