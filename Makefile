# Two entry points, both self-installing on a fresh machine (Python 3.11, pip; no internet but PyPI).
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is pinned in pyproject.toml to the CPU wheel available here (never an unpinned CUDA build).
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)

.PHONY: install demo test
install: $(STAMP)
$(STAMP): pyproject.toml
	python3.11 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

demo: install
	$(VENV)/bin/bcat demo

test: install
	OMP_NUM_THREADS=2 $(VENV)/bin/pytest -p no:cacheprovider
