"""Known secrets replaced by `***` wherever text leaves the process: output, errors, logs."""

from __future__ import annotations

from collections.abc import Iterable

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
