# The README's two commands: `make demo` (the main job) and `make test`. Both install first.
PY ?= python

.PHONY: install demo test

# torch first: the CPU wheel when no torch is installed (an unpinned torch would pull GBs of CUDA
# packages); any torch >= 2.5 already present, a CUDA build say, is kept.
install:
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	@$(PY) -m pip install -q -r requirements-dev.txt

demo: install
	$(PY) -c "from model import ModelConfig, Transformer; import torch, dataclasses; \
g = {}; exec(open('configs/elm_tiny.py').read(), {}, g); \
m = Transformer(ModelConfig(**{k: v for k, v in g.items() if k in {f.name for f in dataclasses.fields(ModelConfig)}})); \
print(f'elm_tiny: {m.num_params()/1e6:.2f}M parameters, logits', tuple(m(torch.zeros(1, 8, dtype=torch.long)).shape))"

test: install
	$(PY) -m pytest -q tests
