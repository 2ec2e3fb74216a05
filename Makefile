# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv and install everything.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup test demo lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

test: setup
	$(BIN)/pytest

# The main job on the embedded default: every region of the prod stack on this machine, a game day
# (region loss, partition, injected conflicts), the checks and the report, then everything stopped.
demo: setup
	$(BIN)/meridian plan --stack prod
	$(BIN)/meridian down
	$(BIN)/meridian up --local --stack prod --detach --time-scale 0.1 --latency-scale 0.2
	$(BIN)/meridian gameday --scenario all --phase-seconds 4 --report reports/gameday; status=$$?; \
	  $(BIN)/meridian down; exit $$status

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: setup
	$(BIN)/python bench/plan.py
	$(BIN)/python bench/service.py
	$(BIN)/python bench/edge.py
	$(BIN)/python bench/cost_per_request.py
	$(BIN)/python bench/strong.py

clean:
	rm -rf $(VENV) .meridian reports
