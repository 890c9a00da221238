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

# TensorRT cannot be installed here, so its code is checked against the real Python bindings of each
# supported version (10.3, 10.8, 10.16, 11.4), imported over stand-in libraries: mypy against stubs
# generated from them, and every trt.<name> the code reads looked up in each (tools/trt_api.py,
# which downloads the bindings wheels, about 1 MB each).
TRT_API := $(VENV)/trt-api
$(TRT_API)/.ready: $(BIN)/.installed tools/trt_api.py
	$(BIN)/python tools/trt_api.py prepare $(TRT_API)
	touch $@

typecheck: $(TRT_API)/.ready
	$(BIN)/python tools/trt_api.py typecheck $(TRT_API)
	$(BIN)/python tools/trt_api.py check $(TRT_API)

# lint-imports: the package's layering (pyproject.toml [tool.importlinter]); a back-edge fails here.
test: $(BIN)/.installed typecheck
	$(BIN)/lint-imports --no-cache --no-logo
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(BIN)/.installed
	$(BIN)/ruff check tldeploy tests benchmarks tools

clean:
	rm -rf $(WORK) .pytest_cache
