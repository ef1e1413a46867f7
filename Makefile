# Two entry points for a fresh machine (Python 3.11, pip, gcc, Java 17):
#   make demo   — build .venv, then train + evaluate + report on the embedded real data
#   make test   — build .venv (+ test tools), then run the test suite
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install -c constraints.txt
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.test-installed

.PHONY: demo test venv clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) -q --upgrade pip
	$(PIP) -q torch==2.13.0
	$(PIP) -q -e ".[serve,gguf]"
	touch $@

$(TEST_STAMP): $(STAMP) scripts/install_test_tools.sh
	$(PIP) -q -e ".[serve,gguf,test,vector]"
	bash scripts/install_test_tools.sh $(VENV)
	touch $@

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/skymoe demo --out out/demo

# One pytest worker per core (pytest-xdist); worksteal keeps both busy while the few long tests
# (demo smokes, sharded launches) run.
test: $(TEST_STAMP)
	$(BIN)/python -m pytest -q -n auto --dist worksteal

clean:
	rm -rf $(VENV) out
