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

.PHONY: install demo test test-multinode test-fast bench docs gpu-check clean
install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/raytrain train experiments/digits-cnn.yaml

test: $(STAMP)
	$(PY) -m pytest -q -rs -m "not multinode_slow"

test-multinode: $(STAMP)  # issue 32's tests on two real Ray nodes (minutes of Ray's waits); CI runs them after make test
	$(PY) -m pytest -q -rs -m multinode_slow tests/test_multinode.py

test-fast: $(STAMP)  # everything that starts no Ray: the inner loop while editing
	$(PY) -m pytest -q -rs -m "not ray"

bench: $(STAMP)
	$(PY) -m bench

docs: $(STAMP)  # docs/configuration.md from the config schema (tests/test_docs.py fails while it is stale)
	$(PY) -m raytrain.reference

# On a GPU host (after `source .device/setup.sh`, see README "On a GPU host"): the gpu tests (tests/test_gpu.py,
# by file) and the GPU bench rows, in at most BUDGET_S seconds together, every result file under OUT (tests.log,
# tests.xml, gpu.json, summary.md). PYTHON: the .venv's interpreter where there is one, else python3.
OUT      ?= bench/results/gpu
BUDGET_S ?= 420
PYTHON   ?= $(if $(wildcard $(PY)),$(PY),python3)
gpu-check:
	$(PYTHON) -m bench.gpu_check --out "$(OUT)" --budget-s $(BUDGET_S)

clean:
	rm -rf runs .pytest_cache
