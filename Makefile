# Two commands on a fresh machine: `make demo` and `make test`. Both install what they need first.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install test demo lint run clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -U pip
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

test: install
	$(PY) -m pytest -q

demo: install
	$(PY) -m sidecar demo

lint: install
	$(VENV)/bin/ruff check sidecar tests

run: install
	$(PY) -m sidecar serve --config config.example.yaml

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
