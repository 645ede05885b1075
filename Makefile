# The README's two commands: `make demo` (the main job) and `make test`. Both install first.
PY ?= python

.PHONY: install demo test gpu triton36

# torch first: the CPU wheel (with the triton the tests were verified with, on Linux) when no torch is
# installed, since an unpinned torch would pull GBs of CUDA packages; any torch >= 2.5 already present, a
# CUDA build say, is kept with its triton. Then the rest, pinned to the versions in constraints.txt.
TRITON := $(if $(filter Linux,$(shell uname -s)),triton==3.9.0)
install:
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0 $(TRITON)
	@$(PY) -m pip install -q -r requirements-dev.txt -c constraints.txt

demo: install
	@test -f data/stdlib/meta.json || $(PY) prepare.py
	@# a finished or interrupted demo continues from its checkpoint instead of refusing the existing out_dir
	$(PY) train.py configs/elm_tiny.py $$(test -f out/elm_tiny/latest && echo --init_from=resume)
	$(PY) sample.py --init_from=out/elm_tiny --start="import " --max_new_tokens=200

test: install
	$(PY) -m pytest -q tests

# The one prepared run for a GPU machine (bench.py gpu): about 8 minutes on an H100/H200, installing nothing (a lent
# GPU machine has its own torch and triton and no network); gpu_report/gpu_report.md and .json, rewritten as it goes
gpu:
	$(PY) bench.py gpu --out=gpu_report

# The kernels against triton 3.6 (what torch 2.11 installs, so what a GPU machine with it runs) in a venv of its
# own: the interpreter tests and an sm_90 compile of every kernel. .ci/run runs it after `make test`.
V36 ?= .venv-triton36
triton36:
	@test -f $(V36)/.installed || { rm -rf $(V36) && python3 -m venv $(V36) && \
	  $(V36)/bin/python -m pip install -q torch==2.13.0 triton==3.6.0 numpy pytest -c constraints.txt && touch $(V36)/.installed; }
	TRITON_INTERPRET=1 $(V36)/bin/python -m pytest -q -p no:cacheprovider tests/test_kernels.py
	$(V36)/bin/python -m kernels.compile_check --arch=90 --quick
