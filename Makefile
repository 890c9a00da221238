# The README's two commands: `make demo` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
WORK   ?= demo-run
PYTEST_ARGS ?=

.PHONY: demo test typecheck lint clean

$(BIN)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test]'
	touch $@

demo: $(BIN)/.installed
	$(BIN)/tldeploy demo --workdir $(WORK) --force

# TensorRT cannot be installed here, so its code is type-checked against tensorrt-stubs, installed
# without its dependencies (which would fetch TensorRT) and fixed up to parse (tools/fix_trt_stubs.py).
$(VENV)/trt-stubs/.fixed: $(BIN)/.installed tools/fix_trt_stubs.py
	rm -rf $(VENV)/trt-stubs
	$(BIN)/python -m pip install -q --no-deps --target $(VENV)/trt-stubs 'tensorrt-stubs>=10.8'
	$(BIN)/python tools/fix_trt_stubs.py $(VENV)/trt-stubs
	touch $@

typecheck: $(VENV)/trt-stubs/.fixed
	MYPYPATH=$(VENV)/trt-stubs $(BIN)/mypy tldeploy/engines/tensorrt.py tldeploy/runtime/trt.py tldeploy/runtime/trt_runner.py

# lint-imports: the package's layering (pyproject.toml [tool.importlinter]); a back-edge fails here.
test: $(BIN)/.installed typecheck
	$(BIN)/lint-imports --no-cache --no-logo
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(BIN)/.installed
	$(BIN)/ruff check tldeploy tests benchmarks tools

clean:
	rm -rf $(WORK) .pytest_cache
