"""The names CLDR gives to countries, languages, currencies, weekdays and months in each language
(through ``babel``). Nothing here is translated by hand.

>>> territory_name("fr", "DE"), language_name("ja", "en"), weekday_name("de", 0), month_name("zh", 3)
('Allemagne', '英語', 'Montag', '三月')
"""

from __future__ import annotations

import functools

from babel import Locale
from babel.dates import get_day_names, get_month_names

# CLDR separates numbers from units and currency symbols with no-break spaces (U+00A0, U+202F).
# Models rarely write those; an ordinary space keeps the answers what a model would produce.
_SPACES = str.maketrans({"\u00a0": " ", "\u202f": " "})


def clean(text: str) -> str:
    """CLDR text with no-break spaces made ordinary."""
    return text.translate(_SPACES)


@functools.lru_cache(maxsize=None)
def locale(lang: str) -> Locale:
    """The babel locale of a language code."""
    return Locale.parse(lang)


def territory_name(lang: str, code: str) -> str:
    """The country's name in ``lang`` (``territory_name("de", "CZ") == "Tschechien"``)."""
    return clean(locale(lang).territories[code])


def language_name(lang: str, code: str) -> str:
    """The language's name in ``lang``, as CLDR writes it (``"anglais"``, ``"Englisch"``)."""
    return clean(locale(lang).languages[code])


def currency_name(lang: str, code: str) -> str:
    """The currency's display name in ``lang`` (``"dollar canadien"``)."""
    return clean(locale(lang).currencies[code])


def weekday_name(lang: str, day: int, width: str = "wide") -> str:
    """The weekday's name in ``lang``; ``day`` 0 is Monday, as in babel."""
    return clean(get_day_names(width, locale=locale(lang))[day])


def month_name(lang: str, month: int, width: str = "wide") -> str:
    """The month's name in ``lang`` (format context); ``month`` 1 is January."""
    return clean(get_month_names(width, locale=locale(lang))[month])
