# Two entry points, both self-installing on a fresh machine (Python 3.11, pip; no internet but PyPI).
# They install the exact versions of requirements/lock.txt (CI too: .ci/run is `make test`); pyproject.toml
# holds only the version ranges that a library install (`pip install bcat`) accepts.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel available here, installed first so that nothing can resolve torch to a CUDA build.
TORCH := torch==2.13.0
EXTRAS := test,builtin,langid
LOCK := requirements/lock.txt
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml $(LOCK) | sha256sum | cut -c1-12)

.PHONY: install demo test lock
install: $(STAMP)
$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -c $(LOCK) -e ".[$(EXTRAS)]"
	touch $@

demo: install
	$(VENV)/bin/bcat demo

test: install
	OMP_NUM_THREADS=2 $(VENV)/bin/pytest -p no:cacheprovider

# Rewrites the lock from .venv: install the versions to lock there, run `make test`, then `make lock`.
lock:
	$(PY) -m pip check
	{ printf '%s\n' \
	  "# The exact versions \`make install\` / \`make demo\` / \`make test\` (and so CI) install, as pip constraints:" \
	  "# \`pip install -c requirements/lock.txt -e '.[$(EXTRAS)]'\` after torch (Makefile). Python 3.11, CPU torch." \
	  "# Written by \`make lock\` (pip freeze of .venv): install the versions to lock into .venv, run \`make test\`, then" \
	  "# \`make lock\`. tests/test_packaging.py checks that each pin lies in pyproject.toml's ranges."; \
	  $(PY) -m pip freeze --exclude-editable | sed -E 's/^(torch==[^+]+)\+.*/\1/'; } > $(LOCK)
