"""``run_eval`` and ``run_report`` called from Python with their option dataclasses (no argparse), and the
errors that name an option: the field in the library, the flag on the command line."""

from __future__ import annotations

import json

import pytest
from helpers import qa_records, write_jsonl

from bcat.cli import build_parser, main
from bcat.cli.arguments import options_from
from bcat.errors import OptionError
from bcat.evaluation.evaluate import EvalOptions, run_eval
from bcat.report.render import ReportOptions, run_report

FAST = {"max_new_tokens": 4, "bootstrap": 50, "batch_size": 4}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("qa") / "qa.jsonl", qa_records(2))


def test_run_eval_and_run_report_from_python(tmp_path, tiny_model_dir, data):
    out = tmp_path / "eval"
    metrics = run_eval(EvalOptions(model=str(tiny_model_dir), data=str(data), output=str(out), unseen=["th"],
                                   languages=["en", "fr", "th"], **FAST))
    assert json.loads((out / "metrics.json").read_text(encoding="utf-8")) == metrics
    assert metrics["options"]["max_new_tokens"] == 4 and metrics["options"]["languages"] == ["en", "fr", "th"]
    assert metrics["languages"]["unseen"] == ["th"] and sorted(metrics["per_language"]) == ["en", "fr", "th"]
    assert (out / "predictions.jsonl").is_file()

    md, page = run_report(ReportOptions(runs=[str(out)], output=str(tmp_path / "report"), bootstrap=50))
    assert md == tmp_path / "report" / "report.md" and page.is_file()
    assert "th" in md.read_text(encoding="utf-8")


def test_the_command_line_builds_the_same_options():
    """Every field is a flag of the same name, with the same default (``options_from`` reads each field)."""
    parser = build_parser()
    args = parser.parse_args(["eval", "--model", "m", "--output", "o"])
    assert options_from(EvalOptions, args) == EvalOptions(model="m", output="o")
    args = parser.parse_args(["eval", "--model", "m", "--output", "o", "--suite", "rag,ood", "--batch-size", "3",
                              "--seen", "en,fr", "--trim-vocab", "--chat-template", "auto"])
    assert options_from(EvalOptions, args) == EvalOptions(model="m", output="o", suite=["rag", "ood"], batch_size=3,
                                                          seen=["en", "fr"], trim_vocab=True, chat_template="auto")
    assert options_from(ReportOptions, parser.parse_args(["report", "a", "b"])) == ReportOptions(runs=["a", "b"])


def test_errors_name_the_field_in_python_and_the_flag_on_the_command_line(tmp_path, tiny_model_dir, data, capsys):
    out = tmp_path / "o"
    with pytest.raises(OptionError) as error:
        run_eval(EvalOptions(model=str(tiny_model_dir), data=str(data), output=str(out), suite=["rag", "xyz"]))
    assert str(error.value) == "suite: unknown suite xyz; choose from rag, ood"
    with pytest.raises(OptionError, match=r"^seen and unseen: give one of them$"):
        run_eval(EvalOptions(model=str(tiny_model_dir), data=str(data), output=str(out), seen=["en"], unseen=["th"]))
    with pytest.raises(OptionError, match=r"^chat_template on, but the tokenizer has no chat template$"):
        run_eval(EvalOptions(model=str(tiny_model_dir), data=str(data), output=str(out), chat_template="on", **FAST))
    assert not out.exists()  # refused before anything was written
    capsys.readouterr()

    assert main(["eval", "--model", str(tiny_model_dir), "--data", str(data), "--output", str(out),
                 "--suite", "rag,xyz"]) == 2
    assert capsys.readouterr().err.splitlines() == ["bcat: error: --suite: unknown suite xyz; choose from rag, ood"]
    assert main(["eval", "--model", str(tiny_model_dir), "--data", str(data), "--output", str(out),
                 "--chat-template", "on", "--max-new-tokens", "2", "--bootstrap", "10"]) == 2
    assert "bcat: error: --chat-template on, but the tokenizer has no chat template" in capsys.readouterr().err
    assert not out.exists()


def test_the_output_and_the_model_are_named_as_the_caller_named_them(tmp_path, tiny_model_dir, data, capsys):
    out = tmp_path / "done"
    out.mkdir()
    (out / "metrics.json").write_text("{}")
    with pytest.raises(OptionError, match=f"^output {out} holds a finished evaluation .* pass overwrite to"):
        run_eval(EvalOptions(model=str(tiny_model_dir), data=str(data), output=str(out)))
    with pytest.raises(OptionError, match=r"^model: directory not found"):
        run_eval(EvalOptions(model=str(tmp_path / "none"), data=str(data), output=str(tmp_path / "new")))
    with pytest.raises(OptionError, match=r"^train_run: .* has no train_log.jsonl"):
        run_report(ReportOptions(runs=[str(out)], output=str(tmp_path / "r"), train_run=[str(tmp_path)]))

    assert main(["eval", "--model", str(tmp_path / "none"), "--data", str(data), "--output", str(tmp_path / "new")]) == 2
    assert "bcat: error: --model: directory not found" in capsys.readouterr().err
    assert main(["eval", "--model", str(tiny_model_dir), "--data", str(data), "--output", str(out)]) == 2
    assert f"bcat: error: --output {out} holds a finished evaluation" in capsys.readouterr().err
