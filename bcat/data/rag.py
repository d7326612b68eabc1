"""The controlled-RAG QA suite: records, the prompt template, and batched greedy generation.

Input: JSONL, one record per (group, language)::

    {"group": "warranty-01", "lang": "fr", "question": "Combien de temps dure la garantie ?",
     "passages": ["La garantie dure 24 mois.", "La batterie dure 10 heures."],
     "answers": ["24 mois"], "answer_neutral": false}

``passages`` are shown in the order given. ``answers`` are the accepted answers in that language.
``answer_neutral`` marks answers that have no language (a model code, a number); their language is
not checked. The whole file is validated before any model work.

Optional WRONG values, for strict accuracy (:func:`bcat.data.normalize.judge`: a first line that
names an accepted answer AND one of these scores 0)::

    "distractor_answers": [["12 mois", "12"], ["36 mois", "36"]],   # or ["12 mois", "36 mois"]
    "distractor_answer": "12 mois", "unsupported_answer": "30 mois"

``distractor_answers``: every value the passages give for the asked attribute of another entity
(for a comparison, the other option), each a string or a list of its accepted forms; list them in
the same order in every language of a group (``same_answer_as_en`` compares wrong values by
position). ``distractor_answer`` / ``unsupported_answer`` (the fields of the bundled data and of
``bcat data pairs``) are added when not listed already. A wrong value may not equal an accepted
answer. **Without any of these fields the wrong values are derived from the passages**
(:mod:`bcat.data.candidates`: the values of the gold answer's shape that the passages give), so that
strict accuracy still refuses an answer that copies the passages or adds another passage's value;
``n_with_candidates`` and ``n_derived_candidates`` in ``metrics.json`` count the items.

``lang`` is a BCP-47 tag (``en``, ``pt-BR``, ``zh-Hans``), checked as training checks it. Scoring
needs no prompt wording; generating does: the wording per language is in
``bcat/resources/eval/instructions.tsv``, a tag without a row falls back to its language subtag
(``pt-BR`` -> ``pt``), and a user's own file in the same format (:func:`read_wording_file`) adds
or replaces rows (:func:`wordings_for`). The prompt (plain form)::

    Answer the question using only the passages. Reply with the answer only.

    Passage 1: The warranty lasts 24 months.
    Passage 2: The battery lasts 10 hours.

    Question: How long is the warranty?
    Answer:

With ``shots`` > 0, that many solved examples of the same language (other groups of the same file,
first answer) come first, each a full block. With a chat template the block without the final
``Answer:`` line is the user turn and the model answers as the assistant.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from bcat.bundled import resource
from bcat.data.candidates import derive_candidates, fillers_by_language
from bcat.data.normalize import normalize
from bcat.data.records import check_language_code, language_code_error, read_rows
from bcat.errors import BcatError, DataError, OptionError
from bcat.languages import primary_subtag

log = logging.getLogger(__name__)


# --- records ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RagItem:
    """One question in one language, with its passages and accepted answers."""

    group: str
    lang: str
    question: str
    passages: tuple[str, ...]
    answers: tuple[str, ...]
    answer_neutral: bool = False
    line: int = 0
    candidates: tuple[tuple[str, ...], ...] = ()
    """The item's wrong values, each in its accepted forms (see :func:`collect_candidates`)."""
    candidates_derived: bool = False
    """Whether ``candidates`` were derived from the passages (the record listed none)."""


def _require(path, line, rec, name, kind, what):
    if name not in rec:
        raise DataError(path, line, name, "missing (a record needs group, lang, question, passages, answers)")
    value = rec[name]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise DataError(path, line, name, f"must be {what}, got {type(value).__name__}")
    return value


def _string_list(path, line, rec, name) -> tuple[str, ...]:
    values = _require(path, line, rec, name, list, "a list of strings")
    if not values:
        raise DataError(path, line, name, "must not be empty")
    for i, v in enumerate(values):
        if not isinstance(v, str) or not v.strip():
            raise DataError(path, line, name, f"item {i} must be a non-empty string")
    return tuple(values)


def collect_candidates(distractor_answers: Sequence = (), distractor_answer: Optional[str] = None,
                       unsupported_answer: Optional[str] = None) -> tuple[tuple[str, ...], ...]:
    """The wrong values of an item, in order: ``distractor_answers`` (a string or a list of forms
    each), then the distractor and the unsupported answer unless every form of theirs is listed.

    >>> collect_candidates([["12 mois", "12"]], "12 mois", "30 mois")
    (('12 mois', '12'), ('30 mois',))
    """
    out: list[tuple[str, ...]] = []
    known: set[str] = set()
    extra = [v for v in (distractor_answer, unsupported_answer) if v is not None]
    for value in [*distractor_answers, *extra]:
        forms = (value,) if isinstance(value, str) else tuple(value)
        normal = {normalize(f) for f in forms}
        if normal <= known:
            continue
        known |= normal
        out.append(forms)
    return tuple(out)


