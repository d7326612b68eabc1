"""The languages bcat knows by default, defined once.

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
