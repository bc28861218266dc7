# TumorTrack developer and operator commands. Every target creates the
# virtual environment first when it is missing or older than pyproject.toml.

PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo serve test test-fast bench openapi up lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet -e ".[worker,embedded,dev]"
	@touch $(STAMP)

# Segment lesions on a CT end to end: IMAGE=... PROMPTS=... for your own files.
demo: $(STAMP)
	$(PY) -m ops.demo $(if $(IMAGE),--image "$(IMAGE)") $(if $(PROMPTS),--prompts "$(PROMPTS)")

# Gateway on 127.0.0.1:8000 plus one worker, in the foreground until Ctrl-C.
serve: $(STAMP)
	$(PY) -m ops.serve

test: $(STAMP)
	$(PY) -m pytest -q tests

# Unit tests only: no Redis, no worker processes.
test-fast: $(STAMP)
	$(PY) -m pytest -q tests/unit

bench: $(STAMP)
	$(PY) -m tests.bench.run

openapi: $(STAMP)
	$(PY) -m ops.export_openapi

# Needs a Docker engine (none runs on the development machines).
up:
	docker compose up --build

lint: $(STAMP)
	$(PY) -m compileall -q lesions service worker ops tumortrack_client

clean:
	rm -rf var demo-output bench-report.json
