"""Argument types shared by the commands (a bad number is refused by the parser: exit 2, usage shown), and
the two ways between flags and the library's option dataclasses, whose fields the flags are named after."""

from __future__ import annotations

import argparse
import dataclasses
from typing import TypeVar

Options = TypeVar("Options")


def positive(text: str) -> int:
    """An integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative(text: str) -> int:
    """An integer of 0 or more."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def positive_float(text: str) -> float:
    """A finite number above 0."""
    value = float(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def options_from(cls: type[Options], args: argparse.Namespace) -> Options:
    """The library's options dataclass ``cls`` built from the parsed arguments: each field from the argument
    of the same name (``--batch-size`` -> ``batch_size``)."""
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if f.init})


def option_flags(parser: argparse.ArgumentParser) -> dict[str, str]:
    """How a command spells each of its options, from its own definitions: ``{dest: flag}``, a positional
    by its metavar. The CLI writes a library error's option names so (:class:`bcat.errors.OptionError`).

    >>> p = argparse.ArgumentParser()
    >>> _ = p.add_argument("-b", "--batch-size"); _ = p.add_argument("runs", metavar="DIR")
    >>> option_flags(p)["batch_size"], option_flags(p)["runs"]
    ('--batch-size', 'DIR')
    """
    return {action.dest: max(action.option_strings, key=len) if action.option_strings else action.metavar or action.dest
            for action in parser._actions}
