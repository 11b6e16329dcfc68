# Everything a fresh machine needs is set up by these targets; see README.md.
VENV   ?= .venv
PY     := $(VENV)/bin/python
# Real cctools programs (compatibility tests), Redis (bench/vs_redis.py), nc (by-hand tests).
SYSTEM_PROGRAMS := catalog_server catalog_query catalog_update chirp_server redis-server nc

.PHONY: setup venv system demo test lint chaos bench herd herd-stop clean

setup: venv system

venv: $(VENV)/.installed

# The project is installed editable (its console scripts, its modules importable from
# anywhere); without build isolation, so the build needs no download beyond the
# setuptools that requirements.txt brings.
$(VENV)/.installed: requirements.txt pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-build-isolation -e '.[plot,uvloop]'
	touch $@

system:
	@scripts/install-system-packages $(SYSTEM_PROGRAMS)

demo: setup
	$(PY) scripts/demo.py

test: setup
	$(PY) -m ruff check .
	$(PY) -m pytest

lint: venv
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

chaos: setup
	$(PY) -m chaos

bench: setup
	$(PY) bench/vs_redis.py

herd: setup
	$(PY) -m herd.local start

herd-stop: venv
	$(PY) -m herd.local stop

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis build *.egg-info
