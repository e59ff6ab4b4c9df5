"""How a variable's text becomes its value: typed, bounded readers that name the variable
in every error, and the parsers of values that need more than a type."""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from psycopg.conninfo import make_conninfo

from ..schedules import check_timezone
from .types import ConfigError, Database, Deprecated, RetentionRule

T = TypeVar("T")

_IDENT = r"[A-Za-z_][A-Za-z0-9_]{0,62}"
_EXTRA_RULE = re.compile(rf"^(?:({_IDENT})\.)?({_IDENT})\.({_IDENT}):([0-9]{{1,6}})$")
_HANDLER_MODULE = re.compile(r"^[A-Za-z_][\w.]*(:[A-Za-z_]\w*)?$")  # handlers.MODULE_ENTRY
_CLOCK = re.compile(r"^([01][0-9]|2[0-3]):[0-5][0-9]$")
_TRUE = {"1", "true", "yes", "on"}
MIN_TOKEN_CHARS = 16
_FALSE = {"0", "false", "no", "off"}


# How a variable's text becomes its value: (reader, variable name, default) -> value.
Read = Callable[["Reader", str, Any], Any]


def integer(minimum: int | None = None, maximum: int | None = None) -> Read:
    return lambda r, name, default: r.integer(name, default, minimum=minimum, maximum=maximum)


def number(minimum: float | None = None, maximum: float | None = None) -> Read:
    return lambda r, name, default: r.number(name, default, minimum=minimum, maximum=maximum)


def choice(allowed: tuple[str, ...], *, upper: bool = False) -> Read:
    return lambda r, name, default: r.choice(name, default, allowed, upper=upper)


def parsed(parse: Callable[[str], Any]) -> Read:
    return lambda r, name, default: r.parsed(name, default, parse)


def optional_choice(allowed: tuple[str, ...]) -> Read:
    return lambda r, name, default: r.optional_choice(name, allowed)


def read_with(method: str) -> Read:
    return lambda r, name, default: getattr(r, method)(name, default)


def read_optional(method: str) -> Read:
    return lambda r, name, default: getattr(r, method)(name)


def parse_run_on_start(value: str) -> str:
    """`true|missed|false` (also 1/0, yes/no, on/off for true and false)."""
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return "true"
    if lowered in _FALSE:
        return "false"
    if lowered == "missed":
        return "missed"
    raise ValueError(f"must be true, missed or false; got {value!r}")


def http_timeout(r: Reader) -> tuple[float, tuple[Deprecated, ...]]:
    """HTTP_TIMEOUT_SECONDS, or the old HTTP_TIMEOUT (uv reads that name itself and refuses
    a fraction, so `HTTP_TIMEOUT=2.5 uv run ...` fails before the worker starts)."""
    new, old = "HTTP_TIMEOUT_SECONDS", "HTTP_TIMEOUT"
    if r.optional(old) is None:
        return r.number(new, 30.0, minimum=0.001), ()
    if r.optional(new) is not None:
        note = f"{old} is ignored: {new} is set and wins; unset {old}"
        return r.number(new, 30.0, minimum=0.001), (Deprecated(old, new, note),)
    note = f"{old} is deprecated: rename it {new} (uv reads {old} itself)"
    return r.number(old, 30.0, minimum=0.001), (Deprecated(old, new, note),)


def parse_token(value: str) -> str:
    """A bearer token: at least MIN_TOKEN_CHARS visible ASCII characters, no spaces."""
    if len(value) < MIN_TOKEN_CHARS:
        raise ValueError(f"must be at least {MIN_TOKEN_CHARS} characters long")
    if not all("!" <= char <= "~" for char in value):
        raise ValueError("must be visible ASCII characters without spaces")
    return value


def parse_handlers(value: str) -> tuple[str, ...]:
    """`dir,module,module:function`: each an existing directory (of scripts) or a module
    name, in order, repeats left out. A name that is both is the directory."""
    entries = []
    for raw in value.split(","):
        entry = raw.strip()
        if not entry or entry in entries:
            continue
        if not Path(entry).is_dir() and not _HANDLER_MODULE.match(entry):
            raise ValueError(
                f"{entry!r} is neither an existing directory nor a module name"
                " (module or module:function)"
            )
        entries.append(entry)
    return tuple(entries)


def resolve_database(env: Mapping[str, str], *, production: bool) -> Database:
    """First match wins: DATABASE_URL, POSTGRES_*, libpq's PG*, then the embedded server."""
    url = env.get("DATABASE_URL", "").strip()
    if url:
        return Database(_normalise_url(url), "DATABASE_URL")
    if env.get("POSTGRES_HOST"):
        port = env.get("POSTGRES_PORT", "5432")
        if not port.isdigit():
            raise ConfigError(f"POSTGRES_PORT must be a port number, got {port!r}")
        conninfo = make_conninfo(
            host=env["POSTGRES_HOST"],
            port=port,
            user=env.get("POSTGRES_USER") or None,
            password=env.get("POSTGRES_PASSWORD") or None,
            dbname=env.get("POSTGRES_DB") or None,
        )
        return Database(conninfo, "POSTGRES_HOST")
    if env.get("PGHOST") or env.get("PGSERVICE"):
        return Database("", "PGHOST")  # libpq reads PGHOST, PGUSER, PGPASSWORD... itself
    if production:
        raise ConfigError(
            "DATABASE_URL is required in production "
            "(or POSTGRES_HOST, or PGHOST); the embedded database is for development only"
        )
    data_dir = Path(env.get("WORKER_DATA_DIR") or ".worker")
    return Database("", "embedded", embedded_dir=data_dir)


