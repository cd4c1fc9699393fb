"""Argument types and the parser class shared by the subcommands."""

from __future__ import annotations

import argparse
import math

__all__ = [
    "CommandError",
    "Parser",
    "positive_int",
    "nonnegative_int",
    "finite_float",
    "path_arg",
    "int_list",
    "step_list",
    "name_list",
    "float_list",
]


class CommandError(Exception):
    """A user-facing failure of a command: printed without a traceback, exit status 2."""


class Parser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors are one line (the usage stays in ``--help``)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _int(text: str, low: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"{value} must be {what}")
    return value


def positive_int(text: str) -> int:
    return _int(text, 1, "a positive integer")


def nonnegative_int(text: str) -> int:
    return _int(text, 0, "an integer >= 0")


def finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number")
    return value


def path_arg(text: str) -> str:
    """A file or directory name; an empty one is refused (it would mean the current directory)."""
    if not text.strip():
        raise argparse.ArgumentTypeError(
            f"{text!r} names no file or directory (an empty path would mean the current directory)"
        )
    return text


def _items(text: str) -> list[str]:
    """``"a, b"`` -> ``["a", "b"]``; an empty item (``"a,,b"``, ``"a,"``) is refused, never dropped."""
    items = [t.strip() for t in text.split(",")]
    if not any(items):
        raise argparse.ArgumentTypeError(f"{text!r} lists no values")
    if not all(items):
        raise argparse.ArgumentTypeError(f"{text!r} has an empty item")
    return items


def int_list(text: str, low: int = 1) -> tuple[int, ...]:
    """``"1,8,32"`` -> ``(1, 8, 32)``, each at least ``low``."""
    return tuple(_int(t, low, f"an integer >= {low}") for t in _items(text))


def step_list(text: str) -> tuple[int, ...]:
    """``"0,50,100"`` -> ``(0, 50, 100)``: optimizer steps (0 is before the first one)."""
    return int_list(text, 0)


def name_list(text: str) -> tuple[str, ...]:
    """``"a,b"`` -> ``("a", "b")``."""
    return tuple(_items(text))


def float_list(text: str) -> tuple[float, ...]:
    """``"0,0.5,1"`` -> ``(0.0, 0.5, 1.0)``, each finite."""
    return tuple(finite_float(t) for t in _items(text))
