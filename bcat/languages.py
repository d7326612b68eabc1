"""The languages bcat knows by default, defined once, and how a language code is named.

The anchor of a training run and of an evaluation is configurable (``data.anchor``, ``bcat eval
--anchor``); these are the defaults, and the languages of the bundled data.
"""

ANCHOR = "en"
"""The anchor language: the one every other language of a group is aligned toward."""
SEEN: tuple[str, ...] = ("de", "es", "fr", "hi", "ja", "zh")
"""Non-English languages of the bundled data meant for training."""
UNSEEN: tuple[str, ...] = ("th", "vi", "hu", "ro")
"""Languages held out of training in the paper's setting (the bundled data still has them, in every split)."""
LANGUAGES: tuple[str, ...] = (ANCHOR, *SEEN, *UNSEEN)
"""Every language of the bundled data, in file order."""


def primary_subtag(code: str) -> str:
    """The language subtag of a BCP-47 tag, lower case: what a region or script variant falls back to.

    >>> primary_subtag("pt-BR"), primary_subtag("zh-Hans"), primary_subtag("en")
    ('pt', 'zh', 'en')
    """
    return code.replace("_", "-").split("-", 1)[0].lower()


def display_name(code: str) -> str:
    """The English name of a BCP-47 tag, from CLDR (babel); the code itself when CLDR does not know it.

    >>> display_name("fr"), display_name("pt-BR"), display_name("zh-Hans"), display_name("xx-Q")
    ('French', 'Portuguese (Brazil)', 'Chinese (Simplified)', 'xx-Q')
    """
    from babel import Locale, UnknownLocaleError

    try:
        return Locale.parse(code, sep="-").get_display_name("en") or code
    except (UnknownLocaleError, ValueError, TypeError):
        return code


def language_label(code: str) -> str:
    """How every output names a language: its code and its English name.

    >>> language_label("pt-BR"), language_label("xx-Q")
    ('pt-BR Portuguese (Brazil)', 'xx-Q')
    """
    name = display_name(code)
    return code if name == code else f"{code} {name}"