def _forms(path, line, name, value, index: Optional[int] = None) -> tuple[str, ...]:
    where = f"item {index} " if index is not None else ""
    forms = [value] if isinstance(value, str) else value
    if not isinstance(forms, list) or not forms or not all(isinstance(f, str) for f in forms):
        kind = "a string or a non-empty list of strings" if index is not None else "a string"
        raise DataError(path, line, name, f"{where}must be {kind}, got {value!r}")
    for f in forms:
        if not normalize(f):
            raise DataError(path, line, name, f"{where}{f!r} has no letters or digits to match")
    return tuple(forms)


def _candidates(path, line, rec: dict, answers: tuple[str, ...]) -> tuple[tuple[str, ...], ...]:
    listed = rec.get("distractor_answers", [])
    if not isinstance(listed, list):
        raise DataError(path, line, "distractor_answers", f"must be a list, got {type(listed).__name__}")
    fields = {"distractor_answers": [_forms(path, line, "distractor_answers", v, i) for i, v in enumerate(listed)]}
    for name in ("distractor_answer", "unsupported_answer"):
        if rec.get(name) is not None:
            if not isinstance(rec[name], str):
                raise DataError(path, line, name, f"must be a string, got {type(rec[name]).__name__}")
            fields[name] = [_forms(path, line, name, rec[name])]
    gold = {normalize(a) for a in answers}
    for name, values in fields.items():
        for i, forms in enumerate(values):
            same = [f for f in forms if normalize(f) in gold]
            if same:
                where = f"item {i} " if name == "distractor_answers" else ""
                raise DataError(path, line, name, f"{where}{same[0]!r} is an accepted answer (see 'answers')")
    single = {name: values[0][0] for name, values in fields.items() if name != "distractor_answers"}
    return collect_candidates(fields["distractor_answers"], single.get("distractor_answer"),
                              single.get("unsupported_answer"))


def parse_record(rec: object, path: str, line: int) -> RagItem:
    """Validate one decoded JSON record and turn it into a :class:`RagItem`."""
    if not isinstance(rec, dict):
        raise DataError(path, line, None, "each line must be a JSON object")
    group = rec.get("group")
    if isinstance(group, int) and not isinstance(group, bool):
        group = str(group)
    if not isinstance(group, str) or not group.strip():
        raise DataError(path, line, "group", "missing or not a non-empty string")
    lang = _require(path, line, rec, "lang", str, "a language code")
    if not check_language_code(lang):
        raise DataError(path, line, "lang", language_code_error(lang))
    question = _require(path, line, rec, "question", str, "a string")
    if not question.strip():
        raise DataError(path, line, "question", "must not be empty")
    neutral = rec.get("answer_neutral", False)
    if not isinstance(neutral, bool):
        raise DataError(path, line, "answer_neutral", f"must be true or false, got {neutral!r}")
    answers = _string_list(path, line, rec, "answers")
    for i, a in enumerate(answers):
        if not normalize(a):
            raise DataError(path, line, "answers", f"item {i} ({a!r}) has no letters or digits to match")
    return RagItem(group, lang, question, _string_list(path, line, rec, "passages"), answers, neutral, line,
                   _candidates(path, line, rec, answers))


def load_items(path: str | Path, *, languages: Optional[Sequence[str]] = None,
               limit_groups: Optional[int] = None) -> list[RagItem]:
    """Read and validate a RAG QA file. All lines are checked before anything is returned.

    ``languages`` keeps only those languages (each must occur in the file); ``limit_groups`` keeps
    the first N groups in file order, with all their languages, so that languages stay paired.
    """
    path = Path(path)
    items: list[RagItem] = []
    seen: dict[tuple[str, str], int] = {}
    for line_no, rec in read_rows(path):
        item = parse_record(rec, str(path), line_no)
        key = (item.group, item.lang)
        if key in seen:
            raise DataError(path, line_no, "lang", f"group '{item.group}' already has a '{item.lang}' record "
                            f"(line {seen[key]})")
        seen[key] = line_no
        items.append(item)
    if not items:
        raise DataError(path, None, None, "no records")
    items = with_derived_candidates(items)
    if languages:
        present = {i.lang for i in items}
        missing = [l for l in languages if l not in present]
        if missing:
            raise OptionError(f"{{languages}}: {', '.join(missing)} not in {path} (it has {', '.join(sorted(present))})",
                              "languages")
        items = [i for i in items if i.lang in set(languages)]
    if limit_groups is not None:
        keep = set(list(dict.fromkeys(i.group for i in items))[:limit_groups])
        items = [i for i in items if i.group in keep]
    return items


