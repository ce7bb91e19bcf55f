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

.PHONY: install demo test test-fast bench gpu-check clean
install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/raytrain train experiments/digits-cnn.yaml

test: $(STAMP)
	$(PY) -m pytest -q -rs

test-fast: $(STAMP)  # everything that starts no Ray: the inner loop while editing
	$(PY) -m pytest -q -rs -m "not ray"

bench: $(STAMP)
	$(PY) -m bench

# On a GPU host (Python with a CUDA torch, see README "On a GPU host"): the gpu tests and the GPU bench rows,
# written to bench/results/gpu.json with the GPU's name. PYTHON= overrides the interpreter (the host's own).
PYTHON ?= $(PY)
gpu-check:
	$(PYTHON) -m pytest -q -m gpu -p no:cacheprovider -rs
	$(PYTHON) -m bench --only gpu

clean:
	rm -rf runs .pytest_cache