def parse_extra_rules(value: str) -> tuple[RetentionRule, ...]:
    """Parse `table.column:days[,schema.table.column:days...]`; reject anything else."""
    rules = []
    for raw in value.split(","):
        part = raw.strip()
        if not part:
            continue
        match = _EXTRA_RULE.match(part)
        if not match:
            raise ValueError(f"rule {part!r} is not of the form table.column:days")
        schema, table, column, days = match.groups()
        if int(days) < 1:
            raise ValueError(f"rule {part!r}: days must be at least 1")
        rules.append(RetentionRule(table=table, column=column, days=int(days), schema=schema))
    return tuple(rules)


def _normalise_url(url: str) -> str:
    # libpq takes URLs and key=value strings alike; a malformed one must fail here, with a
    # message that does not echo the value (it may hold the password).
    from psycopg.conninfo import conninfo_to_dict

    try:
        conninfo_to_dict(url)
    except Exception:
        raise ConfigError(
            "DATABASE_URL is not a valid PostgreSQL connection string "
            "(expected postgresql://user:password@host:5432/dbname)"
        ) from None
    return url


class Reader:
    """Typed access to environment variables; every error names the variable."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    def _raw(self, name: str) -> str | None:
        value = self.env.get(name)
        if value is None or value.strip() == "":
            return None
        return value.strip()

    def parsed(self, name: str, default: T, parse: Callable[[str], T]) -> T:
        raw = self._raw(name)
        if raw is None:
            return default
        try:
            return parse(raw)
        except ValueError as exc:
            raise ConfigError(f"{name}: {exc}") from None

    def optional(self, name: str) -> str | None:
        return self._raw(name)

    def integer(
        self, name: str, default: int, *, minimum: int | None = None, maximum: int | None = None
    ) -> int:
        raw = self._raw(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None
        return self._bounded(name, value, minimum, maximum)

    def number(
        self,
        name: str,
        default: float,
        *,
        minimum: float | None = None,
        maximum: float | None = None,
    ) -> float:
        raw = self._raw(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{name} must be a number, got {raw!r}") from None
        if not math.isfinite(value):
            raise ConfigError(f"{name} must be a finite number, got {raw!r}")
        return self._bounded(name, value, minimum, maximum)

    @staticmethod
    def _bounded(name: str, value: T, minimum: float | None, maximum: float | None) -> T:
        if minimum is not None and value < minimum:  # type: ignore[operator]
            raise ConfigError(f"{name} must be at least {minimum}, got {value}")
        if maximum is not None and value > maximum:  # type: ignore[operator]
            raise ConfigError(f"{name} must be at most {maximum}, got {value}")
        return value

    def choice(
        self, name: str, default: str, allowed: tuple[str, ...], *, upper: bool = False
    ) -> str:
        raw = self._raw(name)
        if raw is None:
            return default
        value = raw.upper() if upper else raw.lower()
        if value not in allowed:
            raise ConfigError(f"{name} must be one of {', '.join(allowed)}; got {raw!r}")
        return value

    def optional_choice(self, name: str, allowed: tuple[str, ...]) -> str | None:
        if self._raw(name) is None:
            return None
        return self.choice(name, allowed[0], allowed)

    def jobs_file(self, name: str, default: Path) -> Path | None:
        """The named file; else `default` when it exists; else None. A named file that is
        missing is the jobs file's problem, reported by what runs its jobs, not here."""
        raw = self._raw(name)
        if raw is None:
            return default if default.is_file() else None
        return Path(raw)

    def http_port(self) -> int | None:
        """WORKER_HTTP_PORT, else the platform's PORT, else None (no endpoint)."""
        for name in ("WORKER_HTTP_PORT", "PORT"):
            if self._raw(name) is not None:
                return self.integer(name, 0, minimum=1, maximum=65535)
        return None

    def host(self, name: str, default: str) -> str:
        """An IP address to listen on (`0.0.0.0`, `::`, `127.0.0.1`); `localhost` is 127.0.0.1.

        One address, never a name that may resolve to several: the server binds one socket.
        """
        raw = self._raw(name) or default
        if raw.lower() == "localhost":
            return "127.0.0.1"
        try:
            return str(ipaddress.ip_address(raw.strip("[]")))
        except ValueError:
            raise ConfigError(
                f"{name} must be an IP address (0.0.0.0, ::, 127.0.0.1...), got {raw!r}"
            ) from None

    def clock(self, name: str, default: str) -> str:
        raw = self._raw(name) or default
        if not _CLOCK.match(raw):
            raise ConfigError(f"{name} must be a time of day as HH:MM (24-hour), got {raw!r}")
        return raw

    def timezone(self, name: str, default: str) -> str:
        raw = self._raw(name) or default
        try:
            return check_timezone(raw)
        except ValueError as exc:
            raise ConfigError(f"{name}: {exc}") from None

    def url(self, name: str, default: str) -> str:
        return self.optional_url(name) or default

    def optional_url(self, name: str) -> str | None:
        raw = self._raw(name)
        if raw is None:
            return None
        parts = urlsplit(raw)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            # The value may carry a token: name the variable, not the value.
            raise ConfigError(f"{name} must be an http:// or https:// URL")
        return raw