def group_kinds(path: str | Path) -> dict[str, str]:
    """``{group: kind}`` from the records' optional ``kind`` field (the bundled data: article, which_model,
    compare, name, number); groups without one are left out. A group whose records disagree is an error."""
    kinds: dict[str, str] = {}
    for line_no, rec in read_rows(Path(path)):
        kind = rec.get("kind") if isinstance(rec, dict) else None
        if kind is None:
            continue
        group = rec.get("group")
        if kinds.setdefault(group, str(kind)) != str(kind):
            raise DataError(path, line_no, "kind", f"group '{group}' has records of kinds '{kinds[group]}' and '{kind}'")
    return kinds


def with_derived_candidates(items: Sequence[RagItem]) -> list[RagItem]:
    """``items``, those without wrong values given them from their passages (:mod:`bcat.data.candidates`;
    the template words are learnt from all passages of the item's language in ``items``)."""
    if all(i.candidates for i in items):
        return list(items)
    fillers = fillers_by_language(items)
    return [i if i.candidates else dataclasses.replace(
        i, candidates=derive_candidates(i.question, i.answers, i.passages, fillers[i.lang]), candidates_derived=True)
        for i in items]


# --- prompt --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Wording:
    """The localized parts of the prompt for one language."""

    passage: str
    question: str
    answer: str
    instruction: str


WORDING_COLUMNS = ("lang", "passage", "question", "answer", "instruction")
"""The columns of a wording file (tab-separated, UTF-8, ``#`` lines are comments)."""
BUNDLED_WORDING = "eval/instructions.tsv"
"""The bundled wording file, under ``bcat/resources``."""


def parse_wording(text: str, source: str) -> dict[str, Wording]:
    """The rows of a wording file, validated: each names its file, line and column when wrong."""
    table: dict[str, Wording] = {}
    header = None
    for line_no, row in enumerate(text.splitlines(), start=1):
        if not row.strip() or row.startswith("#"):
            continue
        cells = row.split("\t")
        if header is None:
            header = cells
            if tuple(c.strip() for c in cells) != WORDING_COLUMNS:
                raise DataError(source, line_no, None, f"the header must be the tab-separated columns "
                                f"{', '.join(WORDING_COLUMNS)}; got {', '.join(cells)}")
            continue
        if len(cells) != len(WORDING_COLUMNS):
            raise DataError(source, line_no, None, f"{len(cells)} tab-separated cells, expected "
                            f"{len(WORDING_COLUMNS)} ({', '.join(WORDING_COLUMNS)})")
        values = dict(zip(WORDING_COLUMNS, cells))
        for name in WORDING_COLUMNS:
            if not values[name].strip():
                raise DataError(source, line_no, name, "must not be empty")
        if "{n}" not in values["passage"]:
            raise DataError(source, line_no, "passage", "must contain {n} (the passage number)")
        if not check_language_code(values["lang"]):
            raise DataError(source, line_no, "lang", language_code_error(values["lang"]))
        if values["lang"] in table:
            raise DataError(source, line_no, "lang", f"a second row for {values['lang']!r}")
        table[values["lang"]] = Wording(values["passage"], values["question"], values["answer"],
                                        values["instruction"])
    if header is None:
        raise DataError(source, None, None, "no header and no rows")
    return table


@functools.lru_cache(maxsize=1)
def instruction_table() -> dict[str, Wording]:
    """The bundled prompt wording per language, from ``bcat/resources/eval/instructions.tsv``."""
    text = resource(BUNDLED_WORDING).read_text(encoding="utf-8")
    return parse_wording(text, f"bcat/resources/{BUNDLED_WORDING}")


def read_wording_file(path: str | Path) -> dict[str, Wording]:
    """A user's wording file, in the bundled file's format (:data:`WORDING_COLUMNS`)."""
    path = Path(path)
    if not path.is_file():
        raise BcatError(f"wording file not found: {path}")
    return parse_wording(path.read_text(encoding="utf-8"), str(path))


@dataclass(frozen=True)
class WordingChoice:
    """The wording a language's prompts use, and where it came from."""

    wording: Wording
    source: str
    """``"bundled"``, ``"bundled, by language subtag (pt)"``, the user's file, or that file by subtag."""


def wordings_for(languages: Sequence[str], user: Optional[dict[str, Wording]] = None, user_source: str = ""
                 ) -> tuple[dict[str, WordingChoice], list[str]]:
    """The wording of each language: the user's table first, then the bundled one; in each, the tag
    itself, then its language subtag (``pt-BR`` -> ``pt``). Returns ``(choices, languages without any)``.

    >>> choices, missing = wordings_for(["fr", "pt-BR", "xx"])
    >>> choices["pt-BR"].source, missing
    ('bundled, by language subtag (pt)', ['xx'])
    """
    tables = ([(user, user_source)] if user else []) + [(instruction_table(), "bundled")]
    choices: dict[str, WordingChoice] = {}
    missing: list[str] = []
    for lang in dict.fromkeys(languages):
        choice = None
        for table, source in tables:
            by_lower = {k.lower(): k for k in table}
            for key, how in ((lang.lower(), ""), (primary_subtag(lang), f", by language subtag ({primary_subtag(lang)})")):
                if key in by_lower:
                    choice = WordingChoice(table[by_lower[key]], source + (how if key != lang.lower() else ""))
                    break
            if choice is not None:
                break
        if choice is None:
            missing.append(lang)
        else:
            choices[lang] = choice
    return choices, missing


