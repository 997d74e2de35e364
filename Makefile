# crirt's two everyday commands are `make serve` and `make test`; each sets up what it needs first.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SHIM_PROJECTS := $(wildcard shims/*/pyproject.toml)
# Debian packages crirt runs with, and those only its tests and benchmarks use; only missing ones are installed.
RUNTIME_PACKAGES ?= runc runsc conmon containernetworking-plugins iproute2 iptables catatonit util-linux
TEST_PACKAGES ?= busybox-static docker-registry skopeo umoci containerd systemd
NODE_CLIENTS := tests/support/node
CONFIG ?=
PYTEST_ARGS ?=
BUSYBOX_DEB := tests/.cache/busybox.deb

.PHONY: serve test proto bench system venv node busybox-deb clean

serve: APT_PACKAGES = $(RUNTIME_PACKAGES)
serve: system venv
	$(VENV)/bin/crirt serve $(if $(CONFIG),--config $(CONFIG))

test: APT_PACKAGES = $(RUNTIME_PACKAGES) $(TEST_PACKAGES)
test: system venv node busybox-deb
	$(PY) -m pytest -q $(PYTEST_ARGS)

proto: venv
	$(PY) tools/genproto.py

BENCHES ?= list_containers pull sandbox lifecycle handlers streaming

bench: APT_PACKAGES = $(RUNTIME_PACKAGES) $(TEST_PACKAGES)
bench: system venv node
	for b in $(BENCHES); do $(PY) bench/$$b.py || exit 1; done

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml $(SHIM_PROJECTS)
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "crirt needs Python >= 3.11"'
	$(PYTHON) -m venv $(VENV) || { apt-get install -y -q python3-venv && $(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]' $(foreach shim,$(dir $(SHIM_PROJECTS)),-e ./$(shim))
	touch $@

system:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	fi

# The independent npm clients (SPDY/3.1, WebSocket) the streaming tests drive, at the versions the lock file pins.
node: $(NODE_CLIENTS)/node_modules/.installed

# Node may come from Debian or elsewhere (NodeSource's nodejs bundles npm and conflicts with Debian's npm).
$(NODE_CLIENTS)/node_modules/.installed: $(NODE_CLIENTS)/package.json $(NODE_CLIENTS)/package-lock.json
	command -v npm >/dev/null || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q nodejs npm; }
	cd $(NODE_CLIENTS) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

# Debian's dynamically linked busybox for critest's images (its sh executes /bin/ls; busybox-static's runs its
# applet): downloaded, not installed, as it conflicts with busybox-static.
busybox-deb: $(BUSYBOX_DEB)

$(BUSYBOX_DEB):
	mkdir -p $(@D)
	cd $(@D) && { apt-get download -q busybox || { apt-get update -q && apt-get download -q busybox; }; }
	mv $(@D)/busybox_*.deb $@

clean:
	rm -rf $(VENV) crirt.egg-info $(NODE_CLIENTS)/node_modules tests/.cache
