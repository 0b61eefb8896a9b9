# Two commands do all set-up: `make run` and `make test` (see README.md).
SHELL := /bin/bash
.DEFAULT_GOAL := help
VENV := .venv
PY := $(VENV)/bin/python
SUPERVISORCTL := $(VENV)/bin/supervisorctl -c conf/supervisord.conf

.PHONY: help bootstrap run stop status reload demo test lint typecheck unit bench models fuzz clean

help:
	@echo "make run      start the fleet (supervisord + demo RTSP cameras), offline"
	@echo "make stop     stop everything make run started"
	@echo "make reload   apply an edited cameras.yaml (only the difference)"
	@echo "make demo     a tiny backend: subscribes, binds sessions, prints detections"
	@echo "make test     install what is missing, then ruff, mypy and the whole test suite"
	@echo "make bench    print model accuracy and speed figures"
	@echo "make models   retrain the stand-in models from generated data and repack the archive"
	@echo "make fuzz     the hostile-input suite with many more fuzz cases (FUZZ_EXAMPLES=5000)"

bootstrap:
	@scripts/bootstrap.sh

run: bootstrap
	@scripts/run_fleet.sh start

stop:
	@scripts/run_fleet.sh stop

reload:
	@scripts/run_fleet.sh reload

demo: bootstrap
	$(PY) scripts/demo_backend.py --seconds 0

status:
	@$(SUPERVISORCTL) status

lint: bootstrap
	$(VENV)/bin/ruff check detector_worker gateway scripts tests bench

typecheck: bootstrap
	$(VENV)/bin/mypy

unit: bootstrap
	@eval "$$($(PY) scripts/test_services.py)" && $(PY) -m pytest

test: lint typecheck unit

# BENCH_ARGS=--quick for a < 3 min smoke run (bench/results/quick/); see bench/run.py
bench: bootstrap
	@eval "$$($(PY) scripts/test_services.py)" && $(PY) -m bench.run $(BENCH_ARGS)

models: bootstrap
	$(PY) scripts/train_models.py

fuzz: bootstrap
	@eval "$$($(PY) scripts/test_services.py)" && FUZZ_EXAMPLES=$${FUZZ_EXAMPLES:-5000} \
		$(PY) -m pytest tests/hostile -q --basetemp=/tmp/hostile-fuzz-$$$$

clean:
	rm -rf build .pytest_cache .mypy_cache .ruff_cache
