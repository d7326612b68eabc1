"""The per-language template files, ``bcat/resources/kb/templates/<lang>.yaml``.

One file per language, so that a native speaker can review one file line by line. Every file has
the same keys; a list holds free paraphrases (at least three). Loading checks the placeholders of
every line, so that a typo fails at build time, not in the middle of a data set.
"""

from __future__ import annotations

import functools
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bcat.bundled import resource
from bcat.errors import DataError

MIN_PARAPHRASES = 3
NUMBER_ATTRIBUTES = ("warranty", "battery", "weight", "price")
"""Facts whose answer is a number (a quantity or a price)."""
NAME_ATTRIBUTES = ("currency", "country", "language", "delivery_day", "launch_month")
"""Facts whose answer is a CLDR name."""
ATTRIBUTES = NUMBER_ATTRIBUTES + NAME_ATTRIBUTES
UNITS = ("months", "hours", "grams")

# Which placeholders each kind of line must (required) and may (allowed) use.
_FIELDS: dict[str, tuple[set[str], set[str]]] = {
    "units": ({"n"}, {"n", "de"}),
    "headers": ({"model"}, {"model"}),
    "facts": ({"value"}, {"value"}),
    "questions": ({"model"}, {"model"}),
    "which_model": (set(), {"value", "n"}),
    "compare": ({"a", "b"}, {"a", "b"}),
    "udhr.label": ({"n"}, {"n"}),
    "udhr.passage": ({"label", "text"}, {"label", "text"}),
    "udhr.questions": ({"span"}, {"span"}),
}


@dataclass(frozen=True)
class Templates:
    """The templates of one language (see ``en.yaml`` for what each part is)."""

    lang: str
    joiner: str
    units: dict[str, str]
    headers: tuple[str, ...]
    facts: dict[str, tuple[str, ...]]
    questions: dict[str, tuple[str, ...]]
    which_model: dict[str, tuple[str, ...]]
    compare: dict[str, tuple[str, ...]]
    udhr_label: str
    udhr_passage: str
    udhr_questions: tuple[str, ...]


def placeholders(template: str) -> set[str]:
    """The ``{names}`` a template uses.

    >>> sorted(placeholders("Which of {a} and {b}?"))
    ['a', 'b']
    """
    return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}


def _check_line(path: str, where: str, kind: str, text: Any) -> str:
    if not isinstance(text, str) or not text.strip():
        raise DataError(path, None, where, "must be a non-empty string")
    required, allowed = _FIELDS[kind]
    used = placeholders(text)
    if not required <= used:
        raise DataError(path, None, where, f"{text!r} lacks {sorted(required - used)}")
    if not used <= allowed:
        raise DataError(path, None, where, f"{text!r} uses unknown placeholders {sorted(used - allowed)}")
    if kind == "which_model" and not used & {"value", "n"}:
        raise DataError(path, None, where, f"{text!r} must name the fact with {{value}} or {{n}}")
    return text


def _paraphrases(path: str, where: str, kind: str, lines: Any) -> tuple[str, ...]:
    if not isinstance(lines, list) or len(lines) < MIN_PARAPHRASES:
        raise DataError(path, None, where, f"needs a list of at least {MIN_PARAPHRASES} paraphrases")
    return tuple(_check_line(path, f"{where}[{i}]", kind, t) for i, t in enumerate(lines))


def _table(path: str, raw: dict, key: str, names: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    section = raw.get(key)
    if not isinstance(section, dict) or set(section) != set(names):
        got = sorted(section) if isinstance(section, dict) else section
        raise DataError(path, None, key, f"needs exactly the keys {sorted(names)}, got {got}")
    return {name: _paraphrases(path, f"{key}.{name}", key, section[name]) for name in names}


def parse_templates(lang: str, text: str, path: str = "<templates>") -> Templates:
    """Parse and check one language's YAML text."""
    raw = yaml.safe_load(text)
    if not isinstance(raw, dict):
        raise DataError(path, None, None, "must be a YAML mapping")
    units = raw.get("units") or {}
    if set(units) != set(UNITS):
        raise DataError(path, None, "units", f"needs exactly {list(UNITS)}")
    udhr = raw.get("udhr") or {}
    joiner = raw.get("joiner")
    if not isinstance(joiner, str):
        raise DataError(path, None, "joiner", "must be a string (\" \" or \"\")")
    return Templates(
        lang=lang,
        joiner=joiner,
        units={u: _check_line(path, f"units.{u}", "units", units[u]) for u in UNITS},
        headers=_paraphrases(path, "headers", "headers", raw.get("headers")),
        facts=_table(path, raw, "facts", ATTRIBUTES),
        questions=_table(path, raw, "questions", ATTRIBUTES),
        which_model=_table(path, raw, "which_model", NUMBER_ATTRIBUTES),
        compare=_table(path, raw, "compare", NUMBER_ATTRIBUTES),
        udhr_label=_check_line(path, "udhr.label", "udhr.label", udhr.get("label")),
        udhr_passage=_check_line(path, "udhr.passage", "udhr.passage", udhr.get("passage")),
        udhr_questions=_paraphrases(path, "udhr.questions", "udhr.questions", udhr.get("questions")),
    )


def template_path(lang: str) -> Path:
    """The packaged template file of a language."""
    return resource(f"kb/templates/{lang}.yaml")


@functools.lru_cache(maxsize=None)
def load_templates(lang: str) -> Templates:
    """The checked templates of ``lang`` from the package's resources."""
    path = template_path(lang)
    if not path.is_file():
        raise DataError(str(path), None, None, f"no templates for language {lang!r}")
    return parse_templates(lang, path.read_text(encoding="utf-8"), str(path))
