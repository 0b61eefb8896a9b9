# Two commands do all set-up: `make run` and `make test` (see README.md).
SHELL := /bin/bash
.DEFAULT_GOAL := help
VENV := .venv
PY := $(VENV)/bin/python
SUPERVISORCTL := $(VENV)/bin/supervisorctl -c conf/supervisord.conf

.PHONY: help bootstrap run stop status reload demo test lint typecheck unit bench models clean

help:
	@echo "make run      start the fleet (supervisord + demo RTSP cameras), offline"
	@echo "make stop     stop everything make run started"
	@echo "make reload   apply an edited cameras.yaml (only the difference)"
	@echo "make demo     a tiny backend: subscribes, binds sessions, prints detections"
	@echo "make test     install what is missing, then ruff, mypy and the whole test suite"
	@echo "make bench    print model accuracy and speed figures"
	@echo "make models   retrain the stand-in models from generated data and repack the archive"

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
	$(VENV)/bin/ruff check detector_worker gateway scripts tests

typecheck: bootstrap
	$(VENV)/bin/mypy

unit: bootstrap
	@eval "$$($(PY) scripts/test_services.py)" && $(PY) -m pytest

test: lint typecheck unit

bench: bootstrap
	$(PY) scripts/bench_models.py

models: bootstrap
	$(PY) scripts/train_models.py

clean:
	rm -rf build .pytest_cache .mypy_cache .ruff_cache