def _label(label: str, text: str) -> str:
    """``label text``; no space after a full-width colon."""
    return f"{label}{'' if label.endswith('：') else ' '}{text}".rstrip()


def render_block(item: RagItem, *, with_instruction: bool = True, answer: Optional[str] = None,
                 answer_line: bool = True, wording: Optional[Wording] = None) -> str:
    """One question block: instruction, numbered passages, question and the answer label.

    >>> item = RagItem("g", "en", "How long is the warranty?", ("It lasts 24 months.",), ("24 months",))
    >>> print(render_block(item))
    Answer the question using only the passages. Reply with the answer only.
    <BLANKLINE>
    Passage 1: It lasts 24 months.
    <BLANKLINE>
    Question: How long is the warranty?
    Answer:
    """
    w = wording or instruction_table()[item.lang]
    parts = [w.instruction, ""] if with_instruction else []
    parts += [_label(w.passage.format(n=i), p) for i, p in enumerate(item.passages, start=1)]
    parts += ["", _label(w.question, item.question)]
    if answer_line:
        parts.append(_label(w.answer, answer or ""))
    return "\n".join(parts)


def render_plain(item: RagItem, shots: Sequence[RagItem] = (), wording: Optional[Wording] = None) -> str:
    """The plain-text prompt: the instruction once, then the solved shots, then the question."""
    blocks = [render_block(s, with_instruction=(i == 0), answer=s.answers[0], wording=wording)
              for i, s in enumerate(shots)]
    blocks.append(render_block(item, with_instruction=not shots, wording=wording))
    return "\n\n".join(blocks)


def chat_messages(item: RagItem, shots: Sequence[RagItem] = (), wording: Optional[Wording] = None) -> list[dict]:
    """The prompt as chat messages: each shot a user turn and its answer, then the question."""
    messages: list[dict] = []
    for s in shots:
        messages.append({"role": "user", "content": render_block(s, answer_line=False, wording=wording)})
        messages.append({"role": "assistant", "content": s.answers[0]})
    messages.append({"role": "user", "content": render_block(item, answer_line=False, wording=wording)})
    return messages


def select_shots(items: Sequence[RagItem], k: int, seed: int = 0) -> dict[tuple[str, str], list[RagItem]]:
    """For each item, ``k`` solved examples in its language from OTHER groups (seeded, per group).

    The same group's shots are chosen the same way in every language (same group ids), so the
    languages see parallel examples when the file has them.
    """
    if k <= 0:
        return {(i.group, i.lang): [] for i in items}
    by_lang: dict[str, dict[str, RagItem]] = {}
    for i in items:
        by_lang.setdefault(i.lang, {})[i.group] = i
    groups = list(dict.fromkeys(i.group for i in items))
    out = {}
    for i in items:
        rng = random.Random(f"{seed}:{i.group}")
        order = [g for g in rng.sample(groups, len(groups)) if g != i.group]
        out[(i.group, i.lang)] = [by_lang[i.lang][g] for g in order if g in by_lang[i.lang]][:k]
    return out


def uses_chat_template(tokenizer, mode: str) -> bool:
    """Decide plain vs chat prompts: ``on`` needs a chat template, ``auto`` uses one if present."""
    has = bool(getattr(tokenizer, "chat_template", None))
    if mode == "on" and not has:
        raise OptionError("{chat_template} on, but the tokenizer has no chat template", "chat_template")
    return has and mode in ("on", "auto")


def build_prompts(items: Sequence[RagItem], tokenizer, *, shots: int = 0, chat: bool = False,
                  seed: int = 0, wordings: Optional[dict[str, Wording]] = None) -> list[str]:
    """The prompt text of every item. Chat prompts are rendered with the tokenizer's template.

    ``wordings``: the wording per language (:func:`wordings_for`); default the bundled table."""
    chosen = select_shots(items, shots, seed)
    prompts = []
    for item in items:
        s = chosen[(item.group, item.lang)]
        wording = (wordings or {}).get(item.lang)
        if chat:
            prompts.append(tokenizer.apply_chat_template(chat_messages(item, s, wording), tokenize=False,
                                                         add_generation_prompt=True))
        else:
            prompts.append(render_plain(item, s, wording))
    return prompts
