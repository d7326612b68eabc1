"""Records: read parallel multilingual data and refuse bad input before any work starts.

One record per (group, language). ``group`` names the item (every translation of it shares the
id), ``lang`` is its language code. The rest follows TRL's dataset conventions:

- SFT: ``prompt`` + ``completion``;
- preference (DPO, ORPO): ``prompt`` + ``chosen`` + ``rejected``;

each either a plain string or, in the conversational form, a list of ``{"role", "content"}``
messages (rendered later with the tokenizer's chat template). Other fields are kept in
``Record.extra`` and passed through.

Every problem is reported as ``FILE:LINE: field 'F': what is wrong``.
"""

from __future__ import annotations

import json
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Union

from bcat.errors import DataError
from bcat.languages import ANCHOR

Text = Union[str, list[dict[str, str]]]

SFT_FIELDS = ("prompt", "completion")
PREFERENCE_FIELDS = ("prompt", "chosen", "rejected")


@dataclass
class Record:
    """One training example in one language, with where it came from."""

    group: str
    lang: str
    prompt: Text
    completions: tuple[Text, ...]
    """``(completion,)`` for SFT, ``(chosen, rejected)`` for preference objectives."""
    extra: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    line: int = 0


@dataclass(frozen=True)
class Settings:
    """How the messages name the settings that fix a problem: config keys for ``bcat train`` (the
    default), the command's own flags for ``bcat data check``."""

    objective: str = "objective.name={}"
    drop_groups_without_anchor: str = "data.drop_groups_without_anchor=true"


def objective_kind(objective: str) -> str:
    """``sft`` or ``preference``."""
    return "sft" if objective == "sft" else "preference"


