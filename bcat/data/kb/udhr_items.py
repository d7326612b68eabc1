"""Part C: questions over real human-translated text, the Universal Declaration of Human Rights.

Each item shows 3-4 articles as passages, each labelled the way the language numbers articles
("Article 12: ...", "第12条：...", "12. cikk: ..."). The question quotes an EXACT span of one
article's own text in that language and asks which article contains it; the answer is the
article's label ("Artikel 12"), and the bare number ("12") is accepted too.

Why exact spans: a question that paraphrases an article ("which article protects privacy?")
would need a cue written in every language, which cannot be checked here. A quotation is correct
by construction and comes from the human translation. The span is a window of the article
(six words; ten characters in Japanese and Chinese; one space-separated phrase in Thai) at the
same relative position in every language, grown until no other passage of the item contains it.
The same articles, order and question paraphrase are used in all languages of an item.

The preamble (article 0) is not used: it has no number to answer with.
"""

from __future__ import annotations

import random
import unicodedata

from bcat.data.kb.checks import record_problems
from bcat.data.kb.matching import mentions
from bcat.data.kb.templates import load_templates
from bcat.data.udhr import load_udhr
from bcat.languages import ANCHOR, LANGUAGES

ARTICLES = tuple(range(1, 31))
CHARACTER_LANGS = {"ja": 10, "zh": 10}
"""Languages written without spaces: the span is counted in characters (initial length)."""
PHRASE_LANGS = {"th": 1}
"""Languages whose spaces separate phrases, not words: the span is counted in phrases."""
WORDS = 6
"""Initial span length, in words, for languages that separate words with spaces."""
MAX_ATTEMPTS = 200
_CLAUSE_END = set("、。，；：！？")


def flat_text(lang: str, text: str) -> str:
    """An article's paragraphs on one line (prompts show one passage per line)."""
    joiner = "" if lang in CHARACTER_LANGS else " "
    return joiner.join(part.strip() for part in text.split("\n") if part.strip())


def label(lang: str, article: int) -> str:
    """The article's label in ``lang`` (``"Artikel 12"``, ``"第12条"``, ``"12. cikk"``)."""
    return load_templates(lang).udhr_label.format(n=article)


def _tokens(lang: str, text: str) -> tuple[list[str], str, int]:
    """(units of the text, what joins them, initial span length)."""
    if lang in CHARACTER_LANGS:
        return list(text), "", CHARACTER_LANGS[lang]
    if lang in PHRASE_LANGS:
        return text.split(" "), " ", PHRASE_LANGS[lang]
    return text.split(), " ", WORDS


def _trim(span: str) -> str:
    """The span without leading or trailing punctuation and spaces."""
    def edge(ch):
        return ch.isspace() or unicodedata.category(ch).startswith("P")
    start, end = 0, len(span)
    while start < end and edge(span[start]):
        start += 1
    while end > start and edge(span[end - 1]):
        end -= 1
    return span[start:end]


def quote_span(lang: str, text: str, position: float, others: list[str]) -> str:
    """A span of ``text`` near ``position`` (0..1) that no passage in ``others`` contains."""
    tokens, joiner, length = _tokens(lang, text)
    start = int(position * max(0, len(tokens) - length))
    if lang in CHARACTER_LANGS:
        # Start after a clause boundary, not inside a word.
        while start > 0 and tokens[start - 1] not in _CLAUSE_END:
            start -= 1
    while True:
        span = _trim(joiner.join(tokens[start:start + length]))
        if span and not any(mentions(o, span) for o in others):
            return span
        if start + length < len(tokens):
            length += 1
        elif start > 0:
            start -= 1
        else:
            return _trim(text)  # the whole article: articles differ, so this is unique


def udhr_item(group: str, article: int, rng: random.Random, langs=LANGUAGES) -> list[dict]:
    """One item whose answer is ``article``, in every language of ``langs``."""
    texts = load_udhr(list(langs))
    for _ in range(MAX_ATTEMPTS):
        n = rng.choice((3, 4))
        chosen = [article, *rng.sample([a for a in ARTICLES if a != article], n - 1)]
        rng.shuffle(chosen)
        wrong_article = next(a for a in chosen if a != article)
        unsupported = rng.choice([a for a in ARTICLES if a not in chosen])
        position, question = rng.random(), rng.randrange(1000)
        records = [_record(group, lang, texts[lang], chosen, article, wrong_article, unsupported, position, question)
                   for lang in langs]
        if not any(record_problems(r) for r in records):
            return records
    raise RuntimeError(f"{group}: no valid UDHR item in {MAX_ATTEMPTS} draws")


def _record(group, lang, texts, chosen, article, wrong_article, unsupported, position, question) -> dict:
    t = load_templates(lang)
    bodies = [flat_text(lang, texts[a]) for a in chosen]
    passages = [t.udhr_passage.format(label=label(lang, a), text=body) for a, body in zip(chosen, bodies)]
    gold = chosen.index(article)
    others = [p for i, p in enumerate(passages) if i != gold]
    span = quote_span(lang, bodies[gold], position, others)
    return {
        "group": group,
        "lang": lang,
        "source": "udhr",
        "kind": "article",
        "attribute": "udhr",
        "question": t.udhr_questions[question % len(t.udhr_questions)].format(span=span),
        "passages": passages,
        "gold_index": gold,
        "evidence": [gold],
        "answers": [label(lang, article), str(article)],
        "answer_neutral": True,
        "answer_en": label(ANCHOR, article),
        "distractor_answer": label(lang, wrong_article),
        "distractor_answers": [[label(lang, a), str(a)] for a in chosen if a != article],
        "unsupported_answer": label(lang, unsupported),
    }
