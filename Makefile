# Two front doors: `make demo` and `make test`. Both build .venv/ from the
# pinned lock when it is missing (see requirements.lock for why --no-deps).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export TF_CPP_MIN_LOG_LEVEL := 2

DEMO_RUN := runs/demo-acktr-CartPole-v1

.PHONY: demo demo-digits test test-all bench

$(STAMP): requirements.lock setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --no-deps -r requirements.lock
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

# Train ACKTR on CartPole-v1 with the defaults, export, evaluate the export.
demo: $(STAMP)
	rm -rf $(DEMO_RUN)
	$(PY) -m agents.train --algo acktr --env CartPole-v1 --logdir $(DEMO_RUN)
	$(PY) -m agents.evaluate $(DEMO_RUN)/policy --env CartPole-v1 --episodes 20

demo-digits: $(STAMP)
	$(PY) examples/digits.py

test: $(STAMP)
	$(PY) -m pytest -q

test-all: $(STAMP)
	$(PY) -m pytest -q -m ""

bench: $(STAMP)
	$(PY) bench/optimizer.py
	$(PY) bench/cartpole.py
