# iast-ssh: `make run` starts the CA on the embedded defaults, `make test` runs every test.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed

.PHONY: run test venv man sshd oidc bench bench-quick clean softhsm postgres

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP) man

# Man pages generated from the click commands (ca/cli/manpages.py): man iast-ca, man iast-ca-audit-list, ...
# with MANPATH=$(VENV)/share/man: (README, "Man pages").
MANDIR = $(VENV)/share/man/man1
man: $(MANDIR)/iast-ca.1

$(MANDIR)/iast-ca.1: $(STAMP) $(wildcard ca/cli/*.py)
	@if ! command -v man >/dev/null 2>&1 || ! command -v groff >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing man-db and groff-base (to read and check the man pages)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq man-db groff-base >/dev/null; \
	  fi; \
	fi
	rm -rf $(MANDIR)
	$(BIN)/python -m ca.cli.manpages $(MANDIR)

# The sshd tests need OpenSSH's server. As root on Debian we install it;
# otherwise the tests skip loudly (and fail under CI=true).
sshd:
	@if ! command -v sshd >/dev/null 2>&1 && [ ! -x /usr/sbin/sshd ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing openssh-server"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server >/dev/null; \
	  else \
	    echo "sshd not found and cannot install it (not root or no apt): sshd tests will be skipped"; \
	  fi; \
	fi

# The SSO tests run a real OpenID Provider: npm oidc-provider (tests/oidc/package-lock.json)
# under Debian's Node.js. As root on Debian we install nodejs and npm with apt; then npm ci.
oidc:
	@if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing nodejs and npm"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null; \
	  else \
	    echo "node/npm not found and cannot install them (not root or no apt): SSO tests will be skipped"; \
	  fi; \
	fi
	@if command -v npm >/dev/null 2>&1 && [ ! -d tests/oidc/node_modules/oidc-provider ]; then \
	  cd tests/oidc && npm ci --no-audit --no-fund --loglevel=error; \
	fi

# The PKCS#11 tests keep a CA key in a SoftHSM2 token (Debian's softhsm2: the module and
# softhsm2-util). Installed the same way as sshd; missing, those tests skip loudly (fail under CI=true).
softhsm:
	@if ! command -v softhsm2-util >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing softhsm2"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq softhsm2 >/dev/null; \
	  else \
	    echo "softhsm2 not found and cannot install it (not root or no apt): PKCS#11 tests will be skipped"; \
	  fi; \
	fi

# The PostgreSQL backend's tests start their own server (initdb + pg_ctl in a temp dir) from
# Debian's binaries in /usr/lib/postgresql/VERSION/bin. As root on Debian we install them;
# otherwise those tests skip loudly (and fail under CI=true).
postgres:
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing postgresql"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; \
	  else \
	    echo "PostgreSQL not found and cannot install it (not root or no apt): PostgreSQL tests will be skipped"; \
	  fi; \
	fi

run: $(STAMP)
	$(BIN)/iast-ca run

# Three pytest workers (pytest-xdist): most of the suite waits on real sshd, ssh, PostgreSQL and
# the IdP, so three share two cores well (about 5 minutes instead of 12). PYTEST_WORKERS=0 runs serially.
PYTEST_WORKERS ?= 3
test: $(STAMP) man sshd oidc softhsm postgres
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS)

# Speed is measured here, never asserted in a test: figures next to same-run baselines.
bench: $(STAMP) sshd postgres
	$(BIN)/python -m bench

bench-quick: $(STAMP) sshd postgres
	$(BIN)/python -m bench --quick

clean:
	rm -rf $(VENV) var .pytest_cache .hypothesis
