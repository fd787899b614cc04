# The two things most people want: `make demo` and `make test`.
# The virtual environment is built with the real interpreter (not a shim).
PYTHON ?= $(shell python3 -c 'import sys; print(sys.executable)')
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test venv system-deps counterparts crds clean

$(BIN)/.installed: requirements-dev.txt $(wildcard packages/*/pyproject.toml)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements-dev.txt tox ruff mypy types-PyYAML import-linter
	touch $@

venv: $(BIN)/.installed

system-deps:
	scripts/install-system-deps

# kube-apiserver, kube-controller-manager, etcd, Multus, whereabouts and helm from
# their Go modules, cached in .cache/counterparts (the first build takes several minutes).
counterparts:
	scripts/build-counterparts

# As root: a simulated cluster of 3 hosts x 2 NICs (network namespaces), the
# operator and one agent per host, a macvlan network, a pod per host, the
# connectivity matrix on every NIC, then everything torn down.
demo: system-deps venv counterparts
	$(BIN)/multinic-sim demo

# tox, then the suites and the demo against real kube-apiserver/etcd/kube-controller-manager.
test: system-deps venv counterparts
	$(BIN)/tox
	VENV_BIN=$(CURDIR)/$(BIN) scripts/test-real-cluster

crds: venv
	$(BIN)/multinic crds --out deploy/crds
	$(BIN)/multinic crds --out deploy/helm/multinic/crds

clean:
	rm -rf $(VENV) .tox
