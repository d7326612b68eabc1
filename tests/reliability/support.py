"""Helpers of the reliability suite: a subprocess ``bcat`` runner, broken copies of the tiny model, and a
``sitecustomize`` guard that blocks the network and records file writes (``from reliability.support import ...``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).resolve().parents[2]

GUARD = r'''
"""Test guard (tests/reliability): BCAT_GUARD_NETWORK=1 blocks and records non-loopback connections and
DNS lookups; BCAT_GUARD_WATCH=DIR records every write, mkdir, rename or delete under DIR. Records go to
BCAT_GUARD_DIR/events-PID.jsonl, tagged with the process's RANK."""
import json, os, sys

_dir = os.environ.get("BCAT_GUARD_DIR")
if _dir:
    _fh = open(os.path.join(_dir, "events-%d.jsonl" % os.getpid()), "a", buffering=1)
    _rank = os.environ.get("RANK", "none")

    def _record(kind, detail):
        _fh.write(json.dumps({"rank": _rank, "pid": os.getpid(), "kind": kind, "detail": detail}) + "\n")

    _record("start", " ".join(sys.argv))

    if os.environ.get("BCAT_GUARD_NETWORK") == "1":
        import socket

        def _local(host):
            host = str(host)
            return host in ("localhost", "::1", "", "None") or host.startswith("127.")

        def _guard(method):
            def wrapper(self, address, *args):
                if self.family != getattr(socket, "AF_UNIX", -1) and not _local(address[0]):
                    _record(method.__name__, repr(address))
                    raise OSError("network access blocked by the bcat test guard: %r" % (address,))
                return method(self, address, *args)
            return wrapper

        socket.socket.connect = _guard(socket.socket.connect)
        socket.socket.connect_ex = _guard(socket.socket.connect_ex)
        _getaddrinfo = socket.getaddrinfo

        def getaddrinfo(host, *args, **kwargs):
            if host is not None and not _local(host):
                _record("getaddrinfo", str(host))
                raise socket.gaierror("DNS blocked by the bcat test guard: %r" % (host,))
            return _getaddrinfo(host, *args, **kwargs)

        socket.getaddrinfo = getaddrinfo

    _watch = os.environ.get("BCAT_GUARD_WATCH")
    if _watch:
        _watch = os.path.realpath(_watch)
        _writes = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
        _events = {"os.mkdir", "os.rename", "os.replace", "os.remove", "os.rmdir", "shutil.rmtree",
                   "os.truncate", "os.symlink", "os.link", "shutil.copyfile", "shutil.move"}

        def _inside(path):
            try:
                p = os.path.realpath(os.fsdecode(os.fspath(path)))
            except TypeError:
                return None
            return p if p == _watch or p.startswith(_watch + os.sep) else None

        def _hook(event, args):
            if event == "open":
                path, _mode, flags = args
                if isinstance(path, int) or path is None or not isinstance(flags, int) or not flags & _writes:
                    return
            elif event in _events:
                path = args[0]
                if isinstance(path, int):
                    return
            else:
                return
            where = _inside(path)
            if where is not None:
                _record(event, where)

        sys.addaudithook(_hook)
'''


@dataclass
class Result:
    rc: int
    out: str
    err: str


def guard_env(tmp_path: Path, network: bool = False, watch: Path | None = None) -> tuple[dict, Path]:
    """Environment for a subprocess that runs under the guard; returns (env, events directory)."""
    site = tmp_path / "guard-site"
    events = tmp_path / "guard-events"
    site.mkdir(exist_ok=True)
    events.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(GUARD, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
                                                             "HF_DATASETS_OFFLINE")}
    env.update(PYTHONPATH=os.pathsep.join([str(site), str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
               BCAT_GUARD_DIR=str(events), OMP_NUM_THREADS="1", HF_HOME=str(tmp_path / "hf-home"))
    if network:
        env["BCAT_GUARD_NETWORK"] = "1"
    if watch is not None:
        env["BCAT_GUARD_WATCH"] = str(watch)
    return env, events


def guard_events(events: Path) -> list[dict]:
    return [json.loads(line) for f in sorted(events.glob("events-*.jsonl")) for line in f.read_text().splitlines()]


def run_cli(args: list[str], env: dict | None = None, cwd: Path | None = None, timeout: int = 300):
    return subprocess.run([sys.executable, "-m", "bcat.cli", *args], env=env or {**os.environ, "OMP_NUM_THREADS": "1"},
                          cwd=cwd, capture_output=True, text=True, timeout=timeout)


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def edit_json(path: Path, **changes) -> None:
    """Set keys (value ``None`` deletes the key)."""
    data = json.loads(path.read_text())
    for k, v in changes.items():
        if v is None:
            data.pop(k, None)
        else:
            data[k] = v
    path.write_text(json.dumps(data, indent=1))


def tree(root: Path) -> set[str]:
    """Every path under ``root``, relative."""
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def assert_clean_failure(result: Result, *words: str) -> None:
    """Exit code 2, one ``bcat: error:`` message holding ``words``, no traceback."""
    assert result.rc == 2, result.err[-2000:]
    assert "Traceback" not in result.err and "Traceback" not in result.out
    errors = [line for line in result.err.splitlines() if line.startswith("bcat: error:")]
    assert len(errors) == 1, result.err[-2000:]
    for w in words:
        assert w in errors[0], (w, errors[0])
