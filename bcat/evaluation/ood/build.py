"""Builders of the out-of-domain data files in ``bcat/resources/ood/`` (deterministic, bit for bit).

``lastword.jsonl``
    LAMBADA-like passages cut from the vendored UDHR. Every paragraph of every article is split at
    sentence-final punctuation; each sentence end gives one passage, the paragraph up to that point
    (leading sentences dropped while it is longer than :data:`MAX_PASSAGE_CHARS`). Thai has no
    sentence punctuation, so a Thai passage is a whole paragraph. The target is read off the end
    of the passage by :func:`bcat.evaluation.ood.text.lastword_split`; passages without a valid
    target or with a short context are dropped. Fields: ``id lang article text context target``.
``arith.jsonl``
    :func:`bcat.evaluation.ood.arith.arith_items`. Fields: ``id lang split template question answer``.

Regenerate with ``python scripts/build_ood.py``; ``tests/evaluation/test_ood.py`` checks that the committed
files equal a fresh build.
"""

from __future__ import annotations

import json
from pathlib import Path

from bcat.bundled import resource
from bcat.data.udhr import UDHR_LANGS, load_udhr
from bcat.evaluation.ood.arith import arith_items
from bcat.evaluation.ood.text import (
    NO_SPACE_CHARS,
    characters,
    lastword_split,
    sentence_ends,
)

MAX_PASSAGE_CHARS = 600
"""Passages are cut to at most this many characters at sentence starts (a single sentence may be longer)."""
MIN_CONTEXT_WORDS = 8
"""Languages with spaces: the context before the target has at least this many words."""
MIN_CONTEXT_CHARS = 15
"""Languages without spaces: the context has at least this many characters."""

OOD_FILES = ("lastword.jsonl", "arith.jsonl")


def ood_resource_dir() -> Path:
    """``bcat/resources/ood`` inside the installed package."""
    return resource("ood")


def passages(paragraph: str, lang: str) -> list[str]:
    """Candidate passages of one paragraph: one per sentence end (Thai: the whole paragraph).

    >>> passages("One two. Three four.", "en")
    ['One two.', 'One two. Three four.']
    """
    if lang == "th":
        return [paragraph.strip()]
    ends = sentence_ends(paragraph, lang)
    starts = [0] + ends[:-1]
    out = []
    for k, end in enumerate(ends):
        # The earliest sentence start that keeps the passage short enough (at worst the sentence itself).
        start = next((s for s in starts[: k + 1] if end - s <= MAX_PASSAGE_CHARS), starts[k])
        out.append(paragraph[start:end].strip())
    return out


def _long_enough(context: str, lang: str) -> bool:
    if lang in NO_SPACE_CHARS:
        return len(characters(context)) >= MIN_CONTEXT_CHARS
    return len(context.split()) >= MIN_CONTEXT_WORDS


def lastword_items(langs: tuple[str, ...] = UDHR_LANGS) -> list[dict]:
    """All last-word passages, in UDHR order (language, article, paragraph, sentence)."""
    udhr = load_udhr(list(langs))
    items = []
    for lang in langs:
        seen = set()
        for article, text in sorted(udhr[lang].items()):
            for p, paragraph in enumerate(text.split("\n")):
                for s, passage in enumerate(passages(paragraph, lang)):
                    split = lastword_split(passage, lang)
                    if split is None or not _long_enough(split[0], lang) or passage in seen:
                        continue
                    seen.add(passage)
                    items.append({"id": f"{lang}-a{article}-p{p}-s{s}", "lang": lang, "article": article,
                                  "text": passage, "context": split[0], "target": split[1]})
    return items


def write_jsonl(path: Path, records: list[dict]) -> None:
    """One JSON object a line, keys in the records' order, UTF-8 unescaped, ``"\\n"`` endings: the same
    records always give the same bytes."""
    path.write_bytes("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8"))


def build_ood_data(out_dir: str | Path | None = None) -> list[Path]:
    """Write every file of :data:`OOD_FILES` into ``out_dir`` (default: the package's resources)."""
    out = Path(out_dir) if out_dir is not None else ood_resource_dir()
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "lastword.jsonl", lastword_items())
    write_jsonl(out / "arith.jsonl", arith_items())
    return [out / name for name in OOD_FILES]


def load_ood_file(name: str) -> list[dict]:
    """Records of one committed data file (``lastword.jsonl`` or ``arith.jsonl``)."""
    path = ood_resource_dir() / name
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
