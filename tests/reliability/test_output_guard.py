"""Output folders before any work: one writer at a time (a second process is refused with the holder's pid,
host and command; a killed holder blocks nobody), and an unwritable folder refused before the model loads or
anything is scored, for every command that writes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap

import pytest
from helpers import parallel_records, write_jsonl
from reliability.support import REPO, assert_clean_failure, tree

import bcat.model.loading
from bcat.evaluation import scoring


@pytest.fixture
def data(tmp_path):
    return write_jsonl(tmp_path / "d.jsonl", parallel_records(2))


@pytest.fixture
def holder(tmp_path):
    """``hold(folder)`` starts a process that holds ``folder`` as bcat's writers do (the ``bcat.output``
    lock) and waits; returns the process. Killed at the end."""
    procs = []

    def hold(folder):
        code = textwrap.dedent(f"""
            import sys, time
            from pathlib import Path
            from bcat.output import lock_output
            sys.argv = ["bcat", "train", "--config", "mine.yaml"]
            lock = lock_output(Path({str(folder)!r}), "test")
            print("held", flush=True)
            time.sleep(120)
        """)
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONPATH": str(REPO)})
        procs.append(proc)
        assert proc.stdout.readline().strip() == "held"
        return proc

    yield hold
    for proc in procs:
        proc.kill()
        proc.wait()


def _commands(evaluated, tiny_model_dir, out):
    data, run = evaluated
    return {
        "eval": ["eval", "--model", tiny_model_dir, "--data", data, "--output", out, "--max-new-tokens", "2"],
        "score": ["score", "--data", data, "--predictions", run / "predictions.jsonl", "--output", out],
        "compare": ["compare", run, run, "--output", out, "--bootstrap", "20"],
        "report": ["report", run, "--output", out, "--bootstrap", "20"],
    }


def test_second_training_run_in_the_same_folder_is_refused(tmp_path, train, data, holder):
    out = tmp_path / "out"
    proc = holder(out)
    result = train(out, data)
    assert_clean_failure(result, f"training.output_dir {out} is in use by another bcat process",
                         f"pid {proc.pid} on {socket.gethostname()} (bcat train --config mine.yaml, since ")
    assert tree(out) == {".bcat.lock"}  # nothing of the refused run: no log, no config, no checkpoint


@pytest.mark.parametrize("command", ["eval", "score", "compare", "report"])
def test_second_writer_is_refused(tmp_path, cli, evaluated, tiny_model_dir, holder, command):
    out = tmp_path / "out"
    proc = holder(out)
    result = cli(*_commands(evaluated, tiny_model_dir, out)[command])
    assert_clean_failure(result, f"--output {out} is in use by another bcat process", f"pid {proc.pid}")
    assert tree(out) == {".bcat.lock"}


def test_a_killed_holder_blocks_nobody(tmp_path, train, data, holder):
    """The kernel drops the lock of a dead process: its lock file is left behind, and the next run takes it."""
    out = tmp_path / "out"
    proc = holder(out)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (out / ".bcat.lock").exists()
    assert train(out, data, steps=1).rc == 0
    assert not (out / ".bcat.lock").exists()  # released at the end: nothing of the lock left in the run


def _no_work(*args, **kwargs):
    raise AssertionError("work started before the output folder was checked")


@pytest.mark.parametrize("command", ["eval", "score", "compare", "report"])
def test_read_only_output_refused_before_work(read_only_dir, cli, evaluated, tiny_model_dir, command, monkeypatch):
    monkeypatch.setattr(bcat.model.loading, "load_for_eval", _no_work)
    monkeypatch.setattr(scoring, "score_outputs", _no_work)
    result = cli(*_commands(evaluated, tiny_model_dir, read_only_dir)[command])
    assert_clean_failure(result, f"--output {read_only_dir} is not writable")
    assert tree(read_only_dir) == set()


@pytest.mark.parametrize("command", ["eval", "score", "report"])
def test_output_below_read_only_folder_refused(read_only_dir, cli, evaluated, tiny_model_dir, command, monkeypatch):
    """A new folder inside a read-only one, or an existing writable folder whose parent is read-only (it is
    replaced whole, so the parent must take the new folder beside it)."""
    monkeypatch.setattr(bcat.model.loading, "load_for_eval", _no_work)
    out = read_only_dir / "new"
    assert_clean_failure(cli(*_commands(evaluated, tiny_model_dir, out)[command]), "is not writable")


def test_read_only_training_output_refused(read_only_dir, train, data):
    for out in (read_only_dir, read_only_dir / "run"):
        assert_clean_failure(train(out, data), f"training.output_dir {out} is not writable")
    assert tree(read_only_dir) == set()
