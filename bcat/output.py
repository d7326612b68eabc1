"""Output folders: checked writable before any work, held by one writer at a time, replaced whole.

Every command that writes (``train``, ``eval``, ``score``, ``compare``, ``report``) calls
:func:`check_writable` before its work, so an unwritable ``--output`` costs nothing, and holds
:func:`lock_output` on the folder while it works, so a second process aimed at the same folder is
refused at once with the holder's pid, host and command. The lock is ``fcntl.flock`` on
``FOLDER/.bcat.lock``: the kernel drops it when its holder dies, so a killed run never blocks the
next one (on systems without ``fcntl`` there is no lock).

:func:`replace_dir` writes a folder aside and swaps it in with one ``renameat2(RENAME_EXCHANGE)``
(Linux): at every instant the path holds either the old complete folder or the new one. Where the
kernel or file system cannot exchange, two renames are used and the old folder waits under
``NAME.old`` between them (:func:`restore_dir` puts it back).
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shlex
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Callable

from bcat.errors import OptionError

LOCK_NAME = ".bcat.lock"


def _nearest_existing(path: Path) -> Path:
    while not os.path.lexists(path) and path != path.parent:
        path = path.parent
    return path


def _probe(folder: Path, label: str, path: Path) -> None:
    if not folder.is_dir():
        raise OptionError.about(label, f" {path} is not writable ({folder} is not a directory)")
    probe = folder / f".bcat-write-test-{os.getpid()}-{time.time_ns()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise OptionError.about(label, f" {path} is not writable ({e.strerror or e})") from None


def check_writable(path: Path, label: str, replaced: bool = False) -> None:
    """Refuse, before any work, an output folder bcat could not write: create and remove a file where
    the output goes (in ``path``, or its nearest existing parent). ``replaced``: the folder is written
    by :func:`replace_dir`, which also needs its parent writable and cannot move the working directory.
    ``label``: the option that named the folder (``output``, ``training.output_dir``), which the error
    names (:class:`bcat.errors.OptionError`)."""
    path = Path(path)
    _probe(_nearest_existing(path), label, path)
    if replaced:
        _probe(_nearest_existing(path.absolute().parent), label, path)
        if Path.cwd().resolve().is_relative_to(path.resolve()):
            raise OptionError.about(label, f" {path} holds the working directory; it is replaced as a whole when "
                                           "written, so give a folder below it")


class OutputLock:
    """An exclusive hold on an output folder (see :func:`lock_output`); ``release()`` or ``with``."""

    def __init__(self, folder: Path, fd: int | None, created: list[Path]):
        self.folder, self._fd, self._created = folder, fd, created

    def release(self) -> None:
        """Drop the lock and remove its file, and the folders the lock created if they stayed empty."""
        if self._fd is None:
            return
        try:
            (self.folder / LOCK_NAME).unlink(missing_ok=True)
        finally:
            os.close(self._fd)
            self._fd = None
        for folder in reversed(self._created):
            try:
                folder.rmdir()
            except OSError:
                break

    def __enter__(self) -> OutputLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _holder(lock_file: Path) -> str:
    try:
        info = json.loads(lock_file.read_text(encoding="utf-8"))
        return f"pid {info['pid']} on {info['host']} ({info['command']}, since {info['since']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not yet recorded itself"


def lock_output(folder: Path, label: str) -> OutputLock:
    """Hold ``folder`` (created if missing) for this process, or refuse naming the process that holds it."""
    folder = Path(folder)
    try:
        import fcntl
    except ImportError:  # Windows: no advisory lock
        return OutputLock(folder, None, [])
    created = []
    parent = folder
    while not parent.exists():
        created.append(parent)
        parent = parent.parent
    created.reverse()
    folder.mkdir(parents=True, exist_ok=True)
    lock_file = folder / LOCK_NAME
    while True:
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            raise OptionError.about(label, f" {folder} is in use by another bcat process: {_holder(lock_file)}; "
                                           "wait for it to finish or choose another folder") from None
        try:  # the holder before us may have removed the file between our open and our flock
            if os.stat(lock_file).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    info = {"pid": os.getpid(), "host": socket.gethostname(), "command": shlex.join(["bcat", *sys.argv[1:]]),
            "since": time.strftime("%Y-%m-%dT%H:%M:%S")}
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps(info).encode("utf-8"))
    return OutputLock(folder, fd, created)


def claim_output(folder: Path, label: str, replaced: bool = False) -> OutputLock:
    """Before any work: refuse a folder that cannot be written (:func:`check_writable`), then hold it
    for this process (:func:`lock_output`)."""
    check_writable(folder, label, replaced)
    return lock_output(folder, label)


# --- replacing a folder whole ---------------------------------------------------------------------

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux ``renameat2``); False where the system cannot."""
    libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def _aside(target: Path, tag: str) -> Path:
    return target.with_name(f".{target.name}.{tag}")


def restore_dir(target: Path) -> None:
    """Put back a folder left aside by a :func:`replace_dir` interrupted between its two renames."""
    old = _aside(target, "old")
    if old.is_dir() and not os.path.lexists(target):
        os.rename(old, target)


def _carry(source: Path, dest: Path) -> None:
    """Hard-link into ``dest`` every entry of ``source`` that ``dest`` does not have (no data copied)."""
    for entry in source.iterdir():
        to = dest / entry.name
        if os.path.lexists(to):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.copytree(entry, to, symlinks=True, copy_function=os.link)
        elif entry.is_symlink():
            os.symlink(os.readlink(entry), to)
        else:
            os.link(entry, to)


def replace_dir(target: Path, write: Callable[[Path], None], carry: bool = False) -> None:
    """Call ``write(folder)`` on a fresh folder beside ``target``, then swap it in for ``target``.

    ``carry``: the entries of the old ``target`` that ``write`` did not produce are kept (hard
    links), for folders that other commands also write into. A failure before the swap leaves
    ``target`` as it was and nothing beside it."""
    target = Path(target)
    restore_dir(target)
    for stale in target.parent.glob(f".{target.name}.new-*"):  # of a killed writer (the caller holds the lock)
        shutil.rmtree(stale, ignore_errors=True)
    new = _aside(target, f"new-{os.getpid()}")
    new.mkdir(parents=True)
    try:
        write(new)
        if carry and target.is_dir():
            _carry(target, new)
        if not target.exists():
            os.rename(new, target)
            return
        if exchange(new, target):
            shutil.rmtree(new)
            return
        old = _aside(target, "old")
        shutil.rmtree(old, ignore_errors=True)
        os.rename(target, old)
        os.rename(new, target)
        shutil.rmtree(old)
    finally:
        shutil.rmtree(new, ignore_errors=True)