def read_rows(path: str | Path) -> Iterator[tuple[int, Any]]:
    """Yield ``(line_or_row_number, parsed_object)`` from JSONL, Parquet or a ``datasets`` directory."""
    path = Path(path)
    if not path.exists():
        raise DataError(str(path), None, None, "file not found")
    if path.is_dir():
        import datasets

        try:
            ds = datasets.load_from_disk(str(path))
        except Exception as e:  # datasets raises several types for "not a dataset directory"
            raise DataError(str(path), None, None, f"not a directory saved with datasets.save_to_disk ({e})") from None
        if isinstance(ds, datasets.DatasetDict):
            raise DataError(str(path), None, None, f"holds several splits {list(ds)}; point at one split's directory")
        yield from enumerate(ds, start=1)
        return
    if path.suffix.lower() in (".parquet", ".pq") or (path.is_file() and _starts_with(path, b"PAR1")):
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as e:  # pyarrow raises several types for a damaged file
            raise DataError(str(path), None, None, f"not a readable Parquet file ({e})") from None
        yield from enumerate(table.to_pylist(), start=1)
        return
    if not path.is_file():
        raise DataError(str(path), None, None, "not a regular file (a device, a pipe or a socket cannot be data)")
    raw = path.read_bytes()
    if raw.startswith(b"\xef\xbb\xbf"):
        raise DataError(str(path), 1, None, "starts with a UTF-8 byte-order mark (BOM); save the file as UTF-8 without BOM")
    lines = raw.split(b"\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(str(path), number, None, f"not valid UTF-8 (byte {e.start}); the file must be UTF-8") from None
        try:
            obj = json.loads(text, parse_int=_parse_int)
        except json.JSONDecodeError as e:
            last = number == len(lines) or (number == len(lines) - 1 and not lines[-1].strip())
            if b"\r" in line.rstrip(b"\r") and b"\n" not in raw:
                hint = " (lines end with a carriage return alone; end them with \\n or \\r\\n)"
            elif last and (e.pos >= len(text.rstrip()) or e.msg.startswith("Unterminated")):  # input ran out
                hint = " (the last line looks truncated)"
            else:
                hint = ""
            raise DataError(str(path), number, None, f"not valid JSON{hint}: {e.msg}") from None
        except RecursionError:
            raise DataError(str(path), number, None, "not valid JSON: nested too deeply") from None
        check_values(obj, str(path), number)
        yield number, obj


def _starts_with(path: Path, magic: bytes) -> bool:
    with path.open("rb") as f:
        return f.read(len(magic)) == magic


class _LongInteger(str):
    """An integer literal longer than Python converts (``sys.get_int_max_str_digits()``, 4300 by
    default); kept as text so that :func:`check_values` can name the field it sits in."""


def _parse_int(text: str) -> int | _LongInteger:
    limit = sys.get_int_max_str_digits()
    return _LongInteger(text) if limit and len(text.lstrip("-")) > limit else int(text)


def _unencodable(text: str) -> bool:
    """A string the tokenizer cannot take: a lone UTF-16 surrogate (``"\\ud800"`` in JSON)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def check_values(obj: Any, path: str, line: int) -> None:
    """Refuse values that parse as JSON but no later step can take, naming the field: lone surrogates
    (in keys or strings) and integers too long to convert. Iterative, so any nesting depth that
    ``json`` accepted is walked."""
    stack: list[tuple[str, Any]] = [("", obj)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, _LongInteger):
            raise DataError(path, line, where or None, f"an integer of {len(value.lstrip('-'))} digits (at most {sys.get_int_max_str_digits()})")
        if isinstance(value, str) and _unencodable(value):
            raise DataError(path, line, where or None, "holds a lone surrogate (invalid Unicode text, such as \"\\ud800\")")
        if isinstance(value, dict):
            for key, item in value.items():
                name = f"{where}.{key}" if where else key
                if _unencodable(key):
                    raise DataError(path, line, where or None, "a key holds a lone surrogate (invalid Unicode text)")
                stack.append((name, item))
        elif isinstance(value, list):
            stack.extend((f"{where}[{i}]", item) for i, item in enumerate(value))


def _check_text(value: Any, path: str, line: int, name: str) -> Text:
    """A field is a non-empty string or a non-empty list of {role, content} messages."""
    if isinstance(value, str):
        if not value.strip():
            raise DataError(path, line, name, "is empty")
        return value
    if isinstance(value, list) and value:
        for i, m in enumerate(value):
            if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
                raise DataError(path, line, f"{name}[{i}]", "each message must be an object with string 'role' and 'content'")
        if not any(m["content"].strip() for m in value):
            raise DataError(path, line, name, "all messages are empty")
        return value
    if value is None:
        raise DataError(path, line, name, "is missing")
    raise DataError(path, line, name, f"must be a string or a list of messages, got {type(value).__name__}")


def check_language_code(code: str) -> bool:
    """A BCP-47 tag whose language CLDR knows, in the usual case (``en``, ``pt-BR``, ``zh-Hans``):
    codes are compared as written, so ``EN`` beside ``en`` would be a second language.

    >>> check_language_code("pt-BR"), check_language_code("EN"), check_language_code("und")
    (True, False, False)
    """
    from babel import Locale, UnknownLocaleError

    if not code or code != code.strip() or "_" in code or code != _usual_case(code) or code in ("root", "und"):
        return False
    try:
        Locale.parse(code, sep="-")
    except (UnknownLocaleError, ValueError, TypeError):
        return False
    return True


def _usual_case(code: str) -> str:
    """BCP-47's case conventions: language lower, script title (``Hans``), region upper (``BR``)."""
    first, *rest = code.split("-")
    return "-".join([first.lower(), *(t.title() if len(t) == 4 else t.upper() if len(t) == 2 else t.lower()
                                      for t in rest)])


def language_code_error(code: str) -> str:
    """The message for a code :func:`check_language_code` refuses."""
    if code.strip() and code != _usual_case(code.strip()) and check_language_code(_usual_case(code.strip())):
        return f"language code {code!r} is written {_usual_case(code.strip())!r} (codes are compared as written)"
    return f"unknown or malformed language code {code!r} (use BCP-47, e.g. 'en', 'zh-Hans')"


def parse_record(obj: Any, kind: str, path: str, line: int, settings: Settings = Settings()) -> Record:
    """Validate one row and turn it into a :class:`Record`."""
    if not isinstance(obj, dict):
        raise DataError(path, line, None, f"each line must be a JSON object, got {type(obj).__name__}")
    group = obj.get("group")
    if isinstance(group, bool) or not isinstance(group, (str, int)) or str(group).strip() == "":
        raise DataError(path, line, "group", "must be a non-empty string (or integer) naming the item")
    lang = obj.get("lang")
    if not isinstance(lang, str):
        raise DataError(path, line, "lang", "must be a language code string such as 'en' or 'pt-BR'")
    if not check_language_code(lang):
        raise DataError(path, line, "lang", language_code_error(lang))
    has_sft = "completion" in obj
    has_pref = "chosen" in obj or "rejected" in obj
    if has_sft and has_pref:
        raise DataError(path, line, "completion", "record mixes SFT ('completion') and preference ('chosen'/'rejected') "
                        "fields; give one form")
    if kind == "sft" and has_pref and not has_sft:
        raise DataError(path, line, "chosen", f"preference record in SFT data; use {settings.objective.format('dpo')} or orpo, "
                        "or give 'completion'")
    if kind == "preference" and has_sft and not has_pref:
        raise DataError(path, line, "completion", "SFT record in preference data; give 'chosen' and 'rejected'")
    names = SFT_FIELDS if kind == "sft" else PREFERENCE_FIELDS
    texts = [_check_text(obj.get(n), path, line, n) for n in names]
    for name, text in zip(names[1:], texts[1:]):
        if isinstance(text, str) != isinstance(texts[0], str):
            raise DataError(path, line, name, f"'{names[0]}' and '{name}' must both be strings or both message lists")
    if kind == "preference" and texts[1] == texts[2]:
        raise DataError(path, line, "rejected", "is identical to 'chosen'")
    extra = {k: v for k, v in obj.items() if k not in ("group", "lang", *SFT_FIELDS, *PREFERENCE_FIELDS)}
    return Record(str(group), lang, texts[0], tuple(texts[1:]), extra, path, line)


@dataclass
class DataReport:
    """What :func:`load_records` found, as printed by ``bcat data check``."""

    path: str
    records: int
    groups: int
    records_per_language: dict[str, int]
    groups_missing_languages: int
    dropped_groups_without_anchor: int = 0
    token_lengths: dict[str, dict[str, float]] | None = None


def load_records(
    path: str | Path,
    objective: str,
    anchor: str = ANCHOR,
    languages: list[str] | None = None,
    drop_groups_without_anchor: bool = False,
    settings: Settings = Settings(),
) -> tuple[list[Record], DataReport]:
    """Read and validate a data file. Raises :class:`DataError` at the first problem, whose hint names
    the setting that fixes it as ``settings`` spells it."""
    path = str(path)
    kind = objective_kind(objective)
    records: list[Record] = []
    first_line: dict[tuple[str, str], int] = {}
    for line, obj in read_rows(path):
        rec = parse_record(obj, kind, path, line, settings)
        if languages is not None and rec.lang not in languages and rec.lang != anchor:
            continue
        key = (rec.group, rec.lang)
        if key in first_line:
            raise DataError(path, line, "lang", f"duplicate (group, lang) = {key}; first seen on line {first_line[key]}")
        first_line[key] = line
        records.append(rec)
    if not records:
        raise DataError(path, None, None, "no records (empty file, or no record in the selected languages)")

    by_group: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        by_group[r.group].append(r)
    missing_anchor = [g for g, rs in by_group.items() if all(r.lang != anchor for r in rs)]
    dropped = 0
    if missing_anchor and not drop_groups_without_anchor:
        first = by_group[missing_anchor[0]][0]
        raise DataError(
            path, first.line, "group",
            f"group {first.group!r} has no record in the anchor language {anchor!r} "
            f"({len(missing_anchor)} groups like this; {settings.drop_groups_without_anchor} drops them)",
        )
    if missing_anchor:
        drop = set(missing_anchor)
        records = [r for r in records if r.group not in drop]
        dropped = len(drop)
        by_group = {g: rs for g, rs in by_group.items() if g not in drop}
        if not records:
            raise DataError(path, None, "group", f"every group lacks the anchor language {anchor!r}")
    if not any(len(rs) >= 2 for rs in by_group.values()):
        raise DataError(
            path, None, "group",
            "no group has two languages: batch-level alignment needs the same item in several languages "
            "(records that share a 'group' id)",
        )
    per_lang = Counter(r.lang for r in records)
    all_langs = set(per_lang)
    report = DataReport(
        path=path,
        records=len(records),
        groups=len(by_group),
        records_per_language=dict(sorted(per_lang.items())),
        groups_missing_languages=sum(1 for rs in by_group.values() if {r.lang for r in rs} != all_langs),
        dropped_groups_without_anchor=dropped,
    )
    return records, report
