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

# As root: a simulated cluster of 3 hosts x 2 NICs (network namespaces), the
# operator and one agent per host, a macvlan network, a pod per host, the
# connectivity matrix on every NIC, then everything torn down.
demo: system-deps venv
	$(BIN)/multinic-sim demo

test: system-deps venv
	$(BIN)/tox

crds: venv
	$(BIN)/multinic crds --out deploy/crds
	$(BIN)/multinic crds --out deploy/helm/multinic/crds

clean:
	rm -rf $(VENV) .tox
