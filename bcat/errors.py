"""User-facing errors. The CLI prints them as one line and exits with code 2, no traceback."""

from __future__ import annotations


class BcatError(Exception):
    """An error caused by the user's input, reported without a traceback."""

    exit_code = 2


class ConfigError(BcatError):
    """A bad config file, key, value or command-line override."""


class DataError(BcatError):
    """A bad data file. The message names the file, the line and the field.

    >>> str(DataError("train.jsonl", 3, "lang", "unknown language code 'xx'"))
    "train.jsonl:3: field 'lang': unknown language code 'xx'"
    """

    def __init__(self, path: str, line: int | None, field: str | None, message: str):
        self.path, self.line, self.field = str(path), line, field
        where = self.path + (f":{line}" if line is not None else "")
        what = f" field '{field}':" if field else ""
        super().__init__(f"{where}:{what} {message}")


class TrainingError(BcatError):
    """Training cannot go on (a NaN loss, an unwritable output directory, ...)."""
