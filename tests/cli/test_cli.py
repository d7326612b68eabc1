"""The command line as people type it: options and overrides in any order, ``--debug`` anywhere, the
example configs by name from any directory, explicit outputs, and only the messages a person needs."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
from helpers import parallel_records, qa_records, write_jsonl
from reliability.support import Result, assert_clean_failure, run_cli

import bcat.cli.plan
from bcat.cli import main
from bcat.errors import ConfigError, DataError

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture(autouse=True)
def _cache(monkeypatch, tmp_path):
    monkeypatch.setenv("BCAT_CACHE", str(tmp_path / "bcat-cache"))


def _plan(capsys, *argv) -> tuple[int, list[dict], str]:
    rc = main(list(argv))
    cap = capsys.readouterr()
    return rc, [json.loads(line) for line in cap.out.splitlines() if line.startswith("{")], cap.err


def test_overrides_and_options_in_any_order(tmp_path, tiny_model_dir, capsys):
    data = write_jsonl(tmp_path / "d.jsonl", parallel_records(4))
    config = tmp_path / "c.yaml"
    config.write_text("batch:\n  mode: grouped\n  groups_per_batch: 4\n", encoding="utf-8")
    # overrides before, between and after the options; a later override wins over an earlier one and the file
    rc, plan, err = _plan(capsys, "plan", f"data.train={data}", "batch.groups_per_batch=2", "--config", str(config),
                          f"model.path={tiny_model_dir}", "--json", "batch.groups_per_batch=1", "--steps", "1",
                          "objective.name=dpo")
    assert rc == 0, err
    assert len(plan) == 1 and len({item["group"] for item in plan[0]["items"]}) == 1
    with pytest.raises(SystemExit) as stop:  # a misspelt option is still an error, not an override
        main(["plan", f"data.train={data}", "--jsn"])
    assert stop.value.code == 2 and "unrecognized arguments: --jsn" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a command without overrides takes none
        main(["data", "check", str(data), "objective.name=dpo"])


def test_debug_after_the_subcommand_shows_the_traceback(tmp_path, capsys):
    argv = ["plan", f"data.train={tmp_path / 'missing.jsonl'}", "model.path=unused"]
    assert main(argv) == 2 and "file not found" in capsys.readouterr().err
    for debug in (["--debug", *argv], [argv[0], "--debug", *argv[1:]], [*argv, "--debug"]):
        with pytest.raises(DataError):
            main(debug)


def test_ctrl_c_is_one_line_and_exit_130(monkeypatch, capsys):
    def interrupted(*_):
        raise KeyboardInterrupt

    monkeypatch.setattr(bcat.cli.plan, "load_config", interrupted)
    try:
        rc = main(["plan"])
    except KeyboardInterrupt:
        pytest.fail("KeyboardInterrupt escaped bcat's main()")
    assert rc == 130
    cap = capsys.readouterr()
    assert cap.err == "bcat: interrupted\n" and "Traceback" not in cap.out
    with pytest.raises(KeyboardInterrupt):
        main(["plan", "--debug"])


def test_library_future_warnings_only_with_debug(monkeypatch, capsys):
    def deprecated(*_):
        warnings.warn("`foo` is deprecated and will be removed in v9", FutureWarning)
        raise ConfigError("stop here")

    monkeypatch.setattr(bcat.cli.plan, "load_config", deprecated)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert main(["plan"]) == 2
    assert not seen
    with warnings.catch_warnings(record=True) as seen, pytest.raises(ConfigError):
        warnings.simplefilter("always")
        main(["plan", "--debug"])
    assert [w.category for w in seen] == [FutureWarning]


def test_training_says_what_a_person_needs_and_the_adapter_loads_from_anywhere(tmp_path, tiny_model_dir):
    """A relative ``model.path`` works from the directory training ran in and the adapter it writes
    loads from any other; stderr holds no library warnings and a readable launch line."""
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    shutil.copytree(tiny_model_dir, work / "tiny")
    elsewhere.mkdir()
    write_jsonl(work / "pairs.jsonl", parallel_records(2))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "BCAT_CACHE": str(tmp_path / "cache")}
    done = run_cli(["train", "model.path=tiny", "data.train=pairs.jsonl", "training.output_dir=run",
                    "training.max_steps=1", "batch.groups_per_batch=1", "training.threads=1"], env=env, cwd=work)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "bcat: training on 1 process, cpu" in done.stderr
    assert "DistributedType" not in done.stderr and "Warning" not in done.stderr, done.stderr
    adapter = json.loads((work / "run" / "model" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(work / "tiny")
    qa = write_jsonl(elsewhere / "qa.jsonl", qa_records(1))
    done = run_cli(["eval", "--model", str(work / "run"), "--data", str(qa), "--output", "out", "--languages", "en",
                    "--max-new-tokens", "2", "--bootstrap", "10"], env=env, cwd=elsewhere)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (elsewhere / "out" / "metrics.json").is_file()


def test_sigint_during_a_command_is_one_line(tmp_path, tiny_model_dir):
    """A real Ctrl-C (SIGINT to the process group) while a model trains: one line, exit 130."""
    write_jsonl(tmp_path / "pairs.jsonl", parallel_records(4))
    cmd = [sys.executable, "-m", "bcat.cli", "train", f"model.path={tiny_model_dir}", "data.train=pairs.jsonl",
           "training.output_dir=run", "training.max_steps=100000", "batch.groups_per_batch=1", "training.threads=1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "BCAT_CACHE": str(tmp_path / "cache")}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not (tmp_path / "run" / "train_log.jsonl").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert err.rstrip().endswith("bcat: interrupted") and "Traceback" not in err, err[-3000:]


def test_headline_numbers_are_rounded_and_absent_ones_say_why(tmp_path, capsys):
    records = qa_records(3)
    data = write_jsonl(tmp_path / "qa.jsonl", records)
    answers = [{"group": r["group"], "lang": r["lang"], "prediction": r["answers"][0] if r["group"] == "g0" else "no"}
               for r in records]
    predictions = write_jsonl(tmp_path / "pred.jsonl", answers)
    langs = sorted({r["lang"] for r in records} - {"en"})
    assert main(["score", "--data", str(data), "--predictions", str(predictions), "--output", str(tmp_path / "s"),
                 "--seen", ",".join(langs), "--bootstrap", "10"]) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("strict accuracy"))
    assert "en 0.333  non-en mean 0.333  gap +0.000  unseen mean n/a (no unseen languages)" in line, line
    assert "None" not in line


def test_eval_refuses_a_finished_output_unless_overwrite(tmp_path, tiny_model_dir, capsys):
    data = write_jsonl(tmp_path / "qa.jsonl", qa_records(1))
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.json").write_text("{}")
    argv = ["eval", "--model", str(tiny_model_dir), "--data", str(data), "--output", str(out), "--languages", "en",
            "--max-new-tokens", "2", "--bootstrap", "10"]
    rc = main(argv)
    cap = capsys.readouterr()
    assert_clean_failure(Result(rc, cap.out, cap.err), f"--output {out} holds a finished evaluation", "--overwrite")
    assert (out / "metrics.json").read_text() == "{}"
    assert main([*argv, "--overwrite"]) == 0
    assert json.loads((out / "metrics.json").read_text())["per_language"]


def test_compare_writes_only_where_asked(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["compare", str(tmp_path / "a"), str(tmp_path / "b")])
    assert stop.value.code == 2 and "--output" in capsys.readouterr().err


def test_example_configs_ship_with_the_package(tmp_path, capsys):
    from bcat.config import BUILTIN_CONFIGS, load_config

    for name in BUILTIN_CONFIGS:
        cfg = load_config(f"builtin:{name}", ["data.train=x.jsonl"])
        assert cfg.objective.name == name and cfg.data.train == "x.jsonl"
    rc = main(["plan", "--config", "dpo"])
    cap = capsys.readouterr()
    assert_clean_failure(Result(rc, cap.out, cap.err), "config file not found: dpo", "builtin:dpo")
    rc = main(["plan", "--config", "builtin:ppo"])
    cap = capsys.readouterr()
    assert_clean_failure(Result(rc, cap.out, cap.err), "no such built-in config", "builtin:dpo")


def _quick_start() -> list[list[str]]:
    """The README's quick start commands (the code block with ``bcat train --config``), as argv lists."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    block = next(b for b in blocks if "bcat train --config" in b)
    lines = [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]
    return [shlex.split(line)[1:] for line in lines]


def test_readme_quick_start_runs_from_any_directory(tmp_path, tiny_model_dir, monkeypatch, capsys):
    """The quick start as written, with the placeholders filled in (a tiny model, a tiny data file) and
    a short training, run from a directory that is not the repository."""
    monkeypatch.chdir(tmp_path)
    commands = _quick_start()
    assert [c[0] for c in commands] == ["data", "plan", "train"]
    text = " ".join(" ".join(c) for c in commands)
    model, data = re.search(r"model\.path=(\S+)", text).group(1), re.search(r"data\.train=(\S+)", text).group(1)
    write_jsonl(tmp_path / data, parallel_records(4))
    for argv in commands:
        argv = [str(tiny_model_dir) if a == model else a.replace(model, str(tiny_model_dir)) for a in argv]
        if argv[0] == "train":
            argv += ["training.max_steps=1", "training.threads=1"]
        assert main(argv) == 0, capsys.readouterr().err
        printed = capsys.readouterr().out
        if argv[0] == "plan":
            plan = [json.loads(line) for line in printed.splitlines()]
            assert plan and all(item["group"].startswith("g") for step in plan for item in step["items"])
    assert (tmp_path / "runs" / "dpo" / "model" / "adapter_config.json").is_file()
