"""What the command line says about itself: every ``--help`` page names what each option is for and
the default it really has, and ``--debug`` goes anywhere on the line, as the README says."""

from __future__ import annotations

import argparse
import os
import re
import sys

import pytest
from helpers import parallel_records, write_jsonl

from bcat.cli import build_parser, main
from bcat.config import AlignmentConfig, DataConfig
from bcat.errors import DataError


def parsers() -> dict[str, argparse.ArgumentParser]:
    """Every parser of ``bcat``, by its command line (``bcat data check``)."""
    found, todo = {}, [("bcat", build_parser())]
    while todo:
        name, parser = todo.pop()
        found[name] = parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                todo += [(f"{name} {sub}", p) for sub, p in action.choices.items()]
    return found


def options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))]


def rendered_default(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


@pytest.mark.parametrize("command", sorted(parsers()))
def test_every_option_says_what_it_is_for(command):
    parser = parsers()[command]
    silent = [a.option_strings[-1] if a.option_strings else a.dest for a in options(parser) if not a.help]
    assert not silent, f"{command}: options without help: {silent}"


@pytest.mark.parametrize("command", sorted(parsers()))
def test_help_page_reads_as_written(command):
    """No argparse artefacts: a literal ``%%`` (descriptions are not %-formatted) or a default argparse
    filled in that contradicts the text (``(default: all) ... (default: None)``, a required option's default)."""
    page = parsers()[command].format_help()
    for artefact in ("%%", "(default: None)", "(default: False)"):
        assert artefact not in page, f"{command} --help shows {artefact!r}"


@pytest.mark.parametrize("command", sorted(parsers()))
def test_a_stated_default_is_the_real_one(command):
    for action in options(parsers()[command]):
        if action.default is None or action.default is False or action.default is argparse.SUPPRESS:
            continue
        for stated in re.findall(r"\bdefault:? ([^\s,;)]+(?:,[^\s,;)]+)*)", action.help or ""):
            assert stated == rendered_default(action.default), f"{command} {action.option_strings}: {action.help}"


def test_the_seed_says_what_it_seeds():
    pages = parsers()
    seed = {name: next(a.help for a in options(pages[name]) if a.dest == "seed") for name in ("bcat eval",
                                                                                              "bcat compare",
                                                                                              "bcat report")}
    assert "shots" in seed["bcat eval"]
    assert "shots" not in seed["bcat compare"] and "shots" not in seed["bcat report"]  # they prompt nothing


def test_options_named_after_config_keys_default_as_the_config():
    pages = parsers()
    defaults = {(name, a.dest): a.default for name in ("bcat data check", "bcat diagnose")
                for a in options(pages[name])}
    assert defaults["bcat data check", "max_length"] == DataConfig.max_length
    assert defaults["bcat data check", "anchor"] == DataConfig.anchor
    assert defaults["bcat diagnose", "max_length"] == DataConfig.max_length
    assert defaults["bcat diagnose", "stats_records"] == AlignmentConfig.hidden_stats_records
    assert defaults["bcat diagnose", "temperature"] == AlignmentConfig.temperature


def test_debug_between_data_and_its_subcommand(tmp_path, capsys):
    good = write_jsonl(tmp_path / "pairs.jsonl", parallel_records(2))
    assert main(["data", "--debug", "check", str(good)]) == 0
    assert "OK" in capsys.readouterr().out
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"group": "g0"}\n', encoding="utf-8")
    assert main(["data", "check", str(bad)]) == 2
    with pytest.raises(DataError):
        main(["data", "--debug", "check", str(bad)])


@pytest.mark.parametrize("argv", [["demo", "--steps", "0"], ["demo", "--eval-groups", "-1"], ["demo", "--batch-size", "0"],
                                  ["study", "s.yaml", "--max-runs", "0"], ["data", "check", "f.jsonl", "--max-length", "0"],
                                  ["data", "pairs", "--input", "q.jsonl", "--output", "o.jsonl", "--groups", "0"]])
def test_a_count_below_one_is_refused_by_the_parser(argv, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(argv)
    assert e.value.code == 2 and "must be at least 1, got" in capsys.readouterr().err


def test_a_closed_output_pipe_ends_quietly(tmp_path, monkeypatch, capsys):
    good = write_jsonl(tmp_path / "pairs.jsonl", parallel_records(2))
    read, write = os.pipe()
    os.close(read)  # the reader is gone, as after `bcat data check F | head -1`
    with os.fdopen(write, "w") as closed_pipe:
        monkeypatch.setattr(sys, "stdout", closed_pipe)
        assert main(["data", "check", str(good)]) == 141
        monkeypatch.undo()
    assert "Traceback" not in capsys.readouterr().err


def test_version_names_bcat_and_the_stack_on_one_line(capsys):
    import importlib.metadata

    import bcat
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    line = capsys.readouterr().out
    assert line.count("\n") == 1 and line.startswith(f"bcat {bcat.__version__} (Python ")
    assert f"torch {importlib.metadata.version('torch')}" in line
    assert f"transformers {importlib.metadata.version('transformers')}" in line
    assert importlib.metadata.version("bcat") == bcat.__version__  # pyproject reads it from bcat.__version__
