"""Signatures as text: an annotation object rendered as it would be written (`render`, in
the child that imports a handler), and what values an annotation's text accepts
(`annotation_kind`, in the daemon, which never evaluates it): a small explicit grammar of
`X | None`, `Optional[X]`, `Union[...]`, `list[...]`, `dict[...]` and the base types.
"""

from __future__ import annotations

import inspect
import math
import types
import typing
from dataclasses import dataclass
from typing import Any, Final

from . import timeforms

BASE_TYPES = ("int", "float", "str", "bool", "list", "dict", *timeforms.DATE_LIKES)
_NAMES = {name: name for name in BASE_TYPES} | {"List": "list", "Dict": "dict"}
_NONE = ("None", "NoneType")


@dataclass(frozen=True)
class Kind:
    """What values an annotation accepts: some of BASE_TYPES (or `any`), and null or not."""

    types: frozenset[str]
    nullable: bool = False

    @property
    def date_like(self) -> str | None:
        """`datetime`, `date` or `timedelta` when the value is one of those forms (and not
        also a plain string): the kind `timeforms.resolve` is given."""
        found = [name for name in timeforms.DATE_LIKES if name in self.types]
        return found[0] if len(found) == 1 and not {"str", "any"} & self.types else None

    def problem(self, value: Any) -> str | None:
        """Why `value` (JSON) does not fit, or None when it does."""
        if "any" in self.types or (value is None and self.nullable):
            return None
        if value is not None and any(_fits(name, value) for name in self.types):
            return None
        return f"got {timeforms.json_type(value)}"


ANY: Final = Kind(frozenset({"any"}), nullable=True)


def annotation_kind(text: str | None) -> Kind:
    """The Kind of an annotation's text (`int`, `datetime | None`, `Optional[list[str]]`,
    `typing.Dict[str, int]`); anything it does not know (`Any`, a class) accepts any value."""
    if not text or not text.strip():
        return ANY
    types: set[str] = set()
    nullable = False
    for member in _split(_unquoted(text), "|"):
        kind = _member_kind(_unquoted(member))
        types |= kind.types
        nullable = nullable or kind.nullable
    if "any" in types or not types:
        return ANY
    return Kind(frozenset(types), nullable)


def _member_kind(text: str) -> Kind:
    head, bracket, rest = text.partition("[")
    head = head.strip().rsplit(".", 1)[-1]  # typing.Optional, datetime.datetime
    inner = rest[:-1] if rest.endswith("]") else None
    if bracket and inner is None:
        return ANY  # not an annotation the grammar can read
    if head in _NONE and not bracket:
        return Kind(frozenset(), nullable=True)
    if head == "Optional" and inner is not None:
        return Kind(annotation_kind(inner).types, nullable=True)
    if head == "Union" and inner is not None:
        return annotation_kind(" | ".join(_split(inner, ",")))
    if head in _NAMES:
        return Kind(frozenset({_NAMES[head]}))
    return ANY


def _split(text: str, separator: str) -> list[str]:
    """`text` split on `separator` outside brackets and quotes."""
    parts, depth, quote, start = [], 0, "", 0
    for index, char in enumerate(text):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[(":
            depth += 1
        elif char in "])":
            depth -= 1
        elif char == separator and depth == 0:
            parts.append(text[start:index])
            start = index + 1
    return [*parts, text[start:]]


def _unquoted(text: str) -> str:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1].strip()
    return text


def _fits(name: str, value: Any) -> bool:
    if name in timeforms.DATE_LIKES:
        try:
            timeforms.check(name, value)
        except ValueError:
            return False
        return True
    if isinstance(value, bool):
        return name == "bool"
    if name == "float":
        return isinstance(value, int | float) and math.isfinite(value)
    python_type = {"int": int, "str": str, "list": list, "dict": dict}.get(name)
    return python_type is not None and isinstance(value, python_type)


# --- annotation objects as text (in the child) ------------------------------------------


def render(annotation: Any) -> str | None:
    """An annotation as text: a string one as written, an object as it would be written
    (`datetime | None`, `Optional[int]`, `list[str]`, `Config`); None when there is none."""
    if annotation is inspect.Parameter.empty:
        return None
    if isinstance(annotation, str):
        return annotation
    if annotation is None or annotation is type(None):
        return "None"
    if isinstance(annotation, typing.ForwardRef):
        return annotation.__forward_arg__
    if isinstance(annotation, list):  # Callable[[int], str]'s first argument
        return f"[{', '.join(render(a) or '' for a in annotation)}]"
    if annotation is Ellipsis:
        return "..."
    if isinstance(annotation, types.UnionType):
        return " | ".join(render(a) or "" for a in typing.get_args(annotation))
    return _render_generic(annotation)


def _render_generic(annotation: Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Union:
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1 < len(args):
            return f"Optional[{render(rest[0])}]"
        return f"Union[{', '.join(render(a) or '' for a in args)}]"
    if origin is typing.Literal:
        return f"Literal[{', '.join(repr(a) for a in args)}]"
    if origin is not None and args:
        head = getattr(annotation, "_name", None) or getattr(origin, "__qualname__", "")
        inner = ", ".join(render(a) or "" for a in args)
        return f"{head or inspect.formatannotation(origin)}[{inner}]"
    if isinstance(annotation, type):
        return annotation.__qualname__
    return inspect.formatannotation(annotation)
