"""User-facing errors. The CLI prints them as one line and exits with code 2, no traceback."""

from __future__ import annotations

from typing import Mapping


class BcatError(Exception):
    """An error caused by the user's input, reported without a traceback."""

    exit_code = 2


class ConfigError(BcatError):
    """A bad config file, key, value or command-line override."""


class OptionError(ConfigError):
    """A bad value of an option of a library call: a field of its options dataclass (``EvalOptions.suite``).

    ``template`` writes each option it names as ``{field}``; :meth:`render` spells them: as the field
    itself (``str(error)``, what a Python caller passed), or as another front end names them (the
    command line shows the flag its user typed).

    >>> error = OptionError("{seen} and {unseen}: give one of them", "seen", "unseen")
    >>> str(error), error.render({"seen": "--seen", "unseen": "--unseen"})
    ('seen and unseen: give one of them', '--seen and --unseen: give one of them')
    """

    def __init__(self, template: str, *options: str):
        missing = [o for o in options if "{" + o + "}" not in template]
        if missing or not options:
            raise ValueError(f"OptionError template {template!r} must name each of its options {options} as {{field}}")
        self.template, self.options = template, options
        super().__init__(self.render())

    @classmethod
    def about(cls, option: str, rest: str) -> OptionError:
        """The error whose message is ``option`` followed by ``rest``, for an option known by a variable.

        >>> str(OptionError.about("output", " out/x is not writable"))
        'output out/x is not writable'
        """
        return cls("{" + option + "}" + rest, option)

    def render(self, names: Mapping[str, str] | None = None) -> str:
        """The message with each option spelled ``names[option]`` (the option itself where it has no entry)."""
        text = self.template
        for option in self.options:
            text = text.replace("{" + option + "}", (names or {}).get(option, option))
        return text


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
