# The two commands of the README: `make quickstart` and `make test`.
# Both create the virtualenv in .venv from pyproject.toml on first use.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: quickstart test system-deps bytecode lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $(STAMP)

quickstart: $(STAMP) bytecode
	$(VENV)/bin/meshagent dev quickstart --config examples/quickstart/agent.yaml

test: $(STAMP) system-deps bytecode
	$(VENV)/bin/pytest -q

# The editable install leaves meshagent without bytecode, and with PYTHONDONTWRITEBYTECODE set
# every agent process (the tests start many) would compile it again: compile it once, as a
# wheel install does. Python still checks each .pyc against its source.
bytecode: $(STAMP)
	@$(VENV)/bin/python -m compileall -q meshagent

# Debian packages some tests use: systemd-analyze checks the unit files, chromium renders the
# admin status page, iptables and nftables (and iproute2's `ip netns`) program traffic capture
# in the tests' network namespaces. Installed when running as root with apt-get; otherwise
# those tests skip and say why.
system-deps:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  missing=""; \
	  command -v systemd-analyze >/dev/null || missing="$$missing systemd"; \
	  command -v chromium >/dev/null || missing="$$missing chromium"; \
	  command -v iptables-restore >/dev/null || missing="$$missing iptables"; \
	  command -v nft >/dev/null || missing="$$missing nftables"; \
	  command -v ip >/dev/null || missing="$$missing iproute2"; \
	  if [ -n "$$missing" ]; then \
	    apt-get update -q && apt-get install -y -q --no-install-recommends $$missing; \
	  fi; \
	fi

lint: $(STAMP)
	$(VENV)/bin/ruff check meshagent tests benchmarks
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(VENV)/bin/python benchmarks/translate_push.py

clean:
	rm -rf $(VENV) .quickstart
