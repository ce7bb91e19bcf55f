# Two commands on a fresh clone: `make demo` (default experiment on an embedded local Ray) and `make test`.
# Each creates .venv and installs the pinned environment on first use.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

$(STAMP): pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

.PHONY: install demo test bench clean
install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/raytrain train experiments/digits-cnn.yaml

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) bench/run.py

clean:
	rm -rf runs .pytest_cache
