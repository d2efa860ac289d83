# The README's two commands: `make demo` and `make test`. Both install what they need.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=
# Test processes: the integration tests mostly wait on control planes (restarts, Leases, rollouts):
# with two, the 2 cores sat idle 38% of a run (vmstat, docs/development.md), so three.
PYTEST_WORKERS ?= 3

.PHONY: install bytecode binaries extension-apiserver toxiproxy sshd haproxy tinyproxy demo test unit integration schemas clean

# hack/install-venv.sh: uv, fetched once, fills a virtualenv without pip of its own (why:
# the script's comment); a failure to fetch uv leaves an existing virtualenv as it was.
$(STAMP): pyproject.toml
	PYTHON=$(PYTHON) hack/install-venv.sh $(VENV)
	touch $(STAMP)

install: $(STAMP)

# The tests start careconcile hundreds of times. Where PYTHONDONTWRITEBYTECODE is set (as on
# this project's machines), Python compiles every module of careconcile from source at each
# start, about 0.12 s of CPU; compiled ahead, each start reads the .pyc files instead. A
# .pyc older than its source is ignored, so a stale one costs time, never correctness.
bytecode: install
	$(BIN)/python -m compileall -q reconciler

binaries:
	hack/build-binaries.sh >/dev/null

# k8s.io/sample-apiserver, for `sandbox up --extension-apiserver`: a stamp of its own, so
# it never forces the binaries above to rebuild.
extension-apiserver:
	hack/build-extension-apiserver.sh >/dev/null

# Shopify's toxiproxy, for the latency benchmarks (benchmarks/rotate.py and fleet.py --latency):
# a stamp of its own too; no test needs it.
toxiproxy:
	hack/build-toxiproxy.sh >/dev/null

# Debian's sshd, unpacked into a cache, for the SSH transport's tests and `sandbox up --ssh`.
sshd:
	hack/install-sshd.sh

# Debian's haproxy, unpacked into a cache: the load balancer in front of the apiservers of a
# sandbox with 2 or more control planes.
haproxy:
	hack/install-haproxy.sh

# Debian's tinyproxy, unpacked into a cache: the HTTP proxy the tests send API traffic through
# (a kubeconfig's proxy-url, docs/proxies.md).
tinyproxy:
	hack/install-tinyproxy.sh

demo: install bytecode binaries
	PATH="$(abspath $(BIN)):$$PATH" hack/demo.sh

# PYTHONDONTWRITEBYTECODE emptied: pytest then keeps the test modules it rewrote for its
# assertions, and each of the test processes collects in 1.5 s instead of 5.7 s.
PYTEST := PYTHONDONTWRITEBYTECODE= $(BIN)/python -m pytest

test: install bytecode binaries extension-apiserver sshd haproxy tinyproxy
	$(PYTEST) -n $(PYTEST_WORKERS) $(PYTEST_ARGS)

unit: install
	$(PYTEST) tests/unit $(PYTEST_ARGS)

integration: install bytecode binaries extension-apiserver sshd haproxy tinyproxy
	$(PYTEST) -n $(PYTEST_WORKERS) tests/integration $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
