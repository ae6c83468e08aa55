# longcat-convert developer targets. Everything runs from the project's own venv.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
CLI    := $(VENV)/bin/longcat-convert
FASTVIDEO_VERSION := 0.2.1

.PHONY: install demo test fuzz gate bench gpu-check clean patched-fastvideo

# fastvideo goes in last and without its dependencies (docs/converting.md, Installing): its own pins
# ask for a CUDA torch build and a fastvideo-kernel that only builds with CUDA.
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements/torch.txt requirements/fastvideo-deps.txt requirements/dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q -r requirements/torch.txt
	$(PIP) install -q -r requirements/fastvideo-deps.txt -r requirements/dev.txt -e .
	$(PIP) install -q --no-deps fastvideo==$(FASTVIDEO_VERSION)
	touch $@

# The main job on the bundled tiny golden checkpoint: convert, then verify bitwise.
demo: install
	rm -rf out/tiny-a-native
	$(CLI) convert golden/tiny-a out/tiny-a-native
	$(CLI) verify golden/tiny-a out/tiny-a-native

test: install
	$(PY) -m pytest -q

# The input fuzz tests, long and randomized: every property of tests/test_reader_fuzz.py with
# FUZZ_SCALE times its `make test` examples (default 50: about 8 minutes on 2 cores).
# A failure prints the example (and a @reproduce_failure blob); keep it in tests/fuzz_corpus/.
FUZZ_SCALE ?= 50
fuzz: install
	LONGCAT_FUZZ=long LONGCAT_FUZZ_SCALE=$(FUZZ_SCALE) $(PY) -m pytest -q tests/test_reader_fuzz.py tests/test_flag_fuzz.py -p no:cacheprovider

gate: install
	$(CLI) gate --report reports/gate

# A patched COPY of the installed FastVideo (our fixes as its source changes, docs/fixes.md); the
# installed one is only read. Run anything against it with PYTHONPATH=out/fastvideo-patched.
patched-fastvideo: install
	$(CLI) fixes export out/fastvideo-series
	$(CLI) fixes build out/fastvideo-patched --series out/fastvideo-series

# Converter vs cp on synthetic real-width checkpoints (cached in ~/.cache/longcat-convert-bench,
# or $$LONGCAT_BENCH_CACHE); e.g. make bench BENCH_ARGS="--dtypes bf16 --blocks 2 --reps 1"
bench: install
	$(PY) -m bench.run $(BENCH_ARGS)

# The prepared GPU check, run first in any session lent a GPU (docs/contributing.md).
gpu-check:
	bash scripts/gpu_check.sh

clean:
	rm -rf out reports build *.egg-info
