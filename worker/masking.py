"""Known secrets replaced by `***` wherever text leaves the process: output, errors, logs."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from urllib.parse import urlsplit, urlunsplit

MASK = "***"
# Shorter values are not masked: replacing every "ab" in a job's output would destroy it,
# and a secret that short protects nothing anyway.
MIN_SECRET_LEN = 6


class Masker:
    """Replaces each known secret in a text by `***`, longest first."""

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        self._secrets: list[str] = []
        self.add(secrets)

    def add(self, secrets: Iterable[str | None]) -> None:
        known = set(self._secrets)
        known.update(s for s in secrets if s and len(s) >= MIN_SECRET_LEN)
        self._secrets = sorted(known, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text

    def __bool__(self) -> bool:
        return bool(self._secrets)


# A header or variable whose name says it holds a secret is masked whole, whatever its value.
SECRET_NAME = re.compile(r"auth|token|secret|passw|key|cookie|credential|signature", re.I)


def mask_named(values: Mapping[str, str], mask: Callable[[str], str]) -> dict[str, str]:
    """`values` with each secret-named entry's value `***`, every other one through `mask`."""
    return {name: MASK if SECRET_NAME.search(name) else mask(v) for name, v in values.items()}


def mask_url(url: str) -> str:
    """`url` without the password of its user part (`https://user:***@host/`)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", f":{MASK}@", 1)
    return urlunsplit(parts._replace(netloc=netloc))
