"""Files bundled with bcat: everything under ``bcat/resources`` (data splits, templates, the vendored
texts, the built-in model's notice), found the same way from every layer."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path, PurePosixPath


def resource(name: str) -> Path:
    """The bundled file or folder ``bcat/resources/<name>`` of the installed package, e.g.
    ``resource("kb/train.jsonl")``. ``name`` is a relative ``/``-separated path inside that folder
    (``ValueError`` otherwise, so that a name cannot reach files outside it); whether it exists is
    the caller's question.

    >>> resource("kb/train.jsonl").relative_to(resource("kb")).as_posix()
    'train.jsonl'
    """
    parts = PurePosixPath(name).parts
    if not parts or PurePosixPath(name).is_absolute() or ".." in parts:
        raise ValueError(f"bundled resource {name!r}: expected a relative path inside bcat/resources")
    return Path(str(files("bcat").joinpath("resources", *parts)))
