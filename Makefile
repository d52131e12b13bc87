# The project's verbs. `make run` and `make test` work on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000
WORKERS ?= 2

.PHONY: install install-dev install-bench run test lint format check-migrations lock audit

# Installs take the lock files as they are: every package pinned, every
# download checked against its hash.
PIP_INSTALL := $(VENV)/bin/pip install --quiet --require-hashes

install: $(VENV)/.installed-runtime

install-dev: $(VENV)/.installed-dev

install-bench: $(VENV)/.installed-bench

# The venv's own pip first: the pip that ships with Python 3.11 (23.2) refuses
# a hashed lock whose packages ask for another's extra (pip-audit wants
# CacheControl[filecache]), which newer pips resolve against the pinned line.
$(VENV)/bin/pip:
	python3 -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet pip==26.3

$(VENV)/.installed-runtime: requirements.txt | $(VENV)/bin/pip
	$(PIP_INSTALL) -r requirements.txt
	touch $@

$(VENV)/.installed-dev: requirements.txt requirements-dev.txt | $(VENV)/bin/pip
	$(PIP_INSTALL) -r requirements.txt -r requirements-dev.txt
	touch $(VENV)/.installed-runtime $@

$(VENV)/.installed-bench: requirements.txt requirements-dev.txt bench/requirements.txt | $(VENV)/bin/pip
	$(PIP_INSTALL) -r requirements.txt -r requirements-dev.txt -r bench/requirements.txt
	touch $(VENV)/.installed-runtime $(VENV)/.installed-dev $@

# Regenerates every lock file from its .in file (edit those, never the locks).
# Versions already locked are kept unless an input pins another; add
# UPGRADE=--upgrade to move everything to the newest allowed releases.
UV_COMPILE = $(VENV)/bin/uv pip compile --quiet --generate-hashes --universal --python-version 3.11 $(UPGRADE)

lock: install-dev
	$(UV_COMPILE) requirements.in -o requirements.txt
	$(UV_COMPILE) requirements-dev.in -o requirements-dev.txt
	cd bench && ../$(UV_COMPILE) requirements.in -o requirements.txt

# Known vulnerabilities in every locked package (pip-audit, against the
# advisory database of the package index). --strict: a package that could
# not be checked fails the audit instead of passing silently.
audit: install-dev
	$(VENV)/bin/pip-audit --progress-spinner off --disable-pip --strict \
		-r requirements.txt -r requirements-dev.txt -r bench/requirements.txt

# Development: DEBUG on (the development SECRET_KEY, plain HTTP, static files
# from the apps). Production sets its environment instead: README.
run: install
	DEBUG=true $(PY) manage.py migrate --noinput
	DEBUG=true $(PY) manage.py runserver $(HOST):$(PORT)

test: install-dev
	$(PY) -m pytest

lint: install-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy chat chatsite

format: install-dev
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

check-migrations: install-dev
	DEBUG=true $(PY) manage.py makemigrations --check --dry-run
