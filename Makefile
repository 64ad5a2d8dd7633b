# `make demo` and `make test` each build/refresh the virtualenv, install what they need, and run.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Tests and the demo run on the CPU even where an accelerator is present.
export JAX_PLATFORMS ?= cpu

.PHONY: demo test elixir clean

$(VENV)/bin/activate:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# torch==2.13.0 first: it is the CPU build; transformers/peft/bitsandbytes then find it satisfied.
$(VENV)/.installed-test: setup.py | $(VENV)/bin/activate
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	touch $@

$(VENV)/.installed: setup.py | $(VENV)/bin/activate
	$(PY) -m pip install -q -e .
	touch $@

elixir:
	@command -v elixir >/dev/null || { $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq elixir; }

test: $(VENV)/.installed-test elixir
	$(PY) -m pytest -q tests

demo: $(VENV)/.installed elixir
	$(PY) launch/generate.py --config=configs/tiny_cpu.py

clean:
	rm -rf $(VENV) .pytest_cache
