"""Argument checks: one set of rules for every library entry point and the command line.

Each check names the *Python* argument that is wrong (``lr=0.0 must be a finite number > 0``)
and raises :class:`ArgumentError`, a ``ValueError`` that remembers which arguments it names.  The
command line maps those names to its own flags (``--lr 0.0 ...``), so a library user never reads
command-line vocabulary and a CLI user never reads Python names.

Rules are per *type* of argument, so a new argument of that type gets them by using the check:

* a path (:func:`path`) must name something: an empty string is refused, because ``Path("")``
  is the current directory and a run would write its files there;
* a list (:func:`items`) must list something and may not hold empty items (``"a,,b"`` is
  refused, never silently repaired into ``("a", "b")``);
* numbers are finite unless said otherwise, integers are real ints (not bools, not floats).

Config dataclasses declare their checks beside their fields with :func:`option` and run them
all with :func:`check_fields`.
"""

from __future__ import annotations

import math
import os
import string
from dataclasses import MISSING, field, fields
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

__all__ = [
    "Message",
    "ArgumentError",
    "integer",
    "number",
    "choice",
    "text",
    "path",
    "items",
    "exclusive",
    "Integer",
    "Number",
    "Choice",
    "Text",
    "PathArg",
    "Items",
    "option",
    "check_fields",
]


class Message:
    """A message that names arguments: ``template`` is a ``str.format`` template where each field
    named in ``literals`` is filled with that text and every other field is an *argument name*,
    spelled as the Python name by ``str()`` and as anything else (the CLI's flags) by :meth:`render`."""

    def _set_message(self, template: str, owner: str | None, literals: Mapping[str, Any]) -> str:
        self.template, self.literals, self.owner = template, {k: str(t) for k, t in literals.items()}, owner
        names = [f for _, f, _, _ in string.Formatter().parse(template) if f and f not in literals]
        self.arguments = tuple(dict.fromkeys(names))  # in order of first appearance
        return self.render()

    def render(self, names: Mapping[str, str] | Callable[[str], str] | None = None, *, owner: bool = True) -> str:
        """The message with each argument spelled by ``names`` (a mapping or a function)."""
        spell = names if callable(names) else (lambda a: (names or {}).get(a, a))
        text = self.template.format(**{a: spell(a) for a in self.arguments}, **self.literals)
        return f"{self.owner}: {text}" if owner and self.owner else text


class ArgumentError(Message, ValueError):
    """A bad argument (a ``ValueError`` whose message names the arguments, see :class:`Message`)::

    ArgumentError("{lr}={value} must be > 0", value="-1.0")   # "lr=-1.0 must be > 0"
    """

    def __init__(self, template: str, /, *, owner: str | None = None, **literals: Any) -> None:
        super().__init__(self._set_message(template, owner, literals))


def _bad(name: str, value: Any, requirement: str, owner: str | None) -> ArgumentError:
    return ArgumentError("{%s}={value} {requirement}" % name, value=repr(value), requirement=requirement, owner=owner)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# ------------------------------------------------------------------------------------------
# checks as functions: each returns the (normalized) value or raises ArgumentError
# ------------------------------------------------------------------------------------------
def integer(value: Any, name: str, *, low: int | None = None, high: int | None = None, owner: str | None = None) -> int:
    """An int in ``[low, high]`` (bools and floats are refused)."""
    if not _is_int(value) or (low is not None and value < low) or (high is not None and value > high):
        bounds = [f">= {low}"] * (low is not None) + [f"<= {high}"] * (high is not None)
        raise _bad(name, value, "must be an integer" + (" " + " and ".join(bounds) if bounds else ""), owner)
    return int(value)


def number(
    value: Any,
    name: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    owner: str | None = None,
) -> float:
    """A finite number in the interval given by ``low``/``high`` (open ends with ``*_open``)."""
    ok = _is_number(value) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        bounds = []
        if low is not None:
            bounds.append(f"{'>' if low_open else '>='} {low:g}")
        if high is not None:
            bounds.append(f"{'<' if high_open else '<='} {high:g}")
        raise _bad(name, value, "must be a finite number" + (" " + " and ".join(bounds) if bounds else ""), owner)
    return value


