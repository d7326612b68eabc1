"""Normalisation and answer matching, on answers in every script the suite ships."""

from __future__ import annotations

import unicodedata

import pytest

from bcat.data.normalize import (
    ascii_digits,
    contains_answer,
    first_line,
    has_letters,
    is_correct,
    normalize,
)


@pytest.mark.parametrize("text, expected", [
    ("24 Monate", "24monate"),
    ("La Garantía", "lagarantía"),             # diacritics kept, case folded
    ("Straße", "strasse"),                     # casefold, not lower
    ("Garanția: 24 de luni.", "garanția24deluni"),
    ("Jótállás — 24 HÓNAP!", "jótállás24hónap"),
    ("Bảo hành 24 tháng.", "bảohành24tháng"),
    ("२४ महीने।", "24महीने"),                  # Devanagari digits, danda removed, vowel signs kept
    ("２４か月。", "24か月"),                    # full-width digits and ideographic full stop
    ("２４个月", "24个月"),
    ("٢٤ شهرًا", "24شهرا"),                     # Arabic-Indic digits, tanwin (harakat) dropped
    ("۲۴ ماه", "24ماه"),                        # Extended Arabic-Indic (Persian) digits
    ("๒๔ เดือน", "24เดือน"),                    # Thai digits, vowel marks kept
    ("  XR-200 ", "xr200"),
])
def test_normalize_every_script(text, expected):
    assert normalize(text) == expected


def test_composed_and_decomposed_forms_are_equal():
    composed = "garantía vĩnh viễn"
    decomposed = unicodedata.normalize("NFD", composed)
    assert composed != decomposed and normalize(composed) == normalize(decomposed)


def test_combining_marks_are_not_stripped():
    # Hindi and Thai vowel signs are part of the word: dropping them would merge different words.
    assert normalize("महीने") != normalize("महन")
    assert normalize("เดือน") != normalize("ดอน")


@pytest.mark.parametrize("digits", ["0123456789", "٠١٢٣٤٥٦٧٨٩", "۰۱۲۳۴۵۶۷۸۹", "०१२३४५६७८९", "০১২৩৪৫৬৭৮৯",
                                    "๐๑๒๓๔๕๖๗๘๙", "０１２３４５６７８９", "၀၁၂၃၄၅၆၇၈၉"])
def test_digits_of_any_script(digits):
    assert ascii_digits(digits) == "0123456789"
    assert normalize(digits) == "0123456789"


@pytest.mark.parametrize("prediction, answers, expected", [
    ("24 Monate", ["24 Monate"], True),
    ("Die Garantie gilt 24 Monate.", ["24 Monate"], True),       # contained in the first line
    ("24 monate", ["24 Monate"], True),                          # case
    ("24 meses", ["24 meses", "dos años"], True),
    ("dos años", ["24 meses", "dos años"], True),
    ("la garantia dura 24 meses", ["24 meses"], True),
    ("24 mois", ["24 Monate"], False),
    ("२४ महीने", ["24 महीने"], True),                            # Devanagari digits vs ASCII answer
    ("24 महीने", ["२४ महीने"], True),
    ("２４か月です", ["24か月"], True),                           # full-width digits
    ("保修期为２４个月。", ["24个月"], True),
    ("٢٤ شهرا", ["24 شهرا"], True),                               # Arabic-Indic digits
    ("๒๔ เดือน", ["24 เดือน"], True),                             # Thai digits
    ("24เดือน", ["24 เดือน"], True),                              # Thai written without the space
    ("240 months", ["24 months"], False),                        # digits glued on the right
    ("124 months", ["24 months"], False),                        # ... and on the left
    ("6 mois", ["6"], True),
    ("16 mois", ["6"], False),
    ("Answer: 24 months\n36 months", ["36 months"], False),      # only the first line counts
    ("\n\n 36 months\nQuestion", ["36 months"], True),           # leading blank lines skipped
    ("", ["24 months"], False),
])
def test_is_correct(prediction, answers, expected):
    assert is_correct(prediction, answers) is expected


def test_contains_answer_finds_a_later_unglued_occurrence():
    assert contains_answer(normalize("240 or 24 months"), normalize("24"))


def test_first_line_and_letters():
    assert first_line("  24 months \nQuestion: x") == "24 months"
    assert first_line("\n\n") == ""
    assert has_letters("24 mois") and has_letters("२४ महीने") and has_letters("24か月")
    assert not has_letters("24") and not has_letters("２４") and not has_letters("- 24 -")
