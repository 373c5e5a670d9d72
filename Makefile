# inspectq: the two commands a fresh machine needs are `make demo` and `make test`.
PYTHON ?= python3.11
VENV := .venv
MODEL_VENV := .venv-model
PY := $(VENV)/bin/python
MODEL_PY := $(MODEL_VENV)/bin/python

.PHONY: venv demo up down status test test-fast lint bench chaos large alerts-sim index-bench train clean

## venv: the service env (api, worker, dev tools; no torch) and the model env (torch, Triton)
venv: $(VENV)/.installed $(MODEL_VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -e '.[api,worker,dev]'
	touch $@

$(MODEL_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(MODEL_VENV)
	$(MODEL_VENV)/bin/pip install --quiet --disable-pip-version-check -e '.[model]'
	touch $@

## demo: start the local stack and push sample images through the public API
demo: venv
	$(PY) -m devstack demo

## up / down / status: the local stack in the background (logs in var/log, PIDs in var/run)
up: venv
	$(PY) -m devstack up

down:
	$(PY) -m devstack down

status:
	$(PY) -m devstack status

## test: the whole suite (service env, its folders in 3 processes side by side; then the model env)
test: venv
	$(PY) -m ruff check .
	INSPECTQ_REQUIRE_POSTGRES=1 $(PY) -m pytest tests --ignore=tests/model -n 3
	$(MODEL_PY) -m pytest tests/model --require-torch

lint: venv
	$(PY) -m ruff check .

## bench: model, Triton and end-to-end throughput, side by side in one run
bench: venv
	$(PY) -m devstack bench

## chaos: thousands of images while killing workers, restarting Triton and flushing Redis
chaos: venv
	$(PY) -m devstack chaos

## large: 12 MP and 40 MP images, alone and several at once (time to result, all done)
large: venv
	$(PY) -m devstack large

## alerts-sim: false alerts per week and detection delays of the line-health monitor (vs the old rule)
alerts-sim: venv
	$(PY) -m devstack.alerts_sim

## index-bench: the results index on PostgreSQL with 10 M jobs (writes, listings, line stats, export)
index-bench: venv
	$(PY) -m devstack.index_bench

## train: retrain the shipped model from its seed into var/retrain/1 (~15 min on 2 cores):
## trained as version 1, then calibrated on its own synthetic set with the out-of-domain
## statistics, as version 2 (the served one) was; install it with
## `.venv-model/bin/inspectq model install var/retrain/1/model.pt --select`
train: venv
	$(MODEL_PY) -m triton_models.synth var/synth-train --count 2400 --seed 0
	$(MODEL_PY) -m triton_models.synth var/synth-heldout --count 360 --seed 1000
	$(MODEL_PY) -m triton_models.synth var/synth-calib --count 360 --seed 2000
	$(MODEL_PY) -m triton_models.train var/synth-train --eval-data var/synth-heldout \
		--calib-data var/synth-calib --target-recall 0.99 \
		--classes scratch,pit,crack,stain --out var/retrain/1 --steps 5000 --seed 0

clean: down
	rm -rf var