def choice(value: Any, name: str, choices: Iterable[Any], *, owner: str | None = None) -> Any:
    """One of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        raise _bad(name, value, "must be one of " + ", ".join(map(str, choices)), owner)
    return value


def text(value: Any, name: str, *, owner: str | None = None) -> str:
    """A non-empty string (a name)."""
    if not isinstance(value, str) or not value.strip():
        raise _bad(name, value, "must be a non-empty string", owner)
    return value


def path(value: Any, name: str, *, owner: str | None = None) -> Path:
    """A file or directory name: a non-empty ``str`` or ``os.PathLike`` (``""`` would be the
    current directory, and whitespace alone is almost surely a mistake)."""
    if not isinstance(value, (str, os.PathLike)):
        raise _bad(name, value, "must be a path (str or os.PathLike)", owner)
    text = os.fspath(value)
    if not isinstance(text, str) or not text.strip():
        raise _bad(name, value, "must name a file or directory (an empty path would mean the current directory)", owner)
    return Path(text)


def items(
    value: Any,
    name: str,
    *,
    each: Callable[[Any, str], Any] | None = None,
    allow_empty: bool = False,
    owner: str | None = None,
) -> tuple:
    """A list of values as a tuple: a string is one item, not a sequence of characters; no item
    may be empty (``""``, whitespace or ``None``); ``each(item, name)`` checks every item."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise _bad(name, value, "must be a list of values", owner)
    out = tuple(value)
    if not out and not allow_empty:
        raise _bad(name, value, "must list at least one value", owner)
    for item in out:
        if item is None or (isinstance(item, str) and not item.strip()):
            raise _bad(name, value, "has an empty item", owner)
    if each is not None:
        try:
            out = tuple(each(item, name) for item in out)
        except ArgumentError as err:
            template = err.template.replace("{%s}=" % name, "{%s} item " % name, 1)
            raise ArgumentError(template, owner=owner, **err.literals) from None
    return out


def exclusive(values: Mapping[str, Any], *, required: bool = False, owner: str | None = None) -> str | None:
    """At most one (exactly one with ``required``) of ``values`` is set; returns its name.

    The one check behind "give struct or ratio, not both"."""
    given = [k for k, v in values.items() if v is not None]
    slots = " or ".join("{%s}" % k for k in values)
    if len(given) > 1:
        raise ArgumentError(f"give {slots}, not both", owner=owner)
    if required and not given:
        raise ArgumentError(f"give {slots}", owner=owner)
    return given[0] if given else None


# ------------------------------------------------------------------------------------------
# checks as objects, declared beside dataclass fields
# ------------------------------------------------------------------------------------------
class _Check:
    optional = False

    def __call__(self, value: Any, name: str, owner: str | None = None) -> Any:
        if value is None and self.optional:
            return None
        return self.check(value, name, owner)

    def check(self, value, name, owner):  # pragma: no cover - overridden
        raise NotImplementedError


class Integer(_Check):
    def __init__(self, low: int | None = None, high: int | None = None, *, optional: bool = False) -> None:
        self.low, self.high, self.optional = low, high, optional

    def check(self, value, name, owner):
        return integer(value, name, low=self.low, high=self.high, owner=owner)


class Number(_Check):
    def __init__(self, low=None, high=None, *, low_open=False, high_open=False, optional: bool = False) -> None:
        self.kw = dict(low=low, high=high, low_open=low_open, high_open=high_open)
        self.optional = optional

    def check(self, value, name, owner):
        return number(value, name, owner=owner, **self.kw)


class Choice(_Check):
    """One of ``choices``; a callable is asked at check time (a registry that grows)."""

    def __init__(self, choices: Sequence[Any] | Callable[[], Iterable[Any]], *, optional: bool = False) -> None:
        self.choices, self.optional = choices, optional

    def check(self, value, name, owner):
        choices = self.choices() if callable(self.choices) else self.choices
        return choice(value, name, choices, owner=owner)


class Text(_Check):
    def __init__(self, *, optional: bool = False) -> None:
        self.optional = optional

    def check(self, value, name, owner):
        return text(value, name, owner=owner)


class PathArg(_Check):
    def __init__(self, *, optional: bool = False) -> None:
        self.optional = optional

    def check(self, value, name, owner):
        path(value, name, owner=owner)
        return value


class Items(_Check):
    def __init__(self, each: _Check | None = None, *, allow_empty: bool = False, optional: bool = False) -> None:
        self.each, self.allow_empty, self.optional = each, allow_empty, optional

    def check(self, value, name, owner):
        each = (lambda v, n: self.each(v, n, owner)) if self.each is not None else None
        return items(value, name, each=each, allow_empty=self.allow_empty, owner=owner)


def option(default: Any = MISSING, check: _Check | None = None, *, default_factory: Any = MISSING, doc: str = ""):
    """A dataclass field whose value :func:`check_fields` checks with ``check``."""
    metadata = {"check": check, "doc": doc}
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def check_fields(config: Any, *, owner: str | None = None) -> None:
    """Run the check of every :func:`option` field of the dataclass ``config``; lists and tuples
    are stored back as tuples (so ``["A"]`` and ``("A",)`` mean the same)."""
    for f in fields(config):
        check = f.metadata.get("check")
        if check is None:
            continue
        value = check(getattr(config, f.name), f.name, owner)
        if isinstance(value, tuple):
            object.__setattr__(config, f.name, value)
