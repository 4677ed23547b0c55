# The two commands of the README:
#   make repro   set up a fresh machine and run the whole pipeline (`dvc repro`) on the embedded default
#   make test    set up and run the test suite (what CI runs)
SHELL := /bin/bash
VENV ?= .venv
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export DVC_NO_ANALYTICS := 1
export TOKENIZERS_PARALLELISM := false
ACT := source $(VENV)/bin/activate

.PHONY: setup repro test bench clean-data
setup:
	@bash .ci/setup

repro: setup
	$(ACT) && dvc repro

test: setup
	$(ACT) && python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

bench: setup
	$(ACT) && for b in bench/bench_*.py; do echo "== $$b"; python $$b || exit 1; done

clean-data:
	rm -rf data .dvc/cache .dvc/tmp
