# Two front doors: `make demo` and `make test`. Both build .venv/ from the
# pinned lock when it is missing (see requirements.lock for why --no-deps).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export TF_CPP_MIN_LOG_LEVEL := 2

DEMO_RUN := runs/demo-acktr-CartPole-v1

JAX_VENV := .venv-jax
JAX_PY := $(JAX_VENV)/bin/python
JAX_STAMP := $(JAX_VENV)/.installed

BENCH_VENV := .venv-bench
BENCH_PY := $(BENCH_VENV)/bin/python
BENCH_STAMP := $(BENCH_VENV)/.installed

.PHONY: demo demo-digits lint test test-slow test-all bench bench-quick \
	bench-time-to-target bench-mujoco \
	bench-mujoco-baselines bench-atari bench-kfac-jax

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

# The lint and format rules are in pyproject.toml.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# The default suite leaves out the tests marked slow (end-to-end runs,
# subprocesses, XLA compilation); test-slow runs those, test-all both.
test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

test-all: $(STAMP)
	$(PY) -m pytest -q -m ""

# The benchmarks need torch and Stable-Baselines3 besides the project's
# own lock: they get their own environment, so `make test` never needs them.
$(BENCH_STAMP): requirements.lock requirements-bench.lock setup.cfg pyproject.toml
	test -x $(BENCH_PY) || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_PY) -m pip install -q --upgrade pip
	$(BENCH_PY) -m pip install -q --no-deps -r requirements.lock -r requirements-bench.lock
	$(BENCH_PY) -m pip install -q --no-deps -e .
	touch $(BENCH_STAMP)

# kfac-jax, the peer of the supervised benchmarks, in its own environment.
$(JAX_STAMP): requirements-jax.lock
	test -x $(JAX_PY) || $(PYTHON) -m venv $(JAX_VENV)
	$(JAX_PY) -m pip install -q --upgrade pip
	$(JAX_PY) -m pip install -q --no-deps -r requirements-jax.lock
	touch $(JAX_STAMP)

# Writes bench/results/<problem>/kfac_jax.json, which bench/supervised.py
# reads (run this first).
bench-kfac-jax: $(JAX_STAMP)
	$(JAX_PY) bench/kfac_jax_supervised.py --problem autoencoder
	$(JAX_PY) bench/kfac_jax_supervised.py --problem cnn

# Everything in BENCHMARKS.md (hours on 2 cores; runs that finished are kept).
bench: $(BENCH_STAMP) bench-kfac-jax
	$(BENCH_PY) bench/optimizer.py
	$(BENCH_PY) bench/step_cost.py
	$(BENCH_PY) bench/supervised.py --problem autoencoder
	$(BENCH_PY) bench/supervised.py --problem cnn
	$(BENCH_PY) bench/cartpole.py
	$(BENCH_PY) bench/update_time.py
	$(BENCH_PY) bench/atari_update_time.py
	$(BENCH_PY) bench/compare.py
	$(BENCH_PY) bench/time_to_target.py --set-targets
	$(BENCH_PY) bench/time_to_target.py --trials 8

# Time to target on the models of bench/workloads.py, keras_kfac against
# Keras' optimizers: the targets first (one Adam run per workload, before
# any tuning), then every optimizer, 3 seeds, 8 tuning trials (hours; runs
# that finished are kept).
bench-time-to-target: $(BENCH_STAMP)
	$(BENCH_PY) bench/time_to_target.py --set-targets
	$(BENCH_PY) bench/time_to_target.py --trials 8

# The same comparisons on small budgets: minutes.
bench-quick: $(BENCH_STAMP) $(JAX_STAMP)
	$(BENCH_PY) bench/time_to_target.py --set-targets --quick
	$(BENCH_PY) bench/time_to_target.py --quick --seeds 1
	$(JAX_PY) bench/kfac_jax_supervised.py --problem autoencoder --quick
	$(JAX_PY) bench/kfac_jax_supervised.py --problem cnn --quick
	$(BENCH_PY) bench/supervised.py --problem autoencoder --quick
	$(BENCH_PY) bench/supervised.py --problem cnn --quick
	$(BENCH_PY) bench/compare.py --quick
	$(BENCH_PY) bench/compare.py --suite mujoco --quick --jobs 1

# The ACKTR paper's MuJoCo comparison at its budget (1M steps, 5 tasks,
# 5 algorithms, 3 seeds), one run at a time: about a day on one core (the
# third-party runs alone, bench-mujoco-baselines, about 6 h). Runs that
# finished are kept.
bench-mujoco: $(BENCH_STAMP)
	$(BENCH_PY) bench/compare.py --suite mujoco --jobs 1

# The paper's Atari setting on Pong, our ACKTR vs our A2C, 1M steps each,
# one seed: hours on one core; a killed run resumes from its checkpoint.
bench-atari: $(BENCH_STAMP)
	$(BENCH_PY) bench/compare.py --suite atari --jobs 1

bench-mujoco-baselines: $(BENCH_STAMP)
	$(BENCH_PY) bench/compare.py --suite mujoco --jobs 1 \
		--algos sb3-ppo sb3-trpo
