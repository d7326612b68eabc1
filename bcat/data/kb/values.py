"""A fact rendered in one language: the text that goes into a passage and the accepted answers.

Quantities use the unit lines of the language's template file; prices use CLDR's currency
pattern (whole units, no decimals: "49 €", "€49", "49 EUR"); names come from CLDR unchanged.

>>> render_value("ro", "warranty", 24).answers, render_value("ro", "warranty", 12).text
(('24 de luni', '24'), '12 luni')
>>> render_value("de", "price", 49, currency="EUR").answers
('49 €', '49')
>>> render_value("zh", "launch_month", 3).answers
('三月',)
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Optional, Union

from babel.numbers import format_currency

from bcat.data.kb import cldr
from bcat.data.kb.templates import NAME_ATTRIBUTES, load_templates

UNIT_OF = {"warranty": "months", "battery": "hours", "weight": "grams"}
"""The unit of each quantity attribute."""



@dataclass(frozen=True)
class Rendered:
    """A value in one language: ``text`` as written in passages, ``answers`` accepted (first: canonical)."""

    text: str
    answers: tuple[str, ...]


def romanian_de(n: int) -> str:
    """``"de "`` where Romanian puts "de" between a number and its noun (20 and up, within each hundred).

    >>> [romanian_de(n) for n in (1, 12, 19, 20, 24, 100, 101, 119, 120)]
    ['', '', '', 'de ', 'de ', 'de ', '', '', 'de ']
    """
    return "de " if n > 0 and (n % 100 == 0 or n % 100 >= 20) else ""


def quantity(lang: str, unit: str, n: int) -> str:
    """``n`` with its unit in ``lang``, from the template file (``"24か月"``, ``"24 de luni"``)."""
    return load_templates(lang).units[unit].format(n=n, de=romanian_de(n))


@functools.lru_cache(maxsize=None)
def _whole_unit_pattern(lang: str) -> str:
    # CLDR's standard currency pattern without its fraction digits: list prices here are whole.
    return re.sub(r"\.0+", "", cldr.locale(lang).currency_formats["standard"].pattern)


def price(lang: str, amount: int, currency: str) -> str:
    """A whole price as CLDR writes it in ``lang`` (``price("fr", 49, "CAD") == "49 $CA"``)."""
    text = format_currency(amount, currency, format=_whole_unit_pattern(lang), locale=cldr.locale(lang),
                           currency_digits=False)
    return cldr.clean(text)


def name(lang: str, attribute: str, code: Union[str, int], width: str = "wide") -> str:
    """The CLDR name of a name-valued fact."""
    if attribute == "country":
        return cldr.territory_name(lang, code)
    if attribute == "language":
        return cldr.language_name(lang, code)
    if attribute == "currency":
        return cldr.currency_name(lang, code)
    if attribute == "delivery_day":
        return cldr.weekday_name(lang, code, width)
    if attribute == "launch_month":
        return cldr.month_name(lang, code, width)
    raise KeyError(attribute)


def _unique(items) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


def render_value(lang: str, attribute: str, value: Union[str, int], currency: Optional[str] = None) -> Rendered:
    """The fact ``attribute = value`` in ``lang``. Prices need their ``currency`` code."""
    if attribute in UNIT_OF:
        text = quantity(lang, UNIT_OF[attribute], int(value))
        return Rendered(text, _unique([text, str(value)]))
    if attribute == "price":
        if currency is None:
            raise ValueError("a price needs its currency")
        text = price(lang, int(value), currency)
        return Rendered(text, _unique([text, str(value)]))
    if attribute in NAME_ATTRIBUTES:
        # Only CLDR's name: every accepted answer must be written in the gold passage, and passages
        # use one form (so no "周一" next to "星期一", no Hindi spelling without the nukta).
        text = name(lang, attribute, value)
        return Rendered(text, (text,))
    raise KeyError(attribute)
