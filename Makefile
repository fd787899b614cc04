# The two things most people want: `make demo` and `make test`.
# The virtual environment is built with the real interpreter (not a shim).
PYTHON ?= $(shell python3 -c 'import sys; print(sys.executable)')
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test venv system-deps crds clean

$(BIN)/.installed: requirements-dev.txt $(wildcard packages/*/pyproject.toml)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements-dev.txt tox ruff mypy types-PyYAML import-linter
	touch $@

venv: $(BIN)/.installed

system-deps:
	scripts/install-system-deps

# Until the simulated-cluster demo lands: plan the worked example of SPEC section 2
# and print host A's routes.
demo: venv
	$(BIN)/multinic plan examples/worked/network.yaml examples/worked/hosts.yaml
	@echo "--- routes of host A"
	$(BIN)/multinic routes examples/worked/network.yaml examples/worked/hosts.yaml --host A

test: system-deps venv
	$(BIN)/tox

crds: venv
	$(BIN)/multinic crds --out deploy/crds

clean:
	rm -rf $(VENV) .tox
