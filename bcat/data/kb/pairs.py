"""Part E: preference pairs (and SFT records) from QA records, in bcat's training format.

``chosen`` is the gold answer (the first accepted answer) in the query's language. ``rejected`` is
one of three errors a RAG model makes, named by ``pair_type``:

- ``grounding``: the answer to the same question about a distractor passage (the value of a
  similar product, the other product of a comparison, a neighbouring UDHR article);
- ``language``: the gold answer in English ("24 months" for a French question);
- ``hallucination``: a plausible answer that no passage supports.

The type is drawn per GROUP, so all languages of an item get the same kind of pair and the group
stays parallel. ``language`` is drawn only for groups whose answer differs from the English one in
every non-English language present (model codes, French "Article 12" and German "April" are the
same in English; prices differ only in CLDR's formatting); the English record of such a group cannot be a wrong-language pair, so it
gets a ``grounding`` pair. Shares follow ``mix`` by the largest-remainder method; a shortage of
groups that can take ``language`` is shared out among the other types by their weights.
"""

from __future__ import annotations

import json
import random
from collections import OrderedDict
from pathlib import Path
from typing import Iterable

from bcat.data.kb.build import quotas
from bcat.data.kb.matching import same_answer
from bcat.data.kb.prompt import completion, render_prompt
from bcat.errors import ConfigError, DataError
from bcat.languages import ANCHOR

PAIR_TYPES = ("grounding", "language", "hallucination")
DEFAULT_MIX = {"grounding": 0.5, "language": 0.25, "hallucination": 0.25}
REQUIRED = ("group", "lang", "question", "passages", "answers", "answer_en", "distractor_answer",
            "unsupported_answer")
_NEGATIVE = {"grounding": "distractor_answer", "language": "answer_en", "hallucination": "unsupported_answer"}


def parse_mix(text: str) -> dict[str, float]:
    """``"grounding=0.5,language=0.25,hallucination=0.25"`` -> weights (missing types get 0).

    >>> parse_mix("grounding=1")
    {'grounding': 1.0, 'language': 0.0, 'hallucination': 0.0}
    """
    mix = dict.fromkeys(PAIR_TYPES, 0.0)
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or name not in mix:
            raise ConfigError(f"--mix: expected NAME=WEIGHT with NAME in {', '.join(PAIR_TYPES)}, got {part!r}")
        try:
            mix[name] = float(value)
        except ValueError:
            raise ConfigError(f"--mix: weight of {name!r} is not a number: {value!r}") from None
        if mix[name] < 0:
            raise ConfigError(f"--mix: weight of {name!r} is negative")
    if sum(mix.values()) <= 0:
        raise ConfigError("--mix: at least one weight must be positive")
    return mix


def read_qa(path: str | Path) -> list[dict]:
    """QA records from a JSONL file, each checked for the fields pairs need."""
    path = Path(path)
    if not path.is_file():
        raise DataError(str(path), None, None, "file not found")
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(str(path), number, None, f"not valid JSON: {e.msg}") from None
        for name in REQUIRED:
            if name not in rec:
                raise DataError(str(path), number, name, "missing (a QA record from `bcat data build` has it)")
        records.append(rec)
    if not records:
        raise DataError(str(path), None, None, "no records")
    return records


def _by_group(records: Iterable[dict]) -> "OrderedDict[str, list[dict]]":
    groups: OrderedDict[str, list[dict]] = OrderedDict()
    for rec in records:
        groups.setdefault(str(rec["group"]), []).append(rec)
    return groups


def language_possible(group_records: list[dict]) -> bool:
    """Whether the group can take wrong-language pairs: it has non-English records, and each one's
    answer differs from the English answer. Prices never do: "49 €" and "€49" differ only in
    CLDR's formatting, not in language."""
    foreign = [r for r in group_records if r["lang"] != ANCHOR]
    if not foreign or any(r.get("attribute") == "price" for r in group_records):
        return False
    return all(not same_answer(r["answers"][0], r["answer_en"]) for r in foreign)


def assign_pair_types(groups: "OrderedDict[str, list[dict]]", mix: dict[str, float], seed: int = 0) -> dict[str, str]:
    """The pair type of every group, following ``mix`` (see the module docstring)."""
    order = sorted(groups)
    random.Random(f"bcat-kb-pairs:{seed}").shuffle(order)
    target = quotas(len(order), mix)
    chosen = [g for g in order if language_possible(groups[g])][: target["language"]]
    assigned = dict.fromkeys(chosen, "language")
    rest = [g for g in order if g not in assigned]
    others = {k: w for k, w in mix.items() if k != "language"}
    if sum(others.values()) <= 0:
        others = {"grounding": 1.0}  # only "language" was asked for; the groups that cannot take it
    start = 0
    for name, count in quotas(len(rest), others).items():
        assigned.update(dict.fromkeys(rest[start:start + count], name))
        start += count
    return assigned


def rejected_answer(rec: dict, pair_type: str) -> tuple[str, str]:
    """(rejected answer, the pair type actually used) for one record."""
    if pair_type == "language" and same_answer(rec["answer_en"], rec["answers"][0]):
        pair_type = "grounding"  # the English record (or any record whose answer is English already)
    return rec[_NEGATIVE[pair_type]], pair_type


def sample_groups(records: list[dict], n: int, seed: int = 0) -> list[dict]:
    """The records of ``n`` groups drawn at random (seeded), in input order.

    >>> recs = [{"group": g, "lang": l} for g in "abcd" for l in ("en", "fr")]
    >>> [r["group"] + r["lang"] for r in sample_groups(recs, 2, seed=0)]
    ['ben', 'bfr', 'cen', 'cfr']
    """
    groups = _by_group(records)
    if not 1 <= n <= len(groups):
        raise ConfigError(f"--groups: must be between 1 and the {len(groups)} groups of the input, got {n}")
    kept = set(random.Random(f"bcat-kb-groups:{seed}").sample(sorted(groups), n))
    return [r for r in records if str(r["group"]) in kept]


def make_pairs(records: list[dict], mix: dict[str, float] | None = None, seed: int = 0) -> list[dict]:
    """One preference record per QA record, in input order."""
    mix = dict(DEFAULT_MIX if mix is None else mix)
    groups = _by_group(records)
    types = assign_pair_types(groups, mix, seed)
    out = []
    for rec in records:
        rejected, pair_type = rejected_answer(rec, types[str(rec["group"])])
        out.append({
            "group": rec["group"],
            "lang": rec["lang"],
            "prompt": render_prompt(rec),
            "chosen": completion(rec["lang"], rec["answers"][0]),
            "rejected": completion(rec["lang"], rejected),
            "pair_type": pair_type,
            "kind": rec.get("kind"),
            "source": rec.get("source"),
        })
    return out


def make_sft(records: list[dict]) -> list[dict]:
    """One SFT record (``prompt`` + ``completion`` = the gold answer) per QA record."""
    return [{
        "group": rec["group"],
        "lang": rec["lang"],
        "prompt": render_prompt(rec),
        "completion": completion(rec["lang"], rec["answers"][0]),
        "kind": rec.get("kind"),
        "source": rec.get("source"),
    } for rec in records]
