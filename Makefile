# veilgate: `make test` and `make demo` set up everything they need (run as root on Debian).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
# gcc, python3-dev and libssl-dev build the optional compiled data path (src/veilgate/fastpath);
# conntrack lets the roaming test flush the router's connection tracking. The desktop tests
# (tests/e2e/vpn/test_desktop.py) run dnsmasq (dnsmasq-base: the binary, no service), tcpdump,
# systemd-resolved (its shared library comes with systemd) on a private D-Bus system bus (dbus)
# in a mount namespace (util-linux: unshare, nsenter). systemd also brings systemd-analyze, which
# checks the unit files (tests/unit/test_service.py). groff-base renders the manual page (make man)
# in its test. The operator's guide test (tests/e2e/test_operator_guide.py) runs unbound, whose
# shared libraries (libprotobuf-c1 the one not already there) are installed and which is unpacked.
# The classification tests (tests/e2e/vpn/test_dpi.py, make dpi) capture with tcpdump and classify with
# nDPI's ndpiReader (libndpi-bin, which brings libndpi4.2; its other libraries, libpcap0.8 and
# libgcrypt20, come with tcpdump and apt) against openssl s_server (openssl).
DEB_PACKAGES := iproute2 nftables conntrack iperf3 iputils-ping curl python3-venv gcc python3-dev libssl-dev \
	dnsmasq-base tcpdump dbus systemd util-linux groff-base libprotobuf-c1 libevent-2.1-7 libnghttp2-14 \
	libndpi-bin openssl
# Unpacked into the virtualenv, not installed: installing systemd-resolved replaces /etc/resolv.conf;
# installing unbound starts a resolver on the machine (its package starts the service).
DEB_UNPACKED := systemd-resolved
DEB_UNPACKED_RESOLVER := unbound dns-root-data
STAMP_DEB := $(VENV)/.deb-stamp
STAMP_UNPACKED := $(VENV)/.unpacked-stamp
STAMP_PY := $(VENV)/.py-stamp

.PHONY: test demo bench bench-core bench-latency bench-flood dpi fuzz lint typecheck unit e2e clean deps man wheel

deps: $(STAMP_DEB) $(STAMP_UNPACKED) $(STAMP_PY)

$(STAMP_DEB): Makefile
	@bash scripts/install-debian-packages.sh $(DEB_PACKAGES)
	@mkdir -p $(VENV) && touch $@

$(STAMP_UNPACKED): Makefile $(STAMP_DEB)
	@bash scripts/unpack-debian-packages.sh $(VENV)/debroot $(DEB_UNPACKED)
	@bash scripts/unpack-debian-packages.sh $(VENV)/unbound-root $(DEB_UNPACKED_RESOLVER)
	@touch $@

# Every C source and the header of the compiled data path: an edit to any of them rebuilds it.
FASTPATH_SOURCES := $(wildcard src/veilgate/fastpath/*.c src/veilgate/fastpath/*.h)

$(STAMP_PY): pyproject.toml setup.py $(FASTPATH_SOURCES)
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $@

lint: deps
	$(VENV)/bin/ruff check src tests bench fuzz
	$(VENV)/bin/ruff format --check src tests bench fuzz

typecheck: deps
	$(VENV)/bin/mypy

unit: deps
	$(PY) -m pytest tests/unit

e2e: deps
	$(PY) -m pytest tests/e2e

test: lint typecheck
	$(PY) -m pytest

demo: deps
	$(PY) -m veilgate.demo

# The manual page, generated from the command's argument parser (veilgate.cli.main.build_parser).
man: man/veilgate.1

man/veilgate.1: deps src/veilgate/cli/main.py pyproject.toml
	@mkdir -p man
	$(VENV)/bin/argparse-manpage --module veilgate.cli.main --function build_parser \
		--project-name veilgate --prog veilgate --version "$$($(PY) -c 'import veilgate; print(veilgate.__version__)')" \
		--description "a VPN for privacy-focused VPN providers" --manual-title "veilgate manual" --output $@

# A wheel with the compiled data path in dist/ (setup.py builds it; python3-dev, libssl-dev and gcc needed).
wheel: deps
	$(PY) -m build --wheel --outdir dist

bench: deps
	@bash scripts/install-debian-packages.sh wireguard-go wireguard-tools openvpn iperf3 openssl
	$(PY) bench/compare.py

bench-core: deps
	$(PY) bench/core.py

bench-latency: deps
	@bash scripts/install-debian-packages.sh wireguard-go wireguard-tools iperf3 gcc libssl-dev
	$(PY) bench/latency.py

bench-flood: deps
	$(PY) bench/flood.py

# What deep packet inspection says about each carrier (nDPI's ndpiReader and the published rules for
# fully encrypted traffic); not part of `make test`. Raw output in bench/results/dpi-<date>.txt.
dpi: deps
	$(PY) bench/dpi.py

# Coverage-guided fuzzing of every parser of untrusted bytes (fuzz/, atheris); not part of `make test`,
# which runs each target for a few seconds (tests/unit/test_fuzz_smoke.py). FUZZ_EXECS=N per target.
# clang builds the compiled data path with ASan and UBSan for the fastpath target.
FUZZ_EXECS ?= 1000000
fuzz: deps
	@bash scripts/install-debian-packages.sh clang
	$(PY) -m pip install -q -e '.[fuzz]'
	$(PY) fuzz/main.py --execs $(FUZZ_EXECS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .fuzz man dist build
