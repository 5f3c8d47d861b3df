# Two commands on a fresh machine: `make demo` and `make test`. Each sets itself up.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# The CPU wheel of torch lies on this machine's disk; installing it first keeps pip from
# resolving the project's torch range to a multi-GB CUDA build.
TORCH_PIN := torch==2.13.0
STAMP  := $(VENV)/.installed
OUT    := out

.PHONY: demo test bench lint clean setup

setup: $(STAMP)

# Debian packages: OSMesa lets MuJoCo render on a CPU. Installed when run as root, else checked.
DEBS := libosmesa6

$(STAMP): pyproject.toml Makefile
	@if [ "$$(id -u)" = 0 ]; then \
		dpkg -s $(DEBS) >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq $(DEBS); }; \
	else \
		dpkg -s $(DEBS) >/dev/null 2>&1 || echo "warning: install $(DEBS) (sudo apt-get install $(DEBS))"; \
	fi
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH_PIN)
	$(PIP) install -q -e '.[export,sim,dev]'
	@touch $(STAMP)

# The main job: the runtime on the embedded default (simulated UR5e, cameras and MCU) for 30 s.
demo: $(STAMP)
	@$(VENV)/bin/edgevla bundle verify $(OUT)/demo-bundle >/dev/null 2>&1 || \
		$(VENV)/bin/edgevla export --config tiny --seed 0 --out $(OUT)/demo-bundle --overwrite
	$(VENV)/bin/edgevla run --duration 30 --report $(OUT)/demo-report.json --plot $(OUT)/demo-run.png
	@cat $(OUT)/demo-report.json

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/bench_plan.py
	$(PY) benchmarks/bench_runtime.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache .ruff_cache
